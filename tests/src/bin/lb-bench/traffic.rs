//! Real traffic on the seed's topology, one path at a time, every path on a fresh topology:
//! wrk against nginx members (keep-alive, and `Connection: close` for new connections), iperf3
//! for bulk, and the CPU each side used.
//!
//! ```text
//!   client ns --veth-- node ns [br-int] --veth-- member ns 10.0.0.2 (nginx :80, iperf3 :5201)
//!                          |            --veth-- member ns 10.0.0.4 (nginx :80)
//!                          +--veth-- the load balancer's namespace, VIP 10.0.0.250:
//!                                    lb (XDP) | HAProxy 2.6 (the seed's config) | nftables DNAT+SNAT
//! ```
//! Direct: the client talks to member 10.0.0.2 itself (nginx there runs one worker per core, so
//! one member alone can use the whole machine).

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use integration_tests::{
    in_netns,
    topology::{self, SeedTopology, TestConfig, VIP},
    unique, Netns,
};

pub const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const HTTP: u16 = 80;
const IPERF: u16 = 5201;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    Direct,
    Lb,
    /// lb with its data path in native XDP (`--xdp-mode native`; the default is TC)
    LbXdp,
    /// lb (TC) with the connection log on: a tcplog line per connection, as syslog
    /// datagrams to a unix socket this program reads (what `/dev/log` is)
    LbLog,
    Haproxy,
    Nftables,
    /// lb started on the VIP right after the seed's HAProxy and then nftables served it, in
    /// the same topology (as a new user tries them in turn): the members still hold both
    /// stacks' closed tuples in TIME_WAIT while lb measures
    LbAfter,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct",
            Route::Lb => "lb",
            Route::LbXdp => "lb-xdp",
            Route::LbLog => "lb-log",
            Route::Haproxy => "haproxy",
            Route::Nftables => "nftables",
            Route::LbAfter => "lb-after",
        })
    }
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "direct" => Route::Direct,
            "lb" => Route::Lb,
            "lb-xdp" => Route::LbXdp,
            "lb-log" => Route::LbLog,
            "haproxy" => Route::Haproxy,
            "nftables" => Route::Nftables,
            "lb-after" => Route::LbAfter,
            _ => {
                return Err(format!(
                    "unknown path {s}: direct, lb, lb-xdp, lb-log, haproxy, nftables or lb-after"
                ))
            }
        })
    }
}

/// One wrk run.
#[derive(Clone, Debug, Default)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors and non-2xx responses wrk counted.
    pub errors: u64,
    /// CPU seconds the whole machine spent (all cores, /proc/stat) during the run.
    pub machine_cpu_s: f64,
    /// CPU seconds of the load-balancing side itself: lb's XDP program (kernel run-time
    /// statistics) plus its daemon, or the HAProxy process. None where there is no such
    /// thing to measure (direct; nftables works inside the kernel's softirq).
    pub own_cpu_s: Option<f64>,
}

/// Everything measured on one path in one repetition.
#[derive(Clone, Debug)]
pub struct Measure {
    pub path: Route,
    pub keepalive: Wrk,
    pub close: Wrk,
    /// New connections/s and errors from `MANY_CLIENTS` client addresses.
    pub many_rps: f64,
    pub many_errors: u64,
    pub bulk_gbps: f64,
}

/// A process group started for the benchmark, stopped (SIGTERM, then SIGKILL) on drop.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let f = std::fs::File::create(log)?;
        let child = cmd
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            child,
            what: what.into(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(s) = self.child.try_wait()? {
            bail!(
                "{} exited ({s}): {}",
                self.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::{sys::signal, unistd::Pid};
        let pg = Pid::from_raw(-(self.child.id() as i32));
        let _ = signal::kill(pg, signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = signal::kill(pg, signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn netns_cmd(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Waits until `addr` accepts TCP connections from namespace `ns`.
fn wait_listening(ns: &str, addr: Ipv4Addr, port: u16, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let ok = in_netns(ns, || {
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_millis(200))
                .is_ok()
        })?;
        if ok {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{what} not accepting on {addr}:{port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The members' servers: nginx (2 workers) on every member, iperf3 on the first.
struct Servers {
    _procs: Vec<Proc>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_servers(topo: &SeedTopology) -> anyhow::Result<Servers> {
    let dir = TempDir::new("srv")?;
    let mut procs = Vec::new();
    for m in &topo.members {
        let d = dir.0.join(m.addr.to_string());
        std::fs::create_dir_all(&d)?;
        let conf = d.join("nginx.conf");
        let ds = d.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\ndaemon off;\npid {ds}/nginx.pid;\nerror_log {ds}/error.log warn;\n\
                 events {{ worker_connections 16384; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {ds}/b;\n  proxy_temp_path {ds}/p;\n  \
                 fastcgi_temp_path {ds}/f;\n  uwsgi_temp_path {ds}/u;\n  scgi_temp_path {ds}/s;\n  \
                 keepalive_requests 100000000;\n  keepalive_timeout 120s;\n  \
                 server {{\n    listen {}:{HTTP} backlog=8192 reuseport;\n    \
                 location / {{ return 200 \"member {}\\n\"; }}\n  }}\n}}\n",
                m.addr, m.addr
            ),
        )?;
        let log = d.join("nginx.out");
        let mut p = Proc::spawn(
            "nginx",
            netns_cmd(&m.ns.name, "nginx").arg("-c").arg(&conf),
            &log,
        )?;
        std::thread::sleep(Duration::from_millis(100));
        p.check_alive(&log)?;
        wait_listening(&m.ns.name, m.addr, HTTP, "nginx")?;
        procs.push(p);
    }
    let first = &topo.members[0];
    let log = dir.0.join("iperf3.out");
    let mut p = Proc::spawn(
        "iperf3 -s",
        netns_cmd(&first.ns.name, "iperf3").args([
            "-s",
            "-B",
            &first.addr.to_string(),
            "-p",
            &IPERF.to_string(),
        ]),
        &log,
    )?;
    std::thread::sleep(Duration::from_millis(100));
    p.check_alive(&log)?;
    wait_listening(&first.ns.name, first.addr, IPERF, "iperf3")?;
    procs.push(p);
    Ok(Servers {
        _procs: procs,
        _dir: dir,
    })
}

/// lb's config for the benchmark: the seed's load balancer with its listener on port 80 over
/// both members, and a second listener for iperf3 whose pool holds the first member only (the
/// seed's least connections would split iperf3's control and data connections).
fn lb_config() -> TestConfig {
    let cfg = TestConfig::seed(|t| {
        let t = t
            .replace(
                "protocol_port = 22\ndefault_pool_id",
                "protocol_port = 80\ndefault_pool_id",
            )
            .replace("protocol_port = 22\nweight", "protocol_port = 80\nweight");
        format!(
            "{t}\n[[loadbalancer.listener]]\nid = \"bulk\"\nprotocol = \"TCP\"\nprotocol_port = {IPERF}\n\
             default_pool_id = \"bulk\"\n\n[[loadbalancer.pool]]\nid = \"bulk\"\nprotocol = \"TCP\"\n\
             lb_algorithm = \"LEAST_CONNECTIONS\"\n\n[[loadbalancer.pool.member]]\nid = \"bulk-m1\"\n\
             address = \"{M1}\"\nprotocol_port = {IPERF}\n"
        )
    });
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    std::fs::write(
        &cfg.path,
        text.replace("conntrack_flows = 4096", "conntrack_flows = 262144"),
    )
    .unwrap();
    cfg
}

/// HAProxy with the seed's configuration (ports as above; no daemon mode, user switch or
/// syslog, which a benchmark in namespaces has no use for).
fn haproxy_config(dir: &Path) -> String {
    let seed = seed_haproxy(
        "574a31da-a28a-449f-8c9d-3d3687c3c02a",
        &dir.join("sock"),
        VIP,
        HTTP,
        [1, 1],
        false,
    );
    format!(
        "{seed}frontend bulk\n        bind {VIP}:{IPERF}\n        mode tcp\n        default_backend bulk\n\
         backend bulk\n        mode tcp\n        server bulk-m1 {M1}:{IPERF}\n"
    )
}

/// The seed's haproxy.cfg (shared/seed/), the benchmark's one copy of it: load balancer `id`
/// (the backend, named as the v1 driver names it) at `vip`:`port` over members `M1` and `M2`
/// with `weights`, stats socket `sock`. `agent`: as the agent writes it for `haproxy -f -p`
/// (`daemon`, `user nobody`, the `log` lines, `option tcplog`) with the v2 driver's `maxconn
/// 2000` (without it the real haproxy sizes itself to this machine's 20000 open files);
/// otherwise the proxying alone, for a HAProxy in the foreground of a traffic run.
pub fn seed_haproxy(
    id: &str,
    sock: &Path,
    vip: Ipv4Addr,
    port: u16,
    weights: [u16; 2],
    agent: bool,
) -> String {
    let only = |s: &'static str| if agent { s } else { "" };
    format!(
        "global\n{}        stats socket {} mode 0666 level user\n\
         defaults\n{}        retries 3\n        option redispatch\n        timeout connect 5000\n\
         \x20       timeout client 50000\n        timeout server 50000\n\
         frontend df25900f-53b1-4aab-8436-8411ec710445\n{}        bind {vip}:{port}\n        mode tcp\n\
         \x20       default_backend {id}\n\
         backend {id}\n        mode tcp\n        balance leastconn\n\
         \x20       server 45481748-3104-462c-ae4b-fae0f4b08c20 {M1}:{port} weight {}\n\
         \x20       server 227b69fe-8685-4df6-b2a5-2f964c74886c {M2}:{port} weight {}\n",
        only(
            "        daemon\n        user nobody\n        group nogroup\n\
             \x20       log /dev/log local0\n        log /dev/log local1 notice\n        maxconn 2000\n"
        ),
        sock.display(),
        only("        log global\n"),
        only("        option tcplog\n"),
        weights[0],
        weights[1],
    )
}

/// The kernel's own full NAT: DNAT to the members (round robin: nftables has no least
/// connections) and SNAT to the VIP, in a namespace on br-int, one-armed like lb.
const NFT_RULES: &str = "table ip lbbench {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.0.0.250 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.4 }
    ip daddr 10.0.0.250 tcp dport 5201 dnat to 10.0.0.2
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat snat to 10.0.0.250
  }
}
";

/// A namespace on br-int holding the VIP (for HAProxy and nftables).
fn vip_namespace(topo: &SeedTopology) -> Netns {
    let ns = Netns::new("v");
    let outer = format!("{}p", &ns.name[..ns.name.len().min(12)]);
    topo.node.ip(&format!(
        "link add {outer} type veth peer name eth0 netns {}",
        ns.name
    ));
    topo.node.ip(&format!("link set {outer} master br-int up"));
    ns.ip("link set eth0 up");
    ns.ip(&format!("addr add {VIP}/24 dev eth0"));
    ns
}

/// The CPU the whole machine has used so far (seconds, all cores).
fn machine_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 =
        f.iter().take(8).sum::<f64>() - f.get(3).unwrap_or(&0.0) - f.get(4).unwrap_or(&0.0);
    busy / clk_tck()
}

pub fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// utime + stime of process `pid`, all its threads, in seconds.
pub fn process_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / clk_tck()
}

/// Run time of every load balancer's data path: its stubs ("lb.<slot>", "lb_tc.<slot>",
/// "lb_tc_fast.<slot>"), whose runs the kernel counts with the shared programs they
/// tail-call, while statistics are enabled.
fn lb_program_cpu() -> f64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str().is_some_and(|n| {
                ["lb.", "lb_tc.", "lb_tc_fast."]
                    .iter()
                    .any(|s| n.starts_with(s))
            })
        })
        .map(|p| p.run_time().as_secs_f64())
        .sum()
}

/// What the load-balancing side's own CPU is made of on a path.
enum Own {
    None,
    Lb { daemon: u32 },
    Process(u32),
}

impl Own {
    fn read(&self) -> Option<f64> {
        match *self {
            Own::None => None,
            Own::Lb { daemon } => Some(lb_program_cpu() + process_cpu(daemon)),
            Own::Process(pid) => Some(process_cpu(pid)),
        }
    }
}

fn wrk(
    client: &str,
    target: Ipv4Addr,
    seconds: u64,
    close: bool,
    own: &Own,
) -> anyhow::Result<Wrk> {
    let mut c = netns_cmd(client, "wrk");
    c.args([
        "-t2",
        &format!("-c{}", connections()),
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "2s",
    ]);
    if close {
        c.args(["-H", "Connection: close"]);
    }
    c.arg(format!("http://{target}:{HTTP}/"));
    let (m0, o0) = (machine_cpu(), own.read());
    let out = c.output().context("running wrk")?;
    let (m1, o1) = (machine_cpu(), own.read());
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut w = parse_wrk(&text).with_context(|| format!("wrk output:\n{text}"))?;
    w.machine_cpu_s = m1 - m0;
    w.own_cpu_s = o0.zip(o1).map(|(a, b)| b - a);
    Ok(w)
}

/// wrk's connections: 32, or LB_BENCH_CONNECTIONS.
fn connections() -> u32 {
    std::env::var("LB_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

fn ms(v: &str) -> Option<f64> {
    let (n, unit) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| v.split_at(i))?;
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

pub fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().ok()?,
            ["50%", v] => w.p50_ms = ms(v)?,
            ["99%", v] => w.p99_ms = ms(v)?,
            [n, "requests", "in", ..] => w.requests = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                w.errors += rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (w.rps > 0.0 || w.requests == 0).then_some(w)
}

fn iperf3(client: &str, target: Ipv4Addr, seconds: u64) -> anyhow::Result<f64> {
    let out = netns_cmd(client, "iperf3")
        .args(["-c", &target.to_string(), "-p", &IPERF.to_string()])
        .args(["-t", &seconds.to_string(), "-J"])
        .output()
        .context("running iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 output has no end.sum_received")
}

/// One repetition of one path on a fresh topology.
pub fn measure(path: Route, lb: &Path, seconds: u64) -> anyhow::Result<Measure> {
    let topo = SeedTopology::new(&[M1, M2]);
    let _servers = start_servers(&topo)?;
    let client = topo.client.name.clone();
    if std::env::var_os("LB_BENCH_NO_TS").is_some() {
        topo.client.exec("sysctl -qw net.ipv4.tcp_timestamps=0");
    }
    let run = |target: Ipv4Addr, own: Own| -> anyhow::Result<Measure> {
        // A short warm-up: ARP, the members' accept queues, lb's first flows.
        wrk(&client, target, 1, false, &Own::None)?;
        let keepalive = wrk(&client, target, seconds, false, &own)?;
        let close = wrk(&client, target, seconds, true, &own)?;
        let (many_rps, many_errors) = many_clients(&topo.client, target, seconds)?;
        if std::env::var_os("LB_BENCH_DIAG").is_some() {
            // TCP's own counters after the new-connection run, client and members.
            let mut namespaces = vec![client.clone()];
            namespaces.extend(topo.members.iter().map(|m| m.ns.name.clone()));
            for ns in namespaces {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "nstat", "-az"])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let picked: Vec<String> = text
                    .lines()
                    .filter(|l| {
                        [
                            "SynRetrans",
                            "ListenDrops",
                            "ListenOverflows",
                            "PAWS",
                            "TW",
                            "TcpRetransSegs",
                            "TcpOutRsts",
                            "TcpAttemptFails",
                            "Challenge",
                        ]
                        .iter()
                        .any(|k| l.contains(k))
                    })
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        (f.len() >= 2 && f[1] != "0").then(|| format!("{}={}", f[0], f[1]))
                    })
                    .collect();
                eprintln!("  nstat {ns}: {}", picked.join(" "));
            }
        }
        let bulk_gbps = iperf3(&client, target, seconds)?;
        Ok(Measure {
            path,
            keepalive,
            close,
            many_rps,
            many_errors,
            bulk_gbps,
        })
    };
    match path {
        Route::Direct => run(M1, Own::None),
        Route::Lb | Route::LbXdp | Route::LbLog | Route::LbAfter => {
            if path == Route::LbAfter {
                other_stacks_first(&topo, seconds)?;
            }
            let cfg = lb_config();
            let _left = cfg.leftovers();
            let syslog = (path == Route::LbLog)
                .then(|| Syslog::start(&cfg))
                .transpose()?;
            let args: &[&str] = if path == Route::LbXdp {
                &["--xdp-mode", "native"]
            } else {
                &[]
            };
            let mut d = topology::Daemon::start(lb, &topo.node.name, &cfg.path, args);
            topology::wait_running(&mut d, &cfg);
            let m = run(
                VIP,
                Own::Lb {
                    daemon: d.pid().context("lb daemon pid")?,
                },
            );
            // What lb did with every packet: drops here would explain a slow path.
            let st = topology::stats(lb, &cfg.state_dir);
            eprintln!("  lb verdicts: {}", st[0]["verdicts"]);
            d.stop();
            if let Some(s) = syslog {
                let (lines, bad) = s.finish();
                eprintln!(
                    "  connection log: {lines} lines received ({bad} not tcplog), {} events lost to a full ring",
                    st[0]["connection_log_lost"]
                );
            }
            m
        }
        Route::Haproxy => {
            let ns = vip_namespace(&topo);
            let (p, _dir) = start_haproxy(&ns, &client)?;
            let pid = p.pid();
            run(VIP, Own::Process(pid))
        }
        Route::Nftables => {
            let ns = vip_namespace(&topo);
            start_nftables(&ns)?;
            run(VIP, Own::None)
        }
    }
}

/// The seed's HAProxy in the foreground in namespace `ns`, serving the VIP once `client`
/// can connect; stopped when the returned process drops (its directory goes with the
/// other half).
fn start_haproxy(ns: &Netns, client: &str) -> anyhow::Result<(Proc, TempDir)> {
    let dir = TempDir::new("hap")?;
    let conf = dir.0.join("haproxy.cfg");
    std::fs::write(&conf, haproxy_config(&dir.0))?;
    let log = dir.0.join("haproxy.out");
    let mut p = Proc::spawn(
        "haproxy",
        netns_cmd(&ns.name, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf),
        &log,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    p.check_alive(&log)?;
    wait_listening(client, VIP, HTTP, "haproxy")?;
    Ok((p, dir))
}

/// nftables' full NAT (`NFT_RULES`) in namespace `ns`, forwarding.
fn start_nftables(ns: &Netns) -> anyhow::Result<()> {
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.eth0.send_redirects=0",
    ] {
        ns.exec(&format!("sysctl -qw {s}"));
    }
    let dir = TempDir::new("nft")?;
    let rules = dir.0.join("rules.nft");
    std::fs::write(&rules, NFT_RULES)?;
    ns.exec(&format!("nft -f {}", rules.display()));
    Ok(())
}

/// `lb-after`'s history: the seed's HAProxy, then nftables, each serving the VIP for a
/// `wrk` new-connection run (the members close first: their TIME_WAIT holds HAProxy's
/// ephemeral ports and the clients' own, which nftables kept), then the VIP leaves their
/// namespace. The client and the members forget its MAC, as the gratuitous ARP of a VIP that
/// moves would tell them. (lb's own run is the third on this topology: nftables' figure,
/// printed, suffers HAProxy's tuples as lb's would without its fresh-start SNAT ports.)
fn other_stacks_first(topo: &SeedTopology, seconds: u64) -> anyhow::Result<()> {
    let client = topo.client.name.clone();
    let ns = vip_namespace(topo);
    {
        let _haproxy = start_haproxy(&ns, &client)?;
        let w = wrk(&client, VIP, seconds, true, &Own::None)?;
        eprintln!("  before lb: HAProxy {:.0} new conn/s", w.rps);
    }
    start_nftables(&ns)?;
    let w = wrk(&client, VIP, seconds, true, &Own::None)?;
    eprintln!("  before lb: nftables {:.0} new conn/s", w.rps);
    let time_wait: usize = topo
        .members
        .iter()
        .map(|m| m.ns.exec("ss -Htan state time-wait").lines().count())
        .sum();
    eprintln!("  before lb: {time_wait} tuples in TIME_WAIT at the members");
    if std::env::var_os("LB_BENCH_DIAG").is_some() {
        for n in std::iter::once(&topo.client).chain(topo.members.iter().map(|m| &m.ns)) {
            let text = n.exec("nstat -asz");
            let picked: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("SynRetrans") || l.contains("PAWS"))
                .collect();
            eprintln!("  before lb: nstat {}: {}", n.name, picked.join("; "));
        }
    }
    drop(ns);
    // The client's own sockets towards the VIP that HAProxy's run left in TIME_WAIT (it
    // closed first there) slow its connect()s to the VIP whatever serves it next: 831 new
    // connections/s through lb without this, 25,203 with it, with no SYN refused at the
    // members in either (LB_BENCH_DIAG=1, one run each). They are the client's, not lb's:
    // the client may reuse them, so that the figure shows what lb controls.
    let client_tw = topo.client.exec("ss -Htan state time-wait").lines().count();
    eprintln!(
        "  before lb: {client_tw} of the client's sockets in TIME_WAIT (reusable: tcp_tw_reuse=1)"
    );
    topo.client.exec("sysctl -qw net.ipv4.tcp_tw_reuse=1");
    for n in std::iter::once(&topo.client).chain(topo.members.iter().map(|m| &m.ns)) {
        n.exec("ip neigh flush all");
    }
    Ok(())
}

/// A syslog socket for `lb-log`: the daemon's `connection_log` points at it; a thread reads
/// and counts the lines (as a syslog daemon would read them).
struct Syslog {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Syslog {
    fn start(cfg: &TestConfig) -> anyhow::Result<Syslog> {
        let path = std::env::temp_dir().join(format!("{}.log", unique("benchlog")));
        let sock = std::os::unix::net::UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let text = std::fs::read_to_string(&cfg.path)?;
        std::fs::write(
            &cfg.path,
            text.replacen(
                "[daemon]\n",
                &format!("[daemon]\nconnection_log = \"{} local0\"\n", path.display()),
                1,
            ),
        )?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut lines, mut bad) = (0u64, 0u64);
            let mut buf = vec![0u8; 2048];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    // `<134>... lb[pid]: client:port [date] ...`
                    if buf[..n].windows(3).any(|w| w == b"]: ") {
                        lines += 1;
                    } else {
                        bad += 1;
                    }
                }
            }
            (lines, bad)
        });
        Ok(Syslog { path, stop, thread })
    }

    /// Lines received, and datagrams that were not connection lines.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = self.thread.join().unwrap_or((0, 0));
        let _ = std::fs::remove_file(&self.path);
        r
    }
}

/// Client addresses of the many-clients run (on the client's eth0, beside 10.0.0.1).
const MANY_CLIENTS: u8 = 64;

/// New connections from many client addresses: `MANY_CLIENTS` threads, each bound to its own
/// address, each looping connect, `GET / HTTP/1.0` (the member closes), read to the end, for
/// `seconds`. One wrk from one address hides what many clients meet: their source ports
/// collide, so lb's SNAT takes random ports, and each is held until its flow is over.
/// Returns (connections/s, errors).
fn many_clients(client: &Netns, target: Ipv4Addr, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let addrs: Vec<Ipv4Addr> = (0..MANY_CLIENTS)
        .map(|i| Ipv4Addr::new(10, 0, 0, 100 + i))
        .collect();
    for a in &addrs {
        client.ip(&format!("addr add {a}/24 dev eth0"));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, errors) = in_netns(&client.name, || {
        let threads: Vec<_> = addrs
            .iter()
            .map(|&a| {
                let stop = stop.clone();
                std::thread::spawn(move || one_client(a, target, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or((0, 1)))
            .fold((0u64, 0u64), |(a, b), (c, d)| (a + c, b + d))
    })?;
    Ok((ok as f64 / seconds as f64, errors))
}

/// One client address's loop of `many_clients`: (connections completed, errors).
fn one_client(
    addr: Ipv4Addr,
    target: Ipv4Addr,
    stop: &std::sync::atomic::AtomicBool,
) -> (u64, u64) {
    use std::io::{Read as _, Write as _};
    let (mut ok, mut errors) = (0, 0);
    let mut buf = [0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let r = (|| -> std::io::Result<()> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            // The port is chosen at connect time, for the whole tuple (as for the checks).
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(std::io::Error::from)?;
            s.bind(&SocketAddr::from((addr, 0)).into())?;
            s.connect_timeout(
                &SocketAddr::from((target, HTTP)).into(),
                Duration::from_secs(3),
            )?;
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut got = 0;
            loop {
                match s.read(&mut buf)? {
                    0 => break,
                    n => got += n,
                }
            }
            if got == 0 {
                return Err(std::io::Error::other("empty response"));
            }
            Ok(())
        })();
        match r {
            Ok(()) => ok += 1,
            Err(_) => errors += 1,
        }
    }
    (ok, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 5s test @ http://10.0.0.2:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.41us  364.37us  12.52ms   88.21%
    Req/Sec    26.97k     2.05k   31.15k    70.00%
  Latency Distribution
     50%  541.00us
     75%  718.00us
     90%  0.94ms
     99%    1.89ms
  268389 requests in 5.00s, 41.98MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  53666.29
Transfer/sec:      8.39MB
";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.rps, 53666.29);
        assert_eq!(w.p50_ms, 0.541);
        assert_eq!(w.p99_ms, 1.89);
        assert_eq!(w.requests, 268389);
        assert_eq!(w.errors, 9);
    }
}
