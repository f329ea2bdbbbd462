//! A haproxy configuration (`mode tcp`) as one of lb's load balancers:
//!
//! | haproxy | lb |
//! |---|---|
//! | every `bind` address (one VIP; `*` = the namespace's only address) | `vip_address`, and the device holding it as the adopted `port` |
//! | `frontend`/`listen` (each bind port) | listener (id: the proxy's name; `name:port` for a second port) |
//! | `default_backend` | the listener's pool (none yet, or the backend `disabled`: no listener, the port refuses at once) |
//! | `backend`/`listen` | pool (id: its name) |
//! | `balance leastconn / roundrobin, static-rr / source` | `LEAST_CONNECTIONS / ROUND_ROBIN / SOURCE_IP` |
//! | `server name addr:port weight W [backup] [disabled]` | member (id: its name) |
//! | `check`, `inter`, `rise`, `fall`, `port`, `addr`, `timeout check`, `option httpchk`, `http-check expect`, `option ssl-hello-chk` | the member's monitor (TCP, HTTP, TLS-HELLO) |
//! | `timeout connect / client / server` | `timeout_member_connect / timeout_client_data / timeout_member_data` |
//! | `retries` (+ `option redispatch`, which lb always does) | `retries` |
//! | `maxconn` (frontend, capped by global) | the listener's `connection_limit` |
//! | `maxconn` (global) | the load balancer's `connection_limit` (all listeners together) |

use std::{net::IpAddr, time::Duration};

use super::config::{Balance, CheckKind, HaConfig, Proxy, Refusal, Server, StatsSocket};
use crate::config::{
    Algorithm, Config, Daemon, HealthMonitor, HttpExpect, Listener, LoadBalancer, Member,
    MemberCheck, MonitorType, PersistenceType, Pool, Port, Protocol, SessionPersistence,
};

/// What the drop-in needs to know of the network namespace it runs in.
pub trait Namespace {
    /// The device holding `address`, and the address's prefix length.
    fn locate(&self, address: IpAddr) -> Option<(String, u8)>;
    /// The only address of the namespace outside loopback and link-local, if there is
    /// exactly one (what `bind *:port` means on a load balancer's port).
    fn only_address(&self) -> Option<IpAddr>;
    /// A VIP the namespace does not hold, but may bind (`ip_nonlocal_bind`, as Octavia's
    /// amphora sets it): the device whose subnet holds it, and the subnet's prefix length.
    /// On a backup amphora keepalived adds the VIP there when it becomes master.
    fn awaits(&self, _address: IpAddr) -> Option<(String, u8)> {
        None
    }
}

/// A haproxy configuration as lb runs it.
#[derive(Debug, Clone)]
pub struct DropIn {
    pub config: Config,
    /// The haproxy configuration it came from (names and order for the stats socket).
    pub haproxy: HaConfig,
    pub logs: Vec<super::config::Log>,
    pub sockets: Vec<StatsSocket>,
    pub daemon: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub global_maxconn: Option<u32>,
}

/// haproxy's defaults where a config leaves timeouts out (haproxy warns and waits forever;
/// lb's flows need an end): lb's own defaults.
const DEFAULT_CONNECT_MS: u64 = 5_000;
const DEFAULT_DATA_MS: u64 = 50_000;

fn ms(d: Option<Duration>, default: u64) -> u64 {
    d.map(|d| d.as_millis() as u64).unwrap_or(default).max(1)
}

fn refusal(at: &str, keyword: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        at: at.into(),
        keyword: keyword.into(),
        reason: reason.into(),
    }
}

/// Maps `cfg` (which must need no L7) onto one load balancer `id` in namespace `netns`.
pub fn convert(
    cfg: &HaConfig,
    id: &str,
    netns: &str,
    ns: &dyn Namespace,
) -> Result<DropIn, Refusal> {
    let frontends: Vec<&Proxy> = cfg
        .proxies
        .iter()
        .filter(|p| p.kind.has_frontend() && !p.disabled)
        .collect();
    let mut vip: Option<(IpAddr, String)> = None;
    // haproxy logs a frontend's connections in tcplog format when it has a `log` line (`log
    // global` included) and `option tcplog`; lb sends them where `global`'s `log` lines say,
    // each written as lb's `[daemon] connection_log` takes a target.
    let connection_log: Vec<String> = cfg
        .global
        .logs
        .iter()
        .filter(|l| super::syslog::target(l).is_some())
        .map(|l| match &l.level {
            Some(level) => format!("{} {} {level}", l.target, l.facility),
            None => format!("{} {}", l.target, l.facility),
        })
        .collect();
    let mut listeners = Vec::new();
    let mut bound: Vec<u16> = Vec::new();
    for f in &frontends {
        if f.binds.is_empty() {
            if f.kind.has_backend() {
                continue; // a listen section used as a backend only
            }
            return Err(refusal(
                &f.at,
                "frontend",
                format!("{} has no 'bind'", f.name),
            ));
        }
        // A frontend with no backend to send to: none named yet (the agent deploys a
        // listener before its pool), or its backend `disabled` (the pool's admin state
        // down). haproxy accepts each connection and closes it; lb installs no listener for
        // it, so nothing listens on the port and the namespace's stack refuses each
        // connection at once (a RST). Its FRONTEND row stays, at 0.
        let pool: Option<&Proxy> = if f.kind.has_backend() {
            Some(f)
        } else {
            match &f.default_backend {
                None => None,
                Some(b) => {
                    let Some(backend) = cfg.proxy(b).filter(|p| p.kind.has_backend()) else {
                        return Err(refusal(
                            &f.at,
                            "default_backend",
                            format!("no backend named {b}"),
                        ));
                    };
                    (!backend.disabled).then_some(backend)
                }
            }
        };
        for (i, b) in f.binds.iter().enumerate() {
            let address = match b.address {
                Some(a) => a,
                None => ns.only_address().ok_or_else(|| {
                    refusal(&b.at, "bind", "lb balances on one VIP: 'bind *' needs the namespace to hold exactly one address; name it")
                })?,
            };
            match &vip {
                Some((v, at)) if *v != address => {
                    return Err(refusal(
                        &b.at,
                        "bind",
                        format!("lb serves one VIP per load balancer: {address} here, {v} at {at}"),
                    ))
                }
                Some(_) => {}
                None => vip = Some((address, b.at.clone())),
            }
            if bound.contains(&b.port) {
                return Err(refusal(
                    &b.at,
                    "bind",
                    format!("{address}:{} is bound twice", b.port),
                ));
            }
            bound.push(b.port);
            let Some(backend) = pool else {
                continue;
            };
            let global = cfg.global.maxconn;
            let limit = match (f.params.maxconn, global) {
                (Some(a), Some(g)) => a.min(g) as i64,
                (Some(a), None) | (None, Some(a)) => a as i64,
                (None, None) => -1,
            };
            listeners.push(Listener {
                id: if i == 0 {
                    f.name.clone()
                } else {
                    format!("{}:{}", f.name, b.port)
                },
                protocol: Protocol::TCP,
                protocol_port: b.port,
                default_pool_id: backend.name.clone(),
                connection_limit: limit,
                timeout_client_data: ms(f.params.timeout_client, DEFAULT_DATA_MS),
                timeout_member_connect: ms(backend.params.timeout_connect, DEFAULT_CONNECT_MS),
                timeout_member_data: ms(backend.params.timeout_server, DEFAULT_DATA_MS),
                retries: backend.params.retries,
                // The kernel in front of haproxy sends cookies once its SYN queue is full;
                // lb's budget of handshakes plays that part.
                half_open_limit: lb_common::DEFAULT_HALF_OPEN_LIMIT as i64,
                flow_limit: None,
                flow_rate: None,
                allowed_cidrs: Vec::new(),
                connection_log: Some(f.params.log && f.params.tcplog && !connection_log.is_empty()),
            });
        }
    }
    let Some((vip, vip_at)) = vip else {
        return Err(refusal(
            "",
            "frontend",
            "no enabled frontend or listen section binds an address: nothing to serve",
        ));
    };
    let mut pools = Vec::new();
    for b in cfg.proxies.iter().filter(|p| p.kind.has_backend()) {
        pools.push(pool(b)?);
    }
    // -c checks a config anywhere; running needs the VIP here, or a namespace that lets
    // haproxy bind it before it comes (a backup amphora: keepalived moves the VIP).
    let (device, prefix, assign_vip) = match ns.locate(vip) {
        Some((d, p)) => (d, p, true),
        None => {
            let (d, p) = ns.awaits(vip).ok_or_else(|| {
                refusal(&vip_at, "bind", format!("no device in network namespace {netns} holds {vip} (the agent plugs the port and assigns the VIP before it starts haproxy; with ip_nonlocal_bind set, a device on its subnet would do)"))
            })?;
            (d, p, false)
        }
    };
    let lb = LoadBalancer {
        id: id.into(),
        namespace: Some(netns.into()),
        vip_address: vip,
        vip_prefixlen: Some(prefix),
        port: Port {
            name: device,
            bridge: "br-int".into(),
            adopt: true,
            mac: None,
            gateway: None,
            assign_vip,
        },
        connection_limit: cfg.global.maxconn.map_or(-1, |m| m as i64),
        conntrack_flows: conntrack_flows(cfg.global.maxconn),
        listener: listeners,
        pool: pools,
    };
    let config = Config {
        daemon: Daemon {
            connection_log,
            ..Daemon::default()
        },
        loadbalancer: vec![lb],
    };
    config
        .validate_with(crate::config::Rules {
            monitor_timeout_below_delay: false,
        })
        .map_err(|e| refusal("", "config", e.to_string()))?;
    Ok(DropIn {
        config,
        haproxy: cfg.clone(),
        logs: cfg.global.logs.clone(),
        sockets: cfg.global.stats_sockets.clone(),
        daemon: cfg.global.daemon,
        user: cfg.global.user.clone(),
        group: cfg.global.group.clone(),
        global_maxconn: cfg.global.maxconn,
    })
}

fn pool(b: &Proxy) -> Result<Pool, Refusal> {
    let session_persistence = match (&b.stick, b.stick_on_src) {
        (None, false) | (Some(_), false) => None,
        (Some(t), true) => {
            if t.size > lb_common::STICKY_ENTRIES as u64 {
                return Err(refusal(
                    &b.at,
                    "stick-table",
                    format!(
                        "size {}: lb's table holds {} client addresses per load balancer",
                        t.size,
                        lb_common::STICKY_ENTRIES
                    ),
                ));
            }
            Some(SessionPersistence {
                kind: PersistenceType::SOURCE_IP,
                persistence_timeout: t.expire.map(|e| e.as_secs().max(1) as u32),
            })
        }
        (None, true) => {
            return Err(refusal(
                &b.at,
                "stick on src",
                "needs a 'stick-table type ip size N' in the same backend",
            ))
        }
    };
    let backups = b.servers.iter().filter(|s| s.params.backup).count();
    if backups > 1 && !b.params.allbackups {
        let second = b
            .servers
            .iter()
            .filter(|s| s.params.backup)
            .nth(1)
            .expect("two");
        return Err(refusal(&second.at, "backup", "lb uses every backup server at once, as haproxy's 'option allbackups' does; without it haproxy uses only the first: add 'option allbackups' to this backend"));
    }
    // A `disabled` backend is stopped in haproxy: no listener sends to it, and nothing
    // checks its servers.
    let checks = |s: &&Server| s.params.check && !b.disabled;
    let checked: Vec<&Server> = b.servers.iter().filter(checks).collect();
    let pool_monitor = checked.first().map(|s| monitor(b, s)).transpose()?;
    let member = b
        .servers
        .iter()
        .map(|s| {
            let own = checks(&s).then(|| monitor(b, s)).transpose()?;
            Ok(Member {
                id: s.name.clone(),
                address: s.address,
                protocol_port: s.port,
                weight: s.params.weight,
                admin_state_up: !s.params.disabled,
                backup: s.params.backup,
                monitor_address: s.params.addr,
                monitor_port: s.params.port,
                check: match own {
                    None => MemberCheck::Off,
                    Some(m) if Some(&m) == pool_monitor.as_ref() => MemberCheck::Pool,
                    Some(m) => MemberCheck::Own(m),
                },
            })
        })
        .collect::<Result<_, Refusal>>()?;
    Ok(Pool {
        id: b.name.clone(),
        protocol: Protocol::TCP,
        lb_algorithm: match b.params.balance {
            Balance::LeastConn => Algorithm::LEAST_CONNECTIONS,
            Balance::RoundRobin | Balance::StaticRoundRobin => Algorithm::ROUND_ROBIN,
            Balance::Source => Algorithm::SOURCE_IP,
        },
        member,
        healthmonitor: pool_monitor,
        session_persistence,
        error_limit: error_limit(b)?,
    })
}

/// haproxy's passive health, per server (`observe layer4`, `error-limit`), as lb's per pool:
/// off unless the servers observe; they must agree on the limit.
fn error_limit(b: &Proxy) -> Result<u32, Refusal> {
    let observing: Vec<&Server> = b.servers.iter().filter(|s| s.params.observe).collect();
    let Some(first) = observing.first() else {
        return Ok(0);
    };
    if let Some(s) = b
        .servers
        .iter()
        .find(|s| !s.params.observe || s.params.error_limit != first.params.error_limit)
    {
        return Err(refusal(
            &s.at,
            "observe",
            "lb observes a whole backend alike: give every server 'observe layer4' and the same 'error-limit'",
        ));
    }
    Ok(first.params.error_limit.max(1))
}

/// The monitor of checked server `s` of backend `b`, timed as haproxy times it: with
/// `timeout check`, the connect within min(`timeout connect`, `inter`) and the answer within
/// `timeout check` after it; without, the whole check within `inter`.
/// Octavia's PING monitor: `external-check command` runs this wrapper around ping.
const PING_WRAPPER: &str = "ping-wrapper.sh";

fn monitor(b: &Proxy, s: &Server) -> Result<HealthMonitor, Refusal> {
    let inter = s.params.inter.max(Duration::from_millis(100));
    let (timeout, read_timeout) = match b.params.timeout_check {
        Some(t) => (
            b.params.timeout_connect.map_or(inter, |c| c.min(inter)),
            Some(t.as_secs_f64().max(0.001)),
        ),
        None => (inter, None),
    };
    let (kind, method, path, version, expect) = match &b.params.check {
        // `check-ssl`: haproxy's check runs over TLS (Octavia's HTTPS monitor); lb's TLS
        // check completes the handshake's first flight, without the HTTP request inside.
        CheckKind::Tcp | CheckKind::Http(_) if s.params.check_ssl => {
            (MonitorType::TLS_HELLO, "GET", "/", "HTTP/1.0", None)
        }
        CheckKind::Tcp => (MonitorType::TCP, "GET", "/", "HTTP/1.0", None),
        CheckKind::External => match &b.params.external_command {
            Some(c) if c.rsplit('/').next() == Some(PING_WRAPPER) => {
                (MonitorType::PING, "GET", "/", "HTTP/1.0", None)
            }
            other => {
                return Err(refusal(
                    &b.at,
                    "option external-check",
                    format!(
                        "lb runs no external commands; it maps Octavia's {PING_WRAPPER} onto its PING check, not {}",
                        other.as_deref().unwrap_or("(no external-check command)")
                    ),
                ))
            }
        },
        CheckKind::SslHello => (MonitorType::TLS_HELLO, "GET", "/", "HTTP/1.0", None),
        CheckKind::Http(h) => (
            MonitorType::HTTP,
            h.method.as_str(),
            h.uri.as_str(),
            if h.version.starts_with("HTTP/1.1") {
                "HTTP/1.1"
            } else {
                "HTTP/1.0"
            },
            Some(match &h.expect {
                None => HttpExpect::Success,
                Some(e) if e.regex => HttpExpect::Regex {
                    negate: e.negate,
                    pattern: e.pattern.clone(),
                },
                Some(e) => HttpExpect::Status {
                    negate: e.negate,
                    code: e.pattern.clone(),
                },
            }),
        ),
    };
    let domain_name = match &b.params.check {
        CheckKind::Http(h) if kind == MonitorType::HTTP => h.host.clone(),
        _ => None,
    };
    Ok(HealthMonitor {
        kind,
        delay: inter.as_secs_f64(),
        timeout: timeout.as_secs_f64().max(0.001),
        max_retries: s.params.rise.clamp(1, 10),
        max_retries_down: s.params.fall.clamp(1, 10),
        http_method: method.into(),
        url_path: path.into(),
        http_version: version.into(),
        expected_codes: "200".into(),
        domain_name,
        http_expect: expect,
        read_timeout,
    })
}

/// Flows of the conntrack table for haproxy's global `maxconn`: twice the connections it
/// may hold open (closed ones linger, handshakes wait), never below lb's default; None
/// (lb's default) without one.
fn conntrack_flows(maxconn: Option<u32>) -> Option<u32> {
    let m = maxconn?;
    let flows = (m as u64 * 2).clamp(lb_common::DEFAULT_CONNTRACK_FLOWS as u64, 8_000_000);
    Some(flows as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::{config::parse, tokens};
    use std::net::Ipv4Addr;

    struct Fake;
    impl Namespace for Fake {
        fn locate(&self, a: IpAddr) -> Option<(String, u8)> {
            match a.to_string().as_str() {
                "10.0.0.250" => Some(("tapfb358342-59".into(), 24)),
                "fd00::250" => Some(("tapfb358342-59".into(), 64)),
                _ => None,
            }
        }
        fn only_address(&self) -> Option<IpAddr> {
            Some(Ipv4Addr::new(10, 0, 0, 250).into())
        }
    }

    fn conv(text: &str) -> Result<DropIn, Refusal> {
        let cfg = parse(&tokens::lines(std::path::Path::new("conf"), text).unwrap()).unwrap();
        convert(&cfg, "574a31da", "qlbaas-574a31da", &Fake)
    }

    /// The seed's config (../shared/seed/), as the v1 driver wrote it.
    pub const SEED: &str = "global
        daemon
        user nobody
        group nogroup
        log /dev/log local0
        log /dev/log local1 notice
        stats socket /opt/stack/data/neutron/lbaas/574a31da/sock mode 0666 level user
defaults
        log global
        retries 3
        option redispatch
        timeout connect 5000
        timeout client 50000
        timeout server 50000
frontend df25900f-53b1-4aab-8436-8411ec710445
        option tcplog
        bind 10.0.0.250:22
        mode tcp
        default_backend 574a31da-a28a-449f-8c9d-3d3687c3c02a
backend 574a31da-a28a-449f-8c9d-3d3687c3c02a
        mode tcp
        balance leastconn
        server 45481748-3104-462c-ae4b-fae0f4b08c20 10.0.0.2:22 weight 1
        server 227b69fe-8685-4df6-b2a5-2f964c74886c 10.0.0.4:22 weight 1
";

    #[test]
    fn the_seed_config_becomes_the_seed_load_balancer() {
        let d = conv(SEED).unwrap();
        assert!(d.daemon);
        assert_eq!(d.sockets[0].mode, Some(0o666));
        let lb = &d.config.loadbalancer[0];
        assert_eq!(
            (lb.vip_address, lb.vip_prefixlen),
            (Ipv4Addr::new(10, 0, 0, 250).into(), Some(24))
        );
        assert_eq!(
            (lb.port.name.as_str(), lb.port.adopt),
            ("tapfb358342-59", true)
        );
        assert_eq!(lb.namespace(), "qlbaas-574a31da");
        let l = &lb.listener[0];
        assert_eq!(
            (l.id.as_str(), l.protocol_port, l.retries),
            ("df25900f-53b1-4aab-8436-8411ec710445", 22, 3)
        );
        assert_eq!(
            (
                l.timeout_member_connect,
                l.timeout_client_data,
                l.timeout_member_data
            ),
            (5000, 50000, 50000)
        );
        assert_eq!(l.connection_limit, -1);
        let p = &lb.pool[0];
        assert_eq!(p.lb_algorithm, Algorithm::LEAST_CONNECTIONS);
        assert_eq!(p.member.len(), 2);
        assert!(p.healthmonitor.is_none());
        assert!(p
            .member
            .iter()
            .all(|m| m.check == MemberCheck::Off && m.weight == 1));
    }

    /// haproxy's passive health per server becomes lb's per pool: off without `observe`.
    #[test]
    fn observe_layer4_sets_the_pool_s_error_limit() {
        assert_eq!(
            conv(SEED).unwrap().config.loadbalancer[0].pool[0].error_limit,
            0
        );
        let d = conv(&SEED.replace("weight 1\n", "weight 1 observe layer4 on-error mark-down\n"))
            .unwrap();
        assert_eq!(
            d.config.loadbalancer[0].pool[0].error_limit, 10,
            "haproxy's default"
        );
        let d =
            conv(&SEED.replace("weight 1\n", "weight 1 observe layer4 error-limit 3\n")).unwrap();
        assert_eq!(d.config.loadbalancer[0].pool[0].error_limit, 3);
    }

    /// What the v2 driver's templates write for an HTTP-monitored pool.
    #[test]
    fn a_v2_config_with_an_http_monitor() {
        let text = "global
    daemon
    user nobody
    group nogroup
    log /dev/log local0 debug alert
    log /dev/log local1 notice alert
    maxconn 2000
    stats socket /var/lib/neutron/lbaas/v2/lb1/haproxy_stats.sock mode 0666 level user
defaults
    log global
    retries 3
    option redispatch
    timeout connect 5000
    timeout client 50000
    timeout server 50000
frontend l1
    option tcplog
    maxconn 100
    bind 10.0.0.250:80
    mode tcp
    default_backend p1
backend p1
    mode tcp
    balance roundrobin
    timeout check 3s
    option httpchk GET /health
    http-check expect rstatus 200|202
    server m1 10.0.0.2:80 weight 2 check inter 5s fall 3
    server m2 10.0.0.4:80 weight 1 check inter 5s fall 3
";
        let d = conv(text).unwrap();
        let lb = &d.config.loadbalancer[0];
        assert_eq!(lb.listener[0].connection_limit, 100);
        assert_eq!(
            lb.connection_limit, 2000,
            "global maxconn: all listeners together"
        );
        let p = &lb.pool[0];
        assert_eq!(p.lb_algorithm, Algorithm::ROUND_ROBIN);
        let m = p.healthmonitor.as_ref().unwrap();
        assert_eq!(
            (
                m.kind,
                m.delay,
                m.timeout,
                m.max_retries,
                m.max_retries_down
            ),
            (MonitorType::HTTP, 5.0, 5.0, 2, 3)
        );
        // haproxy's timing: the connect within min(timeout connect 5 s, inter 5 s), the
        // answer within timeout check after it.
        assert_eq!(m.read_timeout, Some(3.0));
        // Without `timeout check`, inter bounds the whole check; a unitless `timeout check`
        // (the Mitaka template's `timeout check 3`) is milliseconds.
        let d = conv(&text.replace("    timeout check 3s\n", "")).unwrap();
        let m = d.config.loadbalancer[0].pool[0]
            .healthmonitor
            .clone()
            .unwrap();
        assert_eq!((m.timeout, m.read_timeout), (5.0, None));
        let d = conv(
            &text
                .replace("timeout check 3s", "timeout check 3")
                .replace("inter 5s", "inter 2s"),
        )
        .unwrap();
        let m = d.config.loadbalancer[0].pool[0]
            .healthmonitor
            .clone()
            .unwrap();
        assert_eq!((m.timeout, m.read_timeout), (2.0, Some(0.003)));
        assert_eq!(
            (m.http_method.as_str(), m.url_path.as_str()),
            ("GET", "/health")
        );
        assert_eq!(
            m.http_expect,
            Some(HttpExpect::Regex {
                negate: false,
                pattern: "200|202".into()
            })
        );
        assert!(p.member.iter().all(|m| m.check == MemberCheck::Pool));
        assert_eq!(p.member[0].weight, 2);
    }

    #[test]
    fn refusals_name_the_place() {
        let e = conv(&SEED.replace("bind 10.0.0.250:22", "bind 10.0.0.9:22")).unwrap_err();
        assert_eq!(e.at, "conf:17");
        assert!(
            e.reason
                .contains("no device in network namespace qlbaas-574a31da holds 10.0.0.9"),
            "{e}"
        );
        let two = SEED.replace(
            "        bind 10.0.0.250:22\n",
            "        bind 10.0.0.250:22\n        bind 10.0.0.251:23\n",
        );
        let e = conv(&two).unwrap_err();
        assert!(
            e.reason.starts_with("lb serves one VIP per load balancer"),
            "{e}"
        );
        let e = conv(&SEED.replace(
            "default_backend 574a31da-a28a-449f-8c9d-3d3687c3c02a",
            "default_backend nope",
        ))
        .unwrap_err();
        assert_eq!(
            (e.keyword.as_str(), e.reason.as_str()),
            ("default_backend", "no backend named nope")
        );
        let e = conv(&SEED.replace(
            "balance leastconn",
            "balance leastconn\n        stick on src",
        ))
        .unwrap_err();
        assert_eq!(e.keyword, "stick on src", "no table");
        let d = conv(&SEED.replace(
            "balance leastconn",
            "balance leastconn\n        stick-table type ip size 10k expire 30m\n        stick on src",
        ))
        .unwrap();
        let sp = d.config.loadbalancer[0].pool[0]
            .session_persistence
            .clone()
            .unwrap();
        assert_eq!(
            (sp.kind, sp.persistence_timeout),
            (PersistenceType::SOURCE_IP, Some(1800))
        );
    }

    /// A frontend whose backend is not there yet (the agent's first config of a new load
    /// balancer: a listener before its pool) or is `disabled` gets no listener: nothing
    /// listens on its port, the namespace refuses its connections. The VIP and the other
    /// frontends are as before; a disabled backend's servers stay (its stats rows).
    #[test]
    fn a_disabled_backend_s_servers_are_not_checked() {
        let text = SEED
            .replace("balance leastconn", "balance leastconn\n        disabled")
            .replace("weight 1\n", "weight 1 check\n");
        let d = conv(&text).unwrap();
        let pool = &d.config.loadbalancer[0].pool[0];
        assert!(pool.healthmonitor.is_none());
        assert!(pool.member.iter().all(|m| m.check == MemberCheck::Off));
        let d = conv(&SEED.replace("weight 1\n", "weight 1 check\n")).unwrap();
        assert!(d.config.loadbalancer[0].pool[0].healthmonitor.is_some());
    }

    #[test]
    fn a_frontend_without_a_usable_backend_gets_no_listener() {
        let be = "default_backend 574a31da-a28a-449f-8c9d-3d3687c3c02a";
        let d = conv(&SEED.replace(be, "")).unwrap();
        let lb = &d.config.loadbalancer[0];
        assert!(lb.listener.is_empty(), "{:?}", lb.listener);
        assert_eq!(lb.vip_address, Ipv4Addr::new(10, 0, 0, 250));
        // The agent's very first config: a frontend and no backend at all.
        let first = format!("{}\n", SEED.split("\nbackend ").next().unwrap());
        let d = conv(&first.replace(be, "")).unwrap();
        assert!(d.config.loadbalancer[0].listener.is_empty());
        assert!(d.config.loadbalancer[0].pool.is_empty());
        // Backend disabled: the pool stays, no listener sends to it.
        let d = conv(&SEED.replace("balance leastconn", "balance leastconn\n        disabled"))
            .unwrap();
        let lb = &d.config.loadbalancer[0];
        assert!(lb.listener.is_empty());
        assert_eq!(lb.pool[0].member.len(), 2);
        // A port bound twice is refused whether or not its frontend has a backend.
        let e = conv(
            &SEED
                .replace(be, "")
                .replace("bind 10.0.0.250:22", "bind 10.0.0.250:22,10.0.0.250:22"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "conf:17: 'bind': 10.0.0.250:22 is bound twice"
        );
    }

    #[test]
    fn bind_star_means_the_namespace_s_address() {
        let d = conv(&SEED.replace("bind 10.0.0.250:22", "bind *:22")).unwrap();
        assert_eq!(
            d.config.loadbalancer[0].vip_address,
            Ipv4Addr::new(10, 0, 0, 250)
        );
    }

    #[test]
    fn servers_with_their_own_check_settings_get_their_own_monitor() {
        let d = conv(
            &SEED
                .replace(
                    "10.0.0.2:22 weight 1",
                    "10.0.0.2:22 weight 1 check inter 2s",
                )
                .replace(
                    "10.0.0.4:22 weight 1",
                    "10.0.0.4:22 weight 1 check inter 4s rise 3",
                ),
        )
        .unwrap();
        let p = &d.config.loadbalancer[0].pool[0];
        assert_eq!(p.healthmonitor.as_ref().unwrap().delay, 2.0);
        assert_eq!(p.member[0].check, MemberCheck::Pool);
        match &p.member[1].check {
            MemberCheck::Own(m) => assert_eq!((m.delay, m.max_retries), (4.0, 3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv6_binds_and_servers_make_an_ipv6_load_balancer() {
        let text = "frontend f\n bind fd00::250:22\n default_backend b\n\
                    backend b\n stick-table type ipv6 size 10k peers p\n stick on src\n\
                    server m1 fd00::11:9000 check addr fd00::21 port 9001\n server m2 [fd00::12]:9000\n";
        let d = conv(text).unwrap();
        let lb = &d.config.loadbalancer[0];
        assert_eq!(lb.vip_address, "fd00::250".parse::<IpAddr>().unwrap());
        assert_eq!(lb.vip_prefixlen, Some(64));
        let m = &lb.pool[0].member;
        assert_eq!(
            (
                m[0].address.to_string(),
                m[0].protocol_port,
                m[1].address.to_string()
            ),
            ("fd00::11".into(), 9000, "fd00::12".into())
        );
        assert_eq!(m[0].monitor_address, Some("fd00::21".parse().unwrap()));
        assert!(lb.pool[0].session_persistence.is_some());
    }

    /// The lines Octavia's amphora templates write that neutron-lbaas's do not.
    #[test]
    fn octavia_s_keywords() {
        let octavia = "global\n nbthread 2\n cpu-map auto:1/1-2 0-1\n external-check\n insecure-fork-wanted\n\
            server-state-file /var/lib/octavia/x/servers-state\n\
            defaults\n log global\n retries 3\n option redispatch\n option splice-request\n option splice-response\n option http-keep-alive\n\
            frontend l\n maxconn 50000\n bind 10.0.0.250:22\n mode tcp\n tcp-request inspect-delay 5s\n\
            log-format ab\\ %[ssl_c_verify]\n default_backend p:l\n timeout client 50000\n\
            backend p:l\n mode tcp\n balance roundrobin\n load-server-state-from-file global\n fullconn 50000\n option allbackups\n";
        let with = |check: &str, server: &str| {
            conv(&format!(
                "{octavia}{check}\n server m 10.0.0.2:9000 weight 1 check inter 2s fall 3 rise 2{server}\n"
            ))
        };
        let d = with("timeout check 1s\n option httpchk\n http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host example.com\n http-check expect rstatus 200", "").unwrap();
        let m = d.config.loadbalancer[0].pool[0]
            .healthmonitor
            .clone()
            .unwrap();
        assert_eq!(
            (
                m.kind,
                m.http_method.as_str(),
                m.url_path.as_str(),
                m.http_version.as_str(),
                m.domain_name.as_deref()
            ),
            (
                MonitorType::HTTP,
                "GET",
                "/healthz",
                "HTTP/1.1",
                Some("example.com")
            )
        );
        let kind = |d: &DropIn| {
            let pool = &d.config.loadbalancer[0].pool[0];
            pool.healthmonitor.as_ref().expect("a monitor").kind
        };
        let d = with(
            "option external-check\n external-check command /var/lib/octavia/ping-wrapper.sh",
            "",
        )
        .unwrap();
        assert_eq!(kind(&d), MonitorType::PING);
        let d = with("option httpchk GET /", " check-ssl verify none").unwrap();
        assert_eq!(kind(&d), MonitorType::TLS_HELLO);
        // PROXY protocol towards the members is the real haproxy's job.
        let cfg = parse(
            &tokens::lines(
                std::path::Path::new("conf"),
                &format!("{octavia}\n server m 10.0.0.2:9000 send-proxy-v2\n"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            cfg.l7.unwrap().what,
            "server ... send-proxy-v2 (PROXY protocol)"
        );
    }

    /// Every refusal of the mapping onto lb's model, with its whole message.
    #[test]
    fn every_mapping_refusal_is_named() {
        struct Two;
        impl Namespace for Two {
            fn locate(&self, a: IpAddr) -> Option<(String, u8)> {
                Fake.locate(a)
            }
            fn only_address(&self) -> Option<IpAddr> {
                None
            }
        }
        let be = "default_backend 574a31da-a28a-449f-8c9d-3d3687c3c02a";
        let lc = "balance leastconn";
        let cases: Vec<(String, &str)> = vec![
            (SEED.replace(lc, &format!("{lc}\n        option external-check\n        external-check command /bin/true")).replace("weight 1\n", "weight 1 check\n"), "conf:20: 'option external-check': lb runs no external commands; it maps Octavia's ping-wrapper.sh onto its PING check, not /bin/true"),
            (SEED.replace("        bind 10.0.0.250:22\n", ""), "conf:15: 'frontend': df25900f-53b1-4aab-8436-8411ec710445 has no 'bind'"),
            (SEED.replace(be, "default_backend nope"), "conf:15: 'default_backend': no backend named nope"),
            (SEED.replace("bind 10.0.0.250:22", "bind 10.0.0.250:22\n        bind 10.0.0.251:23"), "conf:18: 'bind': lb serves one VIP per load balancer: 10.0.0.251 here, 10.0.0.250 at conf:17"),
            (SEED.replace("bind 10.0.0.250:22", "bind 10.0.0.250:22,10.0.0.250:22"), "conf:17: 'bind': 10.0.0.250:22 is bound twice"),
            (SEED.replace("frontend df25900f-53b1-4aab-8436-8411ec710445", "frontend df25900f-53b1-4aab-8436-8411ec710445\n        disabled"), "'frontend': no enabled frontend or listen section binds an address: nothing to serve"),
            (SEED.replace("bind 10.0.0.250:22", "bind 10.0.0.9:22"), "conf:17: 'bind': no device in network namespace qlbaas-574a31da holds 10.0.0.9 (the agent plugs the port and assigns the VIP before it starts haproxy; with ip_nonlocal_bind set, a device on its subnet would do)"),
            (SEED.replace("bind 10.0.0.250:22", "bind 10.0.0.250:60001"), "'config': invalid config: loadbalancer[0].listener[0].protocol_port = 60001: 60000-65535 is the namespace's local port range"),
            (SEED.replace(lc, &format!("{lc}\n        stick-table type ip size 100k\n        stick on src")), "conf:20: 'stick-table': size 102400: lb's table holds 16384 client addresses per load balancer"),
            (SEED.replace(lc, &format!("{lc}\n        stick on src")), "conf:20: 'stick on src': needs a 'stick-table type ip size N' in the same backend"),
            (SEED.replace("10.0.0.2:22 weight 1", "10.0.0.2:22 weight 1 observe layer4"), "conf:24: 'observe': lb observes a whole backend alike: give every server 'observe layer4' and the same 'error-limit'"),
            (SEED.replace("weight 1\n", "weight 1 observe layer4 error-limit 5\n").replacen("error-limit 5", "error-limit 4", 1), "conf:24: 'observe': lb observes a whole backend alike: give every server 'observe layer4' and the same 'error-limit'"),
            (SEED.replace("weight 1\n", "weight 1 backup\n"), "conf:24: 'backup': lb uses every backup server at once, as haproxy's 'option allbackups' does; without it haproxy uses only the first: add 'option allbackups' to this backend"),
        ];
        let mut wrong = Vec::new();
        for (text, want) in &cases {
            match conv(text) {
                Ok(_) => wrong.push(format!("accepted, wanted {want}")),
                Err(e) if e.to_string() != *want => {
                    wrong.push(format!("got    {e}\n  wanted {want}"))
                }
                Err(_) => {}
            }
        }
        let cfg = parse(
            &tokens::lines(
                std::path::Path::new("conf"),
                &SEED.replace("bind 10.0.0.250:22", "bind *:22"),
            )
            .unwrap(),
        )
        .unwrap();
        let e = convert(&cfg, "574a31da", "qlbaas-574a31da", &Two).unwrap_err();
        let want = "conf:17: 'bind': lb balances on one VIP: 'bind *' needs the namespace to hold exactly one address; name it";
        if e.to_string() != want {
            wrong.push(format!("got    {e}\n  wanted {want}"));
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
