//! `lb stats`: counters read straight from the pinned maps (no daemon round trip), named
//! through the state files the daemon publishes.

use std::path::Path;

use lb_common::{
    reason, Stats, MEMBER_DROP_REASONS, MEMBER_F_BACKUP, MEMBER_F_ENABLED, MEMBER_F_UP,
};
use serde::{Deserialize, Serialize};

use crate::{dataplane::Maps, state::State};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub active_connections: i64,
    /// Handshakes in progress: SYNs that opened a flow whose client has not yet acknowledged
    /// the member's SYN-ACK (a spoofed SYN never does). Not connections.
    pub half_open_connections: i64,
    pub total_connections: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub redispatches: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerReport {
    pub id: String,
    /// ONLINE | DEGRADED (some members in ERROR) | ERROR (no member can serve)
    pub operating_status: String,
    #[serde(default)]
    pub protocol: crate::config::Protocol,
    pub protocol_port: u16,
    pub pool_id: String,
    #[serde(flatten)]
    pub counters: Counters,
    /// Packets for this listener that were dropped (Octavia's request_errors).
    pub request_errors: u64,
    /// The same, by reason (only reasons that occurred).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Connection-log events lost to a full ring buffer (the daemon fell behind).
    #[serde(default)]
    pub connection_log_lost: u64,
}

impl ListenerReport {
    /// "/udp" after a UDP listener's name in the text reports (TCP goes without).
    fn udp_suffix(&self) -> &'static str {
        match self.protocol {
            crate::config::Protocol::UDP => "/udp",
            crate::config::Protocol::TCP => "",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberReport {
    pub id: String,
    pub pool_id: String,
    pub address: String,
    pub protocol_port: u16,
    pub weight: u16,
    pub backup: bool,
    /// ONLINE | DRAINING | OFFLINE | ERROR | NO_MONITOR (Octavia's names)
    pub operating_status: String,
    #[serde(flatten)]
    pub counters: Counters,
    /// New flows for this member that could not be sent (HAProxy's connection errors).
    pub connection_errors: u64,
    /// New connections in a row the member refused or left unanswered (passive health): at
    /// its pool's `error_limit` the member is ERROR, out of selection until its monitor
    /// passes a check.
    pub failed_connections: u64,
    /// The same, by reason (only reasons that occurred).
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadBalancerReport {
    pub id: String,
    /// ONLINE | DEGRADED | ERROR, from its listeners
    pub operating_status: String,
    pub namespace: String,
    pub port: String,
    pub vip_address: String,
    pub xdp_mode: String,
    /// pid of the `lb run` serving it, or null if that process is gone (counters are then as
    /// it left them; start `lb run` again to take over).
    pub daemon_pid: Option<u32>,
    /// Flows in the conntrack table at the daemon's last sweep (once a second).
    pub conntrack_flows: u64,
    /// Connection-log events lost to a full ring buffer, all listeners.
    #[serde(default)]
    pub connection_log_lost: u64,
    /// Kernel memory of its maps (the shared programs and their maps are the node's).
    #[serde(default)]
    pub memory: crate::dataplane::Memory,
    pub listeners: Vec<ListenerReport>,
    pub members: Vec<MemberReport>,
    /// packets per verdict reason (tx_*, pass_*, drop_*)
    pub verdicts: std::collections::BTreeMap<String, u64>,
}

fn named_nonzero(by_reason: &[u64]) -> std::collections::BTreeMap<String, u64> {
    by_reason
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0)
        .map(|(i, v)| (reason::NAMES[i].to_string(), *v))
        .collect()
}

impl Counters {
    fn new(live: lb_common::Live, s: Stats) -> Counters {
        Counters {
            active_connections: live.active,
            half_open_connections: live.half_open,
            total_connections: s.total_connections,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            packets_in: s.packets_in,
            packets_out: s.packets_out,
            redispatches: s.redispatches,
        }
    }
}

/// A listener's status from its pool's member statuses: members an operator disabled
/// (OFFLINE) do not count; any ERROR makes it DEGRADED; no member left that can serve, ERROR.
pub fn pool_status<'a>(members: impl IntoIterator<Item = &'a str>) -> &'static str {
    let counted: Vec<&str> = members.into_iter().filter(|s| *s != "OFFLINE").collect();
    let errors = counted.iter().filter(|s| **s == "ERROR").count();
    let serving = counted
        .iter()
        .filter(|s| matches!(**s, "ONLINE" | "NO_MONITOR"))
        .count();
    if serving == 0 {
        "ERROR"
    } else if errors > 0 {
        "DEGRADED"
    } else {
        "ONLINE"
    }
}

/// A load balancer's status from its listeners'.
pub fn loadbalancer_status<'a>(listeners: impl IntoIterator<Item = &'a str>) -> &'static str {
    let all: Vec<&str> = listeners.into_iter().collect();
    if !all.is_empty() && all.iter().all(|s| *s == "ERROR") {
        "ERROR"
    } else if all.iter().any(|s| *s != "ONLINE") {
        "DEGRADED"
    } else {
        "ONLINE"
    }
}

/// A member's status with passive health: ERROR also past its pool's `error_limit` of
/// failed connections in a row (unless an operator took it OFFLINE).
pub fn member_status(
    conf: &lb_common::MemberConf,
    failures: u64,
    error_limit: u32,
    monitored: bool,
) -> &'static str {
    let status = operating_status(conf.flags, conf.weight, monitored);
    if status != "OFFLINE" && lb_common::member_failed(failures, error_limit) {
        "ERROR"
    } else {
        status
    }
}

pub fn operating_status(flags: u32, weight: u16, monitored: bool) -> &'static str {
    if flags & MEMBER_F_ENABLED == 0 {
        "OFFLINE"
    } else if flags & MEMBER_F_UP == 0 {
        "ERROR"
    } else if weight == 0 {
        "DRAINING"
    } else if !monitored {
        "NO_MONITOR"
    } else {
        "ONLINE"
    }
}

pub fn collect(state: &State) -> Result<LoadBalancerReport, crate::dataplane::DataplaneError> {
    let maps = Maps::open(&state.pin_dir)?;
    let mut members = Vec::new();
    for m in &state.plan.members {
        let s = maps.member_stats(m.index)?;
        let conf = maps.member(m.index)?;
        let live = maps.member_live.get(m.index);
        let limit = maps.pool(conf.pool)?.error_limit;
        let status = member_status(&conf, live.failures, limit, m.monitor.is_some());
        members.push(MemberReport {
            id: m.id.clone(),
            pool_id: m.pool_id.clone(),
            address: m.address.to_string(),
            protocol_port: m.protocol_port,
            weight: conf.weight,
            backup: conf.flags & MEMBER_F_BACKUP != 0,
            operating_status: status.into(),
            counters: Counters::new(live, s),
            connection_errors: s.drops.iter().sum(),
            failed_connections: live.failures,
            drops: MEMBER_DROP_REASONS
                .iter()
                .zip(s.drops)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (reason::NAMES[*r as usize].to_string(), n))
                .collect(),
        });
    }
    let mut listeners = Vec::new();
    for l in &state.plan.listeners {
        let s = maps.listener_stats(l.index)?;
        let drops = maps.listener_drops(l.index)?;
        let status = pool_status(
            members
                .iter()
                .filter(|m| m.pool_id == l.pool_id)
                .map(|m| m.operating_status.as_str()),
        );
        listeners.push(ListenerReport {
            id: l.id.clone(),
            operating_status: status.into(),
            protocol: l.protocol,
            protocol_port: l.protocol_port,
            pool_id: l.pool_id.clone(),
            counters: Counters::new(maps.listener_live.get(l.index), s),
            request_errors: drops.iter().sum(),
            drops: named_nonzero(&drops),
            connection_log_lost: maps.conn_log_lost(l.index)?,
        });
    }
    let verdicts = maps
        .verdicts()?
        .iter()
        .enumerate()
        .map(|(i, v)| (reason::NAMES[i].to_string(), *v))
        .collect();

    let conntrack_flows = maps.last_sweep()?.flows;
    let memory = crate::dataplane::memory(&state.pin_dir)?;
    Ok(LoadBalancerReport {
        id: state.loadbalancer.clone(),
        operating_status: loadbalancer_status(
            listeners.iter().map(|l| l.operating_status.as_str()),
        )
        .into(),
        namespace: state.namespace.clone(),
        port: state.port.clone(),
        vip_address: state.vip_address.to_string(),
        xdp_mode: state.xdp_mode.clone(),
        daemon_pid: state.live_owner(),
        conntrack_flows,
        connection_log_lost: listeners.iter().map(|l| l.connection_log_lost).sum(),
        memory,
        listeners,
        members,
        verdicts,
    })
}

pub fn collect_all(state_dir: &Path) -> anyhow::Result<Vec<LoadBalancerReport>> {
    use anyhow::Context as _;
    crate::daemon::gc::collect(state_dir);
    let states =
        State::read_all(state_dir).with_context(|| format!("reading {}", state_dir.display()))?;
    states
        .iter()
        .filter_map(|s| match collect(s) {
            Ok(r) => Some(Ok(r)),
            // A load balancer coming up has its maps pinned one by one as the loader creates
            // them: until all are there it is not shown.
            Err(_) if s.phase == crate::state::Phase::Starting => None,
            Err(e) => Some(Err(e).with_context(|| {
                format!(
                    "load balancer {} (maps in {})",
                    s.loadbalancer,
                    s.pin_dir.display()
                )
            })),
        })
        .collect()
}

/// One line of the text table; `indent` nests members under their listener.
fn row(o: &mut String, indent: &str, name: String, port: u16, status: &str, c: &Counters) {
    use std::fmt::Write as _;
    let width = 40 - indent.len();
    let _ = writeln!(
        o,
        "{indent}{name:<width$} {port:>6} {status:<11} {:>7} {:>6} {:>8} {:>12} {:>12} {:>10} {:>10}",
        c.active_connections,
        c.half_open_connections,
        c.total_connections,
        c.bytes_in,
        c.bytes_out,
        c.packets_in,
        c.packets_out
    );
}

/// Human units for a rate or a count: 950, 12.3k, 4.5M, 1.2G.
fn human(v: f64) -> String {
    let a = v.abs();
    if a < 1e3 {
        format!("{v:.0}")
    } else if a < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else if a < 1e9 {
        format!("{:.1}M", v / 1e6)
    } else {
        format!("{:.1}G", v / 1e9)
    }
}

/// `lb stats --watch`: one frame of at most 80 columns, rates per second since `prev` (taken
/// `secs` seconds earlier) beside the totals; `colour` marks statuses with ANSI colours (only
/// when writing to a terminal).
pub fn render_watch(
    now: &[LoadBalancerReport],
    prev: Option<&[LoadBalancerReport]>,
    secs: f64,
    colour: bool,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if now.is_empty() {
        o.push_str("no load balancer is running (no state files)\n");
        return o;
    }
    let paint = |status: &str| -> String {
        let s = format!("{status:<8.8}");
        if !colour {
            return s;
        }
        let code = match status {
            "ONLINE" | "NO_MONITOR" => "32",
            "ERROR" => "31",
            _ => "33",
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    };
    let rate = |a: u64, b: Option<u64>| -> String {
        match b {
            Some(b) if secs > 0.0 => human(a.saturating_sub(b) as f64 / secs),
            _ => "-".into(),
        }
    };
    for r in now {
        let before = prev.and_then(|p| p.iter().find(|x| x.id == r.id));
        let _ = writeln!(
            o,
            "{:<36.36} {}  vip {}  flows {}",
            r.id,
            paint(&r.operating_status),
            r.vip_address,
            human(r.conntrack_flows as f64)
        );
        let _ = writeln!(
            o,
            "  {:<20} {:<8} {:>6} {:>5} {:>7} {:>8} {:>8} {:>9}",
            "listener/member", "status", "active", "syn", "conn/s", "in B/s", "out B/s", "total"
        );
        let mut line = |name: String, status: &str, c: &Counters, b: Option<&Counters>| {
            let _ = writeln!(
                o,
                "  {:<20.20} {} {:>6} {:>5} {:>7} {:>8} {:>8} {:>9}",
                name,
                paint(status),
                human(c.active_connections as f64),
                human(c.half_open_connections as f64),
                rate(c.total_connections, b.map(|b| b.total_connections)),
                rate(c.bytes_in, b.map(|b| b.bytes_in)),
                rate(c.bytes_out, b.map(|b| b.bytes_out)),
                human(c.total_connections as f64),
            );
        };
        for l in &r.listeners {
            let bl = before.and_then(|b| b.listeners.iter().find(|x| x.id == l.id));
            line(
                format!(
                    "{} :{}{}",
                    &l.id[..l.id.len().min(12)],
                    l.protocol_port,
                    l.udp_suffix()
                ),
                &l.operating_status,
                &l.counters,
                bl.map(|x| &x.counters),
            );
            for m in r.members.iter().filter(|m| m.pool_id == l.pool_id) {
                let bm = before.and_then(|b| b.members.iter().find(|x| x.id == m.id));
                line(
                    format!(" {}", m.address),
                    &m.operating_status,
                    &m.counters,
                    bm.map(|x| &x.counters),
                );
            }
        }
    }
    o
}

pub fn render_text(reports: &[LoadBalancerReport]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if reports.is_empty() {
        o.push_str("no load balancer is running (no state files)\n");
    }
    for r in reports {
        let _ = writeln!(
            o,
            "loadbalancer {} {}  vip {}  namespace {}  port {}  attach {}  flows {} (last sweep)",
            r.id,
            r.operating_status,
            r.vip_address,
            r.namespace,
            r.port,
            r.xdp_mode,
            r.conntrack_flows
        );
        let _ = writeln!(
            o,
            "  kernel memory {} KiB ({} KiB per CPU, {} CPUs; {} KiB with 64 CPUs)",
            r.memory.bytes / 1024,
            r.memory.per_cpu_bytes / 1024,
            r.memory.cpus,
            r.memory.with_cpus(64) / 1024
        );
        if r.daemon_pid.is_none() {
            let _ = writeln!(o, "  (no lb daemon serves it: the data path keeps translating its flows, but nothing expires or is checked until `lb run` takes over)");
        }
        if r.connection_log_lost > 0 {
            let _ = writeln!(
                o,
                "  connection log: {} events lost to a full ring (the daemon fell behind, or none ran)",
                r.connection_log_lost
            );
        }
        let _ = writeln!(
            o,
            "  {:<38} {:>6} {:<11} {:>7} {:>6} {:>8} {:>12} {:>12} {:>10} {:>10}",
            "listener/member",
            "port",
            "status",
            "active",
            "syn",
            "total",
            "bytes_in",
            "bytes_out",
            "pkts_in",
            "pkts_out"
        );
        for l in &r.listeners {
            row(
                &mut o,
                "  ",
                format!("{}{}", l.id, l.udp_suffix()),
                l.protocol_port,
                &l.operating_status,
                &l.counters,
            );
            for m in r.members.iter().filter(|m| m.pool_id == l.pool_id) {
                let name = format!("{} {}", &m.id[..m.id.len().min(8)], m.address);
                row(
                    &mut o,
                    "    ",
                    name,
                    m.protocol_port,
                    &m.operating_status,
                    &m.counters,
                );
                if m.failed_connections > 0 {
                    let _ = writeln!(
                        o,
                        "      {} new connections in a row refused or unanswered (passive health)",
                        m.failed_connections
                    );
                }
            }
        }
        let nonzero: Vec<_> = r
            .verdicts
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            o,
            "  verdicts: {}",
            if nonzero.is_empty() {
                "none yet".into()
            } else {
                nonzero.join(" ")
            }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::MEMBER_F_CONFIGURED;

    #[test]
    fn listener_and_loadbalancer_status() {
        assert_eq!(pool_status(["ONLINE", "ONLINE"]), "ONLINE");
        assert_eq!(pool_status(["ONLINE", "ERROR"]), "DEGRADED");
        assert_eq!(pool_status(["ERROR", "ERROR"]), "ERROR");
        assert_eq!(pool_status(["OFFLINE", "NO_MONITOR"]), "ONLINE");
        assert_eq!(pool_status(["DRAINING", "ERROR"]), "ERROR");
        assert_eq!(pool_status([]), "ERROR");
        assert_eq!(loadbalancer_status(["ONLINE", "DEGRADED"]), "DEGRADED");
        assert_eq!(loadbalancer_status(["ERROR", "ERROR"]), "ERROR");
        assert_eq!(loadbalancer_status(["ONLINE"]), "ONLINE");
    }

    #[test]
    fn status_names() {
        let up = MEMBER_F_CONFIGURED | MEMBER_F_ENABLED | MEMBER_F_UP;
        assert_eq!(operating_status(up, 1, true), "ONLINE");
        assert_eq!(operating_status(up, 1, false), "NO_MONITOR");
        assert_eq!(operating_status(up, 0, true), "DRAINING");
        assert_eq!(operating_status(up & !MEMBER_F_UP, 1, true), "ERROR");
        assert_eq!(operating_status(up & !MEMBER_F_ENABLED, 1, true), "OFFLINE");
    }
}
