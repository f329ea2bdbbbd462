//! `lb flows`: the conntrack table of running load balancers, like `conntrack -L` or
//! `ipvsadm -Lnc`. The pinned table is read in chunks of 4096 entries
//! (`BPF_MAP_LOOKUP_BATCH`, as the expiry reads it) and each flow printed as it is read, so a
//! table of a million flows streams instead of building up in memory.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::Path,
};

use anyhow::Context as _;
use aya::{maps::MapData, Pod};
use lb_common::{
    Address, FlowG, FlowKeyG, Ip6, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_RST, CT_SYNACK,
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

pub fn state_name<A: Address>(f: &FlowG<A>) -> &'static str {
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

/// An address as `lb flows` prints it with a port: `a.b.c.d:port`, `[v6]:port`.
pub(crate) trait Shown: Address + Pod
where
    FlowKeyG<Self>: Pod,
    FlowG<Self>: Pod,
{
    fn with_port(&self, port_be: u16) -> String;
}

impl Shown for u32 {
    fn with_port(&self, port_be: u16) -> String {
        format!(
            "{}:{}",
            Ipv4Addr::from(u32::from_be(*self)),
            u16::from_be(port_be)
        )
    }
}

impl Shown for Ip6 {
    fn with_port(&self, port_be: u16) -> String {
        let a = Ipv6Addr::from(lb_common::ip6_octets(self));
        format!("[{a}]:{}", u16::from_be(port_be))
    }
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
        walk_table::<u32>(st, "CONNTRACK", now, filter, &mut out)?;
        walk_table::<Ip6>(st, "CONNTRACK6", now, filter, &mut out)?;
    }
    Ok(())
}

/// The forward entries of one of `st`'s conntrack tables (`name`), as rows.
fn walk_table<A: Shown>(
    st: &State,
    name: &str,
    now: u64,
    filter: &Filter,
    out: &mut impl FnMut(FlowRow) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    FlowKeyG<A>: Pod,
    FlowG<A>: Pod,
{
    let path = st.pin_dir.join(name);
    if !path.exists() {
        return Ok(()); // still coming up, or pinned by a version of lb without it
    }
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let listener_id = |i: u32| {
        st.plan
            .listeners
            .iter()
            .find(|l| l.index == i)
            .map_or_else(|| format!("#{i}"), |l| l.id.clone())
    };
    let member_of = |i: u32| st.plan.members.iter().find(|m| m.index == i);
    let mut keys = vec![FlowKeyG::<A>::default(); 4096];
    let mut values = vec![FlowG::<A>::default(); 4096];
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
                client: f.client_be.with_port(f.client_port_be),
                vip: f.vip_be.with_port(f.listener_port_be),
                member_address: f.member_be.with_port(f.member_port_be),
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
    Ok(())
}

fn keep(f: &Filter, r: &FlowRow) -> bool {
    f.listener.as_ref().is_none_or(|l| l == &r.listener)
        && f.member.as_ref().is_none_or(|m| {
            let addr = r.member_address.rsplit_once(':').map_or("", |(a, _)| a);
            m == &r.member || addr.trim_matches(['[', ']']) == m.as_str()
        })
        && f.state
            .as_ref()
            .is_none_or(|s| s.eq_ignore_ascii_case(r.state))
}
