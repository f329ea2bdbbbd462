//! Tier 3: what lb shows of its traffic, checked against real connections through the seed's
//! topology: the connection log (haproxy's tcplog lines, as syslog datagrams), the Prometheus
//! endpoint, `lb explain`.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

use integration_tests::{topology::*, unique};

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const LISTENER: &str = "df25900f-53b1-4aab-8436-8411ec710445";
const MEMBER_IDS: [(Ipv4Addr, &str); 2] = [
    (M1, "45481748-3104-462c-ae4b-fae0f4b08c20"),
    (M2, "227b69fe-8685-4df6-b2a5-2f964c74886c"),
];

/// Adds `keys` to the test config's `[daemon]` section.
fn daemon_keys(cfg: &TestConfig, keys: &str) {
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let anchor = "conntrack_flows = 4096\n";
    assert!(text.contains(anchor));
    std::fs::write(
        &cfg.path,
        text.replacen(anchor, &format!("{anchor}{keys}\n"), 1),
    )
    .unwrap();
}

/// A syslog socket (what `/dev/log` is) the test reads.
struct Syslog {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Syslog {
    fn bind() -> Syslog {
        let path = std::env::temp_dir().join(format!("{}.log", unique("syslog")));
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Syslog { sock, path }
    }

    /// Datagrams until `n` arrived or `within` passed.
    fn read(&self, n: usize, within: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < n && start.elapsed() < within {
            if let Ok(k) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
            }
        }
        got
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One parsed tcplog line.
#[derive(Debug)]
struct Line {
    client: String,
    client_port: u16,
    frontend: String,
    backend: String,
    server: String,
    connect_ms: i64,
    total_ms: u64,
    bytes: u64,
    state: String,
    counts: Vec<String>,
}

fn parse(datagram: &str) -> Line {
    let re = regex::Regex::new(concat!(
        r"^<134>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} lb\[[0-9]+\]: ",
        r"([0-9a-f.:]+):([0-9]+) \[[0-9]{2}/[A-Z][a-z]{2}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}\] ",
        r"([^ ]+) ([^ /]+)/([^ ]+) 0/(-?[0-9]+)/([0-9]+) ([0-9]+) ([^ ]{2}) ",
        r"([0-9]+/[0-9]+/[0-9]+/[0-9]+/\+?[0-9]+) 0/0$"
    ))
    .unwrap();
    let c = re
        .captures(datagram)
        .unwrap_or_else(|| panic!("not a tcplog datagram: {datagram:?}"));
    Line {
        client: c[1].into(),
        client_port: c[2].parse().unwrap(),
        frontend: c[3].into(),
        backend: c[4].into(),
        server: c[5].into(),
        connect_ms: c[6].parse().unwrap(),
        total_ms: c[7].parse().unwrap(),
        bytes: c[8].parse().unwrap(),
        state: c[9].into(),
        counts: c[10].split('/').map(Into::into).collect(),
    }
}

/// Every connection made is one line when it ends, with its member, the bytes the member
/// sent it and how it ended: closed by both sides (`--`), reset by the client (`CD`), idle
/// past the listener's data timeout (`cD`, written by the expiry).
#[test]
fn connection_log_lines_match_the_connections_made() {
    let Some(setup) = Setup::new(
        |t| t.replace("timeout_client_data = 50000", "timeout_client_data = 2000"),
        &[M1, M2],
    ) else {
        return;
    };
    let syslog = Syslog::bind();
    daemon_keys(
        &setup.cfg,
        &format!("connection_log = \"{} local0\"", syslog.path.display()),
    );
    let mut daemon = setup.start(&[]);
    let client = setup.topo.client.name.clone();
    // client port -> (member, bytes from the member, how it ends)
    let mut want: HashMap<u16, (Ipv4Addr, u64, &str)> = HashMap::new();
    for i in 0..4 {
        let mut c = connect(&client, VIP, 22).expect("connect");
        let msg = vec![b'a' + i as u8; 100 * (i + 1)];
        c.echo(&msg).unwrap();
        let port = c.stream.local_addr().unwrap().port();
        want.insert(
            port,
            (c.member(), (c.greeting.len() + msg.len()) as u64, "--"),
        );
        // Closed both ways before the next one opens (the counts on each line are then 1).
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut c.stream, &mut rest).unwrap();
        assert!(rest.is_empty());
    }
    {
        let mut c = connect(&client, VIP, 22).expect("connect");
        c.echo(b"reset me\n").unwrap();
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let port = c.stream.local_addr().unwrap().port();
        want.insert(port, (c.member(), (c.greeting.len() + 9) as u64, "CD"));
    }
    // The RST through before the next one opens (under the VM test's emulation the next
    // SYN has overtaken it: the reset line then counted two connections).
    integration_tests::wait_for(
        "the reset connection closed",
        Duration::from_secs(10),
        || {
            (stats(&setup.bin, &setup.cfg.state_dir)[0]["listeners"][0]["active_connections"] == 0)
                .then_some(())
        },
    );
    let mut idle = connect(&client, VIP, 22).expect("connect");
    idle.echo(b"idle\n").unwrap();
    let port = idle.stream.local_addr().unwrap().port();
    want.insert(
        port,
        (idle.member(), (idle.greeting.len() + 5) as u64, "cD"),
    );

    // The idle one goes at its 2 s timeout, at the expiry's next cycle (every second).
    let got = syslog.read(want.len() + 1, Duration::from_secs(8));
    drop(idle);
    eprintln!("{}", got.join("\n"));
    let lines: Vec<Line> = got.iter().map(|d| parse(d)).collect();
    assert_eq!(
        lines.len(),
        want.len(),
        "one line per connection, no more: {got:#?}"
    );
    let ids: HashMap<Ipv4Addr, &str> = MEMBER_IDS.into_iter().collect();
    for l in &lines {
        assert_eq!(l.client, "10.0.0.1", "{l:?}");
        let (member, bytes, state) = want
            .get(&l.client_port)
            .unwrap_or_else(|| panic!("a line for a connection not made: {l:?}"));
        assert_eq!(l.frontend, LISTENER);
        assert_eq!(l.backend, setup.cfg.lb_id, "the seed's pool shares the id");
        assert_eq!(l.server, ids[member], "{l:?}");
        assert_eq!(l.bytes, *bytes, "bytes from the member: {l:?}");
        assert_eq!(l.state, *state, "{l:?}");
        assert!(
            l.connect_ms >= 0 && l.total_ms >= l.connect_ms as u64,
            "{l:?}"
        );
        // One connection at a time: each line counts itself only (actconn/feconn/beconn/
        // srv_conn), and no retries.
        assert_eq!(l.counts, ["1", "1", "1", "1", "0"], "{l:?}");
        if *state == "cD" {
            assert!(l.total_ms >= 2000, "idle past 2 s: {l:?}");
        }
    }
    let s = stats(&setup.bin, &setup.cfg.state_dir);
    assert_eq!(s[0]["connection_log_lost"], 0, "{s}");
    daemon.stop();
}

/// The termination states of connections that end before or without an exchange, each made
/// by real sockets and read from the log: the member resets an established connection
/// (`SD`), the member refuses (`SC`: a RST to the SYN, no retries), the member never answers
/// within `timeout_member_connect` (`sC`: its link down, the client gives up before its
/// first retransmission). (`CC`, the client giving up before the member answered, comes
/// from a client established with lb through a SYN cookie; lb drops such a client's RST
/// while it waits for the member, and the flow ends `sC`: left to the admission work.)
#[test]
fn termination_states_of_real_connections() {
    const PORT: u16 = 7000;
    let Some(setup) = Setup::new(
        |t| {
            // One member, on a port the test serves itself; no monitor; no retries.
            let two = t
                .match_indices("[[loadbalancer.pool.member]]")
                .nth(1)
                .unwrap()
                .0;
            let mut out = Vec::new();
            let mut monitor = false;
            for line in t[..two].lines() {
                if line.starts_with('[') {
                    monitor = line.trim() == "[loadbalancer.pool.healthmonitor]";
                }
                if !monitor {
                    out.push(line);
                }
            }
            (out.join("\n") + "\n")
                .replace(
                    "protocol_port = 22\nweight",
                    &format!("protocol_port = {PORT}\nweight"),
                )
                .replace("retries = 3 ", "retries = 0 ")
                .replace(
                    "timeout_member_connect = 5000",
                    "timeout_member_connect = 1000",
                )
        },
        &[M1],
    ) else {
        return;
    };
    let syslog = Syslog::bind();
    daemon_keys(
        &setup.cfg,
        &format!("connection_log = \"{} local0\"", syslog.path.display()),
    );
    let mut daemon = setup.start(&[]);
    let client = setup.topo.client.name.clone();
    let member_ns = setup.topo.members[0].ns.name.clone();
    let vip = std::net::SocketAddr::from((VIP, 22));
    let mut want: HashMap<u16, &str> = HashMap::new();

    // SD: the member accepts, reads, and resets.
    let (ready, wait) = std::sync::mpsc::channel();
    let server = std::thread::spawn({
        let ns = member_ns.clone();
        move || {
            lb::node::enter(&ns).unwrap();
            let l = std::net::TcpListener::bind((M1, PORT)).unwrap();
            ready.send(()).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 64];
            let _ = std::io::Read::read(&mut c, &mut b);
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
    wait.recv().unwrap();
    let port = integration_tests::in_netns(&client, || {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap();
        c.write_all(b"reset me\n").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        let r = c.read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the member's reset reaches the client: {r:?}"
        );
        c.local_addr().unwrap().port()
    })
    .unwrap();
    server.join().unwrap();
    want.insert(port, "SD");

    // SC: nothing listens on the member's port any more.
    let port = integration_tests::in_netns(&client, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let r = s.connect_timeout(&vip.into(), Duration::from_secs(5));
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "refused: {r:?}"
        );
        s.local_addr().unwrap().as_socket().unwrap().port()
    })
    .unwrap();
    want.insert(port, "SC");

    // sC: the member's link down; the client gives up after 0.5 s, before its first SYN
    // retransmission (1 s), so lb sees one SYN and no answer.
    setup.topo.members[0].ns.ip("link set eth0 down");
    let port = integration_tests::in_netns(&client, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let r = s.connect_timeout(&vip.into(), Duration::from_millis(500));
        assert!(r.is_err(), "nothing answers: {r:?}");
        s.local_addr().unwrap().as_socket().unwrap().port()
    })
    .unwrap();
    want.insert(port, "sC");
    let got = syslog.read(3, Duration::from_secs(10));
    setup.topo.members[0].ns.ip("link set eth0 up");
    eprintln!("{}", got.join("\n"));
    let lines: Vec<Line> = got.iter().map(|d| parse(d)).collect();
    let states: HashMap<u16, String> = lines
        .iter()
        .map(|l| (l.client_port, l.state.clone()))
        .collect();
    let want: HashMap<u16, String> = want.into_iter().map(|(p, s)| (p, s.to_string())).collect();
    assert_eq!(states, want, "client port -> termination state: {got:#?}");
    assert_eq!(lines.len(), 3, "one line per connection: {got:#?}");
    daemon.stop();
}

/// `CC`: a client that gave up before the member answered. With SYN cookies always on, the
/// client's handshake completes with lb, whose SYN to the member (link down) is never
/// answered; the client resets (closed with SO_LINGER 0, nothing sent): one line, `CC`, at
/// once rather than `sC` at `timeout_member_connect`.
#[test]
fn cc_a_client_that_resets_before_the_member_answered() {
    let Some(setup) = Setup::new(
        |t| integration_tests::with_half_open_limit(&t, 0),
        &[M1, M2],
    ) else {
        return;
    };
    let syslog = Syslog::bind();
    daemon_keys(
        &setup.cfg,
        &format!("connection_log = \"{} local0\"", syslog.path.display()),
    );
    let mut daemon = setup.start(&[]);
    for m in &setup.topo.members {
        m.ns.ip("link set eth0 down");
    }
    let vip = std::net::SocketAddr::from((VIP, 22));
    let port = integration_tests::in_netns(&setup.topo.client.name, || {
        let c = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
            .expect("the handshake completes with lb's cookie");
        let port = c.local_addr().unwrap().port();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        port
    })
    .unwrap();
    let got = syslog.read(1, Duration::from_secs(3));
    eprintln!("{}", got.join("\n"));
    assert_eq!(
        got.len(),
        1,
        "one line, before timeout_member_connect (5 s)"
    );
    let line = parse(&got[0]);
    assert_eq!(
        (line.client_port, line.state.as_str()),
        (port, "CC"),
        "{line:?}"
    );
    for m in &setup.topo.members {
        m.ns.ip("link set eth0 up");
    }
    daemon.stop();
}

/// `GET path` on the daemon's metrics address, inside the node's namespace: (status line,
/// body).
fn http_get(ns: &str, port: u16, path: &str) -> (String, String) {
    let raw = integration_tests::in_netns(ns, || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })
    .unwrap()
    .expect("metrics endpoint answers");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Samples of family `name` whose labels contain every one of `with`.
fn samples(text: &str, name: &str, with: &[&str]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// The Prometheus endpoint, scraped inside the node's namespace: `promtool check metrics`
/// has nothing to say, and the counters are the connections made (per member, per
/// listener), none left open, both members checked and up, the table's capacity as set.
#[test]
fn metrics_pass_promtool_and_count_the_connections_made() {
    let Some(setup) = Setup::new(
        |t| {
            t.replace("delay = 5 ", "delay = 1 ")
                .replace("timeout = 3 ", "timeout = 0.5 ")
        },
        &[M1, M2],
    ) else {
        return;
    };
    let port = 9464;
    let mut daemon = setup.start(&["--metrics-address", &format!("127.0.0.1:{port}")]);
    let node = setup.topo.node.name.clone();
    let mut per_member: HashMap<Ipv4Addr, u64> = HashMap::new();
    let made = 7;
    for _ in 0..made {
        let mut c = connect(&setup.topo.client.name, VIP, 22).expect("connect");
        c.echo(&[b'm'; 50]).unwrap();
        *per_member.entry(c.member()).or_default() += 1;
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut c.stream, &mut rest).unwrap();
    }
    let lb = format!("loadbalancer=\"{}\"", setup.cfg.lb_id);
    let listener = format!("listener=\"{LISTENER}\"");
    let text = integration_tests::wait_for(
        "both members checked, every connection closed",
        Duration::from_secs(15),
        || {
            let (status, body) = http_get(&node, port, "/metrics");
            assert!(status.ends_with("200 OK"), "{status}");
            let checked = samples(&body, "lb_member_check_success", &[&lb]);
            let open = samples(&body, "lb_listener_active_connections", &[&lb, &listener]);
            (checked == [1.0, 1.0] && open == [0.0]).then_some(body)
        },
    );
    assert_eq!(
        samples(&text, "lb_listener_connections_total", &[&lb, &listener]),
        [made as f64]
    );
    for (addr, id) in MEMBER_IDS {
        let m = format!("member=\"{id}\"");
        let want = per_member.get(&addr).copied().unwrap_or(0) as f64;
        assert_eq!(
            samples(&text, "lb_member_connections_total", &[&lb, &m]),
            [want],
            "{addr}"
        );
        assert_eq!(samples(&text, "lb_member_up", &[&lb, &m]), [1.0]);
        assert_eq!(
            samples(
                &text,
                "lb_member_operating_status",
                &[&lb, &m, "status=\"ONLINE\""]
            ),
            [1.0]
        );
        assert_eq!(
            samples(&text, "lb_member_check_info", &[&lb, &m, "status=\"L4OK\""]),
            [1.0]
        );
    }
    // Every packet of the traffic was translated: at least SYN, data, FIN each way.
    let to_member = samples(
        &text,
        "lb_verdict_packets_total",
        &[&lb, "verdict=\"tx_to_member\""],
    );
    assert!(to_member[0] >= 3.0 * made as f64, "{to_member:?}");
    assert_eq!(
        samples(&text, "lb_conntrack_capacity_flows", &[&lb]),
        [4096.0]
    );
    assert_eq!(
        samples(
            &text,
            "lb_connection_log_events_dropped_total",
            &[&lb, &listener]
        ),
        [0.0]
    );

    // The counters above are checked without it.
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        integration_tests::skip::skip(
            "no promtool for the exposition check (Debian package prometheus)",
        );
        daemon.stop();
        return;
    }
    let lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(text.as_bytes())?;
            p.wait_with_output()
        })
        .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );

    let (status, _) = http_get(&node, port, "/nope");
    assert!(status.contains("404"), "{status}");
    daemon.stop();
}

/// Every `*_total` sample of a scrape, by its whole series (name and labels).
fn totals(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next().unwrap().ends_with("_total"))
        .map(|(series, v)| (series.to_string(), v.parse().unwrap()))
        .collect()
}

/// The metrics across a takeover (`lb run --takeover` on the same address, as `-sf` does):
/// the new daemon serves them, the data path's counters carry on where they were (no counter
/// goes back), the connection held across it is still counted active, and the connections
/// made after it add to the totals; the new daemon's health checks show.
#[test]
fn metrics_carry_on_across_a_takeover() {
    let Some(setup) = Setup::new(
        |t| {
            t.replace("delay = 5 ", "delay = 1 ")
                .replace("timeout = 3 ", "timeout = 0.5 ")
        },
        &[M1, M2],
    ) else {
        return;
    };
    let port = 9467;
    let address = format!("127.0.0.1:{port}");
    let mut old = setup.start(&["--metrics-address", &address]);
    let node = setup.topo.node.name.clone();
    let lb = format!("loadbalancer=\"{}\"", setup.cfg.lb_id);
    let listener = format!("listener=\"{LISTENER}\"");
    let made = |n: usize| {
        for _ in 0..n {
            let mut c = connect(&setup.topo.client.name, VIP, 22).expect("connect");
            c.echo(b"counted\n").unwrap();
            c.stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut c.stream, &mut rest).unwrap();
        }
    };
    let scrape_until = |what: &str, total: f64| {
        integration_tests::wait_for(what, Duration::from_secs(15), || {
            let (status, body) = http_get(&node, port, "/metrics");
            assert!(status.ends_with("200 OK"), "{status}");
            let checked = samples(&body, "lb_member_check_success", &[&lb]);
            let conns = samples(&body, "lb_listener_connections_total", &[&lb, &listener]);
            let open = samples(&body, "lb_listener_active_connections", &[&lb, &listener]);
            (checked == [1.0, 1.0] && conns == [total] && open == [1.0]).then_some(body)
        })
    };
    made(4);
    let mut held = connect(&setup.topo.client.name, VIP, 22).expect("connect");
    let before = scrape_until("5 connections, 1 open, both members checked", 5.0);

    let mut new = Daemon::start(
        &setup.bin,
        &node,
        &setup.cfg.path,
        &["--takeover", "--metrics-address", &address],
    );
    wait_running(&mut new, &setup.cfg);
    let status = integration_tests::wait_for(
        "the old daemon to hand over",
        Duration::from_secs(10),
        || old.exited(),
    );
    assert!(status.success(), "{}", old.log_text());
    held.echo(b"across the takeover\n")
        .expect("the held connection");
    let after = scrape_until(
        "the new daemon's metrics: 5 connections, 1 open, checked",
        5.0,
    );
    let (before, after) = (totals(&before), totals(&after));
    eprintln!(
        "METRICS {} counters compared across the takeover",
        before.len()
    );
    assert!(before.len() >= 20, "{before:?}");
    for (series, v) in &before {
        let now = after
            .get(series)
            .unwrap_or_else(|| panic!("{series} is gone after the takeover"));
        assert!(now >= v, "{series} went back: {v} -> {now}");
    }
    made(3);
    scrape_until("3 more connections counted", 8.0);
    drop(held);
    new.stop();
}

/// The connection log when its syslog daemon goes away: the lines it cannot take are counted
/// as send failures (`lb_connection_log_send_failures_total`), the load balancer serves on,
/// and once a syslog daemon binds the socket again the next lines reach it.
#[test]
fn connection_log_send_failures_are_counted_and_serving_goes_on() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let syslog = Syslog::bind();
    let path = syslog.path.clone();
    daemon_keys(
        &setup.cfg,
        &format!("connection_log = \"{} local0\"", path.display()),
    );
    let port = 9468;
    let mut daemon = setup.start(&["--metrics-address", &format!("127.0.0.1:{port}")]);
    let node = setup.topo.node.name.clone();
    let lb = format!("loadbalancer=\"{}\"", setup.cfg.lb_id);
    let client = setup.topo.client.name.clone();
    let made = |n: usize| {
        for _ in 0..n {
            let mut c = connect(&client, VIP, 22).expect("connect");
            c.echo(b"logged\n").unwrap();
            c.stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut c.stream, &mut rest).unwrap();
        }
    };
    let counters = |lines: f64, failures: f64| {
        integration_tests::wait_for(
            &format!("{lines} lines made, {failures} not taken"),
            Duration::from_secs(15),
            || {
                let (_, body) = http_get(&node, port, "/metrics");
                let l = samples(&body, "lb_connection_log_lines_total", &[&lb]);
                let f = samples(&body, "lb_connection_log_send_failures_total", &[&lb]);
                (l == [lines] && f == [failures]).then_some(())
            },
        )
    };
    made(2);
    assert_eq!(syslog.read(2, Duration::from_secs(10)).len(), 2);
    counters(2.0, 0.0);

    // The syslog daemon goes: its socket is gone.
    drop(syslog);
    made(3);
    counters(5.0, 3.0);

    // It comes back on the same path: the next lines reach it.
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let back = Syslog { sock, path };
    made(1);
    let got = back.read(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "a line after the syslog daemon came back");
    parse(&got[0]);
    counters(6.0, 3.0);
    daemon.stop();
}

/// `lb explain --loadbalancer <the test's> <args...> VIP:<port>`.
fn lb_explain(setup: &Setup, args: &[&str], port: u16) -> std::process::Output {
    std::process::Command::new(&setup.bin)
        .args(["explain", "--loadbalancer", &setup.cfg.lb_id])
        .args(args)
        .arg(format!("{VIP}:{port}"))
        .arg("--state-dir")
        .arg(&setup.cfg.state_dir)
        .output()
        .expect("lb explain")
}

fn explain(setup: &Setup, client: &str) -> serde_json::Value {
    let out = lb_explain(setup, &["--json", client], 22);
    assert!(
        out.status.success(),
        "lb explain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lb explain --json")
}

/// `lb explain` names the member the next real connection gets, through least connections
/// and its ties, leaves nothing behind (no flow, no handshake counted, the rotation where
/// it was), and shows an existing connection's entry.
#[test]
fn explain_agrees_with_where_the_next_connection_goes() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let mut daemon = setup.start(&[]);
    // What an `lb explain` killed halfway would have left (a pid no process has).
    let stale = setup.cfg.bpffs.join("explain-4999999");
    std::fs::create_dir_all(&stale).unwrap();
    let ids: HashMap<Ipv4Addr, &str> = MEMBER_IDS.into_iter().collect();
    let mut held = Vec::new();
    for round in 0..5 {
        let e = explain(&setup, "10.0.0.1:45000");
        let n = &e["new_connection"];
        assert_eq!(n["algorithm"], "LEAST_CONNECTIONS");
        assert_eq!(n["verdict"], "tx_to_member", "{e}");
        assert_eq!(n["candidates"].as_array().unwrap().len(), 2);
        let predicted = n["member"].as_str().unwrap().to_string();
        // The candidates' counts are the connections held.
        for c in n["candidates"].as_array().unwrap() {
            let addr: std::net::SocketAddrV4 = c["address"].as_str().unwrap().parse().unwrap();
            let open = held
                .iter()
                .filter(|h: &&Conn| h.member() == *addr.ip())
                .count();
            assert_eq!(c["active"], open as i64, "round {round}: {c}");
            assert_eq!(c["half_open"], 0, "explain left no handshake: {c}");
            assert!(c["excluded"].is_null());
        }
        let c = connect(&setup.topo.client.name, VIP, 22).expect("connect");
        assert_eq!(
            ids[&c.member()],
            predicted,
            "round {round}: the next connection went where explain said"
        );
        held.push(c);
    }
    assert!(!stale.exists(), "a dead explain's scratch copy is removed");
    let left: Vec<_> = std::fs::read_dir(&setup.cfg.bpffs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("explain-"))
        .collect();
    assert!(left.is_empty(), "explain left its scratch copy: {left:?}");
    // Nothing but the held connections in the table.
    let out = std::process::Command::new(&setup.bin)
        .args(["flows", "--count", "--state-dir"])
        .arg(&setup.cfg.state_dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.ends_with(&format!("flows: {}\n", held.len())),
        "{text}"
    );

    let port = held[0].stream.local_addr().unwrap().port();
    let e = explain(&setup, &format!("10.0.0.1:{port}"));
    let f = &e["existing"];
    assert_eq!(f["state"], "ESTABLISHED", "{e}");
    assert_eq!(f["member"], ids[&held[0].member()]);
    assert_eq!(f["timeout"], "timeout_client_data");
    // Idle time and time left make the listener's data timeout (50 s).
    let (idle, left) = (
        f["idle_s"].as_f64().unwrap(),
        f["timeout_left_s"].as_f64().unwrap(),
    );
    assert!(left > 0.0 && (idle + left - 50.0).abs() < 1.0, "{f}");
    let text = lb_explain(&setup, &["10.0.0.1:45000"], 22);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("least connections") && text.contains("-> "),
        "{text}"
    );
    let bad = lb_explain(&setup, &["10.0.0.1:45000"], 23);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no TCP listener on port 23"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    drop(held);
    daemon.stop();
}

/// The connection log of an IPv6 load balancer: the same lines, the client written as
/// haproxy writes an IPv6 one (`2001:db8::1:41234`), from `lb6` when a connection closes (its
/// record is written after the subprogram that closed the flow returns) and from the expiry
/// when one goes idle. And `lb explain` over IPv6: the member each connection then gets, and
/// an existing connection's entry.
#[test]
fn connection_log_of_an_ipv6_load_balancer() {
    use integration_tests::{CLIENT6, VIP6};
    let Some(setup) = Setup::new(
        |t| as_ipv6(t).replace("timeout_client_data = 50000", "timeout_client_data = 2000"),
        &[M1, M2],
    ) else {
        return;
    };
    let _servers = setup.serve_ipv6();
    let syslog = Syslog::bind();
    daemon_keys(
        &setup.cfg,
        &format!("connection_log = \"{} local0\"", syslog.path.display()),
    );
    let mut daemon = setup.start(&[]);
    setup.wait_online();
    let (bin, dir) = (&setup.bin, &setup.cfg.state_dir);
    let client = setup.topo.client.name.clone();
    let ids: HashMap<std::net::IpAddr, &str> = MEMBER_IDS
        .into_iter()
        .map(|(a, id)| (v6_of(a).into(), id))
        .collect();
    let explain6 = |client: &str| -> serde_json::Value {
        let out = std::process::Command::new(bin)
            .args([
                "explain",
                "--json",
                "--loadbalancer",
                &setup.cfg.lb_id,
                client,
            ])
            .arg(format!("[{VIP6}]:22"))
            .arg("--state-dir")
            .arg(dir)
            .output()
            .expect("lb explain");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("lb explain --json")
    };
    let mut want: HashMap<u16, (std::net::IpAddr, u64, &str)> = HashMap::new();
    for i in 0..3 {
        // `lb explain` over IPv6 names the member the connection then gets.
        let e = explain6(&format!("[{CLIENT6}]:45000"));
        let n = &e["new_connection"];
        assert_eq!(n["verdict"], "tx_to_member", "{e}");
        let predicted = n["member"].as_str().unwrap().to_string();
        let addr: std::net::SocketAddr = n["member_address"].as_str().unwrap().parse().unwrap();
        let mut c = connect(&client, VIP6, 22).expect("connect");
        assert_eq!(ids[&c.member_ip()], predicted, "round {i}: {e}");
        assert_eq!(addr.ip(), c.member_ip());
        let msg = vec![b'a' + i as u8; 100 * (i + 1)];
        c.echo(&msg).unwrap();
        let port = c.stream.local_addr().unwrap().port();
        let bytes = (c.greeting.len() + msg.len()) as u64;
        want.insert(port, (c.member_ip(), bytes, "--"));
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut c.stream, &mut rest).unwrap();
    }
    {
        let mut c = connect(&client, VIP6, 22).expect("connect");
        c.echo(b"reset me\n").unwrap();
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let port = c.stream.local_addr().unwrap().port();
        want.insert(port, (c.member_ip(), (c.greeting.len() + 9) as u64, "CD"));
    }
    integration_tests::wait_for("the reset one closed", Duration::from_secs(10), || {
        (stats(bin, dir)[0]["listeners"][0]["active_connections"] == 0).then_some(())
    });
    let mut idle = connect(&client, VIP6, 22).expect("connect");
    idle.echo(b"idle\n").unwrap();
    let port = idle.stream.local_addr().unwrap().port();
    want.insert(
        port,
        (idle.member_ip(), (idle.greeting.len() + 5) as u64, "cD"),
    );
    let e = explain6(&format!("[{CLIENT6}]:{port}"));
    assert_eq!(e["existing"]["state"], "ESTABLISHED", "{e}");
    assert_eq!(e["existing"]["member"], ids[&idle.member_ip()], "{e}");
    let got = syslog.read(want.len() + 1, Duration::from_secs(8));
    drop(idle);
    eprintln!("{}", got.join("\n"));
    let lines: Vec<Line> = got.iter().map(|d| parse(d)).collect();
    assert_eq!(lines.len(), want.len(), "one line per connection: {got:#?}");
    for l in &lines {
        assert_eq!(l.client, CLIENT6.to_string(), "{l:?}");
        let (member, bytes, state) = want
            .get(&l.client_port)
            .unwrap_or_else(|| panic!("a line for a connection not made: {l:?}"));
        assert_eq!(l.frontend, LISTENER);
        assert_eq!(l.server, ids[member], "{l:?}");
        assert_eq!(l.bytes, *bytes, "bytes from the member: {l:?}");
        assert_eq!(l.state, *state, "{l:?}");
        assert_eq!(l.counts, ["1", "1", "1", "1", "0"], "{l:?}");
    }
    let s = stats(bin, dir);
    assert_eq!(s[0]["connection_log_lost"], 0, "{s}");
    daemon.stop();
}
