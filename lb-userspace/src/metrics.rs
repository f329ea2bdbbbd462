//! Prometheus metrics: `GET /metrics` in the text exposition format (version 0.0.4), served
//! by the daemon (`lb run --metrics-address`, `[daemon] metrics_address`, or the drop-in's
//! `LB_METRICS_ADDRESS`) for the load balancers this process runs.
//!
//! Every scrape reads the pinned maps afresh (as `lb stats` does: `crate::stats::collect`),
//! plus the monitors' last results and the connection log's counters this process keeps.
//! Names: `lb_` prefix, base units (bytes, seconds), `_total` on counters; labels
//! `loadbalancer`, `listener`, `pool`, `member` (ids as configured), `reason` on drops.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{info, warn};

use crate::{
    health::Board,
    state::State,
    stats::{Counters, LoadBalancerReport},
};

/// The environment variable the haproxy drop-in reads for its metrics address (haproxy's
/// configuration has no line for it).
pub const ENV_ADDRESS: &str = "LB_METRICS_ADDRESS";

/// The monitors' boards of the load balancers this process runs (registered by each
/// instance when its monitors start).
static BOARDS: Mutex<BTreeMap<String, Board>> = Mutex::new(BTreeMap::new());

pub fn register_board(loadbalancer: &str, board: Board) {
    BOARDS.lock().unwrap().insert(loadbalancer.into(), board);
}

pub fn unregister_board(loadbalancer: &str) {
    BOARDS.lock().unwrap().remove(loadbalancer);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its samples are written together, after its HELP and TYPE.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(String, f64)>,
}

/// Families in the order they were first named.
#[derive(Default)]
struct Families {
    order: Vec<&'static str>,
    by_name: HashMap<&'static str, Family>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `base` and one more label.
fn and<'a>(base: &[(&'a str, &'a str)], key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut l = base.to_vec();
    l.push((key, value));
    l
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        l: &[(&str, &str)],
        v: f64,
    ) {
        let f = self.by_name.entry(name).or_insert_with(|| {
            self.order.push(name);
            Family {
                name,
                help,
                kind,
                samples: Vec::new(),
            }
        });
        f.samples.push((labels(l), v));
    }

    fn counter(&mut self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: u64) {
        self.add(name, Kind::Counter, help, l, v as f64);
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.add(name, Kind::Gauge, help, l, v);
    }

    fn render(&self) -> String {
        let mut o = String::new();
        for name in &self.order {
            let f = &self.by_name[name];
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(o, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(o, "# TYPE {} {kind}", f.name);
            for (l, v) in &f.samples {
                let _ = writeln!(o, "{}{l} {v}", f.name);
            }
        }
        o
    }
}

/// Traffic counters of a listener or (`member`) a member.
fn traffic(fs: &mut Families, member: bool, l: &[(&str, &str)], c: &Counters) {
    macro_rules! pick {
        ($l:literal, $m:literal) => {
            if member {
                $m
            } else {
                $l
            }
        };
    }
    fs.gauge(
        pick!(
            "lb_listener_active_connections",
            "lb_member_active_connections"
        ),
        "Established connections open now.",
        l,
        c.active_connections as f64,
    );
    fs.gauge(
        pick!(
            "lb_listener_half_open_connections",
            "lb_member_half_open_connections"
        ),
        "Handshakes in progress (SYN seen, the client has not acknowledged the member's SYN-ACK).",
        l,
        c.half_open_connections as f64,
    );
    fs.counter(
        pick!(
            "lb_listener_connections_total",
            "lb_member_connections_total"
        ),
        "Connections established.",
        l,
        c.total_connections,
    );
    fs.counter(
        pick!("lb_listener_bytes_in_total", "lb_member_bytes_in_total"),
        "Bytes from clients to members (IP packets).",
        l,
        c.bytes_in,
    );
    fs.counter(
        pick!("lb_listener_bytes_out_total", "lb_member_bytes_out_total"),
        "Bytes from members to clients (IP packets).",
        l,
        c.bytes_out,
    );
    fs.counter(
        pick!("lb_listener_packets_in_total", "lb_member_packets_in_total"),
        "Packets from clients to members.",
        l,
        c.packets_in,
    );
    fs.counter(
        pick!(
            "lb_listener_packets_out_total",
            "lb_member_packets_out_total"
        ),
        "Packets from members to clients.",
        l,
        c.packets_out,
    );
    fs.counter(
        pick!(
            "lb_listener_redispatches_total",
            "lb_member_redispatches_total"
        ),
        "Handshakes moved to another member (the member did not answer or refused).",
        l,
        c.redispatches,
    );
}

/// What a scrape adds to `lb stats`' report of one load balancer.
struct Extra {
    capacity_flows: Option<u64>,
    sweep_seconds: f64,
    sweep_expired: u64,
}

fn extra(pin_dir: &Path) -> Extra {
    let capacity_flows = ["CONNTRACK", "CONNTRACK6"]
        .iter()
        .find_map(|t| aya::maps::MapInfo::from_pin(pin_dir.join(t)).ok())
        .map(|i| i.max_entries() as u64 / 2);
    // The one map `stats::collect` did not read whole (its `flows` only).
    let sweep: lb_common::SweepReport = crate::dataplane::open_map::<
        aya::maps::Array<aya::maps::MapData, lb_common::SweepReport>,
    >(pin_dir, "SWEEP")
    .and_then(|m| {
        m.get(&0, 0)
            .map_err(|source| crate::dataplane::DataplaneError::Map {
                path: pin_dir.join("SWEEP"),
                source,
            })
    })
    .unwrap_or_default();
    Extra {
        capacity_flows,
        sweep_seconds: sweep.cycle_us as f64 / 1e6,
        sweep_expired: sweep.expired,
    }
}

fn member_up(status: &str) -> bool {
    matches!(status, "ONLINE" | "NO_MONITOR" | "DRAINING")
}

/// The exposition of `reports` (with the state each was read from).
fn render(reports: &[(LoadBalancerReport, &State)]) -> String {
    let mut fs = Families::default();
    let boards = BOARDS.lock().unwrap().clone();
    let logs: HashMap<String, crate::connlog::LogCounters> =
        crate::connlog::counters().into_iter().collect();
    for (r, state) in reports {
        let lb = r.id.as_str();
        let at = [("loadbalancer", lb)];
        fs.gauge(
            "lb_loadbalancer_up",
            "1 while at least one listener's pool has a member that can serve (ONLINE or DEGRADED), else 0.",
            &at,
            (r.operating_status != "ERROR") as u8 as f64,
        );
        let x = extra(&state.pin_dir);
        fs.gauge(
            "lb_conntrack_flows",
            "Flows in the conntrack table at the last expiry cycle.",
            &at,
            r.conntrack_flows as f64,
        );
        if let Some(c) = x.capacity_flows {
            fs.gauge(
                "lb_conntrack_capacity_flows",
                "Flows the conntrack table holds (conntrack_flows).",
                &at,
                c as f64,
            );
        }
        fs.gauge(
            "lb_loadbalancer_memory_bytes",
            "Kernel memory of the load balancer's maps (their memlock; the programs, shared by every load balancer of the node, not included).",
            &at,
            r.memory.bytes as f64,
        );
        fs.gauge(
            "lb_loadbalancer_memory_per_cpu_bytes",
            "Of lb_loadbalancer_memory_bytes, what its per-CPU maps take per possible CPU.",
            &at,
            r.memory.per_cpu_bytes as f64,
        );
        fs.gauge(
            "lb_conntrack_sweep_duration_seconds",
            "How long the last expiry cycle over the conntrack table took, pauses included.",
            &at,
            x.sweep_seconds,
        );
        fs.gauge(
            "lb_conntrack_sweep_expired_flows",
            "Flows the last expiry cycle removed, idle past their timeout.",
            &at,
            x.sweep_expired as f64,
        );
        for (verdict, n) in &r.verdicts {
            fs.counter(
                "lb_verdict_packets_total",
                "Packets the data path handled, by verdict (tx_* translated, pass_* left to the kernel, drop_* dropped).",
                &[("loadbalancer", lb), ("verdict", verdict)],
                *n,
            );
        }
        let log = logs.get(lb).copied().unwrap_or_default();
        fs.counter(
            "lb_connection_log_lines_total",
            "Connection log lines made (one per connection that ended).",
            &at,
            log.lines,
        );
        fs.counter(
            "lb_connection_log_send_failures_total",
            "Connection log lines a target did not take (no syslog daemon, its queue full).",
            &at,
            log.send_failures,
        );
        for l in &r.listeners {
            let ll = [
                ("loadbalancer", lb),
                ("listener", l.id.as_str()),
                ("pool", l.pool_id.as_str()),
            ];
            traffic(&mut fs, false, &ll, &l.counters);
            for (reason, n) in &l.drops {
                fs.counter(
                    "lb_listener_dropped_packets_total",
                    "Packets for a listener the data path dropped, by reason.",
                    &[
                        ("loadbalancer", lb),
                        ("listener", l.id.as_str()),
                        ("reason", reason),
                    ],
                    *n,
                );
            }
            fs.counter(
                "lb_connection_log_events_dropped_total",
                "Connection log events lost because the ring buffer was full (the daemon fell behind).",
                &[("loadbalancer", lb), ("listener", l.id.as_str())],
                l.connection_log_lost,
            );
        }
        let board = boards.get(lb).map(|b| b.lock().unwrap().clone());
        for m in &r.members {
            let plan_index = state
                .plan
                .members
                .iter()
                .find(|p| p.id == m.id && p.pool_id == m.pool_id)
                .map(|p| p.index);
            let ml = [
                ("loadbalancer", lb),
                ("pool", m.pool_id.as_str()),
                ("member", m.id.as_str()),
            ];
            traffic(&mut fs, true, &ml, &m.counters);
            fs.gauge(
                "lb_member_up",
                "1 if the member takes connections (ONLINE, NO_MONITOR, DRAINING for its sticky clients), 0 if not (OFFLINE, ERROR).",
                &ml,
                member_up(&m.operating_status) as u8 as f64,
            );
            for status in ["ONLINE", "DRAINING", "OFFLINE", "ERROR", "NO_MONITOR"] {
                fs.gauge(
                    "lb_member_operating_status",
                    "The member's operating status (Octavia's names): 1 for the current one.",
                    &and(&ml, "status", status),
                    (m.operating_status == status) as u8 as f64,
                );
            }
            fs.gauge(
                "lb_member_weight",
                "The member's weight.",
                &ml,
                m.weight as f64,
            );
            fs.gauge(
                "lb_member_failed_connections",
                "New connections in a row the member refused or left unanswered (passive health).",
                &ml,
                m.failed_connections as f64,
            );
            for (reason, n) in &m.drops {
                fs.counter(
                    "lb_member_dropped_connections_total",
                    "New flows for the member that could not be sent, by reason.",
                    &and(&ml, "reason", reason),
                    *n,
                );
            }
            let check = plan_index.and_then(|i| board.as_ref().and_then(|b| b.get(&i).cloned()));
            if let Some(c) = check.filter(|c| c.status.is_some()) {
                let status = c.status.map(|s| s.name()).unwrap_or("");
                fs.gauge(
                    "lb_member_check_success",
                    "1 if the member's last health check passed, else 0.",
                    &ml,
                    c.status.is_some_and(|s| s.ok()) as u8 as f64,
                );
                fs.gauge(
                    "lb_member_check_info",
                    "The last health check's result as haproxy names it (L4OK, L4CON, L7STS, ...); always 1.",
                    &and(&ml, "status", status),
                    1.0,
                );
                fs.gauge(
                    "lb_member_check_duration_seconds",
                    "How long the member's last health check took.",
                    &ml,
                    c.duration_ms as f64 / 1e3,
                );
                fs.counter(
                    "lb_member_check_failures_total",
                    "Health checks of the member that failed.",
                    &ml,
                    c.chkfail,
                );
                fs.counter(
                    "lb_member_down_transitions_total",
                    "Times the member's monitor took it from UP to DOWN.",
                    &ml,
                    c.chkdown,
                );
            }
        }
    }
    fs.render()
}

/// One scrape: every load balancer of `state_dir` this process runs.
pub fn scrape(state_dir: &Path) -> String {
    let me = std::process::id();
    let states = State::read_all(state_dir).unwrap_or_default();
    let mut reports = Vec::new();
    for s in states.iter().filter(|s| s.pid == me) {
        match crate::stats::collect(s) {
            Ok(r) => reports.push((r, s)),
            Err(e) => {
                warn!(loadbalancer = %s.loadbalancer, error = %e, "metrics: cannot read the maps")
            }
        }
    }
    render(&reports)
}

/// Serves `GET /metrics` on `addr` until the runtime ends.
pub async fn serve(addr: SocketAddr, state_dir: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // SO_REUSEPORT: during a takeover (`--takeover`, haproxy's `-sf`) the new process
    // binds the address while the old one still holds it.
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let s = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        s.bind(addr)?;
        s.listen(128)
    };
    let listener = bind().with_context(|| format!("metrics: cannot listen on {addr}"))?;
    info!(address = %addr, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let dir = state_dir.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), answer(sock, dir))
                    .await;
            });
        }
    });
    Ok(())
}

/// One HTTP/1.x request, answered and closed.
async fn answer(mut sock: tokio::net::TcpStream, state_dir: PathBuf) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = tokio::task::spawn_blocking(move || scrape(&state_dir))
                .await
                .unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "lb: metrics at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let mut fs = Families::default();
        fs.counter("lb_a_total", "A.", &[("x", "1")], 3);
        fs.gauge("lb_b", "B.", &[("x", "q\"\\\n")], 1.5);
        fs.counter("lb_a_total", "A.", &[("x", "2")], 4);
        let text = fs.render();
        assert_eq!(
            text,
            "# HELP lb_a_total A.\n# TYPE lb_a_total counter\nlb_a_total{x=\"1\"} 3\nlb_a_total{x=\"2\"} 4\n\
             # HELP lb_b B.\n# TYPE lb_b gauge\nlb_b{x=\"q\\\"\\\\\\n\"} 1.5\n"
        );
    }
}
