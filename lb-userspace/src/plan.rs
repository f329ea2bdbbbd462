//! From a validated load balancer to the exact map entries the data path reads (pure).

use std::net::Ipv4Addr;

use lb_common::{
    ListenerConf, ListenerKey, MemberConf, PoolConf, ALG_LEAST_CONNECTIONS, ALG_ROUND_ROBIN,
    ALG_SOURCE_IP, IPPROTO_TCP, MAX_POOL_MEMBERS, MEMBER_F_BACKUP, MEMBER_F_CONFIGURED,
    MEMBER_F_ENABLED, MEMBER_F_UP,
};
use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, LoadBalancer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedListener {
    pub id: String,
    pub index: u32,
    pub protocol_port: u16,
    pub pool_id: String,
    #[serde(skip)]
    pub key: ListenerKey,
    #[serde(skip)]
    pub conf: ListenerConf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMember {
    pub id: String,
    pub pool_id: String,
    pub index: u32,
    pub address: Ipv4Addr,
    pub protocol_port: u16,
    pub weight: u16,
    pub admin_state_up: bool,
    pub backup: bool,
    /// Health check target, when the pool has a monitor.
    pub monitor: Option<(Ipv4Addr, u16)>,
    #[serde(skip)]
    pub conf: MemberConf,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub listeners: Vec<PlannedListener>,
    pub pools: Vec<(u32, PoolConf)>,
    pub members: Vec<PlannedMember>,
}

const MS: u64 = 1_000_000;

pub fn plan(lb: &LoadBalancer) -> Plan {
    let mut p = Plan::default();
    for (pi, pool) in lb.pool.iter().enumerate() {
        let pi = pi as u32;
        p.pools.push((
            pi,
            PoolConf {
                count: pool.member.len() as u32,
                algorithm: match pool.lb_algorithm {
                    Algorithm::LEAST_CONNECTIONS => ALG_LEAST_CONNECTIONS,
                    Algorithm::ROUND_ROBIN => ALG_ROUND_ROBIN,
                    Algorithm::SOURCE_IP => ALG_SOURCE_IP,
                },
            },
        ));
        for (slot, m) in pool.member.iter().enumerate() {
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
                index: pi * MAX_POOL_MEMBERS + slot as u32,
                address: m.address,
                protocol_port: m.protocol_port,
                weight: m.weight,
                admin_state_up: m.admin_state_up,
                backup: m.backup,
                monitor: pool.healthmonitor.as_ref().map(|_| m.monitor_target()),
                conf: MemberConf {
                    addr_be: u32::from(m.address).to_be(),
                    port_be: m.protocol_port.to_be(),
                    weight: m.weight,
                    flags,
                    _pad: 0,
                },
            });
        }
    }
    for (li, l) in lb.listener.iter().enumerate() {
        let (pool_index, _) = lb.pool(&l.default_pool_id).expect("validated");
        p.listeners.push(PlannedListener {
            id: l.id.clone(),
            index: li as u32,
            protocol_port: l.protocol_port,
            pool_id: l.default_pool_id.clone(),
            key: ListenerKey {
                vip_be: u32::from(lb.vip_address).to_be(),
                port_be: l.protocol_port.to_be(),
                proto: IPPROTO_TCP,
                _pad: 0,
            },
            conf: ListenerConf {
                index: li as u32,
                pool: pool_index as u32,
                connection_limit: if l.connection_limit < 0 {
                    0
                } else {
                    l.connection_limit as u32
                },
                retries: l.retries,
                timeout_member_connect_ns: l.timeout_member_connect * MS,
                // A flow idle in both directions ends when the first of HAProxy's client and
                // server timeouts would have fired.
                timeout_data_ns: l.timeout_client_data.min(l.timeout_member_data) * MS,
            },
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn seed_plan() {
        let c = Config::parse(include_str!("../../examples/seed.toml"), "seed").unwrap();
        let p = plan(&c.loadbalancer[0]);
        assert_eq!(
            p.pools,
            vec![(
                0,
                PoolConf {
                    count: 2,
                    algorithm: ALG_LEAST_CONNECTIONS
                }
            )]
        );
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
        assert_eq!(p.members[0].monitor, Some((Ipv4Addr::new(10, 0, 0, 2), 22)));
    }
}
