//! Every map of the data path.
//!
//! The programs are loaded once per node and build (a "program set", pinned under
//! `<bpffs>/.programs/<object hash>/`) and serve every load balancer of the node. What is
//! the set's own: `CURRENT` (the slot of the load balancer whose packet this is, written by
//! its stub program), `SCRATCH`, the IPv6 programs' tail-call arrays, and one outer map per
//! kind of load-balancer map, `OF_<NAME>` (an array of maps indexed by slot). What is each
//! load balancer's own: the inner maps, created by the daemon at the sizes the
//! configuration needs (`lb_common::schema::MAPS`, the one table of their shapes) and
//! pinned under `<bpffs>/<loadbalancer id>/` (flows survive daemons), reached through the
//! handles below (`inner.rs`). A key of one load balancer can never match in another's map:
//! each has its own.
//!
//! The outer maps' inner definitions below document each kind; the kernel's templates are
//! the daemon's, made from the schema table (it creates the outer maps before the programs
//! load, and the loader takes them from their pins).

use core::mem::size_of;

use aya_ebpf::{
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::PerCpuArray,
};
use lb_common::{
    reason,
    schema::{self, flags},
    select, Admission, AllowedData, AllowedData6, Flow, Flow6, FlowKey, FlowKey6, Ip6,
    ListenerConf, ListenerKey, ListenerKey6, Live, MemberConf, PoolConf, PoolMembers, PortConf,
    Stats, Sticky, StickyKey, MAX_LISTENERS, MAX_POOLS, MAX_SLOTS,
};

use crate::inner::{Array, Hash, LpmTrie, Outer, RingBuf};

const SLOTS: usize = MAX_SLOTS as usize;
const INNER: usize = flags::INNER_MAP as usize;
const NO_PREALLOC: usize = flags::NO_PREALLOC as usize;
const MMAPABLE: usize = flags::MMAPABLE as usize;

/// Declares a kind of load-balancer map: its outer map `$outer` (inner definition `$def`),
/// the marker type `$marker` naming it, and the handle `$name` (`$handle`) the flow logic
/// uses; checks the handle's key and value sizes against the schema table.
macro_rules! per_lb {
    ($(#[$doc:meta])* $name:ident: $handle:ty, $outer:ident, $marker:ident, $def:ty,
     key $k:expr, value $v:expr) => {
        #[btf_map]
        static $outer: ArrayOfMaps<$def, SLOTS> = ArrayOfMaps::new();

        pub(crate) struct $marker;

        impl Outer for $marker {
            #[inline(always)]
            fn ptr() -> *mut core::ffi::c_void {
                core::ptr::from_ref(&$outer).cast_mut().cast()
            }
        }

        $(#[$doc])*
        pub(crate) static $name: $handle = <$handle>::new();

        const _: () = {
            let m = &schema::MAPS[schema::index(stringify!($name))];
            assert!(m.data_path);
            assert!(m.key_size as usize == $k);
            assert!(m.value_size as usize == $v);
        };
    };
}

per_lb! {
    /// (VIP, port, proto) -> listener. Written by the daemon only.
    LISTENERS: Hash<OfListeners, ListenerKey, ListenerConf>, OF_LISTENERS, OfListeners,
    btf_maps::HashMap<ListenerKey, ListenerConf, { MAX_LISTENERS as usize }>,
    key size_of::<ListenerKey>(), value size_of::<ListenerConf>()
}

per_lb! {
    /// (IPv6 VIP, port, proto) -> listener, for a load balancer whose VIP is IPv6. Written
    /// by the daemon only.
    LISTENERS6: Hash<OfListeners6, ListenerKey6, ListenerConf>, OF_LISTENERS6, OfListeners6,
    btf_maps::HashMap<ListenerKey6, ListenerConf, { MAX_LISTENERS as usize }>,
    key size_of::<ListenerKey6>(), value size_of::<ListenerConf>()
}

per_lb! {
    /// pool index -> slot count and algorithm. Written by the daemon only.
    POOLS: Array<OfPools, PoolConf>, OF_POOLS, OfPools,
    btf_maps::Array<PoolConf, { MAX_POOLS as usize }>,
    key 4, value size_of::<PoolConf>()
}

per_lb! {
    /// pool index -> the member index of each of its slots. Written by the daemon only.
    POOL_MEMBERS: Array<OfPoolMembers, PoolMembers>, OF_POOL_MEMBERS, OfPoolMembers,
    btf_maps::Array<PoolMembers, 1, INNER>,
    key 4, value size_of::<PoolMembers>()
}

per_lb! {
    /// member index -> address, port, weight, flags (health and admin state).
    MEMBERS: Array<OfMembers, MemberConf>, OF_MEMBERS, OfMembers,
    btf_maps::Array<MemberConf, 1, INNER>,
    key 4, value size_of::<MemberConf>()
}

per_lb! {
    /// member index -> an IPv6 member's address (`MEMBERS` holds the rest of it; a pool's
    /// members share its VIP's family).
    MEMBER_ADDR6: Array<OfMemberAddr6, Ip6>, OF_MEMBER_ADDR6, OfMemberAddr6,
    btf_maps::Array<Ip6, 1, INNER>,
    key 4, value size_of::<Ip6>()
}

per_lb! {
    /// member index -> active connections (shared, atomic; the daemon mmaps it to correct
    /// drift).
    MEMBER_LIVE: Array<OfMemberLive, Live>, OF_MEMBER_LIVE, OfMemberLive,
    btf_maps::Array<Live, 1, { MMAPABLE | INNER }>,
    key 4, value size_of::<Live>()
}

per_lb! {
    /// listener index -> active connections and the tie-rotation counter (shared, atomic).
    LISTENER_LIVE: Array<OfListenerLive, Live>, OF_LISTENER_LIVE, OfListenerLive,
    btf_maps::Array<Live, { MAX_LISTENERS as usize }, MMAPABLE>,
    key 4, value size_of::<Live>()
}

per_lb! {
    /// member index -> traffic counters, per CPU (a hash: per-CPU arrays of one kind must
    /// be of one size; the daemon inserts each member's entry before it serves).
    MEMBER_STATS: Hash<OfMemberStats, u32, Stats>, OF_MEMBER_STATS, OfMemberStats,
    btf_maps::PerCpuHashMap<u32, Stats, 1>,
    key 4, value size_of::<Stats>()
}

per_lb! {
    /// listener index -> traffic counters, per CPU.
    LISTENER_STATS: Array<OfListenerStats, Stats>, OF_LISTENER_STATS, OfListenerStats,
    btf_maps::PerCpuArray<Stats, { MAX_LISTENERS as usize }>,
    key 4, value size_of::<Stats>()
}

per_lb! {
    /// listener * reason::COUNT + reason -> packets of that listener dropped for that
    /// reason, per CPU (HAProxy's request errors, by cause).
    LISTENER_DROPS: Array<OfListenerDrops, u64>, OF_LISTENER_DROPS, OfListenerDrops,
    btf_maps::PerCpuArray<u64, { (MAX_LISTENERS * reason::COUNT) as usize }>,
    key 4, value 8
}

per_lb! {
    /// verdict reason (lb_common::reason) -> packets, per CPU.
    VERDICTS: Array<OfVerdicts, u64>, OF_VERDICTS, OfVerdicts,
    btf_maps::PerCpuArray<u64, { reason::COUNT as usize }>,
    key 4, value 8
}

per_lb! {
    /// The load balancer's conntrack table: forward (client side) and reverse (member side)
    /// entries, two per flow. Shared by its CPUs rather than per-CPU: generic XDP on a veth
    /// has no CPU affinity, and a least-connections flow must never lose its entry while it
    /// lives. Allocated on insert, freed through RCU (`BPF_F_NO_PREALLOC`): an entry the
    /// daemon expires is never reused under a packet that still holds a pointer to it.
    CONNTRACK: Hash<OfConntrack, FlowKey, Flow>, OF_CONNTRACK, OfConntrack,
    btf_maps::HashMap<FlowKey, Flow, 1, NO_PREALLOC>,
    key size_of::<FlowKey>(), value size_of::<Flow>()
}

per_lb! {
    /// The conntrack table of an IPv6 load balancer, as `CONNTRACK`.
    CONNTRACK6: Hash<OfConntrack6, FlowKey6, Flow6>, OF_CONNTRACK6, OfConntrack6,
    btf_maps::HashMap<FlowKey6, Flow6, 1, NO_PREALLOC>,
    key size_of::<FlowKey6>(), value size_of::<Flow6>()
}

per_lb! {
    /// (client address, pool) -> the member it sticks to and when it last opened a flow,
    /// for pools with source-address persistence (only a load balancer with such a pool has
    /// one). Least recently used entries are evicted when full (as a haproxy stick-table of
    /// that size); entries past the pool's timeout are ignored.
    STICKY: Hash<OfSticky, StickyKey, Sticky>, OF_STICKY, OfSticky,
    btf_maps::LruHashMap<StickyKey, Sticky, 1>,
    key size_of::<StickyKey>(), value size_of::<Sticky>()
}

per_lb! {
    /// Per pool, `SOURCE_TABLE_SIZE` slots for `balance source` (a Maglev table) or round
    /// robin (the weighted sequence): the daemon rewrites a pool's table (one value, one
    /// syscall) whenever a member's weight, state or admin flags change.
    SOURCE_TABLE: Array<OfSourceTable, [u16; select::SOURCE_TABLE_SIZE as usize]>,
    OF_SOURCE_TABLE, OfSourceTable,
    btf_maps::Array<[u16; select::SOURCE_TABLE_SIZE as usize], 1, INNER>,
    key 4, value select::SOURCE_TABLE_SIZE as usize * 2
}

per_lb! {
    /// (listener, client prefix) of listeners with `allowed_cidrs`
    /// (`LISTENER_F_ALLOWED_CIDRS`): a client without a flow is balanced only if its
    /// address matches one (longest prefix match). Written by the daemon, before the
    /// listener's flag.
    ALLOWED: LpmTrie<OfAllowed, AllowedData, u32>, OF_ALLOWED, OfAllowed,
    btf_maps::LpmTrie<AllowedData, u32, 1>,
    key 4 + size_of::<AllowedData>(), value 4
}

per_lb! {
    /// `ALLOWED` for IPv6 clients: (listener, client prefix), a prefix of `32 + n` bits.
    ALLOWED6: LpmTrie<OfAllowed6, AllowedData6, u32>, OF_ALLOWED6, OfAllowed6,
    btf_maps::LpmTrie<AllowedData6, u32, 1>,
    key 4 + size_of::<AllowedData6>(), value 4
}

per_lb! {
    /// The port's MAC (written by the daemon before it attaches): only frames addressed to
    /// it are balanced.
    PORT: Array<OfPort, PortConf>, OF_PORT, OfPort,
    btf_maps::Array<PortConf, 1>,
    key 4, value size_of::<PortConf>()
}

per_lb! {
    /// Per listener: whether it answers SYNs with cookies now (`cookie.rs`).
    ADMISSION: Array<OfAdmission, Admission>, OF_ADMISSION, OfAdmission,
    btf_maps::Array<Admission, { MAX_LISTENERS as usize }>,
    key 4, value size_of::<Admission>()
}

per_lb! {
    /// The connection log's ring (`connlog.rs`): only a load balancer whose daemon logs
    /// connections has one; each daemon makes its own and puts it in the slot once its
    /// reader runs.
    CONN_LOG: RingBuf<OfConnLog>, OF_CONN_LOG, OfConnLog,
    btf_maps::RingBuf<lb_common::ConnEvent, 4096>,
    key 0, value 0
}

per_lb! {
    /// listener index -> connection-log events lost to a full ring, per CPU.
    CONN_LOG_LOST: Array<OfConnLogLost, u64>, OF_CONN_LOG_LOST, OfConnLogLost,
    btf_maps::PerCpuArray<u64, { MAX_LISTENERS as usize }>,
    key 4, value 8
}

/// Per-CPU scratch space for the SYN path's large temporaries (a flow being built, the FIB
/// lookup's parameters): kept off the 512-byte BPF stack, which older kernels' verifiers
/// also charge with the member-selection callback's frame. One per program set: a program
/// runs to its end on its CPU before the next uses it.
#[repr(C)]
pub struct Scratch {
    pub flow: Flow,
    pub flow6: Flow6,
    /// Map keys (`family::Slot`): an IPv6 flow key is 40 bytes, and the IPv6 program's
    /// frames only fit in 512 bytes with its keys here.
    pub keys: [FlowKey; 4],
    pub keys6: [FlowKey6; 4],
    pub lkey: ListenerKey,
    pub lkey6: ListenerKey6,
    /// The IPv6 parser's transport offset, passed through memory (`parse::launder`).
    pub off: u64,
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// A SYN's TCP header, copied for the SYN-cookie helper.
    pub tcp: [u8; 64],
    /// An IPv6 flow's state as it ended, for its connection-log record (`connlog::flush`;
    /// 0: none pending).
    pub log_state: u64,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
