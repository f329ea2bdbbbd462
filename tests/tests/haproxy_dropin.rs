//! Tier 3, lb as the haproxy the LBaaS agent runs: the agent's own command sequences
//! (`tests/src/agent.rs`) against configs in both drivers' shapes, the seed's included.

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    agent::{http_get, Agent, HttpServer},
    stream::{self, Streams},
    topology::*,
    wait_for, Netns,
};

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const S1: &str = "45481748-3104-462c-ae4b-fae0f4b08c20";
const S2: &str = "227b69fe-8685-4df6-b2a5-2f964c74886c";

/// The v1 driver's template (the seed's config), with checks when `check` is given.
fn v1_conf(agent: &Agent, weights: (u16, u16), check: &str) -> String {
    format!(
        "global
        daemon
        user nobody
        group nogroup
        log /dev/log local0
        log /dev/log local1 notice
        stats socket {sock} mode 0666 level user
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
        default_backend {id}
backend {id}
        mode tcp
        balance leastconn
        server {S1} 10.0.0.2:22 weight {w1}{check}
        server {S2} 10.0.0.4:22 weight {w2}{check}
",
        sock = agent.sock().display(),
        id = agent.id,
        w1 = weights.0,
        w2 = weights.1,
    )
}

/// The v2 driver's templates for an HTTP listener-less pool with an HTTP monitor (mode tcp:
/// the listener is TCP).
fn v2_conf(agent: &Agent, port: u16) -> String {
    format!(
        "# Configuration for {id}
global
    daemon
    user nobody
    group nogroup
    log /dev/log local0 debug alert
    log /dev/log local1 notice alert
    maxconn 2000
    stats socket {sock} mode 0666 level user

defaults
    log global
    retries 3
    option redispatch
    timeout connect 5000
    timeout client 50000
    timeout server 50000

frontend listener-{id}
    option tcplog
    maxconn 1000
    bind 10.0.0.250:{port}
    mode tcp
    default_backend pool-{id}

backend pool-{id}
    mode tcp
    balance roundrobin
    timeout check 1s
    option httpchk GET /health
    http-check expect rstatus 200|202
    server {S1} 10.0.0.2:{port} weight 1 check inter 1s fall 2
    server {S2} 10.0.0.4:{port} weight 1 check inter 1s fall 2
",
        id = agent.id,
        sock = agent.sock().display(),
    )
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "haproxy failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `user nobody` / `group nogroup`: every thread of the daemon runs as 65534 with the
/// capabilities the README names, in every set, and nothing more.
fn assert_runs_as_nobody_with_only_the_kept_capabilities(pid: u32) {
    let kept = lb::haproxy::privileges::KEPT
        .iter()
        .fold(0u64, |m, (c, _)| m | c.bitmask());
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() > 2, "threads: {tasks:?}");
    for t in tasks {
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid:"), vec!["65534"; 4], "{}", t.display());
        let nogroup = nix::unistd::Group::from_name("nogroup")
            .unwrap()
            .unwrap()
            .gid
            .to_string();
        assert_eq!(field("Gid:"), vec![nogroup; 4], "{}", t.display());
        assert!(field("Groups:").is_empty(), "{}", t.display());
        for set in ["CapPrm:", "CapEff:", "CapBnd:"] {
            let v = u64::from_str_radix(&field(set)[0], 16).unwrap();
            assert_eq!(v, kept, "{set} of {}: {v:x}", t.display());
        }
    }
}

#[test]
fn the_agent_creates_polls_updates_and_undeploys_the_seed_load_balancer() {
    if !integration_tests::require_root() {
        return;
    }
    let mut topo = SeedTopology::new(&[M1, M2]);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);

    // create: the command returns once serving, with the daemon's pid in the pid file.
    ok(&agent.spawn(&v1_conf(&agent, (1, 1), " check inter 1s fall 2")));
    assert!(
        agent.active(),
        "the pid file's process names the load balancer"
    );
    assert!(agent.exists());
    assert_runs_as_nobody_with_only_the_kept_capabilities(agent.pids()[0]);
    let c = connect(&topo.client.name, VIP, 22).expect("connect through the VIP");
    let m = c.member();
    drop(c);
    let peers = topo.member(m).server.peers.lock().unwrap().clone();
    assert!(
        peers.iter().all(|p| p.ip() == std::net::IpAddr::V4(VIP)),
        "members see the VIP: {peers:?}"
    );

    // stats as the agent reads them.
    let (pool, members) = wait_for("both members checked", Duration::from_secs(10), || {
        let (p, m) = agent.stats();
        m.values().all(|x| x["health"] == "L4OK").then_some((p, m))
    });
    assert_eq!(pool["svname"], "BACKEND");
    assert_eq!(pool["stot"], "1");
    assert_eq!(members.len(), 2);
    assert!(members.contains_key(S1) && members.contains_key(S2));
    assert!(members.values().all(|x| x["status"] == "ACTIVE"));

    // update with -sf under streaming connections: nothing lost.
    let hosts: Vec<&str> = std::iter::once(topo.client.name.as_str())
        .chain(topo.members.iter().map(|m| m.ns.name.as_str()))
        .collect();
    let retrans = stream::Retransmits::of(&hosts);
    let streams = Streams::start(&topo.client.name, 3);
    std::thread::sleep(Duration::from_secs(1));
    let old = agent.pids();
    ok(&agent.spawn(&v1_conf(&agent, (2, 1), " check inter 1s fall 2")));
    let new = agent.pids();
    assert_ne!(old, new);
    assert!(agent.active());
    wait_for("the old process to exit", Duration::from_secs(10), || {
        old.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let reports = streams.finish();
    let (lost, _) = stream::Retransmits::of(&hosts).lost_since(&retrans);
    eprintln!(
        "LIFECYCLE haproxy -sf: {} streams, packets lost {lost} (retransmitted, no DSACK)",
        reports.len()
    );
    for r in &reports {
        assert!(r.complete(), "stream incomplete across -sf: {r:?}");
    }
    assert_eq!(lost, 0, "segments lost across -sf");
    let (pool, _) = agent.stats();
    assert!(
        pool["stot"].parse::<u64>().unwrap() >= 4,
        "counters carried across -sf: {pool:?}"
    );

    // a member's server dies: DOWN in the stats within fall x inter.
    topo.member(M2).server.kill();
    wait_for("the member DOWN in stats", Duration::from_secs(10), || {
        let (_, m) = agent.stats();
        (m[S2]["status"] == "INACTIVE" && m[S2]["health"] == "L4CON").then_some(())
    });
    let raw = agent.raw_stats();
    let s2 = raw.iter().find(|r| r["svname"] == S2).unwrap();
    assert_eq!(s2["status"], "DOWN");
    assert!(s2["chkfail"].parse::<u64>().unwrap() >= 2);

    // undeploy: nothing of lb remains once an lb command runs.
    agent.undeploy();
    let out = std::process::Command::new(lb_bin())
        .args(["stats", "--json", "--state-dir"])
        .arg(agent.state_dir.as_ref().unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "lb stats never lists it"
    );
    assert!(
        agent.remains().is_empty(),
        "left behind: {:?}",
        agent.remains()
    );
}

#[test]
fn an_http_monitored_member_answering_500_goes_down() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let h1 = HttpServer::start(&topo.members[0].ns, M1, 8080);
    let _h2 = HttpServer::start(&topo.members[1].ns, M2, 8080);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    ok(&agent.spawn(&v2_conf(&agent, 8080)));
    wait_for("both members L7OK", Duration::from_secs(10), || {
        let (_, m) = agent.stats();
        (m.len() == 2 && m.values().all(|x| x["health"] == "L7OK")).then_some(())
    });
    h1.status.store(500, std::sync::atomic::Ordering::Relaxed);
    wait_for(
        "the member answering 500 DOWN",
        Duration::from_secs(10),
        || {
            let (_, m) = agent.stats();
            (m[S1]["status"] == "INACTIVE" && m[S1]["health"] == "L7STS").then_some(())
        },
    );
    let raw = agent.raw_stats();
    let s1 = raw.iter().find(|r| r["svname"] == S1).unwrap();
    assert_eq!(
        (s1["check_code"].as_str(), s1["status"].as_str()),
        ("500", "DOWN")
    );
    // Its answers come back: it rises again.
    h1.status.store(202, std::sync::atomic::Ordering::Relaxed);
    wait_for("the member UP again", Duration::from_secs(10), || {
        let (_, m) = agent.stats();
        (m[S1]["status"] == "ACTIVE" && m[S1]["health"] == "L7OK").then_some(())
    });
}

/// The v2 agent deploys as soon as a load balancer has a listener, before its pool: its
/// first config has a frontend without `default_backend` (haproxy starts with it). lb starts
/// too and the port refuses each connection at once; the next config (`-sf`) with the pool
/// serves; the pool's admin state down (`disabled` in the backend) refuses again, as the
/// FRONTEND row stays.
#[test]
fn a_listener_before_its_pool_then_the_pool_then_the_pool_disabled() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let full = v1_conf(&agent, (1, 1), "");
    let first: String = full
        .split("\nbackend ")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("default_backend"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!first.contains("backend"), "{first}");
    let refused = || {
        integration_tests::in_netns(&topo.client.name, || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from((VIP, 22)),
                Duration::from_secs(2),
            )
            .map(drop)
        })
        .unwrap()
    };
    ok(&agent.spawn(&first));
    assert!(agent.active());
    let r = refused();
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a listener without a pool refuses at once: {r:?}"
    );
    // The agent's poll (backends and servers) finds none; the frontend's row is there.
    assert!(agent.raw_stats().is_empty());
    let all = {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(agent.sock()).unwrap();
        s.write_all(b"show stat\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        all.lines()
            .any(|l| l.starts_with("df25900f-53b1-4aab-8436-8411ec710445,FRONTEND,")),
        "its FRONTEND row: {all}"
    );

    // The pool and its members: served.
    ok(&agent.spawn(&full));
    let c = connect(&topo.client.name, VIP, 22).expect("served once the pool is there");
    assert!([M1, M2].contains(&c.member()));
    drop(c);

    // The pool's admin state down: refused again.
    ok(&agent.spawn(&full.replace("balance leastconn", "balance leastconn\n        disabled")));
    let r = refused();
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a disabled pool serves nothing: {r:?}"
    );
    agent.undeploy();
}

/// `option ssl-hello-chk` (the v2 driver's HTTPS monitor): a member running a real TLS
/// server (`openssl s_server`) is L6OK; one answering in plain HTTP is not, and is DOWN.
#[test]
fn a_tls_hello_check_tells_a_tls_member_from_a_plain_one() {
    if !integration_tests::require_root() {
        return;
    }
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        integration_tests::skip::skip("no openssl (Debian package openssl)");
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let _tls =
        integration_tests::tls::TlsServer::start(&topo.members[0].ns.name, &[], "10.0.0.2:8443");
    let _plain = HttpServer::start(&topo.members[1].ns, M2, 8443);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let conf = v2_conf(&agent, 8443).replace(
        "    option httpchk GET /health\n    http-check expect rstatus 200|202\n",
        "    option ssl-hello-chk\n",
    );
    ok(&agent.spawn(&conf));
    let m = wait_for("both members checked", Duration::from_secs(15), || {
        let (_, m) = agent.stats();
        (m.len() == 2 && m[S1]["health"] == "L6OK" && m[S2]["status"] == "INACTIVE").then_some(m)
    });
    assert_eq!(m[S1]["status"], "ACTIVE");
    assert!(
        ["L6RSP", "L6TOUT"].contains(&m[S2]["health"].as_str()),
        "{:?}",
        m[S2]
    );
    // Through the VIP, passthrough: the TLS member's handshake completes end to end.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.client.name, "openssl", "s_client"])
        .args(["-connect", "10.0.0.250:8443", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CONNECTION ESTABLISHED"), "{err}");
}

#[test]
fn lb_stats_on_the_host_and_in_another_namespace_lists_what_the_agent_started() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    // lb's default state and pins: the host's /run/lb and /sys/fs/bpf/lb.
    let mut agent = Agent::new(&topo, &lb_bin(), true);
    agent.plug(VIP);
    ok(&agent.spawn(&v1_conf(&agent, (1, 1), "")));
    let listed = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).contains(&agent.id)
    };
    let host = std::process::Command::new(lb_bin())
        .args(["stats", "--json"])
        .output()
        .unwrap();
    assert!(listed(host), "lb stats on the host");
    let other = Netns::new("st");
    let inside = std::process::Command::new("ip")
        .args(["netns", "exec", &other.name])
        .arg(lb_bin())
        .args(["stats", "--json"])
        .output()
        .unwrap();
    assert!(listed(inside), "lb stats under another ip netns exec");
    agent.undeploy();
}

#[test]
fn refused_configs_name_file_line_and_keyword_and_leave_nothing() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let conf = v1_conf(&agent, (1, 1), "").replace(
        "balance leastconn",
        "balance leastconn\n        tcp-request content reject",
    );
    let out = agent.spawn(&conf);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:23: 'tcp-request': changes how connections are accepted or routed",
            agent.conf().display()
        )),
        "{err}"
    );
    let out = agent.haproxy(
        &["-f", &agent.conf().display().to_string(), "-x", "/s"],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("option '-x' is not supported"));
    // A VIP the namespace does not hold: refused before anything is made.
    let out = agent.spawn(&v1_conf(&agent, (1, 1), "").replace("10.0.0.250:22", "10.0.0.251:22"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds 10.0.0.251"));
    // A user that does not exist: refused, by -c as well.
    let ghost = v1_conf(&agent, (1, 1), "").replace("user nobody", "user lb-no-such-user");
    let out = agent.spawn(&ghost);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown user 'lb-no-such-user'"), "{err}");
    let out = agent.haproxy(&["-c", "-f", &agent.conf().display().to_string()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown user 'lb-no-such-user'"));
    assert!(
        agent.remains().is_empty(),
        "left behind: {:?}",
        agent.remains()
    );
    assert!(!agent.exists());
    // An L7 config with no real haproxy to run: refused with the reason.
    std::fs::write(agent.conf(), l7_conf(&agent)).unwrap();
    let out = agent.haproxy(
        &["-c", "-f", &agent.conf().display().to_string()],
        &[("LB_HAPROXY_BIN", "/nonexistent/haproxy")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs an L7 proxy, and the real haproxy cannot be run: $LB_HAPROXY_BIN (/nonexistent/haproxy) does not exist"),
        "{err}"
    );
    // -c checks without running.
    std::fs::write(agent.conf(), v1_conf(&agent, (1, 1), "")).unwrap();
    let out = agent.haproxy(&["-c", "-f", &agent.conf().display().to_string()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Configuration file is valid\n"
    );
}

/// The agent's own stats socket is `level user`: every admin command is refused with
/// haproxy's "Permission denied" and changes nothing, neither the stats nor the traffic
/// (least connections still uses both members).
#[test]
fn admin_commands_at_level_user_are_refused_and_change_nothing() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let conf = v1_conf(&agent, (1, 1), "");
    assert!(conf.contains("level user"), "{conf}");
    ok(&agent.spawn(&conf));
    let backend = agent.id.clone();
    for cmd in [
        format!("set weight {backend}/{S1} 0"),
        format!("disable server {backend}/{S1}"),
        format!("set server {backend}/{S1} state maint"),
        format!("set server {backend}/{S1} state drain"),
    ] {
        assert_eq!(agent.command(&cmd), "Permission denied\n", "{cmd}");
    }
    let row = agent
        .raw_stats()
        .into_iter()
        .find(|r| r["svname"] == S1)
        .unwrap();
    assert_eq!(
        (row["weight"].as_str(), row["status"].as_str()),
        ("1", "no check"),
        "{row:?}"
    );
    // Both members still take connections: one held open, the next goes to the other.
    let mut held = connect(&topo.client.name, VIP, 22).expect("connect");
    held.echo(b"held\n").unwrap();
    let next = connect(&topo.client.name, VIP, 22).expect("connect");
    let mut got = [held.member(), next.member()];
    got.sort();
    assert_eq!(got, [M1, M2]);
    drop((held, next));
    agent.undeploy();
}

/// Octavia's SOURCE_IP session persistence as its haproxy template writes it (`stick-table`,
/// `stick on src`) on a roundrobin backend: the client keeps its member; drained through an
/// admin-level stats socket it still does (haproxy keeps persistent clients on a drained
/// server); in maintenance it moves to the other member and sticks there.
#[test]
fn stick_on_src_keeps_a_client_on_its_member_and_admin_commands_move_it() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let conf = v1_conf(&agent, (1, 1), "")
        .replace("level user", "level admin user root group nogroup")
        .replace(
            "balance leastconn\n",
            "balance roundrobin\n        stick-table type ip size 10k expire 30m\n        stick on src\n",
        );
    ok(&agent.spawn(&conf));
    // The socket's owner as configured, although the daemon runs as nobody.
    let meta = std::fs::metadata(agent.sock()).unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.gid()), (0, nogroup.gid.as_raw()));
    let member_now = || {
        connect(&topo.client.name, VIP, 22)
            .expect("connect through the VIP")
            .member()
    };
    let first = member_now();
    for _ in 0..5 {
        assert_eq!(member_now(), first, "roundrobin alone would alternate");
    }
    let (id, other, other_id) = if first == M1 {
        (S1, M2, S2)
    } else {
        (S2, M1, S1)
    };
    let backend = &agent.id;
    let server = |id: &str| {
        agent
            .raw_stats()
            .into_iter()
            .find(|r| r["svname"] == id)
            .unwrap()
    };

    assert_eq!(
        agent
            .command(&format!("set weight {backend}/{id} 0"))
            .trim(),
        ""
    );
    assert_eq!(server(id)["weight"], "0");
    for _ in 0..3 {
        assert_eq!(member_now(), first, "a drained member keeps its clients");
    }

    assert_eq!(
        agent
            .command(&format!("disable server {backend}/{id}"))
            .trim(),
        ""
    );
    assert_eq!(server(id)["status"], "MAINT");
    for _ in 0..3 {
        assert_eq!(member_now(), other, "in maintenance: the other member");
    }
    assert_eq!(
        agent
            .command(&format!("enable server {backend}/{id}"))
            .trim(),
        ""
    );
    assert_eq!(
        agent
            .command(&format!("set weight {backend}/{id} 1"))
            .trim(),
        ""
    );
    for _ in 0..3 {
        assert_eq!(member_now(), other, "and stuck to it now");
    }
    assert_eq!(server(other_id)["stot"], "6");

    // -st (haproxy's hard stop of the old process) instead of -sf: the new instance takes
    // the data path over first, so the old one's SIGTERM tears nothing down.
    let old = agent.pids();
    let conf_path = agent.conf().display().to_string();
    let pid_path = agent.pidfile().display().to_string();
    let mut args = vec!["-f", &conf_path, "-p", &pid_path, "-st"];
    let old_s: Vec<String> = old.iter().map(|p| p.to_string()).collect();
    args.extend(old_s.iter().map(String::as_str));
    ok(&agent.haproxy(&args, &[]));
    wait_for("the old process to exit", Duration::from_secs(10), || {
        old.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    assert!(agent.active());
    assert_eq!(member_now(), other, "serving, and the client still sticks");
}

/// An HTTP GET through the VIP from the client: the status code and the body.
fn l7_conf(agent: &Agent) -> String {
    v2_conf(agent, 80)
        .replace("    mode tcp\n", "    mode http\n")
        .replace(
            "    option tcplog\n",
            "    option httplog\n    option forwardfor\n",
        )
}

/// `mode http` goes to the real haproxy; the agent's updates move the load balancer from
/// haproxy to lb and back, each taking over from the other with -sf.
#[test]
fn a_mode_http_config_runs_the_real_haproxy_and_updates_move_between_them() {
    if !integration_tests::require_root() {
        return;
    }
    if !std::path::Path::new("/usr/sbin/haproxy").exists() {
        integration_tests::skip::skip(
            "no real haproxy at /usr/sbin/haproxy (Debian package haproxy)",
        );
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let _h1 = HttpServer::start(&topo.members[0].ns, M1, 80);
    let _h2 = HttpServer::start(&topo.members[1].ns, M2, 80);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let sysctls = |agent: &Agent| {
        let read = |key: &str| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &agent.namespace, "sysctl", "-n", key])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        [
            "net.ipv4.ip_local_port_range",
            "net.ipv4.conf.all.send_redirects",
        ]
        .map(read)
    };
    let found = sysctls(&agent);

    // The v2 agent's APP_COOKIE pool: `stick-table type string`, which lb refuses for itself,
    // in an HTTP backend. The L7 need wins wherever it is: the real haproxy checks it.
    let app_cookie = l7_conf(&agent).replace(
        "    balance roundrobin\n",
        "    balance roundrobin\n    stick-table type string len 64 size 10k\n    \
         stick store-response res.cook(JSESSIONID)\n    stick match req.cook(JSESSIONID)\n",
    );
    assert!(app_cookie.contains("stick-table type string"));
    std::fs::write(agent.conf(), &app_cookie).unwrap();
    let out = agent.haproxy(&["-c", "-f", &agent.conf().display().to_string()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("needs an L7 proxy: running /usr/sbin/haproxy"),
        "{err}"
    );

    let out = agent.spawn(&l7_conf(&agent));
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("needs an L7 proxy: running /usr/sbin/haproxy"));
    let haproxy = agent.pids();
    assert!(haproxy
        .iter()
        .all(|p| exe(*p).ends_with("haproxy") && exe(*p) != lb_bin().canonicalize().unwrap()));
    let (code, _) = wait_for("haproxy to serve", Duration::from_secs(10), || {
        http_get(&topo.client.name, 80).ok()
    });
    assert_eq!(code, 200);
    let (pool, _) = agent.stats();
    assert_eq!(
        pool["svname"], "BACKEND",
        "the real haproxy's own stats socket"
    );

    // The listener becomes TCP: lb takes over from haproxy (which gets SIGUSR1).
    ok(&agent.spawn(&v2_conf(&agent, 80)));
    let lb = agent.pids();
    assert_eq!(exe(lb[0]), lb_bin().canonicalize().unwrap());
    wait_for("haproxy to finish", Duration::from_secs(15), || {
        haproxy
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    let (code, body) = http_get(&topo.client.name, 80).expect("through lb");
    assert_eq!(code, 200);
    assert!(body == "10.0.0.2" || body == "10.0.0.4");
    let (pool, _) = agent.stats();
    assert_eq!(pool["stot"], "1", "lb's stats socket now");
    assert_ne!(sysctls(&agent), found, "lb's own while it serves");

    // Back to HTTP: the real haproxy takes over; lb drains, then tears its data path down.
    ok(&agent.spawn(&l7_conf(&agent)));
    wait_for(
        "lb to finish its soft stop",
        Duration::from_secs(15),
        || {
            lb.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                .then_some(())
        },
    );
    let (code, _) = http_get(&topo.client.name, 80).expect("through haproxy again");
    assert_eq!(code, 200);
    assert!(
        agent.remains().is_empty(),
        "lb left nothing: {:?}",
        agent.remains()
    );
    assert_eq!(
        sysctls(&agent),
        found,
        "the namespace's sysctls as lb found them"
    );
}

/// New connections (HTTP/1.0, the member closes first, as `Connection: close`) from 4
/// threads for `secs` seconds: how many, and how many took a second or more to connect (a
/// SYN retransmission: the member's TIME_WAIT refused the first SYN).
/// What `load` saw: connections that completed, of them those whose connect took 0.9 s or
/// more (a SYN retransmitted), and connections that failed.
struct Load {
    done: u64,
    slow: u64,
    failed: u64,
}

fn load(client: &str, secs: u64) -> Load {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let (done, slow, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                lb::node::enter(client).unwrap();
                while std::time::Instant::now() < until {
                    let t = std::time::Instant::now();
                    let r = (|| -> std::io::Result<()> {
                        use std::io::{Read as _, Write as _};
                        let mut c = std::net::TcpStream::connect_timeout(
                            &std::net::SocketAddr::from((VIP, 80)),
                            Duration::from_secs(5),
                        )?;
                        if t.elapsed() >= Duration::from_millis(900) {
                            slow.fetch_add(1, Relaxed);
                        }
                        c.set_read_timeout(Some(Duration::from_secs(5)))?;
                        c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        let mut b = Vec::new();
                        c.read_to_end(&mut b)?;
                        Ok(())
                    })();
                    match r {
                        Ok(()) => done.fetch_add(1, Relaxed),
                        Err(_) => failed.fetch_add(1, Relaxed),
                    };
                }
            });
        }
    });
    Load {
        done: done.into_inner(),
        slow: slow.into_inner(),
        failed: failed.into_inner(),
    }
}

/// The first lb deploy on a node that ran HAProxy: under `Connection: close` load, the
/// agent's update starts lb with -sf <haproxy>. New connections must not stall: members
/// hold TIME_WAIT tuples from HAProxy's connections, with HAProxy's timestamps.
#[test]
fn switching_from_haproxy_to_lb_under_load_does_not_stall_new_connections() {
    if !integration_tests::require_root() {
        return;
    }
    if !std::path::Path::new("/usr/sbin/haproxy").exists() {
        integration_tests::skip::skip(
            "no real haproxy at /usr/sbin/haproxy (Debian package haproxy)",
        );
        return;
    }
    // Without HAProxy before: lb alone, the same load.
    let base = {
        let topo = SeedTopology::new(&[M1, M2]);
        let _h = (
            HttpServer::start(&topo.members[0].ns, M1, 80),
            HttpServer::start(&topo.members[1].ns, M2, 80),
        );
        let mut agent = Agent::new(&topo, &lb_bin(), false);
        agent.plug(VIP);
        ok(&agent.spawn(&v2_conf(&agent, 80)));
        let r = load(&topo.client.name, 10);
        agent.undeploy();
        r
    };
    let topo = SeedTopology::new(&[M1, M2]);
    let _h = (
        HttpServer::start(&topo.members[0].ns, M1, 80),
        HttpServer::start(&topo.members[1].ns, M2, 80),
    );
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    // The real haproxy serves first (the config is L7 only to make lb hand it over).
    ok(&agent.spawn(&l7_conf(&agent)));
    let before = load(&topo.client.name, 5);
    let (switched, after) = std::thread::scope(|s| {
        let l = s.spawn(|| load(&topo.client.name, 10));
        std::thread::sleep(Duration::from_millis(500));
        let out = agent.spawn(&v2_conf(&agent, 80));
        (out, l.join().unwrap())
    });
    ok(&switched);
    let ratio = after.done as f64 / base.done.max(1) as f64;
    eprintln!(
        "SWITCH haproxy -> lb under Connection: close load, 4 threads, 10 s: {} connections ({:.0}/s), {} slow (>= 0.9 s), {} failed; lb alone: {} ({:.0}/s), {} slow, {} failed; ratio {ratio:.2}; haproxy before the switch: {:.0}/s, {} failed",
        after.done, after.done as f64 / 10.0, after.slow, after.failed, base.done,
        base.done as f64 / 10.0, base.slow, base.failed, before.done as f64 / 5.0, before.failed
    );
    // The load is real: hundreds of connections a second through each.
    for (what, l, secs) in [
        ("lb alone", &base, 10.0),
        ("haproxy", &before, 5.0),
        ("the switch", &after, 10.0),
    ] {
        assert!(
            l.done as f64 / secs >= 100.0,
            "{what}: {} connections in {secs} s",
            l.done
        );
        assert_eq!(l.failed, 0, "{what}: connections failed");
    }
    assert_eq!(
        after.slow, 0,
        "no connection waited for a SYN retransmission"
    );
    // README: 0.98x measured; a switch that stalls new connections made 0.32x.
    assert!(
        ratio >= 0.8,
        "across the switch lb made {ratio:.2}x the connections it makes alone"
    );
}

/// The seed's `log` lines and `option tcplog`, pointed at a test socket: one tcplog line
/// per connection with haproxy's tag, the frontend, backend and server names of the config,
/// at `local0.info` only (the `local1 notice` line does not take traffic lines). The agent's
/// environment names a metrics address: the drop-in serves the same connections there.
#[test]
fn option_tcplog_and_metrics_in_the_drop_in() {
    if !integration_tests::require_root() {
        return;
    }
    let topo = SeedTopology::new(&[M1, M2]);
    let mut agent = Agent::new(&topo, &lb_bin(), false);
    agent.plug(VIP);
    let path = std::env::temp_dir().join(format!("{}.log", integration_tests::unique("dlog")));
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    // The daemon logs as `nobody`, as haproxy does.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let conf = v1_conf(&agent, (1, 1), "").replace("/dev/log", &path.display().to_string());
    ok(&agent.spawn_with(&conf, &[("LB_METRICS_ADDRESS", "127.0.0.1:9465")]));
    let pid = agent.pids()[0];
    let mut made = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&topo.client.name, VIP, 22).expect("connect");
        c.echo(b"hello\n").unwrap();
        made.push((c.stream.local_addr().unwrap().port(), c.member()));
    }
    let mut buf = vec![0u8; 2048];
    let mut lines = Vec::new();
    // Daemon lines (start-up, member checks) share the socket; traffic lines name the client.
    let start = std::time::Instant::now();
    while lines.len() < made.len() && start.elapsed() < Duration::from_secs(5) {
        if let Ok(n) = sock.recv(&mut buf) {
            let d = String::from_utf8_lossy(&buf[..n]).into_owned();
            if d.contains(": 10.0.0.1:") {
                lines.push(d);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(lines.len(), made.len(), "{lines:#?}");
    for (port, member) in made {
        let server = if member == M1 { S1 } else { S2 };
        let want = format!(" haproxy[{pid}]: 10.0.0.1:{port} [");
        let l = lines
            .iter()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no line for port {port}: {lines:#?}"));
        assert!(l.starts_with("<134>"), "local0.info: {l}");
        assert!(
            l.contains(&format!(
                "] df25900f-53b1-4aab-8436-8411ec710445 {}/{server} 0/",
                agent.id
            )),
            "{l}"
        );
        assert!(
            l.contains(" -- ") && l.ends_with("/0 0/0"),
            "closed, no retries: {l}"
        );
    }
    // The metrics address from the agent's environment serves the same connections, inside
    // the load balancer's namespace (the process runs this one load balancer).
    let listener_total = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| l.starts_with("lb_listener_connections_total{"))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    let body = integration_tests::wait_for(
        "the drop-in's metrics to count both connections",
        Duration::from_secs(10),
        || {
            let body = integration_tests::in_netns(&agent.namespace, || {
                use std::io::{Read as _, Write as _};
                let mut s = std::net::TcpStream::connect(("127.0.0.1", 9465)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out)
            })
            .ok()
            .flatten()?;
            (listener_total(&body) == ["2"]).then_some(body)
        },
    );
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("lb_member_up{") && l.ends_with(" 1")),
        "a member up in the drop-in's metrics:\n{body}"
    );
    agent.undeploy();
}
