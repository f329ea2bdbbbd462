//! From a validated load balancer to the exact map entries the data path reads (pure).

use std::{collections::HashSet, net::IpAddr};

use lb_common::{
    ip6, Ip6, ListenerConf, ListenerKey, ListenerKey6, MemberConf, PoolConf, ALG_LEAST_CONNECTIONS,
    ALG_ROUND_ROBIN, ALG_SOURCE_IP, ALG_SOURCE_IP_PORT, LISTENER_F_ALLOWED_CIDRS, LISTENER_F_LOG,
    MAX_LISTENERS, MAX_POOLS, MAX_POOL_MEMBERS, MEMBER_F_BACKUP, MEMBER_F_CONFIGURED,
    MEMBER_F_ENABLED, MEMBER_F_UP, POOL_F_PERSIST_SOURCE,
};
use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, LoadBalancer, Protocol};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedListener {
    pub id: String,
    pub index: u32,
    /// (State files written before UDP listeners existed have none: TCP.)
    #[serde(default)]
    pub protocol: Protocol,
    pub protocol_port: u16,
    pub pool_id: String,
    /// `allowed_cidrs` as (network address, prefix length); empty: every client.
    #[serde(default)]
    pub allowed_cidrs: Vec<(IpAddr, u8)>,
    /// The `LISTENERS` key of an IPv4 VIP's listener.
    #[serde(skip)]
    pub key: ListenerKey,
    /// The `LISTENERS6` key of an IPv6 VIP's listener (then `key` is not used).
    #[serde(skip)]
    pub key6: Option<ListenerKey6>,
    #[serde(skip)]
    pub conf: ListenerConf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMember {
    pub id: String,
    pub pool_id: String,
    pub index: u32,
    pub address: IpAddr,
    pub protocol_port: u16,
    /// Health check target, when the pool has a monitor.
    pub monitor: Option<(IpAddr, u16)>,
    /// `conf` with `addr_be` 0 for an IPv6 member, whose address is `MEMBER_ADDR6`'s.
    #[serde(skip)]
    pub conf: MemberConf,
}

impl PlannedMember {
    /// The `MEMBER_ADDR6` entry of an IPv6 member.
    pub fn addr6(&self) -> Option<Ip6> {
        match self.address {
            IpAddr::V6(a) => Some(ip6(a.octets())),
            IpAddr::V4(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedPool {
    pub id: String,
    pub index: u32,
    /// The member index in each slot (`NO_MEMBER`: none): a member keeps its slot while it
    /// stays in the pool; a removed member's slot goes to the next new one.
    #[serde(default)]
    pub members: Vec<u32>,
    #[serde(skip)]
    pub conf: PoolConf,
}

/// A pool slot without a member.
pub const NO_MEMBER: u32 = lb_common::NO_MEMBER as u32;

/// The map entries of one load balancer, with indexes that stay put across reloads: a flow
/// names its member and listener by index, so an index keeps meaning the same thing while
/// flows may refer to it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub listeners: Vec<PlannedListener>,
    pub pools: Vec<PlannedPool>,
    pub members: Vec<PlannedMember>,
    /// Member indexes a reload removed: cleared in the maps and not handed out again while a
    /// flow may still name them (the daemon drops an index from here once the sweep's census
    /// shows none does).
    #[serde(default)]
    pub retired: Vec<u32>,
    /// Member and listener indexes this plan gives to members and listeners that did not
    /// have them in the plan it was made from: their counters start at 0 when it is written.
    #[serde(skip)]
    pub fresh_members: Vec<u32>,
    #[serde(skip)]
    pub fresh_listeners: Vec<u32>,
}

impl Plan {
    /// The index of the pool member `index` belongs to.
    pub fn pool_of(&self, member: u32) -> Option<u32> {
        let m = self.members.iter().find(|m| m.index == member)?;
        self.pools
            .iter()
            .find(|p| p.id == m.pool_id)
            .map(|p| p.index)
    }

    /// Member indexes the maps must hold: the highest in use (retired ones included), plus
    /// one.
    pub fn member_span(&self) -> u32 {
        let top = self
            .members
            .iter()
            .map(|m| m.index)
            .chain(self.retired.iter().copied())
            .max();
        top.map_or(0, |i| i + 1)
    }

    /// Pool indexes the maps must hold (the highest in use, plus one).
    pub fn pool_span(&self) -> u32 {
        self.pools.iter().map(|p| p.index + 1).max().unwrap_or(0)
    }
}

const MS: u64 = 1_000_000;

/// Lowest index in `range` not in `taken`; records it as taken.
fn allocate(range: std::ops::Range<u32>, taken: &mut HashSet<u32>) -> Option<u32> {
    let i = range.into_iter().find(|i| !taken.contains(i))?;
    taken.insert(i);
    Some(i)
}

#[derive(Debug, thiserror::Error)]
#[error("pool {pool}: no member index left ({max} per load balancer, including those of members removed by reloads whose connections still live)", max = lb_common::MAX_MEMBERS)]
pub struct NoSlotLeft {
    pub pool: String,
}

/// Plans `lb`. With `prev` (the plan running now), every listener, pool and member that keeps
/// its id keeps its index; new ones take free indexes; removed members are retired.
pub fn plan(lb: &LoadBalancer, prev: Option<&Plan>) -> Result<Plan, NoSlotLeft> {
    let empty = Plan::default();
    let prev = prev.unwrap_or(&empty);
    let mut p = Plan::default();

    let mut pools_taken: HashSet<u32> = prev.pools.iter().map(|x| x.index).collect();
    let mut members_taken: HashSet<u32> = prev
        .members
        .iter()
        .map(|m| m.index)
        .chain(prev.retired.iter().copied())
        .collect();
    for pool in &lb.pool {
        let prev_pool = prev.pools.iter().find(|x| x.id == pool.id);
        let index = prev_pool
            .map(|x| x.index)
            .or_else(|| allocate(0..MAX_POOLS, &mut pools_taken))
            .expect("validated: at most MAX_POOLS pools");
        // Slots of members still in the pool stay theirs; the others are free.
        let mut slots: Vec<u32> = prev_pool.map(|x| x.members.clone()).unwrap_or_default();
        for s in slots.iter_mut() {
            let stays = prev.members.iter().any(|m| {
                m.index == *s && m.pool_id == pool.id && pool.member.iter().any(|x| x.id == m.id)
            });
            if !stays {
                *s = NO_MEMBER;
            }
        }
        for m in &pool.member {
            let kept = prev
                .members
                .iter()
                .find(|x| x.id == m.id && x.pool_id == pool.id)
                .map(|x| x.index);
            let idx = match kept {
                Some(i) => i,
                None => {
                    let i = allocate(0..lb_common::MAX_MEMBERS, &mut members_taken).ok_or_else(
                        || NoSlotLeft {
                            pool: pool.id.clone(),
                        },
                    )?;
                    p.fresh_members.push(i);
                    match slots.iter().position(|&s| s == NO_MEMBER) {
                        Some(free) => slots[free] = i,
                        None => slots.push(i),
                    }
                    i
                }
            };
            let mut flags = MEMBER_F_CONFIGURED | MEMBER_F_UP;
            if m.admin_state_up {
                flags |= MEMBER_F_ENABLED;
            }
            if m.backup {
                flags |= MEMBER_F_BACKUP;
            }
            p.members.push(PlannedMember {
                id: m.id.clone(),
                pool_id: pool.id.clone(),
                index: idx,
                address: m.address,
                protocol_port: m.protocol_port,
                monitor: lb.member_monitor(pool, m).map(|_| m.monitor_target()),
                conf: MemberConf {
                    addr_be: match m.address {
                        IpAddr::V4(a) => u32::from(a).to_be(),
                        IpAddr::V6(_) => 0,
                    },
                    port_be: m.protocol_port.to_be(),
                    weight: m.weight,
                    flags,
                    pool: index,
                },
            });
        }
        while slots.last() == Some(&NO_MEMBER) {
            slots.pop();
        }
        debug_assert!(slots.len() <= MAX_POOL_MEMBERS as usize, "validated");
        p.pools.push(PlannedPool {
            id: pool.id.clone(),
            index,
            conf: PoolConf {
                count: slots.len() as u32,
                algorithm: match pool.lb_algorithm {
                    Algorithm::LEAST_CONNECTIONS => ALG_LEAST_CONNECTIONS,
                    Algorithm::ROUND_ROBIN => ALG_ROUND_ROBIN,
                    Algorithm::SOURCE_IP => ALG_SOURCE_IP,
                    Algorithm::SOURCE_IP_PORT => ALG_SOURCE_IP_PORT,
                },
                flags: if pool.session_persistence.is_some() {
                    POOL_F_PERSIST_SOURCE
                } else {
                    0
                },
                persist_timeout_s: pool
                    .session_persistence
                    .as_ref()
                    .and_then(|p| p.persistence_timeout)
                    .unwrap_or(0),
                error_limit: pool.error_limit,
                table_len: 0,
            },
            members: slots,
        });
    }
    let kept: HashSet<u32> = p.members.iter().map(|m| m.index).collect();
    p.retired = prev
        .retired
        .iter()
        .copied()
        .chain(prev.members.iter().map(|m| m.index))
        .filter(|i| !kept.contains(i))
        .collect();
    p.retired.sort_unstable();
    p.retired.dedup();

    let mut listeners_taken: HashSet<u32> = prev.listeners.iter().map(|l| l.index).collect();
    for l in &lb.listener {
        // A new listener never takes the index of one removed by the same change: the
        // removed one's flows still name it until they expire.
        let kept = prev
            .listeners
            .iter()
            .find(|x| x.id == l.id)
            .map(|x| x.index);
        let index = match kept {
            Some(i) => i,
            None => {
                let i = allocate(0..MAX_LISTENERS, &mut listeners_taken)
                    .expect("validated: at most MAX_LISTENERS listeners");
                p.fresh_listeners.push(i);
                i
            }
        };
        let pool_index = p
            .pools
            .iter()
            .find(|x| x.id == l.default_pool_id)
            .expect("validated")
            .index;
        let allowed_cidrs: Vec<(IpAddr, u8)> = l
            .allowed_cidrs
            .iter()
            .map(|c| crate::config::parse_cidr(c, lb.vip_address).expect("validated"))
            .collect();
        let mut flags = 0;
        // (UDP flows are not in the tcplog connection log.)
        if l.connection_log == Some(true) && l.protocol == Protocol::TCP {
            flags |= LISTENER_F_LOG;
        }
        if !allowed_cidrs.is_empty() {
            flags |= LISTENER_F_ALLOWED_CIDRS;
        }
        let (key, key6) = listener_keys(lb.vip_address, l.protocol_port, l.protocol);
        p.listeners.push(PlannedListener {
            id: l.id.clone(),
            index,
            protocol: l.protocol,
            protocol_port: l.protocol_port,
            pool_id: l.default_pool_id.clone(),
            allowed_cidrs,
            key,
            key6,
            conf: ListenerConf {
                index,
                pool: pool_index,
                connection_limit: l.connection_limit.max(0) as u32,
                total_limit: lb.connection_limit.max(0) as u32,
                half_open_limit: u32::try_from(l.half_open_limit).unwrap_or(u32::MAX),
                retries: l.retries,
                timeout_member_connect_ns: l.timeout_member_connect * MS,
                // A flow idle in both directions ends when the first of HAProxy's client and
                // server timeouts would have fired.
                timeout_data_ns: l.timeout_client_data.min(l.timeout_member_data) * MS,
                flags,
                snat_min: 0,
                snat_max: 0,
                // UDP: 0 = the default share, filled in by `with_udp_shares` once the table's
                // size is known; u32::MAX = unlimited.
                flow_limit: match (l.protocol, l.flow_limit) {
                    (Protocol::TCP, _) | (Protocol::UDP, None) => 0,
                    (Protocol::UDP, Some(0)) => u32::MAX,
                    (Protocol::UDP, Some(n)) => n,
                },
                flow_rate: match l.protocol {
                    Protocol::TCP => 0,
                    Protocol::UDP => l.flow_rate.unwrap_or(lb_common::DEFAULT_UDP_FLOW_RATE),
                },
            },
        });
    }
    Ok(p)
}

/// `plan` as the data path gets it for a table of `flows` flows: each UDP listener without a
/// `flow_limit` of its own gets an equal share of half the table (TCP keeps the other half:
/// its handshakes have cookies, its connections are real clients).
pub fn with_udp_shares(plan: &Plan, flows: u32) -> Plan {
    let mut p = plan.clone();
    let udp = p
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::UDP)
        .count() as u32;
    for l in &mut p.listeners {
        if l.protocol == Protocol::UDP && l.conf.flow_limit == 0 {
            l.conf.flow_limit = (flows / 2 / udp.max(1)).max(1);
        }
    }
    p
}

/// A listener's key in the data path's maps: `LISTENERS`'s for an IPv4 VIP, `LISTENERS6`'s
/// for an IPv6 one (the other then unused). Not in the state files: `State::read` computes
/// them again.
pub fn listener_keys(
    vip: IpAddr,
    port: u16,
    protocol: crate::config::Protocol,
) -> (ListenerKey, Option<ListenerKey6>) {
    match vip {
        IpAddr::V4(v) => (
            ListenerKey::new(u32::from(v).to_be(), port.to_be(), protocol.number()),
            None,
        ),
        IpAddr::V6(v) => (
            ListenerKey::default(),
            Some(ListenerKey6::new(
                ip6(v.octets()),
                port.to_be(),
                protocol.number(),
            )),
        ),
    }
}

/// How long members keep the tuples of another stack's last connections to them (Linux's
/// TIME_WAIT).
pub const MEMBER_TIME_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The part of lb's SNAT range clear of the ephemeral range `local` (an
/// `ip_local_port_range`, "low high"), the larger side; None if under 1024 ports would be
/// left, or `local` does not parse.
///
/// Why: another stack that served the VIP (HAProxy from that range; nftables keeping the
/// clients' own ports, which come from the same default range) left the members' closed tuples
/// in TIME_WAIT with its own timestamps and sequence numbers. A SYN of lb's on such a tuple is
/// refused (PAWS, or an older sequence number) and costs the client a 1 s retransmission.
pub fn snat_clear_of(local: &str) -> Option<(u16, u16)> {
    let mut it = local
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    let (lo, hi) = (it.next()?, it.next()?);
    let (min, max) = (
        lb_common::SNAT_PORT_MIN as u32,
        lb_common::SNAT_PORT_MAX as u32,
    );
    let below = (min, lo.saturating_sub(1).min(max));
    let above = ((hi + 1).max(min), max);
    let size = |(a, b): (u32, u32)| if b >= a { b - a + 1 } else { 0 };
    let best = if size(below) >= size(above) {
        below
    } else {
        above
    };
    (size(best) >= 1024).then_some((best.0 as u16, best.1 as u16))
}

/// Every listener's new flows take SNAT ports `range` (None: lb's whole range).
pub fn set_snat_ports(plan: &mut Plan, range: Option<(u16, u16)>) {
    let (lo, hi) = range.unwrap_or((0, 0));
    for l in &mut plan.listeners {
        (l.conf.snat_min, l.conf.snat_max) = (lo, hi);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn snat_ports_clear_of_the_ephemeral_range() {
        // lb's range is 10000-59999.
        assert_eq!(super::snat_clear_of("32768\t60999\n"), Some((10000, 32767)));
        assert_eq!(super::snat_clear_of("1024 40000"), Some((40001, 59999)));
        assert_eq!(super::snat_clear_of("1024 65000"), None);
        assert_eq!(super::snat_clear_of("garbage"), None);
    }

    use super::*;
    use crate::config::Config;

    #[test]
    fn seed_plan() {
        let c = Config::parse(include_str!("../../examples/seed.toml"), "seed").unwrap();
        let p = plan(&c.loadbalancer[0], None).unwrap();
        assert_eq!(p.pools[0].index, 0);
        let want = PoolConf {
            count: 2,
            algorithm: ALG_LEAST_CONNECTIONS,
            error_limit: 10,
            ..Default::default()
        };
        assert_eq!(p.pools[0].conf, want);
        assert_eq!(p.pools[0].members, vec![0, 1]);
        let l = &p.listeners[0];
        assert_eq!(l.key.vip_be, u32::from_ne_bytes([10, 0, 0, 250]));
        assert_eq!(l.key.port_be, 22u16.to_be());
        assert_eq!(l.conf.timeout_member_connect_ns, 5_000_000_000);
        assert_eq!(l.conf.timeout_data_ns, 50_000_000_000);
        assert_eq!((l.conf.retries, l.conf.connection_limit), (3, 0));
        let idx: Vec<_> = p
            .members
            .iter()
            .map(|m| (m.index, m.conf.addr_be))
            .collect();
        assert_eq!(
            idx,
            [
                (0, u32::from_ne_bytes([10, 0, 0, 2])),
                (1, u32::from_ne_bytes([10, 0, 0, 4]))
            ]
        );
        assert!(p
            .members
            .iter()
            .all(|m| m.conf.flags == MEMBER_F_CONFIGURED | MEMBER_F_UP | MEMBER_F_ENABLED));
        assert_eq!(
            p.members[0].monitor,
            Some((std::net::Ipv4Addr::new(10, 0, 0, 2).into(), 22))
        );
    }

    fn seed() -> LoadBalancer {
        Config::parse(include_str!("../../examples/seed.toml"), "seed")
            .unwrap()
            .loadbalancer
            .remove(0)
    }

    #[test]
    fn indexes_stay_put_across_a_reload() {
        let old = plan(&seed(), None).unwrap();
        let mut lb = seed();
        // Members reordered, one removed, one added.
        let first = lb.pool[0].member.remove(0);
        let mut added = first.clone();
        added.id = "new-member".into();
        added.address = std::net::Ipv4Addr::new(10, 0, 0, 6).into();
        lb.pool[0].member.insert(0, added);
        let new = plan(&lb, Some(&old)).unwrap();
        let idx = |p: &Plan, id: &str| p.members.iter().find(|m| m.id == id).map(|m| m.index);
        let kept = "227b69fe-8685-4df6-b2a5-2f964c74886c";
        assert_eq!(
            idx(&new, kept),
            idx(&old, kept),
            "a kept member keeps its slot"
        );
        assert_eq!(
            idx(&new, "new-member"),
            Some(2),
            "a new member never takes a retired index"
        );
        assert_eq!(new.retired, vec![idx(&old, &first.id).unwrap()]);
        assert_eq!(
            new.pools[0].members,
            vec![2, 1],
            "the new member takes the removed one's slot, the kept one keeps its own"
        );
        assert_eq!(new.pools[0].conf.count, 2);
        assert_eq!(
            new.fresh_members,
            vec![2],
            "only the new member's counters restart"
        );
        assert!(new.fresh_listeners.is_empty());
        assert_eq!(new.listeners[0].index, old.listeners[0].index);
        // Planning the same config again changes nothing, and restarts no counter.
        let again = plan(&lb, Some(&new)).unwrap();
        assert_eq!(
            again,
            Plan {
                fresh_members: vec![],
                ..new
            }
        );
    }
}
