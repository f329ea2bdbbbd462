//! Tier 3, the configs the real generators write (`tests/corpus/`, rendered by
//! `tests/corpus/render.py` from neutron-lbaas's and Octavia's released files, with the real
//! haproxy's `-c` verdict in `MANIFEST.tsv`):
//! - lb accepts every config the real haproxy accepts, run as each agent runs `-c`, and each
//!   is served by lb itself, handed to the real haproxy, or split between them, as its kind
//!   says;
//! - every `mode tcp` one serves end to end in namespaces, with real members (greeting
//!   servers, `openssl s_server` for TLS checks), as its scenario says it should;
//! - Octavia's amphora unit, run as systemd runs it: `-c -q -L` first, then `-Ws` under a
//!   notify socket, keepalived's check script (Octavia's own) on the stats socket, a USR2
//!   reload under streams, soft stop (SIGUSR1) and stop (SIGTERM).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{http_get, show_stat, Agent, HttpServer},
    notify::Notify,
    stream::Streams,
    tls::TlsServer,
    topology::{connect, lb_bin, SeedTopology, Server, VIP},
    wait_for,
};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");
/// Where the generators' paths point in the corpus; a test puts its own directory there.
const BASE: &str = "/var/lib/lb-corpus";
const OCTAVIA_USER_CFG: &str = "octavia-19.0.0/haproxy_user.cfg";
/// The local peer name Octavia's unit passes with `-L` (from the rendered haproxy.service).
const PEER: &str = "LJss7WmtbVSgGyM1DbZNYuxQ14o";

#[derive(Debug, Clone)]
struct Row {
    path: String,
    scenario: String,
    valid: bool,
    kind: String,
}

impl Row {
    fn octavia(&self) -> bool {
        self.path.starts_with("octavia")
    }
}

fn manifest() -> Vec<Row> {
    let text = std::fs::read_to_string(Path::new(CORPUS).join("MANIFEST.tsv")).unwrap();
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 5, "a MANIFEST line has 5 fields at least: {l}");
            Row {
                path: f[0].into(),
                scenario: f[2].into(),
                valid: match f[3] {
                    "valid" => true,
                    "invalid" => false,
                    o => panic!("haproxy_c is valid or invalid, not {o}"),
                },
                kind: f[4].into(),
            }
        })
        .collect();
    assert!(
        rows.len() >= 50,
        "the corpus has its configs: {}",
        rows.len()
    );
    rows
}

/// The MANIFEST's row for `path`.
fn corpus_row(path: &str) -> Row {
    manifest()
        .into_iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("{path} is in the corpus"))
}

/// The row's config (and Octavia's user-group file) with the generators' base directory
/// moved to `dir`: the files to pass with `-f`, in order.
fn place(row: &Row, dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(Path::new(CORPUS).join(&row.path)).unwrap();
    let text = text.replace(BASE, &dir.display().to_string());
    // The directories the config's paths name (stats sockets, state files).
    for word in text.split_whitespace() {
        if let Some(rest) = word.strip_prefix(&dir.display().to_string()) {
            if let Some(parent) = Path::new(&format!("{}{rest}", dir.display())).parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
        }
    }
    // As the generators lay it out: `<base>/<lb id>/haproxy.cfg` (its directory names the
    // load balancer outside a `qlbaas-<id>` namespace).
    let conf = dir.join("lb").join("haproxy.cfg");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, text).unwrap();
    let mut files = vec![conf];
    if row.octavia() {
        files.push(Path::new(CORPUS).join(OCTAVIA_USER_CFG));
    }
    files
}

/// A corpus config placed under a fresh short directory (haproxy takes socket paths of 97
/// bytes at most), removed on drop.
struct Placed {
    base: PathBuf,
    files: Vec<PathBuf>,
    /// Its stats socket.
    sock: PathBuf,
}

impl Placed {
    fn new(path: &str) -> Placed {
        let base = std::env::temp_dir().join(integration_tests::unique("g"));
        let files = place(&corpus_row(path), &base);
        let sock = stats_socket(&files[0]);
        Placed { base, files, sock }
    }

    /// Rewrites the placed config.
    fn edit(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.files[0]).unwrap();
        std::fs::write(&self.files[0], f(text)).unwrap();
    }

    /// `-f` for each file, and `-p pidfile`.
    fn args(&self, pidfile: &Path) -> Vec<String> {
        let mut a = f_args(&self.files);
        a.extend(["-p".into(), pidfile.display().to_string()]);
        a
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn f_args(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| ["-f".to_string(), f.display().to_string()])
        .collect()
}

/// What lb did with a config at `-c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Serves,
    HandsOff,
    Splits,
    Refuses,
}

fn outcome(out: &Output) -> Outcome {
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("needs an L7 proxy: running") {
        Outcome::HandsOff
    } else if err.contains("split:") {
        Outcome::Splits
    } else if out.status.success() {
        Outcome::Serves
    } else {
        Outcome::Refuses
    }
}

#[test]
fn lb_accepts_every_config_the_real_haproxy_accepts() {
    if !Path::new("/usr/sbin/haproxy").exists() {
        integration_tests::skip::skip(
            "no real haproxy at /usr/sbin/haproxy (Debian package haproxy)",
        );
        return;
    }
    let dir = std::env::temp_dir().join(integration_tests::unique("corpus"));
    let mut wrong = Vec::new();
    let mut table: BTreeMap<(String, Outcome), usize> = BTreeMap::new();
    for (i, row) in manifest().into_iter().enumerate() {
        // Short: haproxy takes socket paths of 97 bytes at most.
        let files = place(&row, &dir.join(i.to_string()));
        let mut args = f_args(&files);
        // As each agent runs it: Octavia's ExecStartPre, neutron-lbaas's plain -c.
        if row.octavia() {
            args.extend(["-c", "-q", "-L", PEER].map(String::from));
        } else {
            args.push("-c".into());
        }
        let haproxy = Command::new("/usr/sbin/haproxy")
            .args(&args)
            .output()
            .unwrap();
        if haproxy.status.success() != row.valid {
            wrong.push(format!(
                "{}: the real haproxy says {} now, the MANIFEST {}: {}",
                row.path,
                haproxy.status,
                row.valid,
                String::from_utf8_lossy(&haproxy.stderr)
            ));
        }
        let lb = Command::new(lb_bin())
            .arg("haproxy")
            .args(&args)
            .env("LB_HAPROXY_BIN", "/usr/sbin/haproxy")
            .output()
            .unwrap();
        let got = outcome(&lb);
        *table.entry((row.kind.clone(), got)).or_default() += 1;
        let err = String::from_utf8_lossy(&lb.stderr);
        if row.valid && !lb.status.success() {
            wrong.push(format!(
                "{}: haproxy accepts it, lb refuses ({got:?}): {err}",
                row.path
            ));
        }
        if row.octavia() && lb.status.success() && !lb.stdout.is_empty() {
            wrong.push(format!(
                "{}: -q prints nothing, lb printed {:?}",
                row.path,
                String::from_utf8_lossy(&lb.stdout)
            ));
        }
        let proxy_protocol = std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("send-proxy");
        let want = match row.kind.as_str() {
            // The PROXY protocol header is a proxy's to write: such a pool is haproxy's.
            "tcp" if proxy_protocol => Outcome::HandsOff,
            "tcp" => Outcome::Serves,
            "http" => Outcome::HandsOff,
            "mixed" => Outcome::Splits,
            k => panic!("kind {k}"),
        };
        if row.valid && got != want {
            wrong.push(format!(
                "{} ({}): lb {got:?}, wanted {want:?}: {err}",
                row.path, row.kind
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for ((kind, o), n) in &table {
        eprintln!("CORPUS {kind:5} {o:?}: {n}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The corpus's member addresses (MANIFEST's address plan).
const M: [&str; 3] = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
const M6: [&str; 2] = ["fd00::11", "fd00::12"];

/// A node as the corpus's address plan has it: members .11, .12, .13 (and fd00::11, ::12)
/// each with a greeting server on 9000 (the corpus's member port), the client at 10.0.0.1
/// and fd00::1.
struct Plan {
    topo: SeedTopology,
    servers: Vec<Server>,
}

impl Plan {
    fn new() -> Plan {
        let addrs: Vec<std::net::Ipv4Addr> = M.iter().map(|a| a.parse().unwrap()).collect();
        let topo = SeedTopology::new(&addrs);
        topo.client.ip("-6 addr add fd00::1/64 dev eth0 nodad");
        let mut servers = Vec::new();
        for (i, m) in topo.members.iter().enumerate() {
            servers.push(Server::start(&m.ns.name, m.addr, 9000));
            if let Some(a6) = M6.get(i) {
                m.ns.ip(&format!("-6 addr add {a6}/64 dev eth0 nodad"));
                let a6: IpAddr = a6.parse().unwrap();
                servers.push(Server::start(&m.ns.name, a6, 9000));
            }
        }
        Plan { topo, servers }
    }

    fn member_ns(&self, addr: &str) -> String {
        let i = M.iter().position(|m| *m == addr).unwrap();
        self.topo.members[i].ns.name.clone()
    }
}

/// What a listener of a scenario does: refuse connections, or serve them from these members.
fn expected(scenario: &str, port: u16, v6: bool) -> Option<Vec<String>> {
    let refused = matches!(scenario, "listener-no-pool" | "admin-down-pool")
        || (scenario == "admin-down-listener" && port == 8443);
    if refused {
        return None;
    }
    let all: Vec<String> = if v6 {
        M6.iter().map(|s| s.to_string()).collect()
    } else {
        M[..2].iter().map(|s| s.to_string()).collect()
    };
    Some(match scenario {
        "admin-down-member" => all[..1].to_vec(),
        _ => all,
    })
}

fn tls_scenario(scenario: &str) -> bool {
    matches!(scenario, "monitor-https" | "monitor-tls-hello")
}

/// The config's (first) stats socket.
fn stats_socket(conf: &Path) -> PathBuf {
    let text = std::fs::read_to_string(conf).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("stats socket "))
        .and_then(|r| r.split_whitespace().next())
        .map(PathBuf::from)
        .expect("a stats socket")
}

/// The ports a config binds (its `bind` lines, as written).
fn bind_ports(text: &str) -> Vec<u16> {
    let mut v: Vec<u16> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("bind "))
        .filter_map(|a| {
            a.split_whitespace()
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `openssl s_client` from the client namespace: whether a TLS handshake through the VIP
/// completes.
fn tls_handshake(client_ns: &str, vip: &str, port: u16) -> Result<(), String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | timeout 10 nsenter --net=/var/run/netns/{client_ns} openssl s_client -connect {vip}:{port} 2>&1"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("BEGIN CERTIFICATE") || text.contains("Server certificate") {
        Ok(())
    } else {
        Err(text.lines().take(5).collect::<Vec<_>>().join(" | "))
    }
}

#[test]
fn every_tcp_config_serves_end_to_end() {
    if !integration_tests::require_root() {
        return;
    }
    let mut plan = Plan::new();
    let rows: Vec<Row> = manifest()
        .into_iter()
        .filter(|r| r.valid && r.kind == "tcp")
        .filter(|r| {
            !std::fs::read_to_string(Path::new(CORPUS).join(&r.path))
                .unwrap()
                .contains("send-proxy")
        })
        .collect();
    let mut wrong = Vec::new();
    let mut served = 0;
    // One port for every config, as one load balancer's port stays plugged while the agent
    // replaces its haproxy (a new port per config would leave the client's and members'
    // neighbour entries on the old MAC: haproxy sends no gratuitous ARP either).
    let mut agent = Agent::new(&plan.topo, &lb_bin(), false);
    agent.plug(VIP);
    agent.add_address("fd00::250/64");
    // Another load balancer on the node for the whole run, as a network node has: the node's
    // program set stays loaded, so each config's start loads nothing (alone, each start
    // would verify the programs again, as the first deploy on a node does).
    let mut anchor = Agent::on_node(
        &plan.topo,
        &lb_bin(),
        agent.state_dir.as_ref().unwrap(),
        agent.bpffs.as_ref().unwrap(),
    );
    anchor.plug("10.0.0.249".parse().unwrap());
    let anchor_conf = Placed::new("octavia-19.0.0/tcp-roundrobin.cfg");
    anchor_conf.edit(|t| t.replace("10.0.0.250", "10.0.0.249"));
    let anchor_args = anchor_conf.args(&anchor.pidfile());
    let out = anchor.haproxy(
        &anchor_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(out.status.success(), "the anchor: {out:?}");
    for row in &rows {
        let started = Instant::now();
        let text = std::fs::read_to_string(Path::new(CORPUS).join(&row.path)).unwrap();
        let v6 = text.contains("fd00::250");
        // TLS checks need TLS members: openssl s_server on the member port instead.
        let mut tls = Vec::new();
        if tls_scenario(&row.scenario) {
            for s in plan.servers.iter_mut() {
                s.kill();
            }
            for a in &M[..2] {
                tls.push(TlsServer::start(
                    &plan.member_ns(a),
                    &[],
                    &format!("{a}:9000"),
                ));
            }
        }
        let conf = Placed::new(&row.path);
        let args = conf.args(&agent.pidfile());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent.haproxy(&args, &[]);
        let vip = if v6 { "fd00::250" } else { "10.0.0.250" };
        if !out.status.success() {
            wrong.push(format!(
                "{}: did not start: {}",
                row.path,
                String::from_utf8_lossy(&out.stderr)
            ));
        } else {
            for port in bind_ports(&text) {
                let want = expected(&row.scenario, port, v6);
                let vip_ip: IpAddr = vip.parse().unwrap();
                match (&want, tls_scenario(&row.scenario)) {
                    (None, _) => match connect(&plan.topo.client.name, vip_ip, port) {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        other => wrong.push(format!(
                            "{} port {port}: wanted a refusal, got {:?}",
                            row.path,
                            other.map(|c| c.greeting)
                        )),
                    },
                    (Some(_), true) => {
                        if let Err(e) = tls_handshake(&plan.topo.client.name, vip, port) {
                            wrong.push(format!(
                                "{} port {port}: TLS through the VIP: {e}",
                                row.path
                            ));
                        }
                    }
                    (Some(members), false) => {
                        for i in 0..4 {
                            match connect(&plan.topo.client.name, vip_ip, port) {
                                Ok(c) => {
                                    let m = c.member_ip().to_string();
                                    if !members.contains(&m) {
                                        wrong.push(format!(
                                            "{} port {port}: connection {i} went to {m}, not one of {members:?}",
                                            row.path
                                        ));
                                    }
                                }
                                Err(e) => wrong
                                    .push(format!("{} port {port}: connection {i}: {e}", row.path)),
                            }
                        }
                    }
                }
            }
            // Monitors judge real members as haproxy's would: every checked server that
            // should serve comes up (TLS servers for TLS checks, ICMP for PING).
            if text.contains(" check") && expected(&row.scenario, 8080, v6).is_some() {
                let sock = &conf.sock;
                let up = || -> Vec<String> {
                    show_stat(sock)
                        .into_iter()
                        .filter(|s| s.get("type").map(String::as_str) == Some("2"))
                        .filter(|s| {
                            s.get("check_status")
                                .is_some_and(|c| c.starts_with('L') && c.ends_with("OK"))
                        })
                        .filter_map(|s| s.get("svname").cloned())
                        .collect()
                };
                let want = if row.scenario == "admin-down-member" {
                    1
                } else {
                    2
                };
                let checked = integration_tests::wait_for_quietly(Duration::from_secs(12), || {
                    (up().len() >= want).then_some(())
                });
                if checked.is_none() {
                    wrong.push(format!(
                        "{}: members not reported up by their checks: {:?}",
                        row.path,
                        show_stat(sock)
                    ));
                }
            }
            served += 1;
            // haproxy's stop; lb tears down.
            for p in agent.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let pids = agent.pids();
            wait_for("the load balancer to stop", Duration::from_secs(20), || {
                pids.iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
                    .then_some(())
            });
            if !agent.remains().is_empty() {
                wrong.push(format!("{}: left {:?}", row.path, agent.remains()));
            }
        }
        if !tls.is_empty() {
            drop(tls);
            plan.servers.clear();
            for (i, m) in plan.topo.members.iter().enumerate() {
                plan.servers.push(Server::start(&m.ns.name, m.addr, 9000));
                if let Some(a6) = M6.get(i) {
                    let a6: IpAddr = a6.parse().unwrap();
                    plan.servers.push(Server::start(&m.ns.name, a6, 9000));
                }
            }
        }
        eprintln!("CORPUS e2e {} in {:?}", row.path, started.elapsed());
    }
    eprintln!(
        "CORPUS e2e: {served} of {} mode tcp configs served",
        rows.len()
    );
    let pids = anchor.pids();
    for &p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    wait_for("the anchor to stop", Duration::from_secs(20), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    drop(anchor);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(served, rows.len());
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

/// Octavia's keepalived check (`haproxy_vrrp_check.py`, from the corpus), run as its
/// console script `haproxy-vrrp-check <socket>` runs it (its `main()`): exit 0 when the stats
/// socket answers `show stat -1 -1 -1`.
fn vrrp_check(sock: &Path) -> Output {
    Command::new("python3")
        .args([
            "-c",
            "import runpy, sys; path = sys.argv.pop(1); runpy.run_path(path)['main']()",
        ])
        .arg(Path::new(CORPUS).join("octavia-19.0.0/haproxy_vrrp_check.py.txt"))
        .arg(sock)
        .output()
        .unwrap()
}

#[test]
fn the_amphora_unit_runs_lb_as_systemd_runs_haproxy() {
    if !integration_tests::require_root() {
        return;
    }
    let plan = Plan::new();
    let mut agent = Agent::new(&plan.topo, &lb_bin(), false);
    agent.plug(VIP);
    let conf = Placed::new("octavia-19.0.0/tcp-roundrobin.cfg");
    let (files, sock) = (&conf.files, &conf.sock);
    let pidfile = agent.pidfile();
    let mut args = f_args(files);

    // ExecStartPre: quiet, valid.
    let pre: Vec<String> = args
        .iter()
        .cloned()
        .chain(["-c", "-q", "-L", PEER].map(String::from))
        .collect();
    let out = agent.haproxy(&pre.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(out.status.success(), "ExecStartPre: {out:?}");
    assert!(out.stdout.is_empty(), "-q: {out:?}");

    // ExecStart under a notify socket, Type=notify.
    args.extend([
        "-p".into(),
        pidfile.display().to_string(),
        "-L".into(),
        PEER.into(),
    ]);
    let start = |notify: &Notify| {
        let mut all = vec!["-Ws".to_string()];
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut c = agent.haproxy_command(&all, &[]);
        c.env("NOTIFY_SOCKET", &notify.path);
        let child = c.spawn().expect("haproxy -Ws");
        (child, notify.wait("READY=1", Duration::from_secs(30)))
    };
    let notify = Notify::new();
    let (mut master, ready) = start(&notify);
    ready.unwrap_or_else(|seen| panic!("no READY=1 from the master; it sent {seen:?}"));
    // `ip netns exec` execs haproxy: the child is the master, in the foreground.
    let master_pid = master.id();
    assert_eq!(
        agent.pids(),
        vec![master_pid],
        "the pid file names the master"
    );
    assert!(alive(master_pid));
    let c = connect(&plan.topo.client.name, VIP, 8080).expect("through the VIP");
    assert!(
        M[..2].contains(&c.member().to_string().as_str()),
        "{}",
        c.greeting
    );
    drop(c);
    let check = vrrp_check(sock);
    assert!(
        check.status.success(),
        "keepalived's check script: {check:?}"
    );

    // ExecReload: -c, then USR2, under streams; the config now drops member .12.
    let streams = Streams::start_on(&plan.topo.client.name, 8080, 4);
    std::thread::sleep(Duration::from_millis(500));
    let conf = &files[0];
    let text = std::fs::read_to_string(conf).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.contains("10.0.0.12:9000"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(conf, without).unwrap();
    let reload: Vec<String> = ["-c".to_string()]
        .into_iter()
        .chain(f_args(files))
        .chain(["-L".into(), PEER.into()])
        .collect();
    let out = agent.haproxy(&reload.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(out.status.success(), "ExecReload's check: {out:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master_pid as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let seen = notify
        .wait("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|seen| panic!("no READY=1 after the reload; sent {seen:?}"));
    assert!(
        seen.iter().any(|l| l == "RELOADING=1"),
        "RELOADING=1 first: {seen:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let reports = streams.finish();
    for r in &reports {
        assert!(
            r.error.is_none() && r.in_order && r.member_got == r.sent,
            "a stream through the USR2 reload: {r:?}"
        );
    }
    assert!(alive(master_pid), "the master stays");
    for i in 0..4 {
        let c = connect(&plan.topo.client.name, VIP, 8080).expect("after the reload");
        assert_eq!(
            c.member().to_string(),
            M[0],
            "connection {i}: the reloaded config has .11 only"
        );
    }
    assert!(vrrp_check(sock).status.success());

    // SIGUSR1: soft stop; the master waits for the last connection.
    let mut held = connect(&plan.topo.client.name, VIP, 8080).expect("held");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master_pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        alive(master_pid),
        "soft stop: the master stays while a connection is open"
    );
    held.echo(b"still here\n")
        .expect("the held connection is served through the soft stop");
    drop(held);
    let status = wait_for(
        "the master to end after the last connection",
        Duration::from_secs(20),
        || master.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
    assert!(
        agent.remains().is_empty(),
        "after a soft stop: {:?}",
        agent.remains()
    );

    // Restart=always, then SIGTERM: stops at once, nothing left.
    let (mut master, ready) = start(&notify);
    ready.unwrap_or_else(|seen| panic!("no READY=1 from the restarted master; {seen:?}"));
    let _c = connect(&plan.topo.client.name, VIP, 8080).expect("after the restart");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("the master to stop", Duration::from_secs(20), || {
        master.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
    assert!(
        notify.wait("STOPPING=1", Duration::from_secs(1)).is_ok(),
        "STOPPING=1 on the way out"
    );
    assert!(
        agent.remains().is_empty(),
        "after SIGTERM: {:?}",
        agent.remains()
    );
    let gone = vrrp_check(sock);
    assert!(!gone.status.success(), "keepalived sees it gone: {gone:?}");
}

/// The processes' executables.
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

/// Octavia's load balancer with a TCP and an HTTP listener, run as the agent runs haproxy
/// (`-f -f -p`, `-sf` to reload, the pid file's pids to stop): lb serves the TCP listener,
/// the real haproxy (lb's child) the HTTP one; the stats socket answers for both; a reload
/// replaces both, holding a TCP connection; a stop ends both.
#[test]
fn a_mixed_config_is_split_between_lb_and_the_real_haproxy() {
    if !integration_tests::require_root() {
        return;
    }
    if !Path::new("/usr/sbin/haproxy").exists() {
        integration_tests::skip::skip(
            "no real haproxy at /usr/sbin/haproxy (Debian package haproxy)",
        );
        return;
    }
    let plan = Plan::new();
    let _http: Vec<HttpServer> = plan
        .topo
        .members
        .iter()
        .take(2)
        .map(|m| HttpServer::start(&m.ns, m.addr, 8000))
        .collect();
    let mut agent = Agent::new(&plan.topo, &lb_bin(), false);
    agent.plug(VIP);
    let conf = Placed::new("octavia-19.0.0/mixed-tcp-http.cfg");
    // The real haproxy sizes its descriptors from maxconn: Octavia's 100000 (two listeners)
    // needs more than this machine's hard limit of 20000 open files.
    conf.edit(|t| {
        t.replace("maxconn 100000", "maxconn 4000")
            .replace("maxconn 50000", "maxconn 4000")
    });
    let sock = &conf.sock;
    let args = conf.args(&agent.pidfile());
    let start = |extra: &[String]| {
        let all: Vec<&str> = args.iter().chain(extra).map(String::as_str).collect();
        let out = agent.haproxy(&all, &[]);
        assert!(out.status.success(), "start: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("lb haproxy: split:"), "{err}");
        let pids = agent.pids();
        assert_eq!(
            pids.len(),
            2,
            "the pid file names lb and its haproxy: {pids:?}"
        );
        assert_eq!(exe(pids[0]), lb_bin().canonicalize().unwrap());
        assert_eq!(exe(pids[1]), PathBuf::from("/usr/sbin/haproxy"));
        pids
    };
    let first = start(&[]);
    let serves = |what: &str| {
        let c = connect(&plan.topo.client.name, VIP, 8080)
            .unwrap_or_else(|e| panic!("{what}: TCP: {e}"));
        assert!(
            M[..2].contains(&c.member().to_string().as_str()),
            "{what}: {}",
            c.greeting
        );
        let (code, body) =
            http_get(&plan.topo.client.name, 80).unwrap_or_else(|e| panic!("{what}: HTTP: {e}"));
        assert_eq!(code, 200, "{what}: HTTP through the real haproxy");
        assert!(M[..2].contains(&body.trim()), "{what}: {body}");
    };
    serves("split");
    // As the agent asks it: backends and servers (`show stat -1 6 -1`), lb's and haproxy's.
    let rows = show_stat(sock);
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["pxname"].as_str(), r["svname"].as_str()))
        .collect();
    for (px, sv) in [
        (
            "5d7b9f2e-0000-4000-8000-000000000003:5d7b9f2e-0000-4000-8000-000000000002",
            "5d7b9f2e-0000-4000-8000-000000000011",
        ),
        (
            "5d7b9f2e-0000-4000-8000-000000000006:5d7b9f2e-0000-4000-8000-000000000005",
            "5d7b9f2e-0000-4000-8000-000000000021",
        ),
        (
            "5d7b9f2e-0000-4000-8000-000000000006:5d7b9f2e-0000-4000-8000-000000000005",
            "BACKEND",
        ),
    ] {
        assert!(
            names.contains(&(px, sv)),
            "show stat has {px}/{sv}: {names:?}"
        );
    }
    let http_backend = rows
        .iter()
        .find(|r| {
            r["pxname"].starts_with("5d7b9f2e-0000-4000-8000-000000000006")
                && r["svname"] == "BACKEND"
        })
        .unwrap();
    assert!(
        http_backend["stot"].parse::<u64>().unwrap() >= 1,
        "haproxy's counters: {http_backend:?}"
    );

    // The agent's reload: -sf with the pid file's pids, a TCP connection held through it.
    let mut held = connect(&plan.topo.client.name, VIP, 8080).expect("held");
    let sf: Vec<String> = std::iter::once("-sf".to_string())
        .chain(first.iter().map(|p| p.to_string()))
        .collect();
    let second = start(&sf);
    assert!(
        second.iter().all(|p| !first.contains(p)),
        "{first:?} -> {second:?}"
    );
    serves("after the reload");
    held.echo(b"through the reload\n")
        .expect("the held TCP connection");
    drop(held);
    wait_for(
        "the old lb and haproxy to end",
        Duration::from_secs(20),
        || first.iter().all(|p| !alive(*p)).then_some(()),
    );

    // Stop (SIGTERM to lb): both end, nothing is left.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second[0] as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(
        "lb and its haproxy to stop",
        Duration::from_secs(20),
        || second.iter().all(|p| !alive(*p)).then_some(()),
    );
    assert!(agent.remains().is_empty(), "{:?}", agent.remains());
    assert!(
        http_get(&plan.topo.client.name, 80).is_err(),
        "nothing serves HTTP after the stop"
    );
}

/// The backup amphora of an ACTIVE_STANDBY pair: its namespace has its own address on the
/// VIP's subnet and `ip_nonlocal_bind`, and not the VIP (keepalived adds it on the master).
/// lb starts there as haproxy does, checks members from the amphora's own address, serves the
/// VIP once keepalived assigns it, and leaves the VIP alone when it stops.
#[test]
fn a_backup_amphora_checks_from_its_own_address_and_serves_once_the_vip_comes() {
    if !integration_tests::require_root() {
        return;
    }
    let plan = Plan::new();
    let mut agent = Agent::new(&plan.topo, &lb_bin(), false);
    // The backup's own address (Octavia's 10.0.0.6 in the rendered peers section).
    agent.plug("10.0.0.6".parse().unwrap());
    integration_tests::sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_nonlocal_bind=1",
        agent.namespace
    ));
    let conf = Placed::new("octavia-19.0.0/active-standby.cfg");
    let sock = &conf.sock;
    let mut args = conf.args(&agent.pidfile());
    args.extend(["-L".into(), "jR3Sz4raM1pvwzeZ76wH5euoshQ".into()]);
    let all: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent.haproxy(&all, &[]);
    assert!(
        out.status.success(),
        "a backup starts as haproxy does: {out:?}"
    );
    let vip_here = || {
        integration_tests::sh(&format!("ip -n {} -4 addr show", agent.namespace))
            .contains("10.0.0.250")
    };
    assert!(!vip_here(), "lb leaves the VIP to keepalived");

    // Checks from the amphora's own address: members see 10.0.0.6 and report up.
    wait_for(
        "both members up by checks from 10.0.0.6",
        Duration::from_secs(15),
        || {
            let up = show_stat(sock)
                .iter()
                .filter(|r| r["type"] == "2" && r["check_status"] == "L4OK")
                .count();
            (up == 2).then_some(())
        },
    );
    // (A check's connection ends with a RST at once: the member's accept may or may not see
    // it, so wait until it has seen one.)
    for s in plan.servers.iter().take(3).step_by(2) {
        let peers = wait_for(
            "a member to accept a check",
            Duration::from_secs(15),
            || {
                let p = s.peers.lock().unwrap().clone();
                (!p.is_empty()).then_some(p)
            },
        );
        assert!(
            peers.iter().all(|p| p.ip().to_string() == "10.0.0.6"),
            "checks come from the amphora's own address: {peers:?}"
        );
    }

    // keepalived makes this node master: the VIP, and a gratuitous ARP (here: the client and
    // members forget the old owner).
    integration_tests::sh(&format!(
        "ip -n {} addr add 10.0.0.250/24 dev {}",
        agent.namespace,
        agent_port(&agent)
    ));
    for ns in
        std::iter::once(&plan.topo.client.name).chain(plan.topo.members.iter().map(|m| &m.ns.name))
    {
        integration_tests::sh(&format!("ip -n {ns} neigh flush all"));
    }
    let c = connect(&plan.topo.client.name, VIP, 8080).expect("served once the VIP is here");
    assert!(
        M[..2].contains(&c.member().to_string().as_str()),
        "{}",
        c.greeting
    );
    drop(c);

    // Stop: lb takes nothing keepalived gave.
    let pids = agent.pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("lb to stop", Duration::from_secs(20), || {
        (!alive(pids[0])).then_some(())
    });
    assert!(vip_here(), "the VIP stays keepalived's");
    assert!(agent.remains().is_empty(), "{:?}", agent.remains());
}

/// The device the agent plugged into the load balancer's namespace.
fn agent_port(agent: &Agent) -> String {
    integration_tests::sh(&format!("ip -n {} -o link show", agent.namespace))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .find(|n| n != "lo")
        .expect("the port")
}
