//! `lb explain`: which member a client would get, and why; or, for a connection that
//! exists, its conntrack entry.
//!
//! The choice is the data path's own: the real program runs (BPF_PROG_TEST_RUN) on a
//! synthetic SYN from the client, inside the load balancer's namespace (its FIB finds the
//! member's MAC as for a real SYN), against a scratch copy of the maps: the configuration
//! and member states, the live connection counts and rotation counters, the client's
//! persistence entry. Nothing of the running load balancer changes: no flow, no count, no
//! rotation step, no stickiness is left behind. Not copied: the conntrack table (the SYN is
//! a new connection; its SNAT port may differ from what a busy table gives) and the SYN
//! cookie mode of the moment. IPv4 and IPv6 load balancers alike (an IPv6 one's SYN goes
//! through `lb` into `lb6` as a real one does).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::maps::{HashMap as BpfHash, MapData};
use lb_common::{
    reason, Address, FlowG, FlowKeyG, ListenerConf, Sticky, StickyKey, ALG_LEAST_CONNECTIONS,
    ALG_ROUND_ROBIN, ALG_SOURCE_IP, ALG_SOURCE_IP_PORT, CT_ESTABLISHED, FLOW_DIR_FORWARD,
    IPPROTO_TCP, MEMBER_F_BACKUP, MEMBER_F_CONFIGURED, MEMBER_F_ENABLED, MEMBER_F_UP,
    POOL_F_PERSIST_SOURCE,
};
use serde::Serialize;

use crate::{
    dataplane::{open_map, Dataplane, Maps, Sizing},
    state::State,
};

/// One member of the listener's pool as the choice saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub member: String,
    pub address: String,
    pub weight: u16,
    /// Octavia's operating status (ONLINE, DRAINING, OFFLINE, ERROR, NO_MONITOR).
    pub status: String,
    pub backup: bool,
    pub active: i64,
    pub half_open: i64,
    /// Why it cannot be chosen; None: it can.
    pub excluded: Option<String>,
}

/// What a new connection from the client would get now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewConnection {
    pub algorithm: &'static str,
    pub candidates: Vec<Candidate>,
    /// The member the data path chose; None when it would not balance the SYN.
    pub member: Option<String>,
    pub member_address: Option<String>,
    /// The VIP port this run of the program took towards the member.
    pub snat_port: Option<u16>,
    /// The program's verdict on the SYN (`tx_to_member`, or the drop's reason).
    pub verdict: String,
    /// Why that member.
    pub why: String,
}

/// A connection the conntrack table holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExistingFlow {
    pub member: String,
    pub member_address: String,
    pub snat_port: u16,
    /// `lb flows`' state names.
    pub state: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
    /// Which timeout ends it, and the seconds left before the expiry removes it.
    pub timeout: &'static str,
    pub timeout_left_s: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explanation {
    pub loadbalancer: String,
    pub client: String,
    pub vip: String,
    pub listener: String,
    pub pool: String,
    pub existing: Option<ExistingFlow>,
    pub new_connection: NewConnection,
}

fn algorithm_name(a: u32) -> &'static str {
    match a {
        ALG_LEAST_CONNECTIONS => "LEAST_CONNECTIONS",
        ALG_ROUND_ROBIN => "ROUND_ROBIN",
        ALG_SOURCE_IP => "SOURCE_IP",
        ALG_SOURCE_IP_PORT => "SOURCE_IP_PORT",
        _ => "?",
    }
}

/// Explains what load balancer `lb` (state in `state_dir`) does with `client` -> `vip`.
pub fn explain(
    state_dir: &Path,
    lb: &str,
    client: SocketAddr,
    vip: SocketAddr,
) -> anyhow::Result<Explanation> {
    crate::daemon::gc::collect(state_dir);
    let Some(state) = State::read(state_dir, lb) else {
        bail!(
            "no load balancer {lb} runs here (no state in {})",
            state_dir.display()
        );
    };
    if vip.ip() != state.vip_address {
        bail!(
            "{} is not load balancer {lb}'s VIP ({})",
            vip.ip(),
            state.vip_address
        );
    }
    let Some(listener) = state
        .plan
        .listeners
        .iter()
        .find(|l| l.protocol_port == vip.port() && l.protocol == crate::config::Protocol::TCP)
    else {
        let ports: Vec<String> = state
            .plan
            .listeners
            .iter()
            .filter(|l| l.protocol == crate::config::Protocol::TCP)
            .map(|l| l.protocol_port.to_string())
            .collect();
        bail!(
            "load balancer {lb} has no TCP listener on port {} (lb explain follows TCP \
             connections; its TCP listeners: {})",
            vip.port(),
            ports.join(", ")
        );
    };
    if client.is_ipv4() != vip.is_ipv4() {
        bail!(
            "client {client} and VIP {vip} are of different families (a load balancer's \
             clients share its VIP's)"
        );
    }
    let maps = Maps::open(&state.pin_dir)?;
    let conf = maps
        .listener_conf(listener)
        .with_context(|| format!("listener {} is not in the data path's maps", listener.id))?;
    let member_name = |index: u32| {
        state
            .plan
            .members
            .iter()
            .find(|m| m.index == index)
            .map_or_else(|| format!("(retired slot {index})"), |m| m.id.clone())
    };

    let now = crate::expiry::monotonic_ns();
    let (existing, client_fold) = match (client.ip(), vip.ip()) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            let key = forward_key(u32::from(c).to_be(), u32::from(v).to_be(), client, vip);
            let f = maps.flow(&key);
            (
                f.map(|f| existing(&f, &conf, now, &member_name)),
                key.src_be,
            )
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            let (c, v) = (lb_common::ip6(c.octets()), lb_common::ip6(v.octets()));
            let key = forward_key(c, v, client, vip);
            let f = maps.flow6(&key);
            (f.map(|f| existing(&f, &conf, now, &member_name)), c.fold())
        }
        _ => unreachable!("families checked"),
    };

    let pool = maps.pool(conf.pool)?;
    let mut candidates = Vec::new();
    for m in state
        .plan
        .members
        .iter()
        .filter(|m| state.plan.pool_of(m.index) == Some(conf.pool))
    {
        let mc = maps.member(m.index)?;
        let live = maps.member_live.get(m.index);
        let status =
            crate::stats::member_status(&mc, live.failures, pool.error_limit, m.monitor.is_some());
        let failed = lb_common::member_failed(live.failures, pool.error_limit);
        let excluded = if mc.flags & MEMBER_F_ENABLED == 0 {
            Some("disabled by the operator (admin_state_up = false, or maint)".to_string())
        } else if mc.flags & MEMBER_F_UP == 0 {
            Some("down: its health monitor failed".into())
        } else if failed {
            Some(format!(
                "{} new connections in a row refused or unanswered (error_limit {})",
                live.failures, pool.error_limit
            ))
        } else if mc.weight == 0 {
            Some("weight 0 (draining: only its existing and sticky clients)".into())
        } else if mc.flags & MEMBER_F_CONFIGURED == 0 {
            Some("not configured in the data path".into())
        } else {
            None
        };
        candidates.push(Candidate {
            member: m.id.clone(),
            address: SocketAddr::new(m.address, m.protocol_port).to_string(),
            weight: mc.weight,
            status: status.into(),
            backup: mc.flags & MEMBER_F_BACKUP != 0,
            active: live.active,
            half_open: live.half_open,
            excluded,
        });
    }
    let primaries_left = candidates.iter().any(|c| c.excluded.is_none() && !c.backup);
    if primaries_left {
        for c in candidates
            .iter_mut()
            .filter(|c| c.backup && c.excluded.is_none())
        {
            c.excluded = Some("backup: only while no primary member is available".into());
        }
    }

    // The data path's persistence key: the client address in 32 bits (`Address::fold`).
    let sticky_key = StickyKey {
        client_be: client_fold,
        pool: conf.pool,
    };
    let sticky: Option<Sticky> =
        open_map::<BpfHash<MapData, StickyKey, Sticky>>(&state.pin_dir, "STICKY")
            .ok()
            .and_then(|m| m.get(&sticky_key, 0).ok());
    let run = simulate(&state, &maps, &sticky_key, sticky, client, vip)?;
    let member = run.member.map(&member_name);
    let algorithm = algorithm_name(pool.algorithm);
    let why = match (&member, run.member) {
        (None, _) => format!("the data path would not balance it: {}", run.verdict),
        (Some(_), Some(i)) => {
            let persisted = pool.flags & POOL_F_PERSIST_SOURCE != 0
                && sticky.is_some_and(|s| {
                    s.member == i
                        && now.saturating_sub(s.last_ns)
                            < pool.persist_timeout_s as u64 * 1_000_000_000
                });
            if persisted {
                "session persistence: the client's address sticks to this member (SOURCE_IP, \
                 within persistence_timeout)"
                    .to_string()
            } else {
                match pool.algorithm {
                    ALG_LEAST_CONNECTIONS => "least connections: the fewest open connections per unit of weight among the available members (ties rotate)".into(),
                    ALG_ROUND_ROBIN => "weighted round robin: the next turn in the pool's smooth sequence of available members".into(),
                    ALG_SOURCE_IP => "source IP: the client address's entry in the pool's consistent-hash (Maglev) table of members by weight".into(),
                    ALG_SOURCE_IP_PORT => "source IP and port: the client address and port's entry in the pool's consistent-hash (Maglev) table of members by weight".into(),
                    _ => String::new(),
                }
            }
        }
        _ => String::new(),
    };
    Ok(Explanation {
        loadbalancer: lb.into(),
        client: client.to_string(),
        vip: vip.to_string(),
        listener: listener.id.clone(),
        pool: listener.pool_id.clone(),
        existing,
        new_connection: NewConnection {
            algorithm,
            candidates,
            member_address: run.member_address,
            member,
            snat_port: run.snat_port,
            verdict: run.verdict,
            why,
        },
    })
}

struct Run {
    member: Option<u32>,
    member_address: Option<String>,
    snat_port: Option<u16>,
    verdict: String,
}

/// A scratch pin directory, removed with everything in it.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::daemon::instance::remove_pins(&self.0);
    }
}

/// The program, loaded against a scratch copy of the maps, run on a SYN from `client`.
fn simulate(
    state: &State,
    live: &Maps,
    sticky_key: &StickyKey,
    sticky: Option<Sticky>,
    client: SocketAddr,
    vip: SocketAddr,
) -> anyhow::Result<Run> {
    let bpffs = state.pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    // Copies an `lb explain` killed halfway left behind (its process is gone).
    if let Ok(entries) = std::fs::read_dir(bpffs) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("explain-"));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                crate::daemon::instance::remove_pins(&e.path());
            }
        }
    }
    let scratch = Scratch(bpffs.join(format!("explain-{}", std::process::id())));
    let sizing = Sizing::for_plan(&Sizing::new(1024, 0, 0, vip.is_ipv6()), &state.plan);
    let mut dp =
        Dataplane::open(&scratch.0, &sizing).context("making a scratch copy of the data path")?;
    dp.write_plan(&state.plan, None)?;
    // What the running data path has now, over what the plan says.
    for l in &state.plan.listeners {
        if let Some(c) = live.listener_conf(l) {
            dp.maps.set_listener_conf(l, c)?;
        }
    }
    let mut pools = std::collections::BTreeSet::new();
    for m in &state.plan.members {
        dp.maps.set_member(m.index, live.member(m.index)?)?;
        dp.maps
            .member_live
            .set(m.index, live.member_live.get(m.index));
        if let Some(p) = state.plan.pool_of(m.index) {
            pools.insert(p);
        }
    }
    for p in pools {
        dp.maps.set_pool(p, live.pool(p)?)?;
        dp.maps.refresh_source_table(p)?;
    }
    for l in &state.plan.listeners {
        dp.maps
            .listener_live
            .set(l.index, live.listener_live.get(l.index));
    }
    if let Some(s) = sticky {
        let mut m: BpfHash<MapData, StickyKey, Sticky> = open_map(&scratch.0, "STICKY")?;
        m.insert(sticky_key, s, 0)
            .context("copying the client's persistence entry")?;
    }
    let runner = dp.runner("lb")?;
    let frame = syn(client, vip);
    let port = state.port.clone();
    let (action, out) = crate::node::in_netns(
        &state.namespace,
        move || -> anyhow::Result<(u32, Vec<u8>)> {
            let ifindex = nix::net::if_::if_nametoindex(port.as_str())
                .with_context(|| format!("port {port} in the load balancer's namespace"))?;
            Ok(runner.run_on(&frame, Some(ifindex))?)
        },
    )??;
    let verdicts = dp.maps.verdicts()?;
    let verdict = verdicts
        .iter()
        .position(|&n| n > 0)
        .map_or("?".to_string(), |i| reason::NAMES[i].to_string());
    const XDP_TX: u32 = 3;
    // Where the member's address and the ports are in the frame lb sent.
    let (at, len) = if vip.is_ipv4() { (30, 4) } else { (38, 16) };
    if action != XDP_TX || out.len() < at + len + 4 {
        return Ok(Run {
            member: None,
            member_address: None,
            snat_port: None,
            verdict,
        });
    }
    let dst: IpAddr = if vip.is_ipv4() {
        <[u8; 4]>::try_from(&out[at..at + 4]).unwrap().into()
    } else {
        <[u8; 16]>::try_from(&out[at..at + 16]).unwrap().into()
    };
    let ports = &out[at + len..];
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let member = state
        .plan
        .members
        .iter()
        .find(|m| m.address == dst && m.protocol_port == dport)
        .map(|m| m.index);
    Ok(Run {
        member,
        member_address: Some(SocketAddr::new(dst, dport).to_string()),
        snat_port: Some(sport),
        verdict,
    })
}

/// The forward conntrack key of `client` -> `vip` (addresses as the map holds them).
fn forward_key<A: Address>(
    client_be: A,
    vip_be: A,
    client: SocketAddr,
    vip: SocketAddr,
) -> FlowKeyG<A> {
    FlowKeyG {
        src_be: client_be,
        dst_be: vip_be,
        sport_be: client.port().to_be(),
        dport_be: vip.port().to_be(),
        proto: IPPROTO_TCP,
        dir: FLOW_DIR_FORWARD,
        _pad: [0; 2],
    }
}

/// What `lb explain` says of flow `f`, which exists.
fn existing<A: crate::flows::Shown>(
    f: &FlowG<A>,
    conf: &ListenerConf,
    now: u64,
    member_name: &dyn Fn(u32) -> String,
) -> ExistingFlow
where
    FlowKeyG<A>: aya::Pod,
    FlowG<A>: aya::Pod,
{
    let (timeout, since, limit) = if f.is_closed() {
        ("closed linger", f.last_seen_ns, lb_common::CLOSED_LINGER_NS)
    } else if f.state & CT_ESTABLISHED == 0 {
        (
            "timeout_member_connect",
            f.created_ns,
            conf.timeout_member_connect_ns,
        )
    } else {
        ("timeout_client_data", f.last_seen_ns, conf.timeout_data_ns)
    };
    let secs = |ns: u64| ns as f64 / 1e9;
    ExistingFlow {
        member: member_name(f.member),
        member_address: f.member_be.with_port(f.member_port_be),
        snat_port: u16::from_be(f.snat_port_be),
        state: crate::flows::state_name(f),
        age_s: secs(now.saturating_sub(f.accepted_ns())),
        idle_s: secs(now.saturating_sub(f.last_seen_ns)),
        timeout,
        timeout_left_s: secs((since + limit).saturating_sub(now)),
    }
}

/// An Ethernet frame with a client's SYN (MSS option), checksums complete: IPv4 or IPv6 as
/// the addresses are.
fn syn(client: SocketAddr, vip: SocketAddr) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(24);
    tcp.extend_from_slice(&client.port().to_be_bytes());
    tcp.extend_from_slice(&vip.port().to_be_bytes());
    tcp.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // seq
    tcp.extend_from_slice(&0u32.to_be_bytes()); // ack
    tcp.extend_from_slice(&[0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // doff 6, SYN, window
    tcp.extend_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut f = Vec::with_capacity(78);
    f.extend_from_slice(&[0xff; 6]); // the port's MAC is not checked when unknown; broadcast otherwise
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    match (client.ip(), vip.ip()) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let ip_start = f.len();
            f.extend_from_slice(&[0x45, 0, 0, 44, 0, 1, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&c.octets());
            f.extend_from_slice(&v.octets());
            let ip_sum = lb_common::checksum::ipv4_header(&f[ip_start..]);
            f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
            let sum = lb_common::checksum::l4_ipv4(c.octets(), v.octets(), IPPROTO_TCP, &tcp);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, tcp.len() as u8, IPPROTO_TCP, 64]);
            f.extend_from_slice(&c.octets());
            f.extend_from_slice(&v.octets());
            let sum = lb_common::checksum::l4_ipv6(c.octets(), v.octets(), IPPROTO_TCP, &tcp);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        }
        _ => unreachable!("families checked"),
    }
    f.extend_from_slice(&tcp);
    f
}

/// Text for a terminal.
pub fn render_text(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let n = &e.new_connection;
    let _ = writeln!(
        o,
        "load balancer {}: {} -> {} (listener {}, pool {}, {})",
        e.loadbalancer, e.client, e.vip, e.listener, e.pool, n.algorithm
    );
    match &e.existing {
        Some(f) => {
            let _ = writeln!(
                o,
                "existing flow: {} to member {} ({}) from VIP port {}, age {:.1}s, idle {:.1}s, {} in {:.1}s",
                f.state, f.member, f.member_address, f.snat_port, f.age_s, f.idle_s, f.timeout, f.timeout_left_s
            );
        }
        None => {
            let _ = writeln!(o, "existing flow: none");
        }
    }
    let _ = writeln!(o, "a new connection now:");
    let _ = writeln!(
        o,
        "  {:<38} {:<21} {:>6} {:<10} {:>7} {:>9}  excluded",
        "member", "address", "weight", "status", "active", "half-open"
    );
    for c in &n.candidates {
        let _ = writeln!(
            o,
            "  {:<38} {:<21} {:>6} {:<10} {:>7} {:>9}  {}",
            c.member,
            c.address,
            c.weight,
            c.status,
            c.active,
            c.half_open,
            match (&c.excluded, c.backup) {
                (Some(x), _) => x.as_str(),
                (None, true) => "- (backup)",
                (None, false) => "-",
            }
        );
    }
    match (&n.member, &n.member_address) {
        (Some(m), Some(a)) => {
            let _ = writeln!(
                o,
                "  -> {m} ({a}), from VIP port {}: {}",
                n.snat_port.unwrap_or(0),
                n.why
            );
        }
        _ => {
            let _ = writeln!(o, "  -> no member: {}", n.why);
        }
    }
    let _ = writeln!(
        o,
        "  (the data path's own choice: its program run on a synthetic SYN against a copy of the maps; nothing was changed)"
    );
    o
}
