//! haproxy's configuration as haproxy reads it: sections `global`, `defaults`, `frontend`,
//! `backend` and `listen`; each proxy starts from the last `defaults` section before it.
//!
//! Every keyword is one of:
//! - *mapped* onto lb's model (bind, mode tcp, balance, maxconn, retries, timeouts, server and
//!   its check settings, option httpchk / ssl-hello-chk, stick on src, ...);
//! - *without L4 effect* for lb (logging, process tuning, TCP keepalive options, ...):
//!   accepted, listed in [`NO_L4_EFFECT`];
//! - *L7*: only an L7 proxy can serve it (`mode http`, `ssl crt`, cookies, `redirect`,
//!   `option forwardfor`, ...): the whole config goes to the real haproxy;
//! - anything else is refused with its file, line and keyword, as haproxy refuses a keyword it
//!   does not know. Nothing is ignored silently.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use super::tokens::Line;

/// Why a config cannot be served by lb, with where (`file:line`; empty when it is about the
/// configuration as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub at: String,
    pub keyword: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.at.is_empty() {
            write!(f, "{}: ", self.at)?;
        }
        write!(f, "'{}': {}", self.keyword, self.reason)
    }
}

fn refuse(l: &Line, keyword: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        at: l.at(),
        keyword: keyword.into(),
        reason: reason.into(),
    }
}

/// The first thing in a config that needs an L7 proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7 {
    pub at: String,
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    #[default]
    User,
    Operator,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSocket {
    pub path: PathBuf,
    /// Permissions of the socket file (octal in the config).
    pub mode: Option<u32>,
    pub level: Level,
    pub uid: Option<String>,
    pub gid: Option<String>,
}

/// A `log` line: where and how haproxy would send its logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub target: String,
    pub facility: String,
    pub level: Option<String>,
    pub min_level: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Global {
    pub daemon: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub logs: Vec<Log>,
    pub maxconn: Option<u32>,
    pub stats_sockets: Vec<StatsSocket>,
    pub pidfile: Option<PathBuf>,
    /// `external-check` / `insecure-fork-wanted`.
    pub external_check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    StaticRoundRobin,
    LeastConn,
    Source,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::StaticRoundRobin => "static-rr",
            Balance::LeastConn => "leastconn",
            Balance::Source => "source",
        }
    }
}

/// `option httpchk [<method>] [<uri>] [<version>]` and `http-check expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub method: String,
    pub uri: String,
    pub version: String,
    /// `http-check expect [!] status|rstatus <pattern>`; None: any 2xx or 3xx (haproxy).
    pub expect: Option<Expect>,
    /// `http-check send hdr Host <name>`: the Host header of the request.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub negate: bool,
    /// `rstatus` (a regular expression) rather than `status` (a code or codes).
    pub regex: bool,
    pub pattern: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckKind {
    #[default]
    Tcp,
    Http(HttpCheck),
    SslHello,
    /// `option external-check`: haproxy forks `external-check command` per check. lb maps
    /// Octavia's `ping-wrapper.sh` (a PING monitor) onto its own ICMP echo check; any other
    /// command is refused where the backend is converted.
    External,
}

/// Server settings, from `default-server` and each `server` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerParams {
    pub weight: u16,
    pub check: bool,
    pub inter: Duration,
    pub rise: u32,
    pub fall: u32,
    pub port: Option<u16>,
    pub addr: Option<IpAddr>,
    pub backup: bool,
    pub disabled: bool,
    /// `observe layer4`: connection errors count (passive health).
    pub observe: bool,
    /// `error-limit` (haproxy's default 10).
    pub error_limit: u32,
    /// `check-ssl`: the check runs over TLS (Octavia's HTTPS monitor).
    pub check_ssl: bool,
}

impl Default for ServerParams {
    /// haproxy's defaults: weight 1, inter 2s, rise 2, fall 3.
    fn default() -> Self {
        ServerParams {
            weight: 1,
            check: false,
            inter: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            port: None,
            addr: None,
            backup: false,
            disabled: false,
            observe: false,
            error_limit: 10,
            check_ssl: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub params: ServerParams,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// None: every address (`*`, `0.0.0.0`, or none given).
    pub address: Option<IpAddr>,
    pub port: u16,
    pub at: String,
}

/// `stick-table type ip|ipv6 size N [expire T] [peers P]` with `stick on src`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stick {
    pub size: u64,
    pub expire: Option<Duration>,
    /// `peers <section>`: haproxy would sync the table there.
    pub peers: Option<String>,
}

/// What a proxy inherits from `defaults` and may set itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub http_mode: bool,
    pub balance: Balance,
    pub retries: u32,
    pub redispatch: bool,
    pub timeout_connect: Option<Duration>,
    pub timeout_client: Option<Duration>,
    pub timeout_server: Option<Duration>,
    pub timeout_check: Option<Duration>,
    pub maxconn: Option<u32>,
    pub check: CheckKind,
    pub allbackups: bool,
    /// `external-check command <path>`.
    pub external_command: Option<String>,
    pub server: ServerParams,
    pub log: bool,
    pub tcplog: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            http_mode: false,
            balance: Balance::RoundRobin,
            retries: 3,
            redispatch: false,
            timeout_connect: None,
            timeout_client: None,
            timeout_server: None,
            timeout_check: None,
            maxconn: None,
            check: CheckKind::Tcp,
            allbackups: false,
            external_command: None,
            server: ServerParams::default(),
            log: false,
            tcplog: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Frontend,
    Backend,
    Listen,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::Backend => "backend",
            Kind::Listen => "listen",
        }
    }
    pub fn has_frontend(self) -> bool {
        matches!(self, Kind::Frontend | Kind::Listen)
    }
    pub fn has_backend(self) -> bool {
        matches!(self, Kind::Backend | Kind::Listen)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub kind: Kind,
    pub name: String,
    pub at: String,
    pub disabled: bool,
    pub params: Params,
    pub binds: Vec<Bind>,
    pub default_backend: Option<String>,
    pub servers: Vec<Server>,
    pub stick: Option<Stick>,
    pub stick_on_src: bool,
    /// The first line of this proxy only an L7 proxy can serve.
    pub l7: Option<L7>,
    /// The first line of this proxy lb refused.
    pub refused: Option<Refusal>,
}

/// A `peers` section: the haproxies that sync stick tables with each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    pub name: String,
    /// `peer <name> <address>:<port>`, in order.
    pub peers: Vec<(String, std::net::SocketAddr)>,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HaConfig {
    pub global: Global,
    pub proxies: Vec<Proxy>,
    /// `peers` sections (Octavia's ACTIVE_STANDBY amphorae).
    pub peers: Vec<Peers>,
    /// The first line only an L7 proxy can serve: the real haproxy runs this config, whole
    /// or its L7 proxies (`split`).
    pub l7: Option<L7>,
    /// The first L7 need outside any proxy (`defaults`): the whole config is haproxy's.
    pub outside_l7: Option<L7>,
    /// The first refusal outside any proxy.
    pub outside_refused: Option<Refusal>,
}

impl HaConfig {
    pub fn proxy(&self, name: &str) -> Option<&Proxy> {
        self.proxies.iter().find(|p| p.name == name)
    }
}

/// Keywords accepted without any effect on what lb does at L4 (logging is issue 11's;
/// process, thread, buffer and TLS tuning concern haproxy's own process; TCP keepalive and
/// splicing options concern sockets lb does not have: it forwards the ends' packets as they
/// are).
pub const NO_L4_EFFECT: &[&str] = &[
    // global
    "nbproc",
    "nbthread",
    "cpu-map",
    "chroot",
    "ulimit-n",
    "node",
    "description",
    "log-tag",
    "log-send-hostname",
    "quiet",
    "spread-checks",
    "max-spread-checks",
    "hard-stop-after",
    "stats",
    "pidfile",
    "maxpipes",
    "ca-base",
    "crt-base",
    "unix-bind",
    "server-state-file",
    "server-state-base",
    "localpeer",
    "ssl-default-bind-ciphers",
    "ssl-default-bind-options",
    "ssl-default-server-ciphers",
    "ssl-default-server-options",
    "ssl-default-bind-ciphersuites",
    "ssl-default-server-ciphersuites",
    "ssl-dh-param-file",
    "tune.*",
    "noepoll",
    "nopoll",
    "nosplice",
    "nogetaddrinfo",
    "noreuseport",
    "busy-polling",
    "expose-experimental-directives",
    "maxsslconn",
    "maxsslrate",
    "maxcomprate",
    "maxcompcpuusage",
    "maxzlibmem",
    "set-dumpable",
    // proxies
    "option tcplog",
    "option httplog",
    "option dontlognull",
    "option dontlog-normal",
    "option log-health-checks",
    "option log-separate-errors",
    "option logasap",
    "option tcpka",
    "option clitcpka",
    "option srvtcpka",
    "option splice-auto",
    "option splice-request",
    "option splice-response",
    "option contstats",
    "option socket-stats",
    "option independent-streams",
    "option nolinger",
    "option tcp-smart-accept",
    "option tcp-smart-connect",
    "option abortonclose",
    "option redispatch",
    "option allbackups",
    "backlog",
    "grace",
    "id",
    "description",
    "timeout queue",
    "timeout tunnel",
    "timeout http-request",
    "timeout http-keep-alive",
    "timeout tarpit",
    "hash-type",
    "fullconn",
    "email-alert",
    "load-server-state-from-file",
    "log",
    "log-format",
    "log-tag",
];

/// Parses the lines of every `-f` file, in order, as one configuration. A line lb refuses
/// does not end the reading: a configuration that needs an L7 proxy anywhere goes to the
/// real haproxy, whole or in part (`split`), whatever else it holds (`HaConfig::l7`), and
/// only one lb would have to serve itself is refused, at its first refused line. Each L7
/// need and refusal is also kept where it was found: on its proxy, or on the configuration
/// (`global`, `defaults`, other sections).
pub fn parse(lines: &[Line]) -> Result<HaConfig, Refusal> {
    let mut cfg = HaConfig::default();
    let mut defaults = Params::default();
    let mut cur = Cur::None;
    let mut refused: Option<Refusal> = None;
    for l in lines {
        let first = cfg.l7.take();
        let result = parse_line(&mut cfg, &mut defaults, &mut cur, l);
        let noted = cfg.l7.take();
        cfg.l7 = first.or(noted.clone());
        let proxy = match cur {
            Cur::Proxy => cfg.proxies.last_mut(),
            _ => None,
        };
        match proxy {
            Some(p) => {
                if p.l7.is_none() {
                    p.l7 = noted;
                }
                if let Err(e) = &result {
                    p.refused.get_or_insert(e.clone());
                }
            }
            None => {
                if cfg.outside_l7.is_none() {
                    cfg.outside_l7 = noted;
                }
                if let Err(e) = &result {
                    cfg.outside_refused.get_or_insert(e.clone());
                }
            }
        }
        if let Err(e) = result {
            refused.get_or_insert(e);
        }
    }
    match refused {
        Some(e) if cfg.l7.is_none() => Err(e),
        _ => Ok(cfg),
    }
}

/// The section the lines go to.
enum Cur {
    None,
    Global,
    Defaults,
    Proxy,
    Peers,
    /// A section whose header was refused: its lines are not read.
    Refused,
}

fn parse_line(
    cfg: &mut HaConfig,
    defaults: &mut Params,
    cur: &mut Cur,
    l: &Line,
) -> Result<(), Refusal> {
    match l.keyword() {
        "global" => {
            *cur = Cur::Global;
            return Ok(());
        }
        "defaults" => {
            *defaults = Params::default();
            *cur = Cur::Defaults;
            return Ok(());
        }
        "frontend" | "backend" | "listen" => {
            *cur = Cur::Refused;
            let kind = match l.keyword() {
                "frontend" => Kind::Frontend,
                "backend" => Kind::Backend,
                _ => Kind::Listen,
            };
            let Some(name) = l.args().first() else {
                return Err(refuse(l, l.keyword(), "needs a name"));
            };
            if cfg.proxies.iter().any(|p| p.name == *name) {
                return Err(refuse(
                    l,
                    l.keyword(),
                    format!("a proxy named {name} exists already"),
                ));
            }
            let mut p = Proxy {
                kind,
                name: name.clone(),
                at: l.at(),
                disabled: false,
                params: defaults.clone(),
                binds: Vec::new(),
                default_backend: None,
                servers: Vec::new(),
                stick: None,
                stick_on_src: false,
                l7: None,
                refused: None,
            };
            if p.params.http_mode {
                note_l7(&mut cfg.l7, l, "mode http (from defaults)");
            }
            // The old `listen <name> <address:port>` form.
            let mut bad_bind = None;
            if kind == Kind::Listen {
                if let Some(addr) = l.args().get(1) {
                    for a in addr.split(',') {
                        match parse_bind_address(l, a) {
                            Ok(b) => p.binds.push(b),
                            Err(e) => {
                                bad_bind.get_or_insert(e);
                            }
                        }
                    }
                }
            }
            cfg.proxies.push(p);
            *cur = Cur::Proxy;
            return bad_bind.map_or(Ok(()), Err);
        }
        "peers" => {
            cfg.peers.push(Peers {
                name: arg(l, 0, "a name")?.to_string(),
                peers: Vec::new(),
                at: l.at(),
            });
            *cur = Cur::Peers;
            return Ok(());
        }
        "userlist" | "resolvers" | "mailers" | "program" | "http-errors" | "ring" | "cache"
        | "fcgi-app" => {
            *cur = Cur::Refused;
            return Err(refuse(
                l,
                l.keyword(),
                "this section is not supported by lb (mode tcp load balancing only)",
            ));
        }
        _ => {}
    }
    match cur {
        Cur::None => Err(refuse(l, l.keyword(), "outside of any section")),
        Cur::Refused => Ok(()),
        Cur::Peers => {
            let p = cfg.peers.last_mut().expect("a peers section");
            peers_line(p, l)
        }
        Cur::Global => global_line(&mut cfg.global, l),
        Cur::Defaults => {
            let mut dummy = None;
            let r = param_line(defaults, &mut dummy, l, None);
            if let Some(l7) = dummy {
                cfg.l7.get_or_insert(l7);
            }
            r
        }
        Cur::Proxy => {
            let p = cfg.proxies.last_mut().expect("a proxy section");
            proxy_line(p, &mut cfg.l7, l)
        }
    }
}

fn note_l7(l7: &mut Option<L7>, l: &Line, what: &str) {
    if l7.is_none() {
        *l7 = Some(L7 {
            at: l.at(),
            what: what.into(),
        });
    }
}

fn no_l4_effect(key: &str) -> bool {
    NO_L4_EFFECT
        .iter()
        .any(|k| *k == key || (k.ends_with(".*") && key.starts_with(&k[..k.len() - 1])))
}

fn arg<'a>(l: &'a Line, i: usize, what: &str) -> Result<&'a str, Refusal> {
    l.args()
        .get(i)
        .map(String::as_str)
        .ok_or_else(|| refuse(l, l.keyword(), format!("expects {what}")))
}

fn number<T: std::str::FromStr>(l: &Line, key: &str, v: &str) -> Result<T, Refusal> {
    v.parse()
        .map_err(|_| refuse(l, key, format!("'{v}' is not a valid number")))
}

/// A haproxy time: a number with an optional unit (us, ms, s, m, h, d); milliseconds by
/// default.
pub fn time(l: &Line, key: &str, v: &str) -> Result<Duration, Refusal> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| refuse(l, key, format!("'{v}' is not a valid time")))?;
    Ok(match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(refuse(l, key, format!("'{v}': unknown time unit '{unit}'"))),
    })
}

/// A haproxy size: a number with an optional k, m or g.
fn size(l: &Line, key: &str, v: &str) -> Result<u64, Refusal> {
    let (n, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1024),
        Some('m' | 'M') => (&v[..v.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    Ok(number::<u64>(l, key, n)? * mult)
}

fn global_line(g: &mut Global, l: &Line) -> Result<(), Refusal> {
    let key = l.keyword();
    match key {
        "daemon" => g.daemon = true,
        "user" | "uid" => g.user = Some(arg(l, 0, "a user")?.into()),
        "group" | "gid" => g.group = Some(arg(l, 0, "a group")?.into()),
        "maxconn" => g.maxconn = Some(number(l, key, arg(l, 0, "a number")?)?),
        "log" => g.logs.push(parse_log(l)?),
        "pidfile" => g.pidfile = Some(arg(l, 0, "a path")?.into()),
        "stats" if l.args().first().map(String::as_str) == Some("socket") => {
            g.stats_sockets.push(parse_stats_socket(l)?)
        }
        "master-worker" => {
            return Err(refuse(
                l,
                key,
                "lb runs as one daemon process (no master-worker mode)",
            ))
        }
        "maxconnrate" | "maxsessrate" => {
            return Err(refuse(l, key, "lb does not limit connection rates"))
        }
        "lua-load" | "lua-prepend-path" => return Err(refuse(l, key, "lb runs no Lua")),
        // What haproxy needs to fork `external-check` commands; lb runs the one it maps
        // (Octavia's ping wrapper) itself.
        "external-check" | "insecure-fork-wanted" => g.external_check = true,
        k if no_l4_effect(k) => {}
        _ => return Err(refuse(l, key, "unknown keyword in section 'global'")),
    }
    Ok(())
}

fn peers_line(p: &mut Peers, l: &Line) -> Result<(), Refusal> {
    match l.keyword() {
        "peer" | "server" => {
            let name = arg(l, 0, "a name")?.to_string();
            // `server <name>` without an address is the local peer (haproxy 2.x).
            let Some(a) = l.args().get(1) else {
                return Ok(());
            };
            let (host, port) = split_host_port(a);
            let addr = host
                .parse::<IpAddr>()
                .ok()
                .zip(port.and_then(|p| p.parse::<u16>().ok()))
                .ok_or_else(|| refuse(l, l.keyword(), format!("{a}: expects <address>:<port>")))?;
            p.peers.push((name, addr.into()));
        }
        "disabled" | "enabled" | "enable" | "log" | "bind" | "default-bind" | "default-server"
        | "shards" | "table" => {}
        k => return Err(refuse(l, k, "unknown keyword in section 'peers'")),
    }
    Ok(())
}

fn parse_log(l: &Line) -> Result<Log, Refusal> {
    let target = arg(l, 0, "a target")?.to_string();
    if target == "global" {
        return Ok(Log {
            target,
            facility: String::new(),
            level: None,
            min_level: None,
        });
    }
    // Optional `len N` and `format F` between the target and the facility.
    let mut rest: Vec<&String> = l.args()[1..].iter().collect();
    while rest
        .first()
        .is_some_and(|w| *w == "len" || *w == "format" || *w == "sample")
    {
        rest.drain(..2.min(rest.len()));
    }
    let facility = rest
        .first()
        .ok_or_else(|| refuse(l, "log", "expects a facility"))?
        .to_string();
    Ok(Log {
        target,
        facility,
        level: rest.get(1).map(|s| s.to_string()),
        min_level: rest.get(2).map(|s| s.to_string()),
    })
}

fn parse_stats_socket(l: &Line) -> Result<StatsSocket, Refusal> {
    let path = arg(l, 1, "a path")?;
    if path.contains(':') && !path.starts_with('/') {
        return Err(refuse(
            l,
            "stats socket",
            format!("{path}: lb serves its stats socket on a unix path only"),
        ));
    }
    let mut s = StatsSocket {
        path: path.into(),
        mode: None,
        level: Level::User,
        uid: None,
        gid: None,
    };
    let mut rest = l.args()[2..].iter();
    while let Some(k) = rest.next() {
        let mut v = || {
            rest.next()
                .map(String::as_str)
                .ok_or_else(|| refuse(l, k, "expects a value"))
        };
        match k.as_str() {
            "mode" => {
                let m = v()?;
                s.mode = Some(
                    u32::from_str_radix(m, 8)
                        .map_err(|_| refuse(l, "mode", format!("'{m}' is not an octal mode")))?,
                )
            }
            "level" => {
                s.level = match v()? {
                    "user" => Level::User,
                    "operator" => Level::Operator,
                    "admin" => Level::Admin,
                    o => return Err(refuse(l, "level", format!("unknown level '{o}'"))),
                }
            }
            "user" | "uid" => s.uid = Some(v()?.into()),
            "group" | "gid" => s.gid = Some(v()?.into()),
            "expose-fd" | "process" | "thread" | "name" | "severity-output" => {
                v()?;
            }
            other => {
                return Err(refuse(l, other, "unknown 'stats socket' setting"));
            }
        }
    }
    Ok(s)
}

/// A line of a proxy section.
fn proxy_line(p: &mut Proxy, l7: &mut Option<L7>, l: &Line) -> Result<(), Refusal> {
    let key = l.keyword();
    let frontend = |what: &str| -> Result<(), Refusal> {
        if p.kind.has_frontend() {
            Ok(())
        } else {
            Err(refuse(
                l,
                what,
                format!("not allowed in a {} section", p.kind.name()),
            ))
        }
    };
    let backend = |what: &str| -> Result<(), Refusal> {
        if p.kind.has_backend() {
            Ok(())
        } else {
            Err(refuse(
                l,
                what,
                format!("not allowed in a {} section", p.kind.name()),
            ))
        }
    };
    match key {
        "bind" => {
            frontend(key)?;
            let addrs = arg(l, 0, "an address")?;
            for a in addrs.split(',') {
                p.binds.push(parse_bind_address(l, a)?);
            }
            bind_options(l, l7)?;
        }
        "default_backend" => {
            frontend(key)?;
            p.default_backend = Some(arg(l, 0, "a backend")?.into());
        }
        "use_backend" => {
            return Err(refuse(l, key, "lb sends a listener's connections to its default_backend only (no content switching)"));
        }
        "disabled" => p.disabled = true,
        "enabled" => p.disabled = false,
        "server" => {
            backend(key)?;
            let s = parse_server(l, &p.params.server, l7)?;
            if p.servers.iter().any(|x| x.name == s.name) {
                return Err(refuse(
                    l,
                    key,
                    format!("a server named {} exists already in {}", s.name, p.name),
                ));
            }
            p.servers.push(s);
        }
        "stick-table" => {
            backend(key)?;
            p.stick = Some(parse_stick_table(l)?);
        }
        "stick" => {
            backend(key)?;
            match l
                .args()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["on", "src"] => p.stick_on_src = true,
                ["on", other, ..] | ["match", other, ..] | ["store-request", other, ..]
                    if other.contains("cook")
                        || other.starts_with("req.")
                        || other.starts_with("res.") =>
                {
                    note_l7(l7, l, "stick on a cookie or HTTP content")
                }
                ["store-response", ..] => note_l7(l7, l, "stick store-response"),
                _ => {
                    return Err(refuse(
                        l,
                        key,
                        "lb sticks on the client's source address only ('stick on src')",
                    ))
                }
            }
        }
        _ => {
            let mut found = None;
            param_line(&mut p.params, &mut found, l, Some(p.kind))?;
            if let Some(x) = found {
                l7.get_or_insert(x);
            }
        }
    }
    Ok(())
}

/// A line that `defaults` may hold too (`kind` None) or a proxy inherits.
fn param_line(
    params: &mut Params,
    l7: &mut Option<L7>,
    l: &Line,
    kind: Option<Kind>,
) -> Result<(), Refusal> {
    let key = l.keyword();
    let words: Vec<&str> = l.words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["mode", "tcp"] => params.http_mode = false,
        ["mode", "http"] => {
            params.http_mode = true;
            if kind.is_some() {
                note_l7(l7, l, "mode http");
            }
        }
        ["mode", other] => return Err(refuse(l, key, format!("unknown mode '{other}'"))),
        ["balance", alg, rest @ ..] => {
            params.balance = match *alg {
                "roundrobin" => Balance::RoundRobin,
                "static-rr" => Balance::StaticRoundRobin,
                "leastconn" => Balance::LeastConn,
                "source" => Balance::Source,
                "uri" | "url_param" | "hdr" | "rdp-cookie" => {
                    note_l7(l7, l, &format!("balance {alg}"));
                    params.balance
                }
                other => {
                    return Err(refuse(l, key, format!("lb balances by roundrobin, static-rr, leastconn or source, not '{other}'")))
                }
            };
            if !rest.is_empty() && !matches!(*alg, "uri" | "url_param" | "hdr" | "rdp-cookie") {
                return Err(refuse(l, key, format!("'{alg}' takes no arguments")));
            }
        }
        ["retries", n] => params.retries = number(l, key, n)?,
        ["maxconn", n] => params.maxconn = Some(number(l, key, n)?),
        ["timeout", which, v] => {
            let t = time(l, key, v)?;
            match *which {
                "connect" | "contimeout" => params.timeout_connect = Some(t),
                "client" | "clitimeout" => params.timeout_client = Some(t),
                "server" | "srvtimeout" => params.timeout_server = Some(t),
                "check" => params.timeout_check = Some(t),
                "client-fin" | "server-fin" => {
                    return Err(refuse(l, &format!("timeout {which}"), "lb applies timeout client/server to half-closed connections too; it has no separate FIN timeouts"))
                }
                w if no_l4_effect(&format!("timeout {w}")) => {}
                other => return Err(refuse(l, key, format!("unknown timeout '{other}'"))),
            }
        }
        ["option", "httpchk", rest @ ..] => {
            let (method, uri, version) = match rest {
                [] => ("OPTIONS", "/", "HTTP/1.0"),
                [uri] => ("OPTIONS", *uri, "HTTP/1.0"),
                [m, uri] => (*m, *uri, "HTTP/1.0"),
                [m, uri, v, ..] => (*m, *uri, *v),
            };
            let (expect, host) = match &params.check {
                CheckKind::Http(h) => (h.expect.clone(), h.host.clone()),
                _ => (None, None),
            };
            params.check = CheckKind::Http(HttpCheck {
                method: method.into(),
                uri: uri.into(),
                version: version.into(),
                expect,
                host,
            });
        }
        ["option", "ssl-hello-chk"] => params.check = CheckKind::SslHello,
        ["option", "tcp-check"] | ["tcp-check", ..] => {
            return Err(refuse(l, key, "lb checks by TCP connect, HTTP (option httpchk) or TLS hello (option ssl-hello-chk); tcp-check rules are not supported"))
        }
        ["option", "external-check"] => params.check = CheckKind::External,
        ["external-check", "command", cmd] => params.external_command = Some(cmd.to_string()),
        ["external-check", "path", _] => {}
        ["tcp-request", "inspect-delay", v] => {
            // Delays content rules; with none (lb refuses them), it has no effect.
            time(l, "tcp-request inspect-delay", v)?;
        }
        ["option", chk @ ("mysql-check" | "pgsql-check" | "redis-check" | "smtpchk" | "ldap-check" | "spop-check"), ..] => {
            return Err(refuse(l, &format!("option {chk}"), "lb checks by TCP connect, HTTP (option httpchk) or TLS hello (option ssl-hello-chk)"))
        }
        ["http-check", "expect", rest @ ..] => {
            let (negate, rest) = match rest {
                ["!", r @ ..] => (true, r),
                r => (false, r),
            };
            let e = match rest {
                ["status", p] => Expect { negate, regex: false, pattern: p.to_string() },
                ["rstatus", p] => Expect { negate, regex: true, pattern: p.to_string() },
                [other, ..] => return Err(refuse(l, "http-check expect", format!("lb checks the status only (status or rstatus), not '{other}'"))),
                [] => return Err(refuse(l, "http-check expect", "expects status or rstatus and a pattern")),
            };
            match &mut params.check {
                CheckKind::Http(h) => h.expect = Some(e),
                _ => {
                    params.check = CheckKind::Http(HttpCheck {
                        method: "OPTIONS".into(),
                        uri: "/".into(),
                        version: "HTTP/1.0".into(),
                        expect: Some(e),
                        host: None,
                    })
                }
            }
        }
        ["http-check", "disable-on-404"] => {
            return Err(refuse(l, "http-check disable-on-404", "lb has no drain-on-404 checks"))
        }
        // haproxy 2.2+: the request `option httpchk` sends, set word by word.
        ["http-check", "send", rest @ ..] => {
            let mut h = match &params.check {
                CheckKind::Http(h) => h.clone(),
                _ => HttpCheck {
                    method: "OPTIONS".into(),
                    uri: "/".into(),
                    version: "HTTP/1.0".into(),
                    expect: None,
                    host: None,
                },
            };
            let mut it = rest.iter();
            while let Some(w) = it.next() {
                let mut val = || {
                    it.next()
                        .map(|v| v.to_string())
                        .ok_or_else(|| refuse(l, &format!("http-check send {w}"), "expects a value"))
                };
                match *w {
                    "meth" => h.method = val()?,
                    "uri" => h.uri = val()?,
                    "ver" => h.version = val()?,
                    "hdr" => {
                        let name = val()?;
                        let value = val()?;
                        if !name.eq_ignore_ascii_case("host") {
                            return Err(refuse(l, "http-check send hdr", format!("lb's HTTP check sends a Host header only, not '{name}'")));
                        }
                        h.host = Some(value);
                    }
                    other => {
                        return Err(refuse(l, &format!("http-check send {other}"), "lb's HTTP check sets meth, uri, ver and hdr Host"))
                    }
                }
            }
            params.check = CheckKind::Http(h);
        }
        ["http-check", other, ..] => {
            return Err(refuse(l, &format!("http-check {other}"), "lb supports 'http-check expect [!] status|rstatus' only"))
        }
        ["option", "redispatch"] => params.redispatch = true,
        ["no", "option", "redispatch"] => {
            return Err(refuse(l, "no option redispatch", "lb always redispatches a connection whose server does not answer after its retries"))
        }
        ["option", "allbackups"] => params.allbackups = true,
        // In a TCP proxy haproxy logs `option httplog` as tcplog.
        ["option", "tcplog" | "httplog", ..] => params.tcplog = true,
        ["no", "option", "tcplog" | "httplog"] => params.tcplog = false,
        // HTTP options in `defaults` concern the HTTP proxies that inherit them (haproxy
        // ignores them in a TCP proxy); a proxy that is `mode http` is an L7 need anyway.
        ["option", "forwardfor" | "http-server-close" | "httpclose" | "forceclose" | "http-keep-alive" | "http-pretend-keepalive" | "http-buffer-request" | "http-no-delay" | "http-ignore-probes", ..] if kind.is_none() => {}
        ["option", opt @ ("forwardfor" | "http-server-close" | "httpclose" | "forceclose" | "http-keep-alive" | "http-pretend-keepalive" | "http-buffer-request" | "http-use-proxy-header" | "http_proxy" | "originalto" | "http-no-delay" | "http-ignore-probes" | "checkcache" | "accept-invalid-http-request" | "accept-invalid-http-response" | "h1-case-adjust-bogus-client" | "h1-case-adjust-bogus-server" | "disable-h2-upgrade" | "http-restrict-req-hdr-names"), ..] => {
            note_l7(l7, l, &format!("option {opt}"))
        }
        ["default-server", ..] => {
            let mut s = params.server.clone();
            server_params(l, &mut s, l.args(), l7)?;
            params.server = s;
        }
        ["log", ..] => params.log = true,
        ["no", "log"] => params.log = false,
        ["cookie", ..] | ["appsession", ..] | ["redirect", ..] | ["http-request", ..]
        | ["http-response", ..] | ["http-after-response", ..] | ["capture", ..]
        | ["compression", ..] | ["errorfile", ..] | ["errorloc", ..] | ["errorloc302", ..]
        | ["errorloc303", ..] | ["monitor-uri", ..] | ["monitor", ..] | ["unique-id-format", ..]
        | ["unique-id-header", ..] | ["http-reuse", ..] | ["http-send-name-header", ..]
        | ["reqadd", ..] | ["rspadd", ..] | ["filter", ..] | ["errorfiles", ..] => {
            note_l7(l7, l, key)
        }
        ["stats", ..] if params.http_mode => note_l7(l7, l, "stats (HTTP statistics page)"),
        ["stats", ..] => {
            return Err(refuse(l, key, "the HTTP statistics page needs mode http; lb serves statistics on the stats socket"))
        }
        ["acl", ..] | ["tcp-request", ..] | ["tcp-response", ..] | ["use-server", ..]
        | ["force-persist", ..] | ["ignore-persist", ..] | ["persist", ..] | ["source", ..]
        | ["dispatch", ..] | ["rate-limit", ..] | ["server-template", ..] | ["external-check", ..]
        | ["option", "transparent"] | ["option", "persist"] | ["option", "prefer-last-server"] => {
            return Err(refuse(l, key, "changes how connections are accepted or routed, which lb does not implement"))
        }
        ["option", other, ..] if !no_l4_effect(&format!("option {other}")) => {
            return Err(refuse(l, &format!("option {other}"), "unknown or unsupported option"))
        }
        ["option", ..] => {}
        ["no", "option", other, ..] if no_l4_effect(&format!("option {other}")) => {}
        ["no", ..] => return Err(refuse(l, key, "unsupported 'no' line")),
        [k, ..] if no_l4_effect(k) => {}
        _ => {
            let section = kind.map(Kind::name).unwrap_or("defaults");
            return Err(refuse(l, key, format!("unknown keyword in section '{section}'")));
        }
    }
    Ok(())
}

/// `host:port` as haproxy splits it: the port follows the last colon (`fd00::250:22`,
/// `10.0.0.250:22`), brackets are allowed around an IPv6 host (`[fd00::250]:22`), and an
/// `ipv4@`/`ipv6@` prefix names the family. None for the port when there is no colon.
fn split_host_port(a: &str) -> (&str, Option<&str>) {
    let a = a
        .strip_prefix("ipv4@")
        .or_else(|| a.strip_prefix("ipv6@"))
        .unwrap_or(a);
    if let Some(rest) = a.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
    }
    match a.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (a, None),
    }
}

/// `<addr>:<port>` of a `bind` (or old-style `listen`): `*`, `0.0.0.0`, `::` or nothing for
/// every address; IPv6 as `fd00::250:22` or `[fd00::250]:22`.
fn parse_bind_address(l: &Line, a: &str) -> Result<Bind, Refusal> {
    if a.starts_with("unix@")
        || a.starts_with("abns@")
        || a.starts_with('/')
        || a.starts_with("fd@")
        || a.starts_with("sockpair@")
    {
        return Err(refuse(
            l,
            "bind",
            format!("{a}: lb balances TCP on an IP address and port"),
        ));
    }
    let (host, port) = split_host_port(a);
    let Some(port) = port else {
        return Err(refuse(l, "bind", format!("{a}: expects <address>:<port>")));
    };
    if port.contains('-') {
        return Err(refuse(
            l,
            "bind",
            format!("{a}: port ranges are not supported by lb"),
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| refuse(l, "bind", format!("{a}: '{port}' is not a valid port")))?;
    let address = match host {
        "" | "*" | "0.0.0.0" | "::" => None,
        h => Some(h.parse().map_err(|_| {
            refuse(
                l,
                "bind",
                format!("{a}: lb needs an IPv4 or IPv6 address, not '{h}'"),
            )
        })?),
    };
    Ok(Bind {
        address,
        port,
        at: l.at(),
    })
}

fn bind_options(l: &Line, l7: &mut Option<L7>) -> Result<(), Refusal> {
    let mut words = l.args()[1..].iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "ssl" | "crt" | "crt-list" | "ca-file" | "alpn" | "npn" | "ciphers"
            | "ciphersuites" | "verify" | "no-sslv3" | "no-tlsv10" | "no-tlsv11"
            | "ssl-min-ver" | "ssl-max-ver" | "strict-sni" | "curves" | "ecdhe" => {
                note_l7(l7, l, &format!("bind ... {w} (TLS termination)"));
                return Ok(());
            }
            "name" | "id" | "process" | "thread" | "backlog" | "nice" => {
                words.next();
            }
            "v4v6" | "v6only" | "defer-accept" | "tfo" => {}
            other => {
                return Err(refuse(
                    l,
                    &format!("bind ... {other}"),
                    "unsupported bind setting (it changes how connections are accepted)",
                ));
            }
        }
    }
    Ok(())
}

fn parse_server(l: &Line, defaults: &ServerParams, l7: &mut Option<L7>) -> Result<Server, Refusal> {
    let name = arg(l, 0, "a name")?.to_string();
    let a = arg(l, 1, "an address")?;
    let (host, port) = split_host_port(a);
    let address: IpAddr = host.parse().map_err(|_| {
        refuse(
            l,
            "server",
            format!("{a}: lb needs an IPv4 or IPv6 address (no name resolution), not '{host}'"),
        )
    })?;
    let port = match port {
        None | Some("") => {
            return Err(refuse(
                l,
                "server",
                format!(
                "{a}: lb needs the server's port (haproxy would use the client's destination port)"
            ),
            ))
        }
        Some(p) if p.starts_with('+') || p.starts_with('-') => {
            return Err(refuse(
                l,
                "server",
                format!("{a}: port offsets are not supported by lb"),
            ))
        }
        Some(p) => number::<u16>(l, "server", p)?,
    };
    let mut params = defaults.clone();
    server_params(l, &mut params, &l.args()[2..], l7)?;
    Ok(Server {
        name,
        address,
        port,
        params,
        at: l.at(),
    })
}

fn server_params(
    l: &Line,
    s: &mut ServerParams,
    words: &[String],
    l7: &mut Option<L7>,
) -> Result<(), Refusal> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let mut val = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| refuse(l, w, "expects a value"))
        };
        match w.as_str() {
            "weight" => {
                let v = val()?;
                s.weight = number(l, "weight", v)?;
                if s.weight > 256 {
                    return Err(refuse(l, "weight", format!("{v}: must be 0..=256")));
                }
            }
            "check" => s.check = true,
            "no-check" => s.check = false,
            "inter" | "fastinter" | "downinter" => {
                let t = time(l, w, val()?)?;
                if w == "inter" {
                    s.inter = t;
                }
            }
            "rise" => s.rise = number(l, "rise", val()?)?,
            "fall" => s.fall = number(l, "fall", val()?)?,
            "port" => s.port = Some(number(l, "port", val()?)?),
            "addr" => {
                let v = val()?;
                s.addr = Some(
                    v.parse()
                        .map_err(|_| refuse(l, "addr", format!("'{v}' is not an IP address")))?,
                )
            }
            "backup" => s.backup = true,
            "no-backup" => s.backup = false,
            "observe" => match val()? {
                "layer4" => s.observe = true,
                other => {
                    return Err(refuse(
                        l,
                        "observe",
                        format!("lb observes connections (layer4), not '{other}'"),
                    ))
                }
            },
            "error-limit" => s.error_limit = number(l, "error-limit", val()?)?,
            // Whatever the event, lb takes the member out until its checks pass again.
            "on-error" => match val()? {
                "fastinter" | "fail-check" | "sudden-death" | "mark-down" => {}
                other => {
                    return Err(refuse(
                        l,
                        "on-error",
                        format!("unknown on-error action '{other}'"),
                    ))
                }
            },
            "disabled" => s.disabled = true,
            "enabled" => s.disabled = false,
            "id" | "observe-agent" => {
                val()?;
            }
            "cookie" | "redir" => {
                val()?;
                note_l7(l7, l, &format!("server ... {w}"));
            }
            "ssl" => note_l7(l7, l, "server ... ssl (TLS towards the server)"),
            // The check over TLS (Octavia's HTTPS monitor): lb's TLS-HELLO check.
            "check-ssl" => s.check_ssl = true,
            "no-check-ssl" => s.check_ssl = false,
            // Without `ssl` on the server, `verify` concerns the TLS check only, which lb
            // does not verify either.
            "verify" if !words.iter().any(|x| x == "ssl") => {
                val()?;
            }
            "verify" | "sni" | "ca-file" | "crt" | "alpn" | "ciphers" => {
                val()?;
                note_l7(l7, l, &format!("server ... {w}"));
            }
            // The PROXY protocol header is a proxy's: the real haproxy serves such a pool.
            "send-proxy" | "send-proxy-v2" | "send-proxy-v2-ssl" | "send-proxy-v2-ssl-cn" => {
                note_l7(l7, l, &format!("server ... {w} (PROXY protocol)"))
            }
            "maxconn" | "maxqueue" | "minconn" | "slowstart" | "track" | "agent-check"
            | "agent-port" | "agent-inter" | "agent-addr" | "agent-send" | "on-marked-down"
            | "on-marked-up" | "resolvers" | "init-addr" | "resolve-prefer" | "source"
            | "namespace" | "check-send-proxy" | "proto" | "usesrc" => {
                return Err(refuse(l, &format!("server ... {w}"), "unsupported server setting (it changes how connections reach the server or how it is checked)"));
            }
            other => {
                return Err(refuse(
                    l,
                    &format!("server ... {other}"),
                    "unknown server setting",
                ))
            }
        }
    }
    Ok(())
}

fn parse_stick_table(l: &Line) -> Result<Stick, Refusal> {
    let mut t = None;
    let mut size_v = None;
    let mut expire = None;
    let mut peers = None;
    let mut it = l.args().iter();
    while let Some(w) = it.next() {
        let mut val = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| refuse(l, w, "expects a value"))
        };
        match w.as_str() {
            "type" => t = Some(val()?.to_string()),
            "size" => size_v = Some(size(l, "size", val()?)?),
            "expire" => expire = Some(time(l, "expire", val()?)?),
            // Synced to the named `peers` section by haproxy; lb's persistence entries are
            // its own (the `peers` section is accepted, see `Global::peers`).
            "peers" => peers = Some(val()?.to_string()),
            "nopurge" | "store" | "srvkey" | "len" => {
                return Err(refuse(
                    l,
                    &format!("stick-table ... {w}"),
                    "unsupported stick-table setting",
                ));
            }
            other => {
                return Err(refuse(
                    l,
                    &format!("stick-table ... {other}"),
                    "unknown stick-table setting",
                ))
            }
        }
    }
    if !matches!(t.as_deref(), Some("ip" | "ipv6")) {
        return Err(refuse(
            l,
            "stick-table",
            "lb keeps tables of client addresses only (type ip or ipv6)",
        ));
    }
    Ok(Stick {
        size: size_v.ok_or_else(|| refuse(l, "stick-table", "expects a size"))?,
        expire,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::tokens;

    pub(crate) fn parse_text(text: &str) -> Result<HaConfig, Refusal> {
        parse(&tokens::lines(std::path::Path::new("haproxy.conf"), text).unwrap())
    }

    #[test]
    fn times_and_sizes() {
        let l = Line {
            file: "f".into(),
            number: 1,
            words: vec!["x".into()],
            raw: "x".into(),
        };
        assert_eq!(time(&l, "t", "5000").unwrap(), Duration::from_millis(5000));
        assert_eq!(time(&l, "t", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(time(&l, "t", "2m").unwrap(), Duration::from_secs(120));
        assert!(time(&l, "t", "5x").is_err());
        assert_eq!(size(&l, "s", "10k").unwrap(), 10240);
    }

    #[test]
    fn defaults_are_inherited_by_the_proxies_after_them() {
        let c = parse_text(
            "defaults\n timeout connect 1s\n retries 5\nbackend a\n server s 10.0.0.2:22\n\
             defaults\n retries 1\nbackend b\n timeout connect 2s\n",
        )
        .unwrap();
        let a = &c.proxy("a").unwrap().params;
        assert_eq!(
            (a.timeout_connect, a.retries),
            (Some(Duration::from_secs(1)), 5)
        );
        let b = &c.proxy("b").unwrap().params;
        assert_eq!(
            (b.timeout_connect, b.retries),
            (Some(Duration::from_secs(2)), 1),
            "a new defaults section starts over"
        );
    }

    #[test]
    fn unknown_keywords_are_refused_with_file_line_and_keyword() {
        let e = parse_text("global\n daemon\nfrontend f\n bind 10.0.0.250:22\n frobnicate yes\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "haproxy.conf:5: 'frobnicate': unknown keyword in section 'frontend'"
        );
        let e = parse_text("backend b\n server s 10.0.0.2:22 maxconn 10\n").unwrap_err();
        assert_eq!(e.keyword, "server ... maxconn");
        let e = parse_text("backend b\n balance first\n").unwrap_err();
        assert!(e.reason.contains("not 'first'"), "{e}");
        let e = parse_text("frontend f\n bind *:22 accept-proxy\n").unwrap_err();
        assert_eq!(
            (e.at.as_str(), e.keyword.as_str()),
            ("haproxy.conf:2", "bind ... accept-proxy")
        );
    }

    /// A configuration that needs L7 goes to haproxy whatever lb would refuse in it (the
    /// v2 agent's APP_COOKIE pool: `stick-table type string`, refused for lb, in an HTTP
    /// backend); one without L7 is refused at its first refused line, wherever the rest is.
    #[test]
    fn an_l7_need_anywhere_wins_over_a_refusal() {
        let text = "frontend f\n bind 10.0.0.250:80\n mode http\n default_backend b\n\
                    backend b\n mode http\n stick-table type string len 64 size 10k\n\
                    stick store-response res.cook(JSESSIONID)\n stick match req.cook(JSESSIONID)\n\
                    server m 10.0.0.2:80\n";
        let c = parse_text(text).unwrap();
        assert_eq!(c.l7.unwrap().what, "mode http");
        // The refused line first, the L7 need after it.
        let c = parse_text("backend b\n acl x src 10.0.0.0/8\n cookie SRV insert\n").unwrap();
        assert_eq!(c.l7.unwrap().at, "haproxy.conf:3");
        let e = parse_text("backend b\n acl x src 10.0.0.0/8\n balance first\n").unwrap_err();
        assert_eq!(e.at, "haproxy.conf:2", "the first refusal: {e}");
        // A refused section's lines are not read as another section's.
        let e = parse_text(
            "userlist u\n user a insecure-password x\nbackend b\n server m 10.0.0.2:22\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.at.as_str(), e.keyword.as_str()),
            ("haproxy.conf:1", "userlist")
        );
    }

    #[test]
    fn l7_features_are_noted_not_refused() {
        let c =
            parse_text("frontend f\n bind 10.0.0.250:443 ssl crt /x.pem\n mode http\n").unwrap();
        assert_eq!(c.l7.unwrap().what, "bind ... ssl (TLS termination)");
        let c = parse_text("backend b\n mode tcp\n cookie SRV insert indirect nocache\n").unwrap();
        assert_eq!(c.l7.unwrap().at, "haproxy.conf:3");
        assert!(
            parse_text("frontend f\n option tcplog\n bind 10.0.0.250:22\n")
                .unwrap()
                .l7
                .is_none()
        );
    }

    #[test]
    fn servers_with_their_check_settings() {
        let c = parse_text(
            "backend b\n default-server inter 3s fall 4\n server a 10.0.0.2:22 weight 5 check rise 1\n\
             server b 10.0.0.4:2222 backup disabled port 22 addr 10.0.0.5\n",
        )
        .unwrap();
        let b = c.proxy("b").unwrap();
        let a = &b.servers[0].params;
        assert_eq!(
            (a.weight, a.check, a.inter, a.rise, a.fall),
            (5, true, Duration::from_secs(3), 1, 4)
        );
        let s = &b.servers[1];
        assert_eq!(
            (
                s.port,
                s.params.backup,
                s.params.disabled,
                s.params.port,
                s.params.addr
            ),
            (
                2222,
                true,
                true,
                Some(22),
                Some(std::net::Ipv4Addr::new(10, 0, 0, 5).into())
            )
        );
    }

    /// Every refusal of the configuration reader, with its whole message: (config, message).
    #[test]
    fn every_refusal_names_file_line_keyword_and_why() {
        let b = "backend b\n";
        let cases: &[(String, &str)] = &[
            ("frontend\n".into(), "haproxy.conf:1: 'frontend': needs a name"),
            (format!("{b}backend b\n"), "haproxy.conf:2: 'backend': a proxy named b exists already"),
            ("userlist u\n".into(), "haproxy.conf:1: 'userlist': this section is not supported by lb (mode tcp load balancing only)"),
            ("peers p\n peer a 10.0.0.5\n".into(), "haproxy.conf:2: 'peer': 10.0.0.5: expects <address>:<port>"),
            ("peers p\n frob\n".into(), "haproxy.conf:2: 'frob': unknown keyword in section 'peers'"),
            ("maxconn 10\n".into(), "haproxy.conf:1: 'maxconn': outside of any section"),
            ("global\n user\n".into(), "haproxy.conf:2: 'user': expects a user"),
            ("global\n maxconn lots\n".into(), "haproxy.conf:2: 'maxconn': 'lots' is not a valid number"),
            ("global\n master-worker\n".into(), "haproxy.conf:2: 'master-worker': lb runs as one daemon process (no master-worker mode)"),
            ("global\n maxconnrate 100\n".into(), "haproxy.conf:2: 'maxconnrate': lb does not limit connection rates"),
            ("global\n lua-load /x.lua\n".into(), "haproxy.conf:2: 'lua-load': lb runs no Lua"),
            ("global\n frobnicate\n".into(), "haproxy.conf:2: 'frobnicate': unknown keyword in section 'global'"),
            ("global\n log /dev/log\n".into(), "haproxy.conf:2: 'log': expects a facility"),
            ("global\n stats socket ipv4@127.0.0.1:9999\n".into(), "haproxy.conf:2: 'stats socket': ipv4@127.0.0.1:9999: lb serves its stats socket on a unix path only"),
            ("global\n stats socket /s mode\n".into(), "haproxy.conf:2: 'mode': expects a value"),
            ("global\n stats socket /s mode 999\n".into(), "haproxy.conf:2: 'mode': '999' is not an octal mode"),
            ("global\n stats socket /s level root\n".into(), "haproxy.conf:2: 'level': unknown level 'root'"),
            ("global\n stats socket /s accept-netscaler-cip 1\n".into(), "haproxy.conf:2: 'accept-netscaler-cip': unknown 'stats socket' setting"),
            (format!("{b} bind :22\n"), "haproxy.conf:2: 'bind': not allowed in a backend section"),
            ("frontend f\n server s 10.0.0.2:22\n".into(), "haproxy.conf:2: 'server': not allowed in a frontend section"),
            ("frontend f\n use_backend b if x\n".into(), "haproxy.conf:2: 'use_backend': lb sends a listener's connections to its default_backend only (no content switching)"),
            (format!("{b} server s 10.0.0.2:22\n server s 10.0.0.4:22\n"), "haproxy.conf:3: 'server': a server named s exists already in b"),
            (format!("{b} stick on dst\n"), "haproxy.conf:2: 'stick': lb sticks on the client's source address only ('stick on src')"),
            (format!("{b} mode health\n"), "haproxy.conf:2: 'mode': unknown mode 'health'"),
            (format!("{b} balance first\n"), "haproxy.conf:2: 'balance': lb balances by roundrobin, static-rr, leastconn or source, not 'first'"),
            (format!("{b} balance leastconn 3\n"), "haproxy.conf:2: 'balance': 'leastconn' takes no arguments"),
            (format!("{b} timeout client-fin 1s\n"), "haproxy.conf:2: 'timeout client-fin': lb applies timeout client/server to half-closed connections too; it has no separate FIN timeouts"),
            (format!("{b} timeout forever 1s\n"), "haproxy.conf:2: 'timeout': unknown timeout 'forever'"),
            (format!("{b} timeout connect 5y\n"), "haproxy.conf:2: 'timeout': '5y': unknown time unit 'y'"),
            (format!("{b} timeout connect soon\n"), "haproxy.conf:2: 'timeout': 'soon' is not a valid time"),
            (format!("{b} option tcp-check\n"), "haproxy.conf:2: 'option': lb checks by TCP connect, HTTP (option httpchk) or TLS hello (option ssl-hello-chk); tcp-check rules are not supported"),
            (format!("{b} option mysql-check\n"), "haproxy.conf:2: 'option mysql-check': lb checks by TCP connect, HTTP (option httpchk) or TLS hello (option ssl-hello-chk)"),
            (format!("{b} http-check expect string ok\n"), "haproxy.conf:2: 'http-check expect': lb checks the status only (status or rstatus), not 'string'"),
            (format!("{b} http-check expect\n"), "haproxy.conf:2: 'http-check expect': expects status or rstatus and a pattern"),
            (format!("{b} http-check disable-on-404\n"), "haproxy.conf:2: 'http-check disable-on-404': lb has no drain-on-404 checks"),
            (format!("{b} http-check send meth GET hdr X-A b\n"), "haproxy.conf:2: 'http-check send hdr': lb's HTTP check sends a Host header only, not 'X-A'"),
            (format!("{b} http-check send body x\n"), "haproxy.conf:2: 'http-check send body': lb's HTTP check sets meth, uri, ver and hdr Host"),
            (format!("{b} http-check connect\n"), "haproxy.conf:2: 'http-check connect': lb supports 'http-check expect [!] status|rstatus' only"),
            (format!("{b} no option redispatch\n"), "haproxy.conf:2: 'no option redispatch': lb always redispatches a connection whose server does not answer after its retries"),
            ("listen l :22\n stats enable\n".into(), "haproxy.conf:2: 'stats': the HTTP statistics page needs mode http; lb serves statistics on the stats socket"),
            ("frontend f\n tcp-request content reject\n".into(), "haproxy.conf:2: 'tcp-request': changes how connections are accepted or routed, which lb does not implement"),
            (format!("{b} option transparent\n"), "haproxy.conf:2: 'option': changes how connections are accepted or routed, which lb does not implement"),
            (format!("{b} option frob\n"), "haproxy.conf:2: 'option frob': unknown or unsupported option"),
            (format!("{b} no frob\n"), "haproxy.conf:2: 'no': unsupported 'no' line"),
            ("defaults\n frobnicate\n".into(), "haproxy.conf:2: 'frobnicate': unknown keyword in section 'defaults'"),
            ("frontend f\n bind /run/x.sock\n".into(), "haproxy.conf:2: 'bind': /run/x.sock: lb balances TCP on an IP address and port"),
            ("frontend f\n bind [::]:22-23\n".into(), "haproxy.conf:2: 'bind': [::]:22-23: port ranges are not supported by lb"),
            ("frontend f\n bind 10.0.0.250\n".into(), "haproxy.conf:2: 'bind': 10.0.0.250: expects <address>:<port>"),
            ("frontend f\n bind :80-90\n".into(), "haproxy.conf:2: 'bind': :80-90: port ranges are not supported by lb"),
            ("frontend f\n bind :0\n".into(), "haproxy.conf:2: 'bind': :0: '0' is not a valid port"),
            ("frontend f\n bind lb.example:22\n".into(), "haproxy.conf:2: 'bind': lb.example:22: lb needs an IPv4 or IPv6 address, not 'lb.example'"),
            ("frontend f\n bind :22 accept-proxy\n".into(), "haproxy.conf:2: 'bind ... accept-proxy': unsupported bind setting (it changes how connections are accepted)"),
            (format!("{b} server s 10.0.0.2:22 observe layer7\n"), "haproxy.conf:2: 'observe': lb observes connections (layer4), not 'layer7'"),
            (format!("{b} server s 10.0.0.2:22 observe layer4 on-error restart\n"), "haproxy.conf:2: 'on-error': unknown on-error action 'restart'"),
            (format!("{b} server s\n"), "haproxy.conf:2: 'server': expects an address"),
            (format!("{b} server s m1.example:22\n"), "haproxy.conf:2: 'server': m1.example:22: lb needs an IPv4 or IPv6 address (no name resolution), not 'm1.example'"),
            (format!("{b} server s 10.0.0.2\n"), "haproxy.conf:2: 'server': 10.0.0.2: lb needs the server's port (haproxy would use the client's destination port)"),
            (format!("{b} server s 10.0.0.2:+1\n"), "haproxy.conf:2: 'server': 10.0.0.2:+1: port offsets are not supported by lb"),
            (format!("{b} server s 10.0.0.2:22 weight\n"), "haproxy.conf:2: 'weight': expects a value"),
            (format!("{b} server s 10.0.0.2:22 weight 300\n"), "haproxy.conf:2: 'weight': 300: must be 0..=256"),
            (format!("{b} server s 10.0.0.2:22 addr m1\n"), "haproxy.conf:2: 'addr': 'm1' is not an IP address"),
            (format!("{b} server s 10.0.0.2:22 source 10.0.0.9\n"), "haproxy.conf:2: 'server ... source': unsupported server setting (it changes how connections reach the server or how it is checked)"),
            (format!("{b} server s 10.0.0.2:22 frob\n"), "haproxy.conf:2: 'server ... frob': unknown server setting"),
            (format!("{b} stick-table type ip size 1k nopurge\n"), "haproxy.conf:2: 'stick-table ... nopurge': unsupported stick-table setting"),
            (format!("{b} stick-table type ip size 1k frob\n"), "haproxy.conf:2: 'stick-table ... frob': unknown stick-table setting"),
            (format!("{b} stick-table type string size 1k\n"), "haproxy.conf:2: 'stick-table': lb keeps tables of client addresses only (type ip or ipv6)"),
            (format!("{b} stick-table type ip\n"), "haproxy.conf:2: 'stick-table': expects a size"),
            (format!("{b} stick-table type ip size many\n"), "haproxy.conf:2: 'size': 'many' is not a valid number"),
        ];
        let mut wrong = Vec::new();
        for (text, want) in cases {
            match parse_text(text) {
                Ok(_) => wrong.push(format!("{text:?}: accepted, wanted {want}")),
                Err(e) if e.to_string() != *want => {
                    wrong.push(format!("{text:?}:\n  got    {e}\n  wanted {want}"))
                }
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
