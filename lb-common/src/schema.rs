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

use core::mem::{offset_of, size_of};

use crate::{
    reason, AllowedData, AllowedData6, Flow, Flow6, FlowKey, FlowKey6, ListenerConf, ListenerKey,
    ListenerKey6, Live, MemberConf, PoolConf, PortConf, Stats, Sticky, StickyKey, SweepReport,
    MAX_POOL_MEMBERS,
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

/// One pinned map this build uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSchema {
    pub name: &'static str,
    pub version: u32,
    pub layout: u32,
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
    half_open_limit);
const POOL_CONF: u32 =
    layout!(PoolConf; count, algorithm, flags, persist_timeout_s, error_limit, table_len);
const STICKY_KEY: u32 = layout!(StickyKey; client_be, pool);
const STICKY: u32 = layout!(Sticky; member, _pad, last_ns);
const MEMBER_CONF: u32 = layout!(MemberConf; addr_be, port_be, weight, flags, _pad);
const LIVE: u32 = layout!(Live; active, events, rr, table, refs, half_open, half_table, failures);
const STATS: u32 = layout!(Stats; packets_in, bytes_in, packets_out, bytes_out,
    total_connections, redispatches, drops);
const FLOW_KEY: u32 = layout!(FlowKey; src_be, dst_be, sport_be, dport_be, proto, dir, _pad);
const FLOW: u32 = layout!(Flow; created_ns, last_seen_ns, state, client_be, member_be,
    client_port_be, listener_port_be, member_port_be, snat_port_be, vip_be, member, listener,
    ts_delta, seq_delta, client_ack, client_win, member_ack, member_win, client_mac, member_mac,
    port_mac, syn_retries, wscale, member_bytes, connect_ms, accept_ms);
const LISTENER_KEY6: u32 = layout!(ListenerKey6; vip_be, port_be, proto, _pad);
const FLOW_KEY6: u32 = layout!(FlowKey6; src_be, dst_be, sport_be, dport_be, proto, dir, _pad);
const FLOW6: u32 = layout!(Flow6; created_ns, last_seen_ns, state, client_be, member_be,
    client_port_be, listener_port_be, member_port_be, snat_port_be, vip_be, member, listener,
    ts_delta, seq_delta, client_ack, client_win, member_ack, member_win, client_mac, member_mac,
    port_mac, syn_retries, wscale, member_bytes, connect_ms, accept_ms);
const ALLOWED_DATA6: u32 = layout!(AllowedData6; listener_be, addr_be);
const IP6: u32 = fnv(&[16, 4]);
const PORT_CONF: u32 = layout!(PortConf; mac, _pad);
const ALLOWED_DATA: u32 = layout!(AllowedData; listener_be, addr_be);
const SWEEP_REPORT: u32 = layout!(SweepReport; flows, expired, orphans, cycle_us);
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

/// Every pinned map of a load balancer, with its version and layout. Keep in sync with
/// `lb-ebpf/src/maps.rs` (a test checks that every pinned map of the object is here).
pub const MAPS: &[MapSchema] = &[
    MapSchema {
        name: "LISTENERS",
        // 2: ListenerConf::flags (draining); 3: snat_min/snat_max; 4: total_limit;
        // 5: half_open_limit (SYN cookies).
        version: 5,
        layout: mix(LISTENER_KEY, LISTENER_CONF),
    },
    MapSchema {
        name: "POOLS",
        // 2: flags and persist_timeout_s (source-address persistence); 3: error_limit;
        // 4: table_len (weighted round robin), SOURCE_IP_PORT.
        version: 4,
        layout: mix(U32, POOL_CONF),
    },
    MapSchema {
        name: "STICKY",
        version: 1,
        layout: mix(STICKY_KEY, STICKY),
    },
    MapSchema {
        name: "SOURCE_TABLE",
        // 2: one value per pool (the whole table) instead of one per entry; 3: Maglev for
        // source hashing, smooth weighted round robin.
        version: 3,
        layout: mix(
            U32,
            fnv(&[crate::select::SOURCE_TABLE_SIZE as usize * 2, 2]),
        ),
    },
    MapSchema {
        name: "MEMBERS",
        version: 1,
        layout: mix(MAX_POOL_MEMBERS, MEMBER_CONF),
    },
    MapSchema {
        name: "MEMBER_LIVE",
        // 2: half_open, half_table, failures.
        version: 2,
        layout: mix(MAX_POOL_MEMBERS, LIVE),
    },
    MapSchema {
        name: "LISTENER_LIVE",
        // 2: half_open, half_table, failures.
        version: 2,
        layout: mix(U32, LIVE),
    },
    MapSchema {
        name: "MEMBER_STATS",
        version: 1,
        layout: mix(MAX_POOL_MEMBERS, STATS),
    },
    MapSchema {
        name: "LISTENER_STATS",
        version: 1,
        layout: mix(U32, STATS),
    },
    MapSchema {
        name: "LISTENER_DROPS",
        // 2: pass_not_for_port; 3: drop_refused; 4: SYN cookies; 5: tx_cookie_reset;
        // 6: drop_not_allowed; 7: pass_not_ip, drop_bad_ipv6.
        version: 7,
        layout: mix(REASONS, U64),
    },
    MapSchema {
        name: "VERDICTS",
        // 2: pass_not_for_port; 3: drop_refused; 4: SYN cookies; 5: tx_cookie_reset;
        // 6: drop_not_allowed; 7: pass_not_ip, drop_bad_ipv6.
        version: 7,
        layout: mix(REASONS, U64),
    },
    MapSchema {
        name: "CONNTRACK",
        // 2: atomic u64 state (counted is a bit of it), seq_delta, windows, wscale;
        // 3: established and half-open states; 4: refused, syn_retries' redispatch nibble;
        // 5: cookie flows (seq_delta in use); 6: member_bytes, connect_ms, accept_ms, CT_LOG.
        version: 6,
        layout: mix(FLOW_KEY, FLOW),
    },
    MapSchema {
        name: "CONN_LOG_LOST",
        version: 1,
        layout: mix(U32, U64),
    },
    MapSchema {
        name: "ALLOWED",
        version: 1,
        layout: mix(ALLOWED_DATA, U32),
    },
    MapSchema {
        name: "PORT",
        version: 1,
        layout: mix(U32, PORT_CONF),
    },
    MapSchema {
        name: "SWEEP",
        version: 1,
        layout: mix(U32, SWEEP_REPORT),
    },
    MapSchema {
        name: "LISTENERS6",
        version: 1,
        layout: mix(LISTENER_KEY6, LISTENER_CONF),
    },
    MapSchema {
        name: "MEMBER_ADDR6",
        version: 1,
        layout: mix(MAX_POOL_MEMBERS, IP6),
    },
    MapSchema {
        name: "CONNTRACK6",
        version: 1,
        layout: mix(FLOW_KEY6, FLOW6),
    },
    MapSchema {
        name: "ALLOWED6",
        version: 1,
        layout: mix(ALLOWED_DATA6, U32),
    },
];

/// The schema of pinned map `name`, if this build pins a map of that name.
pub fn find(name: &str) -> Option<&'static MapSchema> {
    MAPS.iter().find(|m| m.name == name)
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
            ("LISTENERS", 5, 0xab74_7c97),
            ("POOLS", 4, 0x1623_a0ef),
            ("STICKY", 1, 0xf092_f559),
            ("SOURCE_TABLE", 3, 0x5b73_21e3),
            ("MEMBERS", 1, 0xfb78_4c8f),
            ("MEMBER_LIVE", 2, 0x41d0_9009),
            ("LISTENER_LIVE", 2, 0x8d87_8724),
            ("MEMBER_STATS", 1, 0x05ae_e319),
            ("LISTENER_STATS", 1, 0xeb63_52d0),
            ("LISTENER_DROPS", 7, 0x2331_b13f),
            ("VERDICTS", 7, 0x2331_b13f),
            ("CONNTRACK", 6, 0x109e_70aa),
            ("CONN_LOG_LOST", 1, 0xdba3_35ad),
            ("ALLOWED", 1, 0x51f1_f8f9),
            ("PORT", 1, 0x1510_fa71),
            ("SWEEP", 1, 0xcff9_c699),
            ("LISTENERS6", 1, 0xbb49_4e9d),
            ("MEMBER_ADDR6", 1, 0xdc52_7f83),
            ("CONNTRACK6", 1, 0x71df_8717),
            ("ALLOWED6", 1, 0x38ab_caaf),
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
