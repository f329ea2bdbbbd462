//! The configuration file: Octavia's object names (loadbalancer -> listener -> pool -> member,
//! healthmonitor), parsed from TOML and validated as a whole before anything is touched.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// A refused configuration: which field, which value, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

/// A connection limit: -1 (unlimited) or a positive number that fits the data path's u32.
fn check_limit(at: &str, v: i64) -> Result<(), ConfigError> {
    if v < -1 || v == 0 || v > u32::MAX as i64 {
        return Err(invalid(at, v, "-1 (unlimited) or a positive number"));
    }
    Ok(())
}

fn invalid(
    field: impl Into<String>,
    value: impl ToString,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: Daemon,
    #[serde(default)]
    pub loadbalancer: Vec<LoadBalancer>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// tc: the data path that is fastest on the veth and tap ports of a network node
    #[default]
    Auto,
    /// native (driver) XDP; on a veth port lb created, its outer end gets an XDP_PASS program
    /// so that XDP_TX frames are received
    Native,
    /// generic (skb) XDP, on any device
    Generic,
    /// the same data path at TC ingress of the port (tcx; clsact on kernels before 6.6): it
    /// handles the stack's GSO super-packets and offloaded checksums whole, where XDP sees
    /// them cut into MTU-sized frames with software checksums
    Tc,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Where maps are pinned: `<bpffs>/<loadbalancer id>/`.
    pub bpffs: String,
    /// Where `lb stats` finds what the daemon runs: `<state_dir>/<loadbalancer id>.json`.
    pub state_dir: String,
    pub xdp_mode: XdpModeChoice,
    /// Flows the conntrack table holds per load balancer.
    pub conntrack_flows: u32,
    /// Where each connection's log line goes when it ends (haproxy's `option tcplog`
    /// format), as haproxy's `log` line names a target: `"/dev/log local0"`,
    /// `"udp@10.0.0.9:514 local1 info"`, `"stderr daemon"`; one string or a list. Empty (the
    /// default): no connection log. Listeners log unless they say `connection_log = false`.
    #[serde(deserialize_with = "one_or_many")]
    pub connection_log: Vec<String>,
    /// `ADDR:PORT` where the daemon serves Prometheus metrics (`GET /metrics`); none by
    /// default. `lb run --metrics-address` overrides it.
    pub metrics_address: Option<std::net::SocketAddr>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            bpffs: "/sys/fs/bpf/lb".into(),
            state_dir: "/run/lb".into(),
            xdp_mode: XdpModeChoice::Auto,
            conntrack_flows: lb_common::DEFAULT_CONNTRACK_FLOWS,
            connection_log: Vec::new(),
            metrics_address: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub id: String,
    /// The network namespace it lives in; `qlbaas-<id>` when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// IPv4 or IPv6; the members of its pools are of the same family.
    pub vip_address: IpAddr,
    /// Absent: 24 for an IPv4 VIP, 64 for an IPv6 one (`LoadBalancer::prefixlen`).
    #[serde(default)]
    pub vip_prefixlen: Option<u8>,
    pub port: Port,
    /// Connections open on all its listeners together (haproxy's global `maxconn`);
    /// -1 = unlimited.
    #[serde(default = "minus_one")]
    pub connection_limit: i64,
    /// Flows its conntrack table holds; absent: `daemon.conntrack_flows`. The table's
    /// buckets take 32 bytes per flow up front; flows take memory as they come.
    #[serde(default)]
    pub conntrack_flows: Option<u32>,
    #[serde(default)]
    pub listener: Vec<Listener>,
    #[serde(default)]
    pub pool: Vec<Pool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Device name inside the namespace (Neutron's `tapXXXXXXXX-XX`).
    pub name: String,
    /// Bridge the outer end joins (created if missing). Ignored when adopting.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Use an existing device of this name (in the node namespace or already in the load
    /// balancer's namespace) instead of creating a veth; it is left in place on teardown.
    #[serde(default)]
    pub adopt: bool,
    /// MAC address for a created port (Neutron's fa:16:3e:...). Random if absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Default route of the namespace (the subnet's router), for members on other subnets.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Whether lb puts the VIP on the port. `false` when something else moves it between
    /// nodes (keepalived's VRRP): lb serves whatever reaches the VIP, and its monitors check
    /// from the node's own address while the VIP is elsewhere.
    #[serde(default = "default_assign_vip")]
    pub assign_vip: bool,
}

fn default_bridge() -> String {
    "br-int".into()
}

fn default_assign_vip() -> bool {
    true
}

#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
}

impl Protocol {
    /// The IP protocol number the data path keys listeners and flows with.
    pub fn number(self) -> u8 {
        match self {
            Protocol::TCP => lb_common::IPPROTO_TCP,
            Protocol::UDP => lb_common::IPPROTO_UDP,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub id: String,
    pub protocol: Protocol,
    pub protocol_port: u16,
    pub default_pool_id: String,
    /// -1 = unlimited (Octavia's convention).
    #[serde(default = "minus_one")]
    pub connection_limit: i64,
    /// ms (HAProxy `timeout client`)
    #[serde(default = "t50000")]
    pub timeout_client_data: u64,
    /// ms (HAProxy `timeout connect`)
    #[serde(default = "t5000")]
    pub timeout_member_connect: u64,
    /// ms (HAProxy `timeout server`)
    #[serde(default = "t50000")]
    pub timeout_member_data: u64,
    /// Retransmitted SYNs before redispatching to another member (HAProxy `retries`).
    #[serde(default = "three")]
    pub retries: u32,
    /// Handshakes in progress on this listener past which lb answers new SYNs itself with
    /// SYN cookies (no flow, no SNAT port, nothing sent to a member until the client's ACK
    /// proves its address). 0 = always; -1 = never.
    #[serde(default = "default_half_open")]
    pub half_open_limit: i64,
    /// UDP listeners: flows this listener may hold at once (0: unlimited). Absent: an equal
    /// share of half the load balancer's table among its UDP listeners, so that a flood of
    /// new source ports at one listener leaves the table to the others.
    #[serde(default)]
    pub flow_limit: Option<u32>,
    /// UDP listeners: new flows per second (0: unlimited). Absent: 20000.
    #[serde(default)]
    pub flow_rate: Option<u32>,
    /// Log this listener's connections where `[daemon] connection_log` says. Absent: on when
    /// the daemon has a connection log (settled when the file is read).
    #[serde(default)]
    pub connection_log: Option<bool>,
    /// Octavia's `allowed_cidrs`: only clients in one of these prefixes (`10.0.0.0/24`, or an
    /// address alone for /32) are balanced; others are dropped without a reply. Empty: all.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
}

/// An `allowed_cidrs` entry of a load balancer whose VIP is `vip`'s family: a prefix
/// (`a.b.c.d/n`, `2001:db8::/n`) with no host bits set, or an address (/32, /128).
pub fn parse_cidr(s: &str, vip: IpAddr) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| "not a prefix (a.b.c.d/n or an IPv6 prefix)".to_string())?;
    if addr.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "an {} prefix on an {} load balancer (its clients are the VIP's family)",
            family(addr),
            family(vip)
        ));
    }
    let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        None => bits,
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(|| format!("the prefix length must be 0..={bits}"))?,
    };
    let masked = mask(addr, len);
    if masked != addr {
        return Err(format!(
            "not a prefix: host bits are set (the prefix is {masked}/{len})"
        ));
    }
    Ok((addr, len))
}

/// `addr` with all but its first `len` bits cleared.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// "IPv4" or "IPv6".
pub fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn default_half_open() -> i64 {
    lb_common::DEFAULT_HALF_OPEN_LIMIT as i64
}

fn minus_one() -> i64 {
    -1
}
fn t50000() -> u64 {
    50_000
}
fn t5000() -> u64 {
    5_000
}
fn three() -> u32 {
    3
}

#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Algorithm {
    LEAST_CONNECTIONS,
    /// Weighted, smooth: picks in proportion to the weights, spread out.
    ROUND_ROBIN,
    /// A consistent (Maglev) hash of the client's address over the members by weight.
    SOURCE_IP,
    /// The same over the client's address and port (OVN's algorithm).
    SOURCE_IP_PORT,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: String,
    pub protocol: Protocol,
    pub lb_algorithm: Algorithm,
    #[serde(default)]
    pub member: Vec<Member>,
    #[serde(default)]
    pub healthmonitor: Option<HealthMonitor>,
    /// A client address keeps its member across connections (Octavia's session
    /// persistence; haproxy's `stick on src`).
    #[serde(default)]
    pub session_persistence: Option<SessionPersistence>,
    /// Passive health: a member whose last this many new connections in a row were refused
    /// (RST to the SYN) or unanswered (past `retries`, or the connect timeout) is out of
    /// selection until its monitor passes a check (or, without a monitor, for 10 s). 0 = off.
    #[serde(default = "ten")]
    pub error_limit: u32,
}

fn ten() -> u32 {
    10
}

#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum PersistenceType {
    SOURCE_IP,
    HTTP_COOKIE,
    APP_COOKIE,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionPersistence {
    #[serde(rename = "type")]
    pub kind: PersistenceType,
    /// Seconds a client keeps its member after its last new connection; absent: until the
    /// table (16384 clients per load balancer, a kernel LRU hash: clients seen once go
    /// before clients that came back) evicts it.
    #[serde(default)]
    pub persistence_timeout: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: String,
    pub address: IpAddr,
    pub protocol_port: u16,
    #[serde(default = "one")]
    pub weight: u16,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub monitor_address: Option<IpAddr>,
    #[serde(default)]
    pub monitor_port: Option<u16>,
    /// Checked as its pool's monitor says, not at all, or with settings of its own (haproxy
    /// configs set check, inter, rise and fall per server).
    #[serde(skip)]
    pub check: MemberCheck,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum MemberCheck {
    #[default]
    Pool,
    Off,
    Own(HealthMonitor),
}

fn one() -> u16 {
    1
}
fn yes() -> bool {
    true
}

#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum MonitorType {
    TCP,
    HTTP,
    /// A TLS ClientHello answered by a ServerHello (haproxy's `option ssl-hello-chk`).
    #[serde(rename = "TLS-HELLO")]
    TLS_HELLO,
    PING,
    /// A datagram to the member's port; an ICMP port unreachable in return means down
    /// (Octavia's UDP-CONNECT, for UDP pools).
    #[serde(rename = "UDP-CONNECT")]
    UDP_CONNECT,
}

/// What an HTTP monitor's answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpExpect {
    /// Octavia's `expected_codes`: codes and ranges (`200`, `200,202`, `200-204`).
    Codes(Vec<(u16, u16)>),
    /// haproxy's `http-check expect [!] status <code>`.
    Status { negate: bool, code: String },
    /// haproxy's `http-check expect [!] rstatus <regex>`.
    Regex { negate: bool, pattern: String },
    /// haproxy's default: any 2xx or 3xx.
    Success,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthMonitor {
    #[serde(rename = "type")]
    pub kind: MonitorType,
    /// seconds between checks (may be fractional)
    pub delay: f64,
    /// seconds a check may take; must be < delay
    pub timeout: f64,
    /// consecutive successes to go up (rise)
    pub max_retries: u32,
    /// consecutive failures to go down (fall)
    #[serde(default = "three")]
    pub max_retries_down: u32,
    /// HTTP monitors: request method and path
    #[serde(default = "get")]
    pub http_method: String,
    #[serde(default = "slash")]
    pub url_path: String,
    /// HTTP monitors: `HTTP/1.0` or `HTTP/1.1` (sent with a Host header)
    #[serde(default = "http10")]
    pub http_version: String,
    /// HTTP monitors: the Host header to send (Octavia's `domain_name`); without it,
    /// HTTP/1.1 requests name the member's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// HTTP monitors: codes and ranges that mean up (`200`, `200,202`, `200-204`)
    #[serde(default = "two_hundred")]
    pub expected_codes: String,
    /// What a drop-in haproxy config expects instead of `expected_codes`.
    #[serde(skip)]
    pub http_expect: Option<HttpExpect>,
    /// A drop-in haproxy config's `timeout check`: seconds the check may wait for its answer
    /// once connected; `timeout` then bounds the connect only (haproxy's semantics).
    #[serde(skip)]
    pub read_timeout: Option<f64>,
}

fn get() -> String {
    "GET".into()
}
fn slash() -> String {
    "/".into()
}
fn http10() -> String {
    "HTTP/1.0".into()
}
fn two_hundred() -> String {
    "200".into()
}

/// Octavia's `expected_codes` as ranges.
pub fn parse_expected_codes(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            ((100..=599).contains(&a) && (a..=599).contains(&b)).then_some((a, b))
        })
        .collect()
}

impl HealthMonitor {
    /// What an HTTP check's answer must be.
    pub fn expectation(&self) -> HttpExpect {
        self.http_expect.clone().unwrap_or_else(|| {
            HttpExpect::Codes(parse_expected_codes(&self.expected_codes).unwrap_or_default())
        })
    }
}

impl HealthMonitor {
    pub fn delay(&self) -> Duration {
        Duration::from_secs_f64(self.delay)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }
}

impl Member {
    pub fn monitor_target(&self) -> (IpAddr, u16) {
        (
            self.monitor_address.unwrap_or(self.address),
            self.monitor_port.unwrap_or(self.protocol_port),
        )
    }
}

impl LoadBalancer {
    /// The VIP's prefix length: as configured, else 24 (IPv4) or 64 (IPv6).
    pub fn prefixlen(&self) -> u8 {
        self.vip_prefixlen
            .unwrap_or(if self.vip_address.is_ipv4() { 24 } else { 64 })
    }

    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| format!("qlbaas-{}", self.id))
    }

    /// The monitor that checks `member` of `pool`, if any.
    pub fn member_monitor<'a>(
        &'a self,
        pool: &'a Pool,
        member: &'a Member,
    ) -> Option<&'a HealthMonitor> {
        match &member.check {
            MemberCheck::Pool => pool.healthmonitor.as_ref(),
            MemberCheck::Off => None,
            MemberCheck::Own(m) => Some(m),
        }
    }
    pub fn pool(&self, id: &str) -> Option<(usize, &Pool)> {
        self.pool.iter().enumerate().find(|(_, p)| p.id == id)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut cfg = cfg;
        cfg.validate()?;
        cfg.settle_connection_log();
        Ok(cfg)
    }

    /// Listeners that do not say whether they log follow `[daemon] connection_log`.
    pub fn settle_connection_log(&mut self) {
        let on = !self.daemon.connection_log.is_empty();
        for lb in &mut self.loadbalancer {
            for l in &mut lb.listener {
                l.connection_log.get_or_insert(on);
            }
        }
    }

    /// Every rule the daemon relies on; the first violation is reported with its field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(Rules {
            monitor_timeout_below_delay: true,
        })
    }

    pub fn validate_with(&self, rules: Rules) -> Result<(), ConfigError> {
        let d = &self.daemon;
        if d.conntrack_flows == 0 || d.conntrack_flows > 8_000_000 {
            return Err(invalid(
                "daemon.conntrack_flows",
                d.conntrack_flows,
                "must be 1..=8000000",
            ));
        }
        for (i, t) in d.connection_log.iter().enumerate() {
            crate::syslog::Target::parse(t).map_err(|why| {
                invalid(format!("daemon.connection_log[{i}]"), format!("{t:?}"), why)
            })?;
        }
        if self.loadbalancer.is_empty() {
            return Err(invalid(
                "loadbalancer",
                "[]",
                "at least one load balancer is required",
            ));
        }
        let mut ids = HashSet::new();
        let mut ports = HashSet::new();
        // Ids are unique per kind: the seed's pool shares its id with the load balancer.
        let mut check_id = |field: String, id: &str| -> Result<(), ConfigError> {
            let kind = field
                .rsplit('.')
                .nth(1)
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("")
                .to_string();
            // A load balancer's id names its pins and state files; the others are names
            // only, and take haproxy's `.` and `:` too (Octavia's backends are
            // `<pool>:<listener>`).
            let lb = kind == "loadbalancer";
            let allowed = |c: char| {
                c.is_ascii_alphanumeric() || c == '-' || c == '_' || (!lb && (c == ':' || c == '.'))
            };
            if id.is_empty() || !id.chars().all(allowed) {
                return Err(invalid(
                    field,
                    format!("{id:?}"),
                    if lb {
                        "ids are non-empty [A-Za-z0-9_-]"
                    } else {
                        "ids are non-empty [A-Za-z0-9_.:-]"
                    },
                ));
            }
            if !ids.insert((kind, id.to_string())) {
                return Err(invalid(field, format!("{id:?}"), "duplicate id"));
            }
            Ok(())
        };
        for (i, lb) in self.loadbalancer.iter().enumerate() {
            let at = format!("loadbalancer[{i}]");
            check_id(format!("{at}.id"), &lb.id)?;
            check_limit(&format!("{at}.connection_limit"), lb.connection_limit)?;
            if let Some(n) = lb.conntrack_flows {
                if n == 0 || n > 8_000_000 {
                    return Err(invalid(
                        format!("{at}.conntrack_flows"),
                        n,
                        "must be 1..=8000000",
                    ));
                }
            }
            if lb.namespace().len() > 200 {
                return Err(invalid(
                    format!("{at}.id"),
                    &lb.id,
                    "too long for a namespace name",
                ));
            }
            let vip = lb.vip_address;
            if !unicast(vip) {
                return Err(invalid(
                    format!("{at}.vip_address"),
                    vip,
                    "not a unicast address",
                ));
            }
            let bits = if vip.is_ipv4() { 32 } else { 128 };
            if let Some(len) = lb.vip_prefixlen {
                if len == 0 || len > bits {
                    return Err(invalid(
                        format!("{at}.vip_prefixlen"),
                        len,
                        format!("must be 1..={bits} for an {} VIP", family(vip)),
                    ));
                }
            }
            let p = &lb.port;
            if p.name.is_empty() || p.name.len() > 15 || p.name.contains(['/', ' ']) {
                return Err(invalid(
                    format!("{at}.port.name"),
                    &p.name,
                    "not a valid interface name (1-15 chars)",
                ));
            }
            if !ports.insert(p.name.clone()) {
                return Err(invalid(
                    format!("{at}.port.name"),
                    &p.name,
                    "port used by two load balancers",
                ));
            }
            if !p.adopt && (p.bridge.is_empty() || p.bridge.len() > 15) {
                return Err(invalid(
                    format!("{at}.port.bridge"),
                    &p.bridge,
                    "not a valid interface name",
                ));
            }
            if let Some(mac) = &p.mac {
                if parse_mac(mac).is_none() {
                    return Err(invalid(
                        format!("{at}.port.mac"),
                        mac,
                        "expected xx:xx:xx:xx:xx:xx",
                    ));
                }
            }
            if let Some(gw) = p.gateway {
                let len = lb.prefixlen();
                if gw.is_ipv4() != vip.is_ipv4() || mask(gw, len) != mask(vip, len) || gw == vip {
                    return Err(invalid(
                        format!("{at}.port.gateway"),
                        gw,
                        format!("must be another address of the VIP's subnet {vip}/{len}"),
                    ));
                }
            }
            if lb.listener.len() > lb_common::MAX_LISTENERS as usize {
                return Err(invalid(
                    format!("{at}.listener"),
                    lb.listener.len(),
                    "too many listeners",
                ));
            }
            if lb.pool.len() > lb_common::MAX_POOLS as usize {
                return Err(invalid(
                    format!("{at}.pool"),
                    lb.pool.len(),
                    "too many pools",
                ));
            }
            let prefixes: usize = lb.listener.iter().map(|l| l.allowed_cidrs.len()).sum();
            if prefixes > lb_common::MAX_ALLOWED_CIDRS as usize {
                return Err(invalid(
                    format!("{at}.listener[*].allowed_cidrs"),
                    prefixes,
                    format!(
                        "at most {} prefixes per load balancer, all listeners together",
                        lb_common::MAX_ALLOWED_CIDRS
                    ),
                ));
            }
            let mut listen_ports = HashSet::new();
            for (j, l) in lb.listener.iter().enumerate() {
                let at = format!("{at}.listener[{j}]");
                if l.connection_log == Some(true) && l.protocol == Protocol::UDP {
                    return Err(invalid(
                        format!("{at}.connection_log"),
                        true,
                        "the connection log is haproxy's tcplog: UDP flows are not logged",
                    ));
                }
                if l.connection_log == Some(true) && d.connection_log.is_empty() {
                    return Err(invalid(
                        format!("{at}.connection_log"),
                        true,
                        "[daemon] connection_log names no target to send the lines to",
                    ));
                }
                for (k, c) in l.allowed_cidrs.iter().enumerate() {
                    parse_cidr(c, vip).map_err(|why| {
                        invalid(format!("{at}.allowed_cidrs[{k}]"), format!("{c:?}"), why)
                    })?;
                }
                check_id(format!("{at}.id"), &l.id)?;
                if l.protocol_port == 0 {
                    return Err(invalid(
                        format!("{at}.protocol_port"),
                        0,
                        "must be 1..=65535",
                    ));
                }
                if !listen_ports.insert((l.protocol, l.protocol_port)) {
                    return Err(invalid(
                        format!("{at}.protocol_port"),
                        l.protocol_port,
                        format!(
                            "VIP port clash: another {:?} listener of this load balancer uses it",
                            l.protocol
                        ),
                    ));
                }
                if l.protocol_port >= 60_000 {
                    return Err(invalid(
                        format!("{at}.protocol_port"),
                        l.protocol_port,
                        "60000-65535 is the namespace's local port range",
                    ));
                }
                check_limit(&format!("{at}.connection_limit"), l.connection_limit)?;
                if l.protocol == Protocol::TCP {
                    for (name, v) in [("flow_limit", l.flow_limit), ("flow_rate", l.flow_rate)] {
                        if let Some(v) = v {
                            return Err(invalid(
                                format!("{at}.{name}"),
                                v,
                                "UDP listeners only (a TCP listener's admission is \
                                 half_open_limit and connection_limit)",
                            ));
                        }
                    }
                }
                if l.half_open_limit < -1 || l.half_open_limit > 8_000_000 {
                    return Err(invalid(
                        format!("{at}.half_open_limit"),
                        l.half_open_limit,
                        "handshakes, 0..=8000000 (0: SYN cookies always; -1: never)",
                    ));
                }
                for (name, v) in [
                    ("timeout_client_data", l.timeout_client_data),
                    ("timeout_member_connect", l.timeout_member_connect),
                    ("timeout_member_data", l.timeout_member_data),
                ] {
                    if v == 0 || v > 86_400_000 {
                        return Err(invalid(
                            format!("{at}.{name}"),
                            v,
                            "milliseconds, 1..=86400000",
                        ));
                    }
                }
                if l.retries > 100 {
                    return Err(invalid(
                        format!("{at}.retries"),
                        l.retries,
                        "must be 0..=100",
                    ));
                }
                match lb.pool(&l.default_pool_id) {
                    None => {
                        return Err(invalid(
                            format!("{at}.default_pool_id"),
                            &l.default_pool_id,
                            "no pool with this id in the load balancer",
                        ))
                    }
                    Some((_, pool)) if pool.protocol != l.protocol => {
                        return Err(invalid(
                            format!("{at}.default_pool_id"),
                            &l.default_pool_id,
                            format!(
                                "a {:?} pool behind a {:?} listener: a pool's protocol is its listener's",
                                pool.protocol, l.protocol
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            for (j, pool) in lb.pool.iter().enumerate() {
                let at = format!("{at}.pool[{j}]");
                check_id(format!("{at}.id"), &pool.id)?;
                if pool.member.len() > lb_common::MAX_POOL_MEMBERS as usize {
                    return Err(invalid(
                        format!("{at}.member"),
                        pool.member.len(),
                        "at most 256 members per pool",
                    ));
                }
                let mut addrs = HashSet::new();
                for (k, m) in pool.member.iter().enumerate() {
                    let at = format!("{at}.member[{k}]");
                    check_id(format!("{at}.id"), &m.id)?;
                    let a = m.address;
                    if !unicast(a) {
                        return Err(invalid(format!("{at}.address"), a, "not a unicast address"));
                    }
                    if a.is_ipv4() != vip.is_ipv4() {
                        return Err(invalid(
                            format!("{at}.address"),
                            a,
                            format!(
                                "an {} member of a load balancer whose VIP is {} ({vip}): a pool's members share the VIP's family",
                                family(a),
                                family(vip)
                            ),
                        ));
                    }
                    if let Some(ma) = m.monitor_address {
                        if ma.is_ipv4() != vip.is_ipv4() || !unicast(ma) {
                            return Err(invalid(
                                format!("{at}.monitor_address"),
                                ma,
                                format!("not a unicast {} address (the VIP's family)", family(vip)),
                            ));
                        }
                    }
                    if a == vip {
                        return Err(invalid(
                            format!("{at}.address"),
                            a,
                            "a member cannot be the VIP",
                        ));
                    }
                    if m.protocol_port == 0 {
                        return Err(invalid(
                            format!("{at}.protocol_port"),
                            0,
                            "must be 1..=65535",
                        ));
                    }
                    if m.weight > 256 {
                        return Err(invalid(format!("{at}.weight"), m.weight, "must be 0..=256"));
                    }
                    if m.monitor_port == Some(0) {
                        return Err(invalid(
                            format!("{at}.monitor_port"),
                            0,
                            "must be 1..=65535",
                        ));
                    }
                    if !addrs.insert((a, m.protocol_port)) {
                        return Err(invalid(
                            format!("{at}.address"),
                            format!("{a}:{}", m.protocol_port),
                            "two members of the pool share address and port",
                        ));
                    }
                }
                if let Some(hm) = &pool.healthmonitor {
                    validate_monitor(hm, &format!("{at}.healthmonitor"), rules)?;
                    let fits = match hm.kind {
                        MonitorType::UDP_CONNECT => pool.protocol == Protocol::UDP,
                        MonitorType::TLS_HELLO => pool.protocol == Protocol::TCP,
                        MonitorType::TCP | MonitorType::HTTP | MonitorType::PING => true,
                    };
                    if !fits {
                        return Err(invalid(
                            format!("{at}.healthmonitor.type"),
                            format!("{:?}", hm.kind).replace('_', "-"),
                            format!("not a monitor for a {:?} pool", pool.protocol),
                        ));
                    }
                }
                if let Some(sp) = &pool.session_persistence {
                    if sp.kind != PersistenceType::SOURCE_IP {
                        return Err(invalid(
                            format!("{at}.session_persistence.type"),
                            format!("{:?}", sp.kind),
                            "cookie persistence needs an L7 proxy; lb keeps SOURCE_IP",
                        ));
                    }
                }
                for (j, m) in pool.member.iter().enumerate() {
                    if let MemberCheck::Own(hm) = &m.check {
                        validate_monitor(hm, &format!("{at}.member[{j}].check"), rules)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// What validation demands beyond the daemon's own needs.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Octavia's rule: a monitor's timeout is below its delay. haproxy's configs may leave
    /// them equal (no `timeout check`: the check may take the whole interval).
    pub monitor_timeout_below_delay: bool,
}

fn validate_monitor(hm: &HealthMonitor, at: &str, rules: Rules) -> Result<(), ConfigError> {
    if !(hm.delay.is_finite() && hm.delay > 0.0 && hm.delay <= 3600.0) {
        return Err(invalid(
            format!("{at}.delay"),
            hm.delay,
            "seconds, > 0 and <= 3600",
        ));
    }
    if !(hm.timeout.is_finite() && hm.timeout > 0.0) {
        return Err(invalid(format!("{at}.timeout"), hm.timeout, "seconds, > 0"));
    }
    if rules.monitor_timeout_below_delay && hm.timeout >= hm.delay {
        return Err(invalid(
            format!("{at}.timeout"),
            hm.timeout,
            format!("must be < delay ({})", hm.delay),
        ));
    }
    if hm.max_retries == 0 || hm.max_retries > 10 {
        return Err(invalid(
            format!("{at}.max_retries"),
            hm.max_retries,
            "must be 1..=10",
        ));
    }
    if hm.max_retries_down == 0 || hm.max_retries_down > 10 {
        return Err(invalid(
            format!("{at}.max_retries_down"),
            hm.max_retries_down,
            "must be 1..=10",
        ));
    }
    if hm.kind == MonitorType::HTTP {
        if hm.http_expect.is_none() && parse_expected_codes(&hm.expected_codes).is_none() {
            return Err(invalid(
                format!("{at}.expected_codes"),
                &hm.expected_codes,
                "codes 100-599 and ranges, e.g. 200, 200,202 or 200-204",
            ));
        }
        if !matches!(hm.http_version.as_str(), "HTTP/1.0" | "HTTP/1.1") {
            return Err(invalid(
                format!("{at}.http_version"),
                &hm.http_version,
                "HTTP/1.0 or HTTP/1.1",
            ));
        }
        if hm.http_method.is_empty() || !hm.url_path.starts_with('/') {
            return Err(invalid(
                format!("{at}.url_path"),
                &hm.url_path,
                "a method and a path starting with /",
            ));
        }
        if let Some(d) = &hm.domain_name {
            if d.is_empty() || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    format!("{at}.domain_name"),
                    d,
                    "a host name without spaces",
                ));
            }
        }
    }
    Ok(())
}

/// A unicast address: not unspecified, multicast, broadcast or loopback.
fn unicast(a: IpAddr) -> bool {
    let broadcast = matches!(a, IpAddr::V4(v) if v.is_broadcast());
    !(a.is_unspecified() || a.is_multicast() || broadcast || a.is_loopback())
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../examples/seed.toml");

    fn with(edit: impl Fn(&str) -> String) -> Result<Config, ConfigError> {
        Config::parse(&edit(SEED), "test.toml")
    }

    fn err(edit: impl Fn(&str) -> String) -> String {
        with(edit)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn seed_config_is_valid_and_complete() {
        let c = Config::parse(SEED, "seed.toml").unwrap();
        let lb = &c.loadbalancer[0];
        assert_eq!(lb.id, "574a31da-a28a-449f-8c9d-3d3687c3c02a");
        assert_eq!(
            lb.namespace(),
            "qlbaas-574a31da-a28a-449f-8c9d-3d3687c3c02a"
        );
        assert_eq!(lb.vip_address, Ipv4Addr::new(10, 0, 0, 250));
        assert_eq!(lb.port.name, "tapfb358342-59");
        assert_eq!(lb.port.bridge, "br-int");
        let l = &lb.listener[0];
        assert_eq!(
            (
                l.protocol_port,
                l.timeout_member_connect,
                l.timeout_client_data,
                l.timeout_member_data
            ),
            (22, 5000, 50000, 50000)
        );
        let p = &lb.pool[0];
        assert_eq!(p.lb_algorithm, Algorithm::LEAST_CONNECTIONS);
        let m: Vec<_> = p
            .member
            .iter()
            .map(|m| (m.address.to_string(), m.protocol_port, m.weight))
            .collect();
        assert_eq!(m, [("10.0.0.2".into(), 22, 1), ("10.0.0.4".into(), 22, 1)]);
        assert_eq!(p.healthmonitor.as_ref().unwrap().kind, MonitorType::TCP);
    }

    #[test]
    fn connection_log_targets_and_listener_switches() {
        let with = |daemon: &str, listener: &str| {
            let text = format!("[daemon]\n{daemon}\n{SEED}").replacen(
                "retries = 3",
                &format!("retries = 3\n{listener}"),
                1,
            );
            Config::parse(&text, "t.toml")
        };
        let on = with("connection_log = \"/dev/log local0\"", "").unwrap();
        assert_eq!(on.loadbalancer[0].listener[0].connection_log, Some(true));
        let plan = crate::plan::plan(&on.loadbalancer[0], None).unwrap();
        assert_eq!(plan.listeners[0].conf.flags, lb_common::LISTENER_F_LOG);
        let off = with(
            "connection_log = [\"/dev/log local0\", \"stderr daemon\"]",
            "connection_log = false",
        )
        .unwrap();
        assert_eq!(off.daemon.connection_log.len(), 2);
        let plan = crate::plan::plan(&off.loadbalancer[0], None).unwrap();
        assert_eq!(plan.listeners[0].conf.flags, 0);
        let none = with("", "").unwrap();
        assert_eq!(none.loadbalancer[0].listener[0].connection_log, Some(false));
        let e = with("", "connection_log = true").unwrap_err().to_string();
        assert!(
            e.contains("listener[0].connection_log") && e.contains("names no target"),
            "{e}"
        );
        let e = with("connection_log = \"/dev/log local9\"", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("daemon.connection_log[0]") && e.contains("\"local9\""),
            "{e}"
        );
    }

    #[test]
    fn allowed_cidrs_must_be_prefixes_of_the_vip_s_family() {
        let with = |v: &str| {
            err(|s| {
                s.replacen(
                    "retries = 3",
                    &format!("retries = 3\nallowed_cidrs = [{v}]"),
                    1,
                )
            })
        };
        for (v, why) in [
            (
                "\"10.0.0.1/24\"",
                "host bits are set (the prefix is 10.0.0.0/24)",
            ),
            ("\"10.0.0.0/33\"", "0..=32"),
            (
                "\"2001:db8::/32\"",
                "an IPv6 prefix on an IPv4 load balancer",
            ),
            ("\"ten/8\"", "not a prefix"),
        ] {
            let e = with(v);
            assert!(
                e.contains("listener[0].allowed_cidrs[0]") && e.contains(why),
                "{v}: {e}"
            );
        }
        let ok = Config::parse(
            &SEED.replacen(
                "retries = 3",
                "retries = 3\nallowed_cidrs = [\"10.0.0.0/8\", \"192.0.2.1\"]",
                1,
            ),
            "t",
        )
        .unwrap();
        let p = crate::plan::plan(&ok.loadbalancer[0], None).unwrap();
        assert_eq!(
            p.listeners[0].allowed_cidrs,
            [
                (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
                (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 32)
            ]
        );
        assert_ne!(
            p.listeners[0].conf.flags & lb_common::LISTENER_F_ALLOWED_CIDRS,
            0
        );
    }

    #[test]
    fn unknown_key_is_refused_naming_it() {
        let e = err(|s| s.replace("weight = 1\n", "weight = 1\nwieght = 2\n"));
        assert!(e.contains("wieght"), "{e}");
    }

    #[test]
    fn bad_address_is_refused() {
        let e = err(|s| s.replace("\"10.0.0.4\"", "\"10.0.0.400\""));
        assert!(e.contains("10.0.0.400") || e.contains("invalid"), "{e}");
    }

    #[test]
    fn duplicate_id_is_refused() {
        let e = err(|s| {
            s.replace(
                "227b69fe-8685-4df6-b2a5-2f964c74886c",
                "45481748-3104-462c-ae4b-fae0f4b08c20",
            )
        });
        assert!(
            e.contains("duplicate id") && e.contains("member[1].id"),
            "{e}"
        );
    }

    #[test]
    fn vip_port_clash_is_refused() {
        let extra = "\n[[loadbalancer.listener]]\nid = \"l2\"\nprotocol = \"TCP\"\nprotocol_port = 22\ndefault_pool_id = \"574a31da-a28a-449f-8c9d-3d3687c3c02a\"\n";
        let e = err(|s| {
            s.replace(
                "[[loadbalancer.pool]]",
                &format!("{extra}\n[[loadbalancer.pool]]"),
            )
        });
        assert!(
            e.contains("listener[1].protocol_port = 22") && e.contains("clash"),
            "{e}"
        );
    }

    #[test]
    fn timeout_not_below_delay_is_refused() {
        let e = err(|s| s.replace("timeout = 3", "timeout = 5"));
        assert!(
            e.contains("healthmonitor.timeout = 5") && e.contains("delay"),
            "{e}"
        );
    }

    #[test]
    fn weight_out_of_range_is_refused() {
        let e = err(|s| s.replacen("weight = 1", "weight = 257", 1));
        assert!(e.contains("member[0].weight = 257"), "{e}");
    }

    #[test]
    fn unknown_pool_reference_is_refused() {
        let e = err(|s| {
            s.replace(
                "default_pool_id = \"574a31da-a28a-449f-8c9d-3d3687c3c02a\"",
                "default_pool_id = \"nope\"",
            )
        });
        assert!(e.contains("default_pool_id = nope"), "{e}");
    }

    #[test]
    fn gateway_outside_the_vip_subnet_is_refused() {
        let ok = with(|s| {
            s.replace(
                "bridge = \"br-int\"",
                "bridge = \"br-int\"\ngateway = \"10.0.0.1\"",
            )
        });
        assert_eq!(
            ok.unwrap().loadbalancer[0].port.gateway,
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        let e = err(|s| {
            s.replace(
                "bridge = \"br-int\"",
                "bridge = \"br-int\"\ngateway = \"10.9.0.1\"",
            )
        });
        assert!(e.contains("port.gateway = 10.9.0.1"), "{e}");
    }

    /// The seed as a DNS load balancer: its listener and pool on UDP port 53.
    fn udp(s: &str) -> String {
        s.replace("protocol = \"TCP\"", "protocol = \"UDP\"")
            .replace("protocol_port = 22", "protocol_port = 53")
    }

    #[test]
    fn udp_listeners_and_pools_go_together() {
        let c = with(|s| udp(s).replace("type = \"TCP\"", "type = \"UDP-CONNECT\"")).unwrap();
        let lb = &c.loadbalancer[0];
        assert_eq!(lb.listener[0].protocol, Protocol::UDP);
        assert_eq!(
            lb.pool[0].healthmonitor.as_ref().unwrap().kind,
            MonitorType::UDP_CONNECT
        );
        // A UDP pool behind the TCP listener, and the other way round.
        let e = err(|s| {
            s.replacen("protocol = \"TCP\"", "protocol = \"UDP\"", 2)
                .replacen("protocol = \"UDP\"", "protocol = \"TCP\"", 1)
        });
        assert!(
            e.contains("listener[0].default_pool_id")
                && e.contains("a UDP pool behind a TCP listener"),
            "{e}"
        );
        let e = err(|s| s.replacen("protocol = \"TCP\"", "protocol = \"UDP\"", 1));
        assert!(e.contains("a TCP pool behind a UDP listener"), "{e}");
        // UDP-CONNECT checks UDP pools only.
        let e = err(|s| s.replace("type = \"TCP\"", "type = \"UDP-CONNECT\""));
        assert!(
            e.contains("pool[0].healthmonitor.type = UDP-CONNECT")
                && e.contains("not a monitor for a TCP pool"),
            "{e}"
        );
        // A TCP and a UDP listener may share a port; two UDP listeners may not.
        let extra = "\n[[loadbalancer.listener]]\nid = \"l2\"\nprotocol = \"UDP\"\nprotocol_port = 22\ndefault_pool_id = \"p2\"\n[[loadbalancer.pool]]\nid = \"p2\"\nprotocol = \"UDP\"\nlb_algorithm = \"ROUND_ROBIN\"\n";
        let both = with(|s| format!("{s}{extra}")).unwrap();
        assert_eq!(both.loadbalancer[0].listener.len(), 2);
        let e = err(|s| format!("{}{}", udp(s), extra.replace("22", "53")));
        assert!(
            e.contains("listener[1].protocol_port = 53") && e.contains("another UDP listener"),
            "{e}"
        );
        // UDP flows are not in the tcplog connection log.
        let e = err(|s| {
            format!(
                "[daemon]\nconnection_log = \"stdout local0\"\n{}",
                udp(s).replacen("retries = 3", "retries = 3\nconnection_log = true", 1)
            )
        });
        assert!(
            e.contains("listener[0].connection_log = true")
                && e.contains("UDP flows are not logged"),
            "{e}"
        );
    }

    /// The seed on an IPv6 VIP.
    fn v6(s: &str) -> String {
        s.replace(
            "vip_address = \"10.0.0.250\"",
            "vip_address = \"2001:db8::fa\"",
        )
        .replace("vip_prefixlen = 24\n", "")
        .replace("\"10.0.0.2\"", "\"2001:db8::2\"")
        .replace("\"10.0.0.4\"", "\"2001:db8::4\"")
    }

    #[test]
    fn ipv6_load_balancers_and_the_family_rule() {
        let c = with(v6).unwrap();
        let lb = &c.loadbalancer[0];
        assert_eq!(lb.prefixlen(), 64, "an IPv6 VIP's default prefix");
        let p = crate::plan::plan(lb, None).unwrap();
        assert!(p.listeners[0].key6.is_some());
        assert_eq!(p.members[0].conf.addr_be, 0);
        assert!(p.members[0].addr6().is_some());
        // A member of the other family, named with its field and value.
        let e = err(|s| v6(s).replacen("\"2001:db8::2\"", "\"10.0.0.2\"", 1));
        assert!(
            e.contains("pool[0].member[0].address = 10.0.0.2")
                && e.contains("an IPv4 member of a load balancer whose VIP is IPv6"),
            "{e}"
        );
        let e = err(|s| s.replacen("\"10.0.0.2\"", "\"2001:db8::2\"", 1));
        assert!(
            e.contains("an IPv6 member of a load balancer whose VIP is IPv4"),
            "{e}"
        );
        // Prefix lengths and allowed prefixes by family.
        let e = err(|s| {
            v6(s).replace(
                "id = \"574a31da-a28a-449f-8c9d-3d3687c3c02a\"\nvip_address",
                "id = \"574a31da-a28a-449f-8c9d-3d3687c3c02a\"\nvip_prefixlen = 129\nvip_address",
            )
        });
        assert!(
            e.contains("vip_prefixlen = 129") && e.contains("1..=128"),
            "{e}"
        );
        let with_cidrs = |v: &str| {
            with(|s| {
                v6(s).replacen(
                    "retries = 3",
                    &format!("retries = 3\nallowed_cidrs = [{v}]"),
                    1,
                )
            })
        };
        assert!(with_cidrs("\"2001:db8::/64\", \"2001:db8:1::1\"").is_ok());
        let e = with_cidrs("\"10.0.0.0/8\"").unwrap_err().to_string();
        assert!(e.contains("an IPv4 prefix on an IPv6 load balancer"), "{e}");
        let e = with_cidrs("\"2001:db8::1/64\"").unwrap_err().to_string();
        assert!(
            e.contains("host bits are set (the prefix is 2001:db8::/64)"),
            "{e}"
        );
    }
}
