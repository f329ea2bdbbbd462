//! Tier 3, UDP: the `lb` daemon with a UDP listener in front of two real DNS servers
//! (dnsmasq) and a real client (dig): answers through the VIP, the spread of least
//! connections over UDP flows, what the members see, the UDP-CONNECT monitor taking a member
//! out and back, and the member's ICMP port unreachable reaching the client.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{topology::*, wait_for};

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

/// A dnsmasq in a member's namespace answering `who.test` with the member's own address and
/// logging every query it gets (with its source) to a file. Killed on drop.
struct Dns {
    child: Child,
    log: std::path::PathBuf,
}

impl Dns {
    fn start(ns: &str, addr: Ipv4Addr) -> Dns {
        let log =
            std::env::temp_dir().join(format!("{}.dnsmasq.log", integration_tests::unique("dns")));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .args([
                "--user=root",
                "--pid-file=",
                "--port=53",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={addr}"))
            .args(["--no-resolv", "--no-hosts", "--log-queries"])
            .arg(format!("--host-record=who.test,{addr}"))
            .arg(format!("--log-facility={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        let d = Dns { child, log };
        // Up once it answers locally.
        wait_for("dnsmasq answering", Duration::from_secs(10), || {
            dig(ns, addr).ok().filter(|a| *a == addr)
        });
        d
    }

    /// The sources of the queries this server got, as its log names them.
    fn query_sources(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query[A] who.test from "))
            .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
            .collect()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One `dig` from namespace `ns` to `server`:53 for who.test, one try of 2 s: the address
/// the answer names, or dig's complaint.
fn dig(ns: &str, server: Ipv4Addr) -> Result<Ipv4Addr, String> {
    dig_from(ns, server, None)
}

/// `dig`, from source port `port` of the client's address when given (as a resolver with a
/// fixed port queries).
fn dig_from(ns: &str, server: Ipv4Addr, port: Option<u16>) -> Result<Ipv4Addr, String> {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns,
        "dig",
        "+short",
        "+tries=1",
        "+timeout=2",
    ]);
    if let Some(p) = port {
        cmd.arg(format!("-b{CLIENT}#{p}"));
    }
    let out = cmd
        .arg(format!("@{server}"))
        .arg("who.test")
        .output()
        .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse().map_err(|_| text)
}

fn status(bin: &Path, cfg: &TestConfig, addr: Ipv4Addr) -> String {
    member(&stats(bin, &cfg.state_dir), addr)["operating_status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn have_programs() -> bool {
    for p in ["dnsmasq", "dig"] {
        if Command::new(p).arg("--version").output().is_err() {
            integration_tests::skip::skip(&format!(
                "no {p} (Debian packages dnsmasq-base, bind9-dnsutils)"
            ));
            return false;
        }
    }
    true
}

#[test]
fn dns_through_a_udp_listener_with_a_member_going_down() {
    if !have_programs() {
        return;
    }
    // The seed made a DNS load balancer: UDP port 53, a UDP-CONNECT monitor every second
    // (timeout 0.5 s, rise 2, fall 2).
    let Some(mut setup) = Setup::new(
        |t| {
            t.replace("protocol = \"TCP\"", "protocol = \"UDP\"")
                .replace("protocol_port = 22", "protocol_port = 53")
                .replace("type = \"TCP\"", "type = \"UDP-CONNECT\"")
                .replace("delay = 5 ", "delay = 1 ")
                .replace("timeout = 3 ", "timeout = 0.5 ")
                .replace("max_retries = 3 ", "max_retries = 2 ")
                .replace("max_retries_down = 3", "max_retries_down = 2")
        },
        &[M1, M2],
    ) else {
        return;
    };
    let mut dns: Vec<Option<Dns>> = setup
        .topo
        .members
        .iter()
        .map(|m| Some(Dns::start(&m.ns.name, m.addr)))
        .collect();
    let mut daemon = setup.start(&[]);
    let Setup { cfg, topo, bin, .. } = &mut setup;
    let client = topo.client.name.clone();
    wait_for("both members ONLINE", Duration::from_secs(10), || {
        (status(bin, cfg, M1) == "ONLINE" && status(bin, cfg, M2) == "ONLINE").then_some(())
    });

    // 20 queries, each from a port of its own: 20 UDP flows, alive for the idle timeout, so
    // least connections alternates between the members.
    let mut answers = Vec::new();
    for _ in 0..20 {
        let a = dig(&client, VIP)
            .unwrap_or_else(|e| panic!("dig through the VIP: {e}\n{}", daemon.log_text()));
        answers.push(a);
    }
    let on_m1 = answers.iter().filter(|a| **a == M1).count();
    assert_eq!(
        (on_m1, answers.len() - on_m1),
        (10, 10),
        "answers: {answers:?}"
    );
    let s = stats(bin, &cfg.state_dir);
    assert_eq!(s[0]["listeners"][0]["protocol"], "UDP");
    assert_eq!(s[0]["listeners"][0]["active_connections"], 20, "{s}");
    assert_eq!(member(&s, M1)["active_connections"], 10);
    assert_eq!(member(&s, M1)["total_connections"], 10);
    // The members saw the VIP as the source of every query (and never the client); the
    // one query from their own address is `Dns::start`'s readiness probe.
    for (d, m) in dns.iter().flatten().zip(&topo.members) {
        let sources: Vec<String> = d
            .query_sources()
            .into_iter()
            .filter(|s| *s != m.addr.to_string())
            .collect();
        assert_eq!(sources, vec!["10.0.0.250"; 10], "sources at {}", m.addr);
    }
    let flows = Command::new(&*bin)
        .args(["flows", "--json", "--state-dir"])
        .arg(&cfg.state_dir)
        .output()
        .expect("lb flows");
    let udp = String::from_utf8_lossy(&flows.stdout)
        .lines()
        .filter(|l| l.contains("\"protocol\":\"udp\""))
        .count();
    assert_eq!(udp, 20, "lb flows lists the UDP flows");

    // A client that keeps its source port (a resolver, a syslog forwarder) keeps its flow:
    // find a port whose flow is M1's.
    let fixed = (5300..5304)
        .find(|&p| dig_from(&client, VIP, Some(p)) == Ok(M1))
        .expect("a source port whose flow goes to M1");
    assert_eq!(dig_from(&client, VIP, Some(fixed)), Ok(M1), "the same flow");

    // M1's DNS server stops. Before its monitor notices, a query that goes to M1 gets M1's
    // ICMP port unreachable, translated back through the VIP: dig hears "connection
    // refused" at once instead of waiting out its 2 s.
    dns[0] = None;
    let mut seen = Vec::new();
    let refused = (0..4).find_map(|_| {
        let start = Instant::now();
        let r = dig(&client, VIP);
        seen.push(r.clone());
        matches!(&r, Err(e) if e.contains("connection refused")).then(|| start.elapsed())
    });
    // dig says "connection refused" only for the ICMP error; its own 2 s timeout would say
    // "timed out". How soon is printed, not bounded.
    let took = refused.unwrap_or_else(|| panic!("no query refused: {seen:?}"));
    eprintln!("DNS refused {took:?} after the query");
    assert!(
        seen[..seen.len() - 1].iter().all(|r| *r == Ok(M2)),
        "{seen:?}"
    );

    // The UDP-CONNECT monitor takes M1 out; every new query is M2's.
    wait_for("M1 down", Duration::from_secs(10), || {
        (status(bin, cfg, M1) == "ERROR").then_some(())
    });
    for _ in 0..10 {
        assert_eq!(dig(&client, VIP), Ok(M2));
    }
    // The fixed port's flow ends with its member (at the next expiry cycle, a second): its
    // next query opens a flow to M2.
    wait_for(
        "the fixed port's flow on M2",
        Duration::from_secs(5),
        || (dig_from(&client, VIP, Some(fixed)) == Ok(M2)).then_some(()),
    );
    let log = daemon.log_text();
    assert!(
        log.contains("member DOWN") && log.contains("L4CON: 10.0.0.2:53: ICMP port unreachable"),
        "{log}"
    );

    // Back: silence to its datagram is a pass.
    dns[0] = Some(Dns::start(&topo.members[0].ns.name, M1));
    wait_for("M1 up again", Duration::from_secs(10), || {
        (status(bin, cfg, M1) == "ONLINE").then_some(())
    });
    // M1 now holds fewer flows than M2: least connections gives it the next ones.
    assert_eq!(dig(&client, VIP), Ok(M1));
    daemon.stop();
}
