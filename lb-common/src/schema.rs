//! What each pinned map holds, so that a daemon taking over pinned maps (a restart, an upgrade)
//! reuses them only when it reads them as the daemon that created them wrote them.
//!
//! Every pinned map has an entry in [`MAPS`]: a hand-kept `version`, bumped whenever the meaning
//! of its keys or values changes, and a `layout` fingerprint computed here at compile time from
//! the sizes and field offsets of its key and value types and the constants that index it. The
//! daemon that creates a load balancer's maps writes the table into the pinned `SCHEMA` map;
//! a later daemon compares it, along with each map's type, key and value sizes, capacity and
//! flags as the kernel reports them, before it loads anything (`lb-userspace/src/pins.rs`).
//!
//! The unit test `schema_versions_follow_layouts` pins each fingerprint to its version: a
//! change of layout fails it until the version is bumped.
//!
//! The table is also what the daemon creates: each map's kernel type, key and value sizes,
//! flags and how many entries it gets ([`Entries`]: fixed, or sized from the load
//! balancer's configuration), which load balancers have it ([`Has`]), and whether the data
//! path reads it through the program set's outer map of that name (`data_path`: the
//! programs are loaded once per node and find a load balancer's maps at its slot).

use core::mem::{offset_of, size_of};

use crate::{
    reason, Admission, AllowedData, AllowedData6, Flow, Flow6, FlowKey, FlowKey6, Ip6,
    ListenerConf, ListenerKey, ListenerKey6, Live, MemberConf, PoolConf, PoolMembers, PortConf,
    Stats, Sticky, StickyKey, SweepReport, CONN_LOG_BYTES, MAX_ALLOWED_CIDRS, MAX_LISTENERS,
    MAX_POOLS, STICKY_ENTRIES,
};

/// `SCHEMA` value: one pinned map's identity as the daemon that created it saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchemaEntry {
    /// The map's pin name, NUL-padded.
    pub name: [u8; 16],
    pub version: u32,
    pub layout: u32,
    pub key_size: u32,
    pub value_size: u32,
}
assert_size!(SchemaEntry, 32);

/// Entries of the `SCHEMA` map (its own layout never changes: a new one would be `SCHEMA2`).
pub const SCHEMA_ENTRIES: u32 = 32;

impl SchemaEntry {
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// One map of a load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSchema {
    pub name: &'static str,
    pub version: u32,
    pub layout: u32,
    /// `bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
    pub entries: Entries,
    pub has: Has,
    /// The programs read it through the outer map `OF_<name>` at the load balancer's slot.
    pub data_path: bool,
}

/// How many entries a load balancer's map gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Always this many (the data path's lookups of a fixed-size array are inlined).
    Fixed(u32),
    /// One per member index the load balancer may use (`member_capacity`).
    Members,
    /// One per pool index (`pool_capacity`).
    Pools,
    /// Two per flow of its conntrack table (`conntrack_flows`).
    Flows,
    /// A ring buffer of this many bytes.
    Bytes(u32),
}

/// Which load balancers have a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Has {
    Always,
    /// An IPv4 VIP's.
    Ipv4,
    /// An IPv6 VIP's.
    Ipv6,
    /// One with a pool that has session persistence.
    Persistence,
    /// One whose daemon logs connections.
    ConnectionLog,
}

/// `bpf_map_type` values.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PROG_ARRAY: u32 = 3;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LPM_TRIE: u32 = 11;
    pub const ARRAY_OF_MAPS: u32 = 12;
    pub const RINGBUF: u32 = 27;

    /// Whether the kernel keeps one value per possible CPU.
    pub const fn per_cpu(t: u32) -> bool {
        t == PERCPU_ARRAY || t == PERCPU_HASH
    }
}

/// `BPF_MAP_CREATE` flags.
pub mod flags {
    /// Hash maps allocate on insert and free through RCU.
    pub const NO_PREALLOC: u32 = 1;
    /// The daemon mmaps the array (shared counters).
    pub const MMAPABLE: u32 = 1 << 10;
    /// Arrays of one map kind may differ in size between load balancers (their lookups are
    /// then calls, not inlined). Plain arrays only: a per-CPU kind sized per load balancer
    /// is a per-CPU hash.
    pub const INNER_MAP: u32 = 1 << 12;
}

/// Member indexes of a load balancer's member arrays: room for `needed` (the highest index
/// its plan uses, plus one) twice over, at least 16, a power of two, so that reloads adding
/// members rarely need bigger arrays (`Maps::grow` in the daemon copies into them when they
/// do).
pub const fn member_capacity(needed: u32) -> u32 {
    let want = if needed < 8 {
        16
    } else {
        (2 * needed).next_power_of_two()
    };
    if want > crate::MAX_MEMBERS {
        crate::MAX_MEMBERS
    } else {
        want
    }
}

/// Pool indexes of a load balancer's pool arrays (as `member_capacity`, at least 2).
pub const fn pool_capacity(needed: u32) -> u32 {
    let want = if needed < 2 {
        2
    } else {
        (2 * needed).next_power_of_two()
    };
    if want > MAX_POOLS {
        MAX_POOLS
    } else {
        want
    }
}

impl MapSchema {
    pub fn entry(&self, key_size: u32, value_size: u32) -> SchemaEntry {
        let mut name = [0u8; 16];
        let n = self.name.len().min(16);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        SchemaEntry {
            name,
            version: self.version,
            layout: self.layout,
            key_size,
            value_size,
        }
    }
}

/// FNV-1a over 32-bit words, usable in constants.
const fn fnv(words: &[usize]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < words.len() {
        let mut w = words[i] as u64;
        let mut b = 0;
        while b < 8 {
            h ^= (w & 0xff) as u32;
            h = h.wrapping_mul(0x0100_0193);
            w >>= 8;
            b += 1;
        }
        i += 1;
    }
    h
}

const fn fnv_str(h: u32, s: &str) -> u32 {
    let bytes = s.as_bytes();
    let mut h = h;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

const fn mix(a: u32, b: u32) -> u32 {
    fnv(&[a as usize, b as usize])
}

/// Size, alignment and the offset of every named field of a `#[repr(C)]` type.
macro_rules! layout {
    ($t:ty; $($f:ident),* $(,)?) => {
        fnv(&[size_of::<$t>(), core::mem::align_of::<$t>(), $(offset_of!($t, $f)),*])
    };
}

const LISTENER_KEY: u32 = layout!(ListenerKey; vip_be, port_be, proto, _pad);
const LISTENER_CONF: u32 = layout!(ListenerConf; index, pool, connection_limit, retries,
    timeout_member_connect_ns, timeout_data_ns, flags, snat_min, snat_max, total_limit,
    half_open_limit, flow_limit, flow_rate);
const POOL_CONF: u32 =
    layout!(PoolConf; count, algorithm, flags, persist_timeout_s, error_limit, table_len);
const STICKY_KEY: u32 = layout!(StickyKey; client_be, pool);
const STICKY: u32 = layout!(Sticky; member, _pad, last_ns);
const MEMBER_CONF: u32 = layout!(MemberConf; addr_be, port_be, weight, flags, pool);
const LIVE: u32 = layout!(Live; active, events, rr, table, refs, half_open, half_table, failures);
const STATS: u32 = layout!(Stats; packets_in, bytes_in, packets_out, bytes_out,
    total_connections, redispatches, drops);
const FLOW_KEY: u32 = layout!(FlowKey; src_be, dst_be, sport_be, dport_be, proto, dir, _pad);
const FLOW: u32 = layout!(Flow; created_ns, last_seen_ns, state, client_be, member_be,
    client_port_be, listener_port_be, member_port_be, snat_port_be, vip_be, member, listener,
    ts_delta, seq_delta, client_ack, client_win, member_ack, member_win, client_next, member_next,
    client_mac, member_mac, port_mac, syn_retries, wscale, member_bytes, connect_ms, accept_ms);
const LISTENER_KEY6: u32 = layout!(ListenerKey6; vip_be, port_be, proto, _pad);
const FLOW_KEY6: u32 = layout!(FlowKey6; src_be, dst_be, sport_be, dport_be, proto, dir, _pad);
const FLOW6: u32 = layout!(Flow6; created_ns, last_seen_ns, state, client_be, member_be,
    client_port_be, listener_port_be, member_port_be, snat_port_be, vip_be, member, listener,
    ts_delta, seq_delta, client_ack, client_win, member_ack, member_win, client_next, member_next,
    client_mac, member_mac, port_mac, syn_retries, wscale, member_bytes, connect_ms, accept_ms);
const ALLOWED_DATA6: u32 = layout!(AllowedData6; listener_be, addr_be);
const IP6: u32 = fnv(&[16, 4]);
const PORT_CONF: u32 = layout!(PortConf; mac, _pad);
const ALLOWED_DATA: u32 = layout!(AllowedData; listener_be, addr_be);
const SWEEP_REPORT: u32 = layout!(SweepReport; flows, expired, orphans, cycle_us);
const ADMISSION: u32 = layout!(Admission; until_ns, accept_until_ns, sent, valid, window_count,
    window_since_ns);
const POOL_SLOT: usize = layout!(crate::PoolSlot; member, weight, flags) as usize;
const CONN_EVENT: u32 = layout!(crate::ConnEvent; accepted_ns, ended_ns, member_bytes, state,
    client_be, member, listener, connect_ms, feconn, srv_conn, client_port_be, syn_retries,
    family);
/// Verdict arrays are indexed by reason: their names and order are part of the layout.
const REASONS: u32 = {
    let mut h = reason::COUNT;
    let mut i = 0;
    while i < reason::NAMES.len() {
        h = fnv_str(h, reason::NAMES[i]);
        i += 1;
    }
    h
};
const U32: u32 = fnv(&[4, 4]);
const U64: u32 = fnv(&[8, 8]);

/// A table entry (the kernel shape follows the key and value types).
macro_rules! map {
    ($name:literal, $version:expr, $layout:expr, $type:ident, $k:expr, $v:expr, $flags:expr,
     $entries:expr, $has:ident, $dp:expr) => {
        MapSchema {
            name: $name,
            version: $version,
            layout: $layout,
            map_type: map_type::$type,
            key_size: $k as u32,
            value_size: $v as u32,
            flags: $flags,
            entries: $entries,
            has: Has::$has,
            data_path: $dp,
        }
    };
}

/// What member indexes mean: indexes of a load balancer's own arrays, which a pool's
/// `POOL_MEMBERS` slots point into (before: `pool * 256 + slot`).
const MEMBER_INDEX: u32 = fnv(&[2, 0]);
const U16: usize = size_of::<u16>();
const U32S: usize = size_of::<u32>();
const U64S: usize = size_of::<u64>();
/// An LPM trie's key: the prefix length, then the data.
const fn lpm<T>() -> usize {
    4 + size_of::<T>()
}

use flags::{INNER_MAP, MMAPABLE, NO_PREALLOC};
use Entries::*;

/// Every map of a load balancer. Keep in sync with `lb-ebpf/src/maps.rs` (a test checks
/// that every outer map of the object is here).
pub const MAPS: &[MapSchema] = &[
    // 2: ListenerConf::flags (draining); 3: snat_min/snat_max; 4: total_limit;
    // 5: half_open_limit (SYN cookies); 6: flow_limit, flow_rate (UDP admission).
    map!(
        "LISTENERS",
        6,
        mix(LISTENER_KEY, LISTENER_CONF),
        HASH,
        size_of::<ListenerKey>(),
        size_of::<ListenerConf>(),
        0,
        Fixed(MAX_LISTENERS),
        Ipv4,
        true
    ),
    // 2: flags and persist_timeout_s (source-address persistence); 3: error_limit;
    // 4: table_len (weighted round robin), SOURCE_IP_PORT.
    map!(
        "POOLS",
        4,
        mix(U32, POOL_CONF),
        ARRAY,
        U32S,
        size_of::<PoolConf>(),
        0,
        Fixed(MAX_POOLS),
        Always,
        true
    ),
    map!(
        "POOL_MEMBERS",
        1,
        mix(U32, fnv(&[size_of::<PoolMembers>(), POOL_SLOT])),
        ARRAY,
        U32S,
        size_of::<PoolMembers>(),
        INNER_MAP,
        Pools,
        Always,
        true
    ),
    // 2: dense member indexes; 3: client_next, member_next.
    map!(
        "STICKY",
        2,
        mix(STICKY_KEY, STICKY),
        LRU_HASH,
        size_of::<StickyKey>(),
        size_of::<Sticky>(),
        0,
        Fixed(STICKY_ENTRIES),
        Persistence,
        true
    ),
    // 2: one value per pool (the whole table) instead of one per entry; 3: Maglev for
    // source hashing, smooth weighted round robin; 4: entries are pool slots.
    map!(
        "SOURCE_TABLE",
        4,
        mix(
            U32,
            fnv(&[crate::select::SOURCE_TABLE_SIZE as usize * 2, 2])
        ),
        ARRAY,
        U32S,
        crate::select::SOURCE_TABLE_SIZE as usize * U16,
        INNER_MAP,
        Pools,
        Always,
        true
    ),
    // 2: dense member indexes; 3: client_next, member_next.
    map!(
        "MEMBERS",
        2,
        mix(MEMBER_INDEX, MEMBER_CONF),
        ARRAY,
        U32S,
        size_of::<MemberConf>(),
        INNER_MAP,
        Members,
        Always,
        true
    ),
    // 2: half_open, half_table, failures; 3: dense member indexes.
    map!(
        "MEMBER_LIVE",
        3,
        mix(MEMBER_INDEX, LIVE),
        ARRAY,
        U32S,
        size_of::<Live>(),
        MMAPABLE | INNER_MAP,
        Members,
        Always,
        true
    ),
    // 2: half_open, half_table, failures.
    map!(
        "LISTENER_LIVE",
        2,
        mix(U32, LIVE),
        ARRAY,
        U32S,
        size_of::<Live>(),
        MMAPABLE,
        Fixed(MAX_LISTENERS),
        Always,
        true
    ),
    // 2: dense member indexes; 3: client_next, member_next. a per-CPU hash (per-CPU arrays cannot differ in size
    // between load balancers): the daemon inserts a member's entry before it serves.
    map!(
        "MEMBER_STATS",
        2,
        mix(MEMBER_INDEX, STATS),
        PERCPU_HASH,
        U32S,
        size_of::<Stats>(),
        0,
        Members,
        Always,
        true
    ),
    map!(
        "LISTENER_STATS",
        1,
        mix(U32, STATS),
        PERCPU_ARRAY,
        U32S,
        size_of::<Stats>(),
        0,
        Fixed(MAX_LISTENERS),
        Always,
        true
    ),
    // 2: pass_not_for_port; 3: drop_refused; 4: SYN cookies; 5: tx_cookie_reset;
    // 6: drop_not_allowed; 7: pass_not_ip, drop_bad_ipv6; 8: drop_syn_options,
    // drop_udp_rate, drop_udp_limit, tx_stale_reset, drop_stale; 9: drop_icmp_unverified.
    map!(
        "LISTENER_DROPS",
        9,
        mix(REASONS, U64),
        PERCPU_ARRAY,
        U32S,
        U64S,
        0,
        Fixed(MAX_LISTENERS * reason::COUNT),
        Always,
        true
    ),
    // 2: pass_not_for_port; 3: drop_refused; 4: SYN cookies; 5: tx_cookie_reset;
    // 6: drop_not_allowed; 7: pass_not_ip, drop_bad_ipv6; 8: drop_syn_options,
    // drop_udp_rate, drop_udp_limit, tx_stale_reset, drop_stale; 9: drop_icmp_unverified.
    map!(
        "VERDICTS",
        9,
        mix(REASONS, U64),
        PERCPU_ARRAY,
        U32S,
        U64S,
        0,
        Fixed(reason::COUNT),
        Always,
        true
    ),
    // 2: atomic u64 state (counted is a bit of it), seq_delta, windows, wscale;
    // 3: established and half-open states; 4: refused, syn_retries' redispatch nibble;
    // 5: cookie flows (seq_delta in use); 6: member_bytes, connect_ms, accept_ms, CT_LOG;
    // 7: dense member indexes; 8: client_next, member_next.
    map!(
        "CONNTRACK",
        8,
        mix(FLOW_KEY, FLOW),
        HASH,
        size_of::<FlowKey>(),
        size_of::<Flow>(),
        NO_PREALLOC,
        Flows,
        Ipv4,
        true
    ),
    map!(
        "CONN_LOG_LOST",
        1,
        mix(U32, U64),
        PERCPU_ARRAY,
        U32S,
        U64S,
        0,
        Fixed(MAX_LISTENERS),
        Always,
        true
    ),
    map!(
        "ALLOWED",
        1,
        mix(ALLOWED_DATA, U32),
        LPM_TRIE,
        lpm::<AllowedData>(),
        U32S,
        NO_PREALLOC,
        Fixed(MAX_ALLOWED_CIDRS),
        Ipv4,
        true
    ),
    map!(
        "PORT",
        1,
        mix(U32, PORT_CONF),
        ARRAY,
        U32S,
        size_of::<PortConf>(),
        0,
        Fixed(1),
        Always,
        true
    ),
    map!(
        "SWEEP",
        1,
        mix(U32, SWEEP_REPORT),
        ARRAY,
        U32S,
        size_of::<SweepReport>(),
        0,
        Fixed(1),
        Always,
        false
    ),
    map!(
        "LISTENERS6",
        2,
        mix(LISTENER_KEY6, LISTENER_CONF),
        HASH,
        size_of::<ListenerKey6>(),
        size_of::<ListenerConf>(),
        0,
        Fixed(MAX_LISTENERS),
        Ipv6,
        true
    ),
    // 2: dense member indexes; 3: client_next, member_next.
    map!(
        "MEMBER_ADDR6",
        2,
        mix(MEMBER_INDEX, IP6),
        ARRAY,
        U32S,
        size_of::<Ip6>(),
        INNER_MAP,
        Members,
        Ipv6,
        true
    ),
    // 2: dense member indexes; 3: client_next, member_next.
    map!(
        "CONNTRACK6",
        3,
        mix(FLOW_KEY6, FLOW6),
        HASH,
        size_of::<FlowKey6>(),
        size_of::<Flow6>(),
        NO_PREALLOC,
        Flows,
        Ipv6,
        true
    ),
    map!(
        "ALLOWED6",
        1,
        mix(ALLOWED_DATA6, U32),
        LPM_TRIE,
        lpm::<AllowedData6>(),
        U32S,
        NO_PREALLOC,
        Fixed(MAX_ALLOWED_CIDRS),
        Ipv6,
        true
    ),
    map!(
        "ADMISSION",
        2,
        mix(U32, ADMISSION),
        ARRAY,
        U32S,
        size_of::<Admission>(),
        0,
        Fixed(MAX_LISTENERS),
        Always,
        true
    ),
    map!(
        "CONN_LOG",
        1,
        mix(fnv(&[size_of::<crate::ConnEvent>()]), CONN_EVENT),
        RINGBUF,
        0,
        0,
        0,
        Bytes(CONN_LOG_BYTES),
        ConnectionLog,
        true
    ),
];

/// The schema of map `name`, if a load balancer of this build has a map of that name.
pub fn find(name: &str) -> Option<&'static MapSchema> {
    MAPS.iter().find(|m| m.name == name)
}

/// The position of map `name` in `MAPS`, at compile time (the data path checks its types
/// against the table with it).
pub const fn index(name: &str) -> usize {
    let mut i = 0;
    while i < MAPS.len() {
        if eq(MAPS[i].name, name) {
            return i;
        }
        i += 1;
    }
    panic!("no such map in schema::MAPS")
}

const fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure here means a pinned map's layout changed. Bump that map's `version` in `MAPS`
    /// (a daemon taking over maps of the old layout then refuses them, naming the map) and
    /// record the new fingerprint here.
    #[test]
    fn schema_versions_follow_layouts() {
        let recorded: &[(&str, u32, u32)] = &[
            ("LISTENERS", 6, 0x2f45_10b9),
            ("POOLS", 4, 0x1623_a0ef),
            ("POOL_MEMBERS", 1, 0xb75f_54a6),
            ("STICKY", 2, 0xf092_f559),
            ("SOURCE_TABLE", 4, 0x5b73_21e3),
            ("MEMBERS", 2, 0xc699_266e),
            ("MEMBER_LIVE", 3, 0x73d4_3344),
            ("LISTENER_LIVE", 2, 0x8d87_8724),
            ("MEMBER_STATS", 2, 0x3d44_a3b0),
            ("LISTENER_STATS", 1, 0xeb63_52d0),
            ("LISTENER_DROPS", 9, 0xa715_f55b),
            ("VERDICTS", 9, 0xa715_f55b),
            ("CONNTRACK", 8, 0xa16a_b754),
            ("CONN_LOG_LOST", 1, 0xdba3_35ad),
            ("ALLOWED", 1, 0x51f1_f8f9),
            ("PORT", 1, 0x1510_fa71),
            ("SWEEP", 1, 0xcff9_c699),
            ("LISTENERS6", 2, 0x4ef1_c7cf),
            ("MEMBER_ADDR6", 2, 0x7f45_a086),
            ("CONNTRACK6", 3, 0xef8a_fd05),
            ("ALLOWED6", 1, 0x38ab_caaf),
            ("ADMISSION", 2, 0x5aa4_6a3e),
            ("CONN_LOG", 1, 0xf1fb_c8e4),
        ];
        let mut wrong = [("", 0, 0, 0); 32];
        let mut n = 0;
        for (m, &(name, version, layout)) in MAPS.iter().zip(recorded) {
            assert_eq!(m.name, name);
            if (m.version, m.layout) != (version, layout) {
                wrong[n] = (name, m.version, m.layout, layout);
                n += 1;
            }
        }
        assert_eq!(MAPS.len(), recorded.len());
        assert!(
            n == 0,
            "layouts changed (name, version, layout now, layout recorded): {:x?}; bump their \
             versions in MAPS and record the new layouts here",
            &wrong[..n]
        );
    }

    #[test]
    fn names_fit_the_entry() {
        for m in MAPS {
            assert!(m.name.len() <= 15, "{}", m.name);
            assert_eq!(m.entry(1, 2).name(), m.name);
        }
    }
}
