//! Tier 3, IPv6: the `lb` daemon with an IPv6 load balancer beside the seed's IPv4 one on
//! the same node and bridge (dual stack), real OpenSSH servers as the IPv6 members and the
//! real ssh client: sessions through the IPv6 VIP, the members seeing the VIP as source, the
//! TCP monitor over IPv6 taking a member out, the IPv4 load balancer serving all along.

use std::{net::IpAddr, time::Duration};

use integration_tests::{
    sshd::{self, Keys, Sshd},
    topology::*,
    wait_for, CLIENT6, VIP6,
};
use serde_json::Value;

const M1: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 2);
const M2: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 4);

/// A second load balancer: ssh on `VIP6` to the members' IPv6 addresses, a quick TCP monitor.
fn ipv6_loadbalancer(seed_id: &str, seed_port: &str) -> String {
    let id = format!("{}-6", &seed_id[..seed_id.len() - 2]);
    let port = seed_port.replacen("tap", "tv6", 1);
    format!(
        r#"
[[loadbalancer]]
id = "{id}"
vip_address = "{VIP6}"
vip_prefixlen = 64
[loadbalancer.port]
name = "{port}"
bridge = "br-int"

[[loadbalancer.listener]]
id = "ssh6"
protocol = "TCP"
protocol_port = 22
default_pool_id = "ssh6-pool"

[[loadbalancer.pool]]
id = "ssh6-pool"
protocol = "TCP"
lb_algorithm = "LEAST_CONNECTIONS"
[loadbalancer.pool.healthmonitor]
type = "TCP"
delay = 1
timeout = 0.5
max_retries = 2
max_retries_down = 2
[[loadbalancer.pool.member]]
id = "sshd-1"
address = "{}"
protocol_port = 22
[[loadbalancer.pool.member]]
id = "sshd-2"
address = "{}"
protocol_port = 22
"#,
        v6_of(M1),
        v6_of(M2)
    )
}

fn lb_stats<'a>(all: &'a Value, vip: &str) -> &'a Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|l| l["vip_address"] == vip)
        .unwrap_or_else(|| panic!("no load balancer with VIP {vip}: {all}"))
}

/// A member's status in load balancer `vip`'s stats ("" while that one is not up).
fn status(all: &Value, vip: &str, member: &str) -> String {
    all.as_array()
        .unwrap()
        .iter()
        .find(|l| l["vip_address"] == vip)
        .and_then(|l| {
            l["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["address"] == member)
        })
        .map(|m| m["operating_status"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// One ssh session through the IPv6 VIP: (the address sshd saw the client at, the member's
/// address), from `$SSH_CONNECTION`.
fn session(client_ns: &str, keys: &Keys) -> (IpAddr, IpAddr) {
    let out = sshd::ssh(client_ns, keys, VIP6.into(), "echo $SSH_CONNECTION")
        .unwrap_or_else(|e| panic!("ssh through the IPv6 VIP: {e}"));
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f.len(), 4, "SSH_CONNECTION: {out:?}");
    (f[0].parse().unwrap(), f[2].parse().unwrap())
}

#[test]
fn ssh_over_an_ipv6_vip_beside_an_ipv4_load_balancer() {
    if !sshd::available() {
        return;
    }
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    // The second load balancer's config and clean-up (its namespace) beside the seed's.
    let text = std::fs::read_to_string(&setup.cfg.path).unwrap();
    let extra = ipv6_loadbalancer(&setup.cfg.lb_id, &setup.cfg.port);
    std::fs::write(&setup.cfg.path, format!("{text}\n{extra}")).unwrap();
    let v6_ns = format!("qlbaas-{}-6", &setup.cfg.lb_id[..setup.cfg.lb_id.len() - 2]);
    let _left = Leftovers {
        namespaces: vec![v6_ns],
        dirs: vec![],
    };
    setup.topo.add_ipv6();
    let keys = Keys::new();
    let mut servers: Vec<Option<Sshd>> = setup
        .topo
        .members
        .iter()
        .map(|m| Some(Sshd::start(&m.ns.name, v6_of(m.addr).into(), &keys)))
        .collect();
    let mut daemon = setup.start(&[]);
    let Setup { cfg, topo, bin, .. } = &setup;
    let client = topo.client.name.clone();
    let (m1, m2) = (v6_of(M1).to_string(), v6_of(M2).to_string());
    let vip6 = VIP6.to_string();
    let start = std::time::Instant::now();
    loop {
        let s = stats(bin, &cfg.state_dir);
        if status(&s, &vip6, &m1) == "ONLINE" && status(&s, &vip6, &m2) == "ONLINE" {
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            panic!("IPv6 members not ONLINE: {s}\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Sessions through the IPv6 VIP: sshd sees the VIP as the client, and both members serve.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (from, member) = session(&client, &keys);
        assert_eq!(
            from,
            IpAddr::from(VIP6),
            "the member sees the VIP as source"
        );
        seen.push(member);
    }
    for m in [v6_of(M1), v6_of(M2)] {
        assert!(seen.contains(&m.into()), "{m} served none of {seen:?}");
    }
    // The IPv4 load balancer beside it serves the seed's scenario meanwhile.
    let c = connect(&client, VIP, 22)
        .unwrap_or_else(|e| panic!("IPv4 VIP: {e}\n{}", daemon.log_text()));
    assert!(c.member() == M1 || c.member() == M2);
    drop(c);
    let s = stats(bin, &cfg.state_dir);
    let v6 = lb_stats(&s, &vip6);
    assert_eq!(v6["listeners"][0]["total_connections"], 4, "{v6}");
    assert_eq!(
        lb_stats(&s, "10.0.0.250")["listeners"][0]["total_connections"],
        1
    );
    // `lb flows` lists the IPv6 flows (closed, lingering) with bracketed addresses.
    let flows = std::process::Command::new(&**bin)
        .args(["flows", "--json", "--state-dir"])
        .arg(&cfg.state_dir)
        .output()
        .expect("lb flows");
    let text = String::from_utf8_lossy(&flows.stdout);
    let v6_rows = text
        .lines()
        .filter(|l| l.contains(&format!("\"vip\":\"[{VIP6}]:22\"")))
        .count();
    assert_eq!(v6_rows, 4, "{text}");
    assert!(
        text.contains(&format!("\"client\":\"[{CLIENT6}]:")),
        "{text}"
    );

    // M1's sshd stops: the TCP monitor over IPv6 takes it out; every session is M2's.
    servers[0] = None;
    wait_for("M1 down over IPv6", Duration::from_secs(10), || {
        (status(&stats(bin, &cfg.state_dir), &vip6, &m1) == "ERROR").then_some(())
    });
    for _ in 0..3 {
        assert_eq!(session(&client, &keys).1, IpAddr::from(v6_of(M2)));
    }
    drop(servers);
    assert!(daemon.stop().unwrap().success());
}

/// A server in namespace `ns` on `addr`:`port` answering every connection with one HTTP
/// response, until the process ends (the namespace goes first).
fn http_server(ns: &str, addr: IpAddr, port: u16) {
    use std::io::{Read, Write};
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        lb::node::enter(&ns).expect("enter the member's namespace");
        let l = std::net::TcpListener::bind((addr, port)).expect("bind");
        tx.send(()).unwrap();
        for c in l.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("HTTP server up");
}

/// The monitors over IPv6, as the daemon runs them (`lb::health::check`, from the client's
/// namespace as if it were a VIP): TCP and HTTP to a server on the member's IPv6 address,
/// PING (ICMPv6 echo), and their failures.
#[test]
fn health_checks_over_ipv6() {
    let Some(setup) = Setup::new(|t| t, &[M1]) else {
        return;
    };
    let topo = &setup.topo;
    topo.add_ipv6();
    let member = IpAddr::from(v6_of(M1));
    http_server(&topo.members[0].ns.name, member, 8080);
    let monitor = |kind: &str| -> lb::config::HealthMonitor {
        let text = format!(
            "type = \"{kind}\"\ndelay = 1\ntimeout = 0.5\nmax_retries = 1\nurl_path = \"/\"\n"
        );
        monitor_from(&text)
    };
    let check = |kind: &str, port: u16| check_from(&topo.client.name, member, port, &monitor(kind));
    let r = check("TCP", 8080);
    assert_eq!(r.status.name(), "L4OK", "{r:?}");
    let r = check("HTTP", 8080);
    assert_eq!(r.status.name(), "L7OK", "{r:?}");
    assert_eq!(r.code, Some(200));
    let r = check("PING", 0);
    assert_eq!(r.status.name(), "L4OK", "{r:?}");
    let r = check("TCP", 8081);
    assert_eq!(r.status.name(), "L4CON", "nothing on the port: {r:?}");
    // UDP-CONNECT: a datagram to a bound port draws no ICMPv6 error (up); to a closed one,
    // a port unreachable (down).
    let udp = udp_sink(&topo.members[0].ns.name, member, 5353);
    let r = check("UDP-CONNECT", 5353);
    assert_eq!(r.status.name(), "L4OK", "{r:?}");
    let r = check("UDP-CONNECT", 5354);
    assert_eq!(r.status.name(), "L4CON", "nothing on the port: {r:?}");
    assert!(
        udp.recv(&mut [0u8; 64]).is_ok(),
        "the check's datagram reached the member"
    );
    topo.members[0]
        .ns
        .exec("sysctl -qw net.ipv6.icmp.echo_ignore_all=1");
    let r = check("PING", 0);
    assert_eq!(r.status.name(), "L4TOUT", "echo requests ignored: {r:?}");
}

/// A UDP socket bound in namespace `ns` at `addr`:`port` (it reads nothing by itself).
fn udp_sink(ns: &str, addr: IpAddr, port: u16) -> std::net::UdpSocket {
    let s = lb::node::in_netns(ns, || std::net::UdpSocket::bind((addr, port)))
        .expect("enter the member's namespace")
        .expect("bind the UDP port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// The TLS-HELLO monitor over IPv6 (`lb::health::check` from the client's namespace as if
/// it were a VIP): a real TLS server (`openssl s_server -6`) on the member's IPv6 address is
/// L6OK; a plain HTTP server is not.
#[test]
fn tls_hello_check_over_ipv6() {
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
    let Some(setup) = Setup::new(|t| t, &[M1]) else {
        return;
    };
    let topo = &setup.topo;
    topo.add_ipv6();
    let member = IpAddr::from(v6_of(M1));
    http_server(&topo.members[0].ns.name, member, 8080);
    let _tls = integration_tests::tls::TlsServer::start(
        &topo.members[0].ns.name,
        &["-6"],
        &format!("[{member}]:8443"),
    );
    let m = monitor_from("type = \"TLS-HELLO\"\ndelay = 1\ntimeout = 0.5\nmax_retries = 1\n");
    let check = |port: u16| check_from(&topo.client.name, member, port, &m);
    // s_server takes a moment to listen: wait for its port, not for a time.
    let r = wait_for(
        "openssl s_server on the member",
        Duration::from_secs(10),
        || {
            let r = check(8443);
            (r.status.name() != "L4CON").then_some(r)
        },
    );
    assert_eq!(r.status.name(), "L6OK", "{r:?}");
    let r = check(8080);
    assert!(
        ["L6RSP", "L6TOUT"].contains(&r.status.name()),
        "a plain HTTP server is not TLS: {r:?}"
    );
}

/// One check of `member`:`port` as the daemon runs it (`lb::health::check`), from namespace
/// `ns` with `CLIENT6` in the VIP's place.
fn check_from(
    ns: &str,
    member: IpAddr,
    port: u16,
    m: &lb::config::HealthMonitor,
) -> lb::health::CheckResult {
    lb::node::in_netns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(lb::health::check(
            CLIENT6.into(),
            std::net::SocketAddr::new(member, port),
            m,
        ))
    })
    .unwrap()
}

/// A monitor from its TOML text (the config's own parser, through a one-pool document).
fn monitor_from(monitor: &str) -> lb::config::HealthMonitor {
    // UDP-CONNECT checks UDP pools only.
    let protocol = if monitor.contains("UDP-CONNECT") {
        "UDP"
    } else {
        "TCP"
    };
    let doc = format!(
        "[[loadbalancer]]\nid = \"x\"\nvip_address = \"{VIP6}\"\n[loadbalancer.port]\nname = \"p\"\n\
         [[loadbalancer.pool]]\nid = \"p\"\nprotocol = \"{protocol}\"\nlb_algorithm = \"ROUND_ROBIN\"\n\
         [loadbalancer.pool.healthmonitor]\n{monitor}"
    );
    let c = lb::config::Config::parse(&doc, "monitor").expect("monitor");
    c.loadbalancer[0].pool[0].healthmonitor.clone().unwrap()
}

/// IPv6 path MTU discovery through the VIP: the ssh client's upload to a member two routers
/// away behind a 1280-byte link (1500 at both ends). IPv6 routers never fragment: the first
/// router's Packet Too Big goes to the VIP about the packet lb sent, and lb translates it back
/// into one about the client's own packet, from the VIP. Without it the upload stalls.
#[test]
fn packet_too_big_reaches_the_client_through_the_ipv6_vip() {
    if !sshd::available() {
        return;
    }
    const FAR: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);
    let Some(setup) = Setup::new(
        |t| {
            with_ipv6_vip(t)
                .replace(
                    "bridge = \"br-int\"",
                    &format!("bridge = \"br-int\"\ngateway = \"{CLIENT6}\""),
                )
                // The first member drains (weight 0): every session goes to the far one.
                .replacen("weight = 1", "weight = 0", 1)
                .replace("\"10.0.0.2\"", &format!("\"{}\"", v6_of(M1)))
                .replace("\"10.0.0.4\"", &format!("\"{FAR}\""))
        },
        &[M1],
    ) else {
        return;
    };
    let Setup { cfg, topo, bin, .. } = &setup;
    topo.add_ipv6();
    // client (router 1) =1280= mid (router 2) =1500= far.
    let mid = integration_tests::Netns::new("r6");
    let far = integration_tests::Netns::new("f6");
    topo.client.ip(&format!(
        "link add far0 mtu 1280 type veth peer name eth0 netns {}",
        mid.name
    ));
    topo.client
        .ip("-6 addr add 2001:db8:1::1/64 dev far0 nodad");
    topo.client.ip("link set far0 up");
    topo.client
        .ip("-6 route add 2001:db8:2::/64 via 2001:db8:1::2");
    topo.client
        .exec("sysctl -qw net.ipv6.conf.all.forwarding=1");
    mid.ip("link set eth0 mtu 1280");
    mid.ip("-6 addr add 2001:db8:1::2/64 dev eth0 nodad");
    mid.ip("link set eth0 up");
    mid.ip("-6 route add default via 2001:db8:1::1");
    mid.ip(&format!(
        "link add eth1 type veth peer name eth0 netns {}",
        far.name
    ));
    mid.ip("-6 addr add 2001:db8:2::1/64 dev eth1 nodad");
    mid.ip("link set eth1 up");
    mid.exec("sysctl -qw net.ipv6.conf.all.forwarding=1");
    far.ip(&format!("-6 addr add {FAR}/64 dev eth0 nodad"));
    far.ip("link set eth0 up");
    far.ip("-6 route add default via 2001:db8:2::1");
    let keys = Keys::new();
    let _server = Sshd::start(&far.name, FAR.into(), &keys);
    let mut daemon = setup.start(&[]);
    let far_s = FAR.to_string();
    let start = std::time::Instant::now();
    loop {
        let s = stats(bin, &cfg.state_dir);
        if status(&s, &VIP6.to_string(), &far_s) == "ONLINE" {
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            panic!("the far member not ONLINE: {s}\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // 200 kB up through the VIP: full-size segments, too big for the 1280-byte link.
    let got = sshd::ssh_with_input(
        &topo.client.name,
        &keys,
        VIP6.into(),
        "wc -c",
        &vec![b'x'; 200_000],
    );
    assert_eq!(
        got.as_deref(),
        Ok("200000"),
        "the upload through a 1280-byte link"
    );
    let s = stats(bin, &cfg.state_dir);
    let v = &lb_stats(&s, &VIP6.to_string())["verdicts"];
    assert!(
        v["tx_icmp_to_client"].as_u64().unwrap_or(0) >= 1,
        "Packet Too Big translated: {v}"
    );
    let route = topo.client.ip(&format!("-6 route get {VIP6}"));
    assert!(
        route.contains("mtu 1280"),
        "the client learnt the path MTU: {route}"
    );
    assert!(daemon.stop().unwrap().success());
}

/// SYN cookies for an IPv6 listener end to end: with `half_open_limit = 0` lb answers every
/// SYN to the IPv6 VIP itself (`lb6_cookie`); the real ssh client's sessions open through
/// the cookies to real sshd members, which see the VIP as the client, and an upload of more
/// than the cookie connection's 64 KiB window arrives whole.
#[test]
fn ssh_through_ipv6_syn_cookies() {
    if !sshd::available() {
        return;
    }
    let Some(setup) = Setup::new(
        |t| integration_tests::with_half_open_limit(&as_ipv6(t), 0),
        &[M1, M2],
    ) else {
        return;
    };
    let Setup { cfg, topo, bin, .. } = &setup;
    topo.add_ipv6();
    let keys = Keys::new();
    let _servers: Vec<Sshd> = topo
        .members
        .iter()
        .map(|m| Sshd::start(&m.ns.name, v6_of(m.addr).into(), &keys))
        .collect();
    let mut daemon = setup.start(&[]);
    // Both members ONLINE: their neighbours are resolved (a cookie ACK before that would
    // get a RST, which is for the fixtures to check).
    setup.wait_online();
    let vip6 = VIP6.to_string();
    let client = topo.client.name.clone();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (from, member) = session(&client, &keys);
        assert_eq!(from, IpAddr::from(VIP6), "the member sees the VIP");
        seen.push(member);
    }
    for m in [v6_of(M1), v6_of(M2)] {
        assert!(seen.contains(&m.into()), "{m} served none of {seen:?}");
    }
    let got = sshd::ssh_with_input(&client, &keys, VIP6.into(), "wc -c", &vec![b'y'; 300_000]);
    assert_eq!(
        got.as_deref(),
        Ok("300000"),
        "an upload through a cookie connection"
    );
    let s = stats(bin, &cfg.state_dir);
    let v6 = lb_stats(&s, &vip6);
    let v = &v6["verdicts"];
    assert!(v["tx_syncookie"].as_u64().unwrap_or(0) >= 5, "{v}");
    assert!(v["tx_cookie_to_member"].as_u64().unwrap_or(0) >= 10, "{v}");
    assert_eq!(v6["listeners"][0]["total_connections"], 5, "{v6}");
    assert_eq!(v6["listeners"][0]["half_open_connections"], 0, "{v6}");
    assert!(daemon.stop().unwrap().success());
}
