//! `lb flows`: the conntrack table of running load balancers, like `conntrack -L` or
//! `ipvsadm -Lnc`. The pinned table is read in chunks of 4096 entries
//! (`BPF_MAP_LOOKUP_BATCH`, as the expiry reads it) and each flow printed as it is read, so a
//! table of a million flows streams instead of building up in memory.

use std::{net::Ipv4Addr, os::fd::AsFd as _, path::Path};

use anyhow::Context as _;
use aya::maps::MapData;
use lb_common::{
    Flow, FlowKey, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_RST, CT_SYNACK,
    FLOW_DIR_FORWARD,
};
use serde::Serialize;

use crate::{
    batch::{self, Cursor},
    state::State,
};

/// One flow as `lb flows` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub loadbalancer: String,
    pub listener: String,
    pub member: String,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// conntrack's names (a UDP flow is ESTABLISHED from its first datagram): SYN_SENT (the member has not answered), SYN_RECV (it has, the
    /// client's ACK not seen yet), ESTABLISHED, FIN_WAIT (one side closed), TIME_WAIT (both
    /// did; lingering for the last ACK), CLOSE (reset).
    pub state: &'static str,
    /// The client's address and port, and the VIP:port it connected to.
    pub client: String,
    pub vip: String,
    /// The member's address and port, and the VIP port lb connects to it from.
    pub member_address: String,
    pub snat_port: u16,
    /// Seconds since the SYN, and since the last packet.
    pub age_s: f64,
    pub idle_s: f64,
    /// Opened by a SYN cookie (sequence numbers translated).
    pub cookie: bool,
}

/// Which flows to list (every field optional).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub loadbalancer: Option<String>,
    pub listener: Option<String>,
    /// A member's id, or its address.
    pub member: Option<String>,
    /// A state name as `FlowRow::state` gives it (case-insensitive).
    pub state: Option<String>,
}

pub fn state_name(f: &Flow) -> &'static str {
    let s = f.state;
    if s & CT_RST != 0 {
        "CLOSE"
    } else if s & CT_FIN_CLIENT != 0 && s & CT_FIN_MEMBER != 0 {
        "TIME_WAIT"
    } else if s & (CT_FIN_CLIENT | CT_FIN_MEMBER) != 0 {
        "FIN_WAIT"
    } else if s & CT_ESTABLISHED != 0 {
        "ESTABLISHED"
    } else if s & CT_SYNACK != 0 {
        "SYN_RECV"
    } else {
        "SYN_SENT"
    }
}

fn addr(be: u32, port_be: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(be)),
        u16::from_be(port_be)
    )
}

/// Calls `out` with every flow of the load balancers under `state_dir` that `filter` keeps,
/// as the table is read.
pub fn walk(
    state_dir: &Path,
    filter: &Filter,
    mut out: impl FnMut(FlowRow) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let now = crate::expiry::monotonic_ns();
    let states =
        State::read_all(state_dir).with_context(|| format!("reading {}", state_dir.display()))?;
    if let Some(want) = &filter.loadbalancer {
        if !states.iter().any(|s| &s.loadbalancer == want) {
            anyhow::bail!(
                "no load balancer {want} runs here (state files in {})",
                state_dir.display()
            );
        }
    }
    for st in &states {
        if filter
            .loadbalancer
            .as_ref()
            .is_some_and(|w| w != &st.loadbalancer)
        {
            continue;
        }
        let path = st.pin_dir.join("CONNTRACK");
        if !path.exists() {
            continue; // still coming up
        }
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let listener_id = |i: u32| {
            st.plan
                .listeners
                .iter()
                .find(|l| l.index == i)
                .map_or_else(|| format!("#{i}"), |l| l.id.clone())
        };
        let member_of = |i: u32| st.plan.members.iter().find(|m| m.index == i);
        let mut keys = vec![FlowKey::default(); 4096];
        let mut values = vec![Flow::default(); 4096];
        let mut cursor = Cursor::Start;
        while cursor != Cursor::Done {
            let (n, next) = batch::lookup(map.fd().as_fd(), cursor, &mut keys, &mut values)
                .with_context(|| format!("reading {}", path.display()))?;
            cursor = next;
            for (k, f) in keys[..n].iter().zip(&values[..n]) {
                if k.dir != FLOW_DIR_FORWARD {
                    continue;
                }
                let m = member_of(f.member);
                let row = FlowRow {
                    loadbalancer: st.loadbalancer.clone(),
                    listener: listener_id(f.listener),
                    member: m.map_or_else(|| format!("#{}", f.member), |m| m.id.clone()),
                    protocol: if f.proto() == lb_common::IPPROTO_UDP {
                        "udp"
                    } else {
                        "tcp"
                    },
                    state: state_name(f),
                    client: addr(f.client_be, f.client_port_be),
                    vip: addr(f.vip_be, f.listener_port_be),
                    member_address: addr(f.member_be, f.member_port_be),
                    snat_port: u16::from_be(f.snat_port_be),
                    age_s: now.saturating_sub(f.created_ns) as f64 / 1e9,
                    idle_s: now.saturating_sub(f.last_seen_ns) as f64 / 1e9,
                    cookie: f.state & lb_common::CT_COOKIE != 0,
                };
                if keep(filter, &row) {
                    out(row)?;
                }
            }
        }
    }
    Ok(())
}

fn keep(f: &Filter, r: &FlowRow) -> bool {
    f.listener.as_ref().is_none_or(|l| l == &r.listener)
        && f.member.as_ref().is_none_or(|m| {
            m == &r.member || r.member_address.split(':').next() == Some(m.as_str())
        })
        && f.state
            .as_ref()
            .is_none_or(|s| s.eq_ignore_ascii_case(r.state))
}
