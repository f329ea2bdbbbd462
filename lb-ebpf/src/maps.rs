//! Every map of the data path, pinned by name under the load balancer's bpffs directory so that
//! a restarted daemon (and `lb stats`) finds them, and established flows survive restarts.
//! Key/value types live in lb-common; capacities are the defaults the loader may override.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    reason,
    schema::{SchemaEntry, SCHEMA_ENTRIES},
    select, AllowedData, AllowedData6, Flow, Flow6, FlowKey, FlowKey6, Ip6, ListenerConf,
    ListenerKey, ListenerKey6, Live, MemberConf, PoolConf, PortConf, Stats, Sticky, StickyKey,
    SweepReport, DEFAULT_CONNTRACK_FLOWS, MAX_ALLOWED_CIDRS, MAX_LISTENERS, MAX_MEMBERS, MAX_POOLS,
    STICKY_ENTRIES,
};

/// Hash maps allocate on insert and free through RCU: an entry the daemon expires can never be
/// reused under a packet that still holds a pointer to it.
const BPF_F_NO_PREALLOC: u32 = 1;

/// (VIP, port, proto) -> listener. Written by the daemon only.
#[map]
pub static LISTENERS: HashMap<ListenerKey, ListenerConf> = HashMap::pinned(MAX_LISTENERS, 0);

/// (IPv6 VIP, port, proto) -> listener, for a load balancer whose VIP is IPv6. Written by the
/// daemon only.
#[map]
pub static LISTENERS6: HashMap<ListenerKey6, ListenerConf> = HashMap::pinned(MAX_LISTENERS, 0);

/// pool index -> member slot count and algorithm. Written by the daemon only.
#[map]
pub static POOLS: Array<PoolConf> = Array::pinned(MAX_POOLS, 0);

/// pool * 256 + slot -> member address, port, weight, flags (health and admin state).
#[map]
pub static MEMBERS: Array<MemberConf> = Array::pinned(MAX_MEMBERS, 0);

/// pool * 256 + slot -> an IPv6 member's address (`MEMBERS` holds the rest of it; a pool's
/// members share its VIP's family).
#[map]
pub static MEMBER_ADDR6: Array<Ip6> = Array::pinned(MAX_MEMBERS, 0);

/// member index -> active connections (shared, atomic; the daemon mmaps it to correct drift).
#[map]
pub static MEMBER_LIVE: Array<Live> = Array::pinned(MAX_MEMBERS, BPF_F_MMAPABLE);

/// listener index -> active connections and the tie-rotation counter (shared, atomic).
#[map]
pub static LISTENER_LIVE: Array<Live> = Array::pinned(MAX_LISTENERS, BPF_F_MMAPABLE);

/// member index -> traffic counters, per CPU.
#[map]
pub static MEMBER_STATS: PerCpuArray<Stats> = PerCpuArray::pinned(MAX_MEMBERS, 0);

/// listener index -> traffic counters, per CPU.
#[map]
pub static LISTENER_STATS: PerCpuArray<Stats> = PerCpuArray::pinned(MAX_LISTENERS, 0);

/// listener * reason::COUNT + reason -> packets of that listener dropped for that reason, per
/// CPU (HAProxy's request errors, by cause).
#[map]
pub static LISTENER_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_LISTENERS * reason::COUNT, 0);

/// verdict reason (lb_common::reason) -> packets, per CPU.
#[map]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);

/// The one shared conntrack table: forward (client side) and reverse (member side) entries,
/// two per flow. Shared rather than per-CPU: generic XDP on a veth has no CPU affinity, and a
/// least-connections flow must never lose its entry while it lives.
#[map]
pub static CONNTRACK: HashMap<FlowKey, Flow> =
    HashMap::pinned(2 * DEFAULT_CONNTRACK_FLOWS, BPF_F_NO_PREALLOC);

/// The conntrack table of IPv6 flows, as `CONNTRACK` (sized alike by the loader).
#[map]
pub static CONNTRACK6: HashMap<FlowKey6, Flow6> =
    HashMap::pinned(2 * DEFAULT_CONNTRACK_FLOWS, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space for the SYN path's large temporaries (a flow being built, the FIB
/// lookup's parameters): kept off the 512-byte BPF stack, which older kernels' verifiers
/// also charge with the member-selection callback's frame.
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

/// Per listener: whether it answers SYNs with cookies now (`cookie.rs`). Not pinned: a
/// process taking over starts with cookie mode off, and enters it again at the next SYN
/// past the budget.
#[map]
pub static ADMISSION: Array<crate::cookie::Admission> = Array::with_max_entries(MAX_LISTENERS, 0);

/// What the daemon's last expiry cycle did (one entry, written by userspace; no program
/// reads it).
#[map]
pub static SWEEP: Array<SweepReport> = Array::pinned(1, 0);

/// What each pinned map holds (`lb_common::schema`), as the daemon that created the maps wrote
/// it: a daemon taking the maps over compares it before it loads anything. No program reads it.
#[map]
pub static SCHEMA: Array<SchemaEntry> = Array::pinned(SCHEMA_ENTRIES, 0);

/// (client address, pool) -> the member it sticks to and when it last opened a flow, for
/// pools with source-address persistence. Least recently used entries are evicted when full
/// (as a haproxy stick-table of that size); entries past the pool's timeout are ignored.
#[map]
pub static STICKY: LruHashMap<StickyKey, Sticky> = LruHashMap::pinned(STICKY_ENTRIES, 0);

/// Per pool, `SOURCE_TABLE_SIZE` member slots for `balance source`: each available member
/// holds a share by weight (`select::fill_source_table`); the daemon rewrites a pool's
/// table (one value, one syscall) whenever a member's weight, state or admin flags change.
#[map]
pub static SOURCE_TABLE: Array<[u16; select::SOURCE_TABLE_SIZE as usize]> =
    Array::pinned(MAX_POOLS, 0);

/// (listener, client prefix) of listeners with `allowed_cidrs` (`LISTENER_F_ALLOWED_CIDRS`):
/// a client without a flow is balanced only if its address matches one (longest prefix
/// match). Written by the daemon, before the listener's flag.
#[map]
pub static ALLOWED: LpmTrie<AllowedData, u32> = LpmTrie::pinned(MAX_ALLOWED_CIDRS, 0);

/// `ALLOWED` for IPv6 clients: (listener, client prefix), a prefix of `32 + n` bits.
#[map]
pub static ALLOWED6: LpmTrie<AllowedData6, u32> = LpmTrie::pinned(MAX_ALLOWED_CIDRS, 0);

/// The port's MAC (written by the daemon before it attaches): only frames addressed to it
/// are balanced.
#[map]
pub static PORT: Array<PortConf> = Array::pinned(1, 0);
