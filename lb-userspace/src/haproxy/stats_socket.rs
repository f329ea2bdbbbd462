//! haproxy's stats socket, as the LBaaS agent and hatop use it: a unix socket at the
//! configured path and mode; one request line (commands separated by `;`), the whole answer,
//! then the connection is closed.
//!
//! - `show stat [{<iid>|<proxy>} <type> <sid>]`: haproxy 2.6's CSV, every column in its order
//!   (`# pxname,svname,...`), FRONTEND (type 0), server (2) and BACKEND (1) rows filtered as
//!   haproxy filters them (type is a mask: 1 frontends, 2 backends, 4 servers);
//! - `show info`, `help`, `quit`, `get weight <b>/<s>`;
//! - at `level admin` only: `set server <b>/<s> state ready|drain|maint`,
//!   `set weight <b>/<s> <w>[%]`, `disable server <b>/<s>`, `enable server <b>/<s>`. At lower
//!   levels haproxy's "Permission denied".
//!
//! Counters come from the pinned maps (they survive `-sf`); check results from the monitors;
//! `smax` and rates from a sampler that runs every second and keeps its maxima in
//! `<state_dir>/<id>.stats-samples`, so they do not fall back across `-sf` either.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::mpsc::UnboundedSender,
};

use super::config::{HaConfig, Kind, Level, StatsSocket};
use crate::{
    daemon::{instance::Instance, MemberChange, Request, RequestKind},
    dataplane::Maps,
    health::{Board, CheckInfo, CheckStatus},
    plan::Plan,
};

/// haproxy 2.6's `show stat` columns, in its order (as haproxy 2.6.12 prints them).
pub const COLUMNS: &[&str] = &[
    "pxname",
    "svname",
    "qcur",
    "qmax",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "dreq",
    "dresp",
    "ereq",
    "econ",
    "eresp",
    "wretr",
    "wredis",
    "status",
    "weight",
    "act",
    "bck",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "qlimit",
    "pid",
    "iid",
    "sid",
    "throttle",
    "lbtot",
    "tracked",
    "type",
    "rate",
    "rate_lim",
    "rate_max",
    "check_status",
    "check_code",
    "check_duration",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
    "hanafail",
    "req_rate",
    "req_rate_max",
    "req_tot",
    "cli_abrt",
    "srv_abrt",
    "comp_in",
    "comp_out",
    "comp_byp",
    "comp_rsp",
    "lastsess",
    "last_chk",
    "last_agt",
    "qtime",
    "ctime",
    "rtime",
    "ttime",
    "agent_status",
    "agent_code",
    "agent_duration",
    "check_desc",
    "agent_desc",
    "check_rise",
    "check_fall",
    "check_health",
    "agent_rise",
    "agent_fall",
    "agent_health",
    "addr",
    "cookie",
    "mode",
    "algo",
    "conn_rate",
    "conn_rate_max",
    "conn_tot",
    "intercepted",
    "dcon",
    "dses",
    "wrew",
    "connect",
    "reuse",
    "cache_lookups",
    "cache_hits",
    "srv_icur",
    "src_ilim",
    "qtime_max",
    "ctime_max",
    "rtime_max",
    "ttime_max",
    "eint",
    "idle_conn_cur",
    "safe_conn_cur",
    "used_conn_cur",
    "need_conn_est",
    "uweight",
    "agg_server_status",
    "agg_server_check_status",
    "agg_check_status",
    "-",
    "ssl_sess",
    "ssl_reused_sess",
    "ssl_failed_handshake",
    "h2_headers_rcvd",
    "h2_data_rcvd",
    "h2_settings_rcvd",
    "h2_rst_stream_rcvd",
    "h2_goaway_rcvd",
    "h2_detected_conn_protocol_errors",
    "h2_detected_strm_protocol_errors",
    "h2_rst_stream_resp",
    "h2_goaway_resp",
    "h2_open_connections",
    "h2_backend_open_streams",
    "h2_total_connections",
    "h2_backend_total_streams",
    "h1_open_connections",
    "h1_open_streams",
    "h1_total_connections",
    "h1_total_streams",
    "h1_bytes_in",
    "h1_bytes_out",
    "h1_spliced_bytes_in",
    "h1_spliced_bytes_out",
];

/// What the socket reports on: one load balancer.
#[derive(Clone)]
pub struct View {
    pub id: String,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub plan: Plan,
    pub haproxy: HaConfig,
    pub board: Board,
    pub global_maxconn: Option<u32>,
    /// The stats socket of the real haproxy serving the L7 part of a split configuration.
    pub child: Option<PathBuf>,
    pub started: Instant,
    pub start_unix: u64,
    pub samples: Arc<Mutex<Samples>>,
}

/// Maxima and rates the maps do not keep, by row key (`frontend`, `backend`, `backend/server`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    pub smax: HashMap<String, i64>,
    pub rate_max: HashMap<String, u64>,
    #[serde(skip)]
    pub rate: HashMap<String, u64>,
    #[serde(skip)]
    last_tot: HashMap<String, u64>,
}

impl View {
    fn samples_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.stats-samples", self.id))
    }
}

/// Counters of one row, before formatting.
#[derive(Default, Clone, Copy)]
struct Tally {
    scur: i64,
    stot: u64,
    bin: u64,
    bout: u64,
    econ: u64,
    wredis: u64,
}

/// Listeners' counters and drops, by listener id.
type ListenerCounters = HashMap<String, (Tally, u64)>;
/// Members' counters and configuration, by index.
type MemberCounters = HashMap<u32, (Tally, lb_common::MemberConf)>;

/// Reads the counters of every listener and member.
fn read(view: &View) -> anyhow::Result<(ListenerCounters, MemberCounters)> {
    let maps = Maps::open(&view.pin_dir)?;
    let mut listeners = HashMap::new();
    for l in &view.plan.listeners {
        let s = maps.listener_stats(l.index)?;
        let drops: u64 = maps.listener_drops(l.index)?.iter().sum();
        let t = Tally {
            scur: maps.listener_live.get(l.index).active.max(0),
            stot: s.total_connections,
            bin: s.bytes_in,
            bout: s.bytes_out,
            econ: 0,
            wredis: s.redispatches,
        };
        listeners.insert(l.id.clone(), (t, drops));
    }
    let mut members = HashMap::new();
    for m in &view.plan.members {
        let s = maps.member_stats(m.index)?;
        let t = Tally {
            scur: maps.member_live.get(m.index).active.max(0),
            stot: s.total_connections,
            bin: s.bytes_in,
            bout: s.bytes_out,
            econ: s.drops.iter().sum(),
            wredis: s.redispatches,
        };
        members.insert(m.index, (t, maps.member(m.index)?));
    }
    Ok((listeners, members))
}

/// The frontend a listener belongs to (a second bind port's listener is `name:port`).
fn frontend_of(listener: &str) -> &str {
    listener.rsplit_once(':').map_or(listener, |(f, p)| {
        if p.parse::<u16>().is_ok() {
            f
        } else {
            listener
        }
    })
}

fn describe(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::SOCKERR => "Socket error",
        CheckStatus::L4OK => "Layer4 check passed",
        CheckStatus::L4TOUT => "Layer4 timeout",
        CheckStatus::L4CON => "Layer4 connection problem",
        CheckStatus::L6OK => "Layer6 check passed",
        CheckStatus::L6TOUT => "Layer6 timeout",
        CheckStatus::L6RSP => "Layer6 invalid response",
        CheckStatus::L7OK => "Layer7 check passed",
        CheckStatus::L7TOUT => "Layer7 timeout",
        CheckStatus::L7RSP => "Layer7 invalid response",
        CheckStatus::L7STS => "Layer7 wrong status",
    }
}

/// A server's `status` as haproxy words it.
pub fn server_status(conf: &lb_common::MemberConf, check: Option<&CheckInfo>) -> String {
    if conf.flags & lb_common::MEMBER_F_ENABLED == 0 {
        return "MAINT".into();
    }
    let Some(c) = check else {
        return if conf.weight == 0 {
            "DRAIN".into()
        } else {
            "no check".into()
        };
    };
    let up = conf.flags & lb_common::MEMBER_F_UP != 0;
    if up && conf.weight == 0 {
        return "DRAIN".into();
    }
    match (up, c.progress) {
        (true, 0) => "UP".into(),
        (true, n) => format!("UP {n}/{}", c.fall),
        (false, 0) => "DOWN".into(),
        (false, n) => format!("DOWN {n}/{}", c.rise),
    }
}

/// `show stat` for `view`, filtered by `iid` (-1 all; a number or a proxy name), `type`
/// (mask) and `sid` (-1 all).
pub fn show_stat(view: &View, proxy: &str, types: i64, sid: i64) -> anyhow::Result<String> {
    let (listeners, members) = read(view)?;
    let samples = view.samples.lock().unwrap().clone();
    let now = unix_now();
    let mut out = format!("# {},\n", COLUMNS.join(","));
    let types = if types < 0 { 7 } else { types };
    for (n, p) in view.haproxy.proxies.iter().enumerate() {
        let iid = n + 2; // iid 1 is haproxy's internal GLOBAL proxy
        let wanted = match proxy {
            "-1" => true,
            x => x == p.name || x.parse::<usize>() == Ok(iid),
        };
        if !wanted {
            continue;
        }
        let mut row = |fields: Vec<(&str, String)>| {
            let map: HashMap<&str, String> = fields.into_iter().collect();
            let line: Vec<&str> = COLUMNS
                .iter()
                .map(|c| map.get(c).map(String::as_str).unwrap_or(""))
                .collect();
            out.push_str(&line.join(","));
            out.push_str(",\n");
        };
        if p.kind.has_frontend() && !p.disabled && types & 1 != 0 {
            let mine: Vec<&(Tally, u64)> = view
                .plan
                .listeners
                .iter()
                .filter(|l| frontend_of(&l.id) == p.name)
                .filter_map(|l| listeners.get(&l.id))
                .collect();
            let t = mine.iter().fold(Tally::default(), |a, (t, _)| add(a, *t));
            let ereq: u64 = mine.iter().map(|(_, d)| d).sum();
            let key = p.name.clone();
            let slim = p.params.maxconn.or(view.global_maxconn);
            row(vec![
                ("pxname", p.name.clone()),
                ("svname", "FRONTEND".into()),
                ("scur", t.scur.to_string()),
                (
                    "smax",
                    samples
                        .smax
                        .get(&key)
                        .copied()
                        .unwrap_or(t.scur)
                        .max(t.scur)
                        .to_string(),
                ),
                ("slim", slim.map(|s| s.to_string()).unwrap_or_default()),
                ("stot", t.stot.to_string()),
                ("bin", t.bin.to_string()),
                ("bout", t.bout.to_string()),
                ("dreq", "0".into()),
                ("dresp", "0".into()),
                ("ereq", ereq.to_string()),
                ("status", "OPEN".into()),
                ("pid", "1".into()),
                ("iid", iid.to_string()),
                ("sid", "0".into()),
                ("type", "0".into()),
                (
                    "rate",
                    samples.rate.get(&key).copied().unwrap_or(0).to_string(),
                ),
                ("rate_lim", "0".into()),
                (
                    "rate_max",
                    samples.rate_max.get(&key).copied().unwrap_or(0).to_string(),
                ),
                ("req_tot", String::new()),
                ("cli_abrt", String::new()),
                ("mode", "tcp".into()),
                (
                    "conn_rate",
                    samples.rate.get(&key).copied().unwrap_or(0).to_string(),
                ),
                (
                    "conn_rate_max",
                    samples.rate_max.get(&key).copied().unwrap_or(0).to_string(),
                ),
                ("conn_tot", t.stot.to_string()),
                ("intercepted", "0".into()),
                ("dcon", "0".into()),
                ("dses", "0".into()),
            ]);
        }
        if !p.kind.has_backend() {
            continue;
        }
        let planned: Vec<(usize, &crate::plan::PlannedMember)> = p
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                view.plan
                    .members
                    .iter()
                    .find(|m| m.pool_id == p.name && m.id == s.name)
                    .map(|m| (i, m))
            })
            .collect();
        let board = view.board.lock().unwrap().clone();
        let mut be = Tally::default();
        let (mut act, mut bck, mut weight, mut any_up) = (0u32, 0u32, 0u32, false);
        for (i, m) in &planned {
            let Some((t, conf)) = members.get(&m.index) else {
                continue;
            };
            be = add(be, *t);
            let server = &p.servers[*i];
            let check = m.monitor.and(board.get(&m.index));
            let status = server_status(conf, check);
            let up = status.starts_with("UP") || status == "no check" || status == "DRAIN";
            if up {
                any_up = true;
                weight += conf.weight as u32;
                if server.params.backup {
                    bck += 1;
                } else {
                    act += 1;
                }
            }
            if types & 4 == 0 || (sid >= 0 && sid as usize != i + 1) {
                continue;
            }
            let key = format!("{}/{}", p.name, server.name);
            let mut f = vec![
                ("pxname", p.name.clone()),
                ("svname", server.name.clone()),
                ("qcur", "0".into()),
                ("qmax", "0".into()),
                ("scur", t.scur.to_string()),
                (
                    "smax",
                    samples
                        .smax
                        .get(&key)
                        .copied()
                        .unwrap_or(t.scur)
                        .max(t.scur)
                        .to_string(),
                ),
                ("stot", t.stot.to_string()),
                ("bin", t.bin.to_string()),
                ("bout", t.bout.to_string()),
                ("dresp", "0".into()),
                ("econ", t.econ.to_string()),
                ("eresp", "0".into()),
                ("wretr", "0".into()),
                ("wredis", t.wredis.to_string()),
                ("status", status.clone()),
                ("weight", conf.weight.to_string()),
                ("act", (!server.params.backup as u8).to_string()),
                ("bck", (server.params.backup as u8).to_string()),
                ("pid", "1".into()),
                ("iid", iid.to_string()),
                ("sid", (i + 1).to_string()),
                ("lbtot", t.stot.to_string()),
                ("type", "2".into()),
                (
                    "rate",
                    samples.rate.get(&key).copied().unwrap_or(0).to_string(),
                ),
                (
                    "rate_max",
                    samples.rate_max.get(&key).copied().unwrap_or(0).to_string(),
                ),
                ("cli_abrt", "0".into()),
                ("srv_abrt", "0".into()),
                ("lastsess", "-1".into()),
                ("qtime", "0".into()),
                ("ctime", "0".into()),
                ("rtime", "0".into()),
                ("ttime", "0".into()),
                ("addr", format!("{}:{}", m.address, m.protocol_port)),
                ("mode", "tcp".into()),
                ("uweight", conf.weight.to_string()),
            ];
            match check {
                Some(c) => {
                    let down_now = if conf.flags & lb_common::MEMBER_F_UP == 0 {
                        now.saturating_sub(c.last_change)
                    } else {
                        0
                    };
                    let health = if c.up {
                        c.rise + c.fall - 1 - c.progress
                    } else {
                        c.progress
                    };
                    f.extend([
                        ("chkfail", c.chkfail.to_string()),
                        ("chkdown", c.chkdown.to_string()),
                        ("lastchg", now.saturating_sub(c.last_change).to_string()),
                        ("downtime", (c.downtime_secs + down_now).to_string()),
                        (
                            "check_status",
                            c.status.map(|s| s.name().to_string()).unwrap_or_default(),
                        ),
                        (
                            "check_code",
                            c.code.map(|x| x.to_string()).unwrap_or_default(),
                        ),
                        (
                            "check_duration",
                            c.status
                                .map(|_| c.duration_ms.to_string())
                                .unwrap_or_default(),
                        ),
                        ("last_chk", c.desc.replace(',', " ")),
                        (
                            "check_desc",
                            c.status.map(describe).unwrap_or("").to_string(),
                        ),
                        ("check_rise", c.rise.to_string()),
                        ("check_fall", c.fall.to_string()),
                        ("check_health", health.to_string()),
                    ]);
                }
                None => f.push(("lastchg", now.saturating_sub(view.start_unix).to_string())),
            }
            row(f);
        }
        if types & 2 != 0 {
            let key = p.name.clone();
            row(vec![
                ("pxname", p.name.clone()),
                ("svname", "BACKEND".into()),
                ("qcur", "0".into()),
                ("qmax", "0".into()),
                ("scur", be.scur.to_string()),
                (
                    "smax",
                    samples
                        .smax
                        .get(&key)
                        .copied()
                        .unwrap_or(be.scur)
                        .max(be.scur)
                        .to_string(),
                ),
                ("slim", String::new()),
                ("stot", be.stot.to_string()),
                ("bin", be.bin.to_string()),
                ("bout", be.bout.to_string()),
                ("dreq", "0".into()),
                ("dresp", "0".into()),
                ("econ", be.econ.to_string()),
                ("eresp", "0".into()),
                ("wretr", "0".into()),
                ("wredis", be.wredis.to_string()),
                ("status", if any_up { "UP" } else { "DOWN" }.into()),
                ("weight", weight.to_string()),
                ("act", act.to_string()),
                ("bck", bck.to_string()),
                ("chkdown", "0".into()),
                ("lastchg", now.saturating_sub(view.start_unix).to_string()),
                ("downtime", "0".into()),
                ("pid", "1".into()),
                ("iid", iid.to_string()),
                ("sid", "0".into()),
                ("lbtot", be.stot.to_string()),
                ("type", "1".into()),
                (
                    "rate",
                    samples.rate.get(&key).copied().unwrap_or(0).to_string(),
                ),
                (
                    "rate_max",
                    samples.rate_max.get(&key).copied().unwrap_or(0).to_string(),
                ),
                ("cli_abrt", "0".into()),
                ("srv_abrt", "0".into()),
                ("lastsess", "-1".into()),
                ("qtime", "0".into()),
                ("ctime", "0".into()),
                ("rtime", "0".into()),
                ("ttime", "0".into()),
                ("mode", "tcp".into()),
                ("algo", p.params.balance.name().into()),
                ("uweight", weight.to_string()),
            ]);
        }
    }
    out.push('\n');
    Ok(out)
}

fn add(a: Tally, b: Tally) -> Tally {
    Tally {
        scur: a.scur + b.scur,
        stot: a.stot + b.stot,
        bin: a.bin + b.bin,
        bout: a.bout + b.bout,
        econ: a.econ + b.econ,
        wredis: a.wredis + b.wredis,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `show info`.
pub fn show_info(view: &View) -> anyhow::Result<String> {
    let (listeners, _) = read(view)?;
    let (cur, tot) = listeners
        .values()
        .fold((0i64, 0u64), |(c, t), (x, _)| (c + x.scur, t + x.stot));
    let up = view.started.elapsed().as_secs();
    let info = [
        ("Name", "HAProxy".to_string()),
        (
            "Version",
            format!(
                "{} (lb {})",
                super::STANDS_IN_FOR,
                env!("CARGO_PKG_VERSION")
            ),
        ),
        ("Release_date", String::new()),
        ("Nbthread", "1".into()),
        ("Nbproc", "1".into()),
        ("Process_num", "1".into()),
        ("Pid", std::process::id().to_string()),
        (
            "Uptime",
            format!(
                "{}d {}h{:02}m{:02}s",
                up / 86400,
                (up / 3600) % 24,
                (up / 60) % 60,
                up % 60
            ),
        ),
        ("Uptime_sec", up.to_string()),
        ("Maxconn", view.global_maxconn.unwrap_or(0).to_string()),
        ("Hard_maxconn", view.global_maxconn.unwrap_or(0).to_string()),
        ("CurrConns", cur.to_string()),
        ("CumConns", tot.to_string()),
        ("CumReq", "0".into()),
        ("Stopping", "0".into()),
        ("Listeners", view.plan.listeners.len().to_string()),
        (
            "node",
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        (
            "description",
            "lb, an eBPF L4 load balancer standing in for haproxy".into(),
        ),
        ("Start_time_sec", view.start_unix.to_string()),
    ];
    let mut out = String::new();
    for (k, v) in info {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push('\n');
    Ok(out)
}

const HELP: &str = "The following commands are valid at this level:
  help                                    : this message
  quit                                    : disconnect
  show info                               : report information about the running process
  show stat [{<iid>|<proxy>} <type> <sid>] : report counters for each proxy and server
  get weight <bk>/<srv>                   : report a server's current weight
  set server <bk>/<srv> state ready|drain|maint : change a server's state (admin)
  set weight <bk>/<srv> (<weight>|<weight%>) : change a server's weight (admin)
  disable server <bk>/<srv>               : put a server in maintenance (admin)
  enable server <bk>/<srv>                : take a server out of maintenance (admin)
";

/// Answers one command.
pub async fn answer(
    view: &View,
    level: Level,
    requests: &UnboundedSender<Request>,
    cmd: &str,
) -> (String, bool) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let admin = level == Level::Admin;
    let result = match words.as_slice() {
        [] => Ok(String::new()),
        ["quit"] => return (String::new(), true),
        ["help"] => Ok(HELP.into()),
        ["show", "info", ..] => show_info(view).map_err(|e| e.to_string()),
        ["show", "stat"] => show_stat(view, "-1", -1, -1).map_err(|e| e.to_string()),
        ["show", "stat", p, t, s, ..] => {
            let (t, s) = (t.parse().unwrap_or(-1), s.parse().unwrap_or(-1));
            show_stat(view, p, t, s).map_err(|e| e.to_string())
        }
        ["show", "stat", ..] => Err("Usage: show stat [{<iid>|<proxy>} <type> <sid>]\n".into()),
        ["get", "weight", bs] => match server(view, bs) {
            Ok((_, idx)) => Maps::open(&view.pin_dir)
                .and_then(|m| m.member(idx))
                .map(|c| format!("{} (initial {})\n", c.weight, initial_weight(view, idx)))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
        ["set", "weight", ..]
        | ["set", "server", ..]
        | ["disable", "server", ..]
        | ["enable", "server", ..]
            if !admin =>
        {
            Err("Permission denied\n".into())
        }
        ["set", "weight", bs, w] => {
            let parsed = match server(view, bs) {
                Ok((id, idx)) => parse_weight(w, initial_weight(view, idx)).map(|w| (id, w)),
                Err(e) => Err(e),
            };
            match parsed {
                Ok((id, w)) => change(view, requests, id, MemberChange::Weight(w)).await,
                Err(e) => Err(e),
            }
        }
        ["set", "server", bs, "state", st] => {
            let c = match *st {
                "ready" => Some(MemberChange::Ready),
                "drain" => Some(MemberChange::Drain),
                "maint" => Some(MemberChange::Maint),
                _ => None,
            };
            match (server(view, bs), c) {
                (Ok((id, _)), Some(c)) => change(view, requests, id, c).await,
                (Err(e), _) => Err(e),
                (_, None) => {
                    Err("'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n".into())
                }
            }
        }
        ["disable", "server", bs] => match server(view, bs) {
            Ok((id, _)) => change(view, requests, id, MemberChange::Maint).await,
            Err(e) => Err(e),
        },
        ["enable", "server", bs] => match server(view, bs) {
            Ok((id, _)) => change(view, requests, id, MemberChange::Ready).await,
            Err(e) => Err(e),
        },
        _ => Err(format!("Unknown command: '{cmd}'\n\n{HELP}")),
    };
    // A split configuration: haproxy's rows after lb's, haproxy's servers by haproxy.
    let result = match (&view.child, words.as_slice(), result) {
        (Some(child), ["show", "stat", ..], Ok(mine)) => match ask(child, cmd).await {
            // One header (lb's), every row, and haproxy's closing empty line.
            Ok(theirs) => {
                let mut out = mine.trim_end_matches('\n').to_string();
                for row in theirs
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.is_empty())
                {
                    out.push('\n');
                    out.push_str(row);
                }
                out.push_str("\n\n");
                Ok(out)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the real haproxy's stats socket does not answer");
                Ok(mine)
            }
        },
        (Some(child), _, Err(e)) if e == "No such backend.\n" => ask(child, cmd).await,
        (_, _, r) => r,
    };
    match result {
        Ok(s) => (s, false),
        Err(e) => (
            if e.ends_with('\n') {
                e
            } else {
                format!("{e}\n")
            },
            false,
        ),
    }
}

/// One command to the real haproxy's stats socket, its whole answer.
async fn ask(socket: &Path, cmd: &str) -> Result<String, String> {
    let talk = async {
        let mut c = UnixStream::connect(socket).await?;
        c.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        c.read_to_string(&mut out).await?;
        Ok::<String, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(5), talk).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("the real haproxy's stats socket: {e}\n")),
        Err(_) => Err("the real haproxy's stats socket did not answer within 5 s\n".into()),
    }
}

fn initial_weight(view: &View, idx: u32) -> u16 {
    view.plan
        .members
        .iter()
        .find(|m| m.index == idx)
        .map(|m| m.conf.weight)
        .unwrap_or(0)
}

/// `backend/server` -> (member id, index).
fn server(view: &View, bs: &str) -> Result<(String, u32), String> {
    let (b, s) = bs
        .split_once('/')
        .ok_or_else(|| "Require 'backend/server'.\n".to_string())?;
    if !view
        .haproxy
        .proxies
        .iter()
        .any(|p| p.name == b && p.kind.has_backend())
    {
        return Err("No such backend.\n".into());
    }
    view.plan
        .members
        .iter()
        .find(|m| m.pool_id == b && m.id == s)
        .map(|m| (m.id.clone(), m.index))
        .ok_or_else(|| "No such server.\n".into())
}

fn parse_weight(w: &str, initial: u16) -> Result<u16, String> {
    let v = match w.strip_suffix('%') {
        Some(p) => p
            .parse::<u32>()
            .map(|p| (initial as u32 * p / 100) as u16)
            .map_err(|_| "Require <weight> or <weight%>.\n".to_string())?,
        None => w
            .parse::<u16>()
            .map_err(|_| "Require <weight> or <weight%>.\n".to_string())?,
    };
    if v > 256 {
        return Err("Absolute weight can only be between 0 and 256 inclusive.\n".into());
    }
    Ok(v)
}

async fn change(
    view: &View,
    requests: &UnboundedSender<Request>,
    member: String,
    change: MemberChange,
) -> Result<String, String> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    requests
        .send(Request {
            loadbalancer: view.id.clone(),
            kind: RequestKind::Member { member, change },
            reply,
        })
        .map_err(|_| "the daemon is stopping\n".to_string())?;
    rx.await
        .map_err(|_| "the daemon is stopping\n".to_string())?
        .map(|()| String::new())
}

async fn connection(
    mut c: UnixStream,
    view: View,
    level: Level,
    requests: UnboundedSender<Request>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !buf.contains(&b'\n') && buf.len() < 16384 {
        match tokio::time::timeout_at(deadline, c.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("");
    let mut out = String::new();
    for cmd in line.split(';') {
        let (a, quit) = answer(&view, level, &requests, cmd.trim()).await;
        out.push_str(&a);
        if quit {
            break;
        }
    }
    let _ = c.write_all(out.as_bytes()).await;
    let _ = c.shutdown().await;
}

/// A stats socket bound under a temporary name next to its path, with its mode and owner:
/// made before the daemon gives up root (as haproxy binds before `setuid`), moved into
/// place by [`serve`] once the load balancer serves. Dropped unserved, it is removed.
pub struct Bound {
    path: PathBuf,
    tmp: PathBuf,
    level: Level,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Binds stats socket `s` under a temporary name (see [`Bound`]).
pub fn bind(s: &StatsSocket) -> anyhow::Result<Bound> {
    let tmp = s.path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name(&s.path),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", tmp.display()))?;
    let bound = Bound {
        path: s.path.clone(),
        tmp: tmp.clone(),
        level: s.level,
        listener: Some(listener),
    };
    if let Some(mode) = s.mode {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    }
    if s.uid.is_some() || s.gid.is_some() {
        let uid = s.uid.as_deref().and_then(|u| {
            nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .map(|u| u.uid)
                .or_else(|| u.parse().ok().map(nix::unistd::Uid::from_raw))
        });
        let gid = s.gid.as_deref().and_then(|g| {
            nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .or_else(|| g.parse().ok().map(nix::unistd::Gid::from_raw))
        });
        nix::unistd::chown(&tmp, uid, gid)?;
    }
    Ok(bound)
}

/// Serves bound socket `b` for the load balancers `running` (the drop-in runs one): renamed
/// into place, so the path always answers (across `-sf` too). Starts the sampler behind
/// `smax` and the rates.
pub fn serve(
    mut b: Bound,
    ha: &HaConfig,
    running: &[Instance],
    requests: UnboundedSender<Request>,
    global_maxconn: Option<u32>,
    child: Option<PathBuf>,
) -> anyhow::Result<()> {
    let Some(inst) = running.first() else {
        anyhow::bail!("no load balancer to report on");
    };
    let state_dir = inst.state_dir().to_path_buf();
    let mut view = View {
        id: inst.lb.id.clone(),
        pin_dir: inst.pin_dir(),
        state_dir,
        plan: inst.plan.clone(),
        haproxy: ha.clone(),
        board: inst.board.clone(),
        global_maxconn,
        child,
        started: Instant::now(),
        start_unix: unix_now(),
        samples: Arc::default(),
    };
    if let Ok(text) = std::fs::read(view.samples_path()) {
        if let Ok(prev) = serde_json::from_slice::<Samples>(&text) {
            view.samples = Arc::new(Mutex::new(prev));
        }
    }
    std::fs::rename(&b.tmp, &b.path)
        .map_err(|e| anyhow::anyhow!("moving the socket to {}: {e}", b.path.display()))?;
    let listener = b.listener.take().expect("served once");
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let level = b.level;
    let v = view.clone();
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(connection(c, v.clone(), level, requests.clone()));
        }
    });
    tokio::spawn(sample(view));
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sock".into())
}

/// Every second: the maxima of current sessions and the session rates, kept on disk so
/// that a process started with `-sf` carries them on.
async fn sample(view: View) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok((listeners, members)) = read(&view) else {
            continue;
        };
        let mut rows: Vec<(String, Tally)> = Vec::new();
        for p in &view.haproxy.proxies {
            if p.kind.has_frontend() {
                let t = view
                    .plan
                    .listeners
                    .iter()
                    .filter(|l| frontend_of(&l.id) == p.name)
                    .filter_map(|l| listeners.get(&l.id))
                    .fold(Tally::default(), |a, (t, _)| add(a, *t));
                rows.push((p.name.clone(), t));
            }
            if p.kind.has_backend() {
                let mut be = Tally::default();
                for m in view.plan.members.iter().filter(|m| m.pool_id == p.name) {
                    if let Some((t, _)) = members.get(&m.index) {
                        rows.push((format!("{}/{}", p.name, m.id), *t));
                        be = add(be, *t);
                    }
                }
                if p.kind == Kind::Backend || p.kind == Kind::Listen {
                    rows.push((p.name.clone(), be));
                }
            }
        }
        let snapshot = {
            let mut s = view.samples.lock().unwrap();
            for (k, t) in rows {
                let m = s.smax.entry(k.clone()).or_default();
                *m = (*m).max(t.scur);
                let last = s.last_tot.insert(k.clone(), t.stot);
                let rate = last.map_or(0, |l| t.stot.saturating_sub(l));
                s.rate.insert(k.clone(), rate);
                let rm = s.rate_max.entry(k).or_default();
                *rm = (*rm).max(rate);
            }
            s.clone()
        };
        if let Ok(json) = serde_json::to_vec(&snapshot) {
            let path = view.samples_path();
            let tmp = path.with_extension("stats-samples.tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(tmp, path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{MemberConf, MEMBER_F_ENABLED, MEMBER_F_UP};

    #[test]
    fn server_status_words_as_haproxy_uses_them() {
        let conf = |flags, weight| MemberConf {
            flags,
            weight,
            ..Default::default()
        };
        let info = |up, progress| CheckInfo {
            up,
            progress,
            rise: 2,
            fall: 3,
            ..Default::default()
        };
        let up = MEMBER_F_ENABLED | MEMBER_F_UP;
        assert_eq!(server_status(&conf(up, 1), Some(&info(true, 0))), "UP");
        assert_eq!(server_status(&conf(up, 1), Some(&info(true, 1))), "UP 1/3");
        assert_eq!(
            server_status(&conf(MEMBER_F_ENABLED, 1), Some(&info(false, 0))),
            "DOWN"
        );
        assert_eq!(
            server_status(&conf(MEMBER_F_ENABLED, 1), Some(&info(false, 1))),
            "DOWN 1/2"
        );
        assert_eq!(server_status(&conf(up, 1), None), "no check");
        assert_eq!(server_status(&conf(MEMBER_F_UP, 1), None), "MAINT");
        assert_eq!(server_status(&conf(up, 0), Some(&info(true, 0))), "DRAIN");
    }

    #[test]
    fn weights_absolute_and_relative() {
        assert_eq!(parse_weight("50%", 4), Ok(2));
        assert_eq!(parse_weight("7", 4), Ok(7));
        assert!(parse_weight("300", 4).is_err());
    }

    #[test]
    fn the_header_is_haproxy_2_6_s() {
        assert_eq!(COLUMNS.len(), 128);
        assert_eq!(COLUMNS[..5], ["pxname", "svname", "qcur", "qmax", "scur"]);
        assert_eq!(COLUMNS[32], "type");
    }
}
