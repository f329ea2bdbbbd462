//! Tier 3: checksums as the receivers verify them. Over veth a receiver trusts a packet whose
//! checksum the sender left to offload (CHECKSUM_PARTIAL), so with the hosts' default
//! offloads a wrong checksum from lb would pass unseen. Here the host-facing veths of the
//! client and the members have TX checksum offload off: every packet lb sends them is
//! completed in software before it crosses, and verified on arrival. TCP and UDP, IPv4 and
//! IPv6, through TC and through native XDP; each receiver's checksum error counters must not
//! move. A planted fault (`integration_tests::fault`: one bit of the checksum field flipped
//! on the way) must move them: the test can fail.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use integration_tests::{fault::ChecksumFault, in_netns, topology::*, wait_for, VIP6};

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const UDP_PORT: u16 = 5353;

/// The seed's load balancer with a UDP listener beside its TCP one, and an IPv6 load
/// balancer with both, on the members' IPv6 addresses. No monitors on the new pools.
fn config(seed: String, id: &str, port: &str) -> String {
    let id6 = format!("{}-6", &id[..id.len() - 2]);
    let port6 = port.replacen("tap", "tv6", 1);
    let udp_pool = |id: &str, a: &str, b: &str| {
        format!(
            r#"
[[loadbalancer.listener]]
id = "{id}-listener"
protocol = "UDP"
protocol_port = {UDP_PORT}
default_pool_id = "{id}"

[[loadbalancer.pool]]
id = "{id}"
protocol = "UDP"
lb_algorithm = "ROUND_ROBIN"
[[loadbalancer.pool.member]]
id = "{id}-1"
address = "{a}"
protocol_port = {UDP_PORT}
[[loadbalancer.pool.member]]
id = "{id}-2"
address = "{b}"
protocol_port = {UDP_PORT}
"#
        )
    };
    let (m16, m26) = (v6_of(M1).to_string(), v6_of(M2).to_string());
    format!(
        r#"{seed}
{}
[[loadbalancer]]
id = "{id6}"
vip_address = "{VIP6}"
vip_prefixlen = 64
[loadbalancer.port]
name = "{port6}"
bridge = "br-int"

[[loadbalancer.listener]]
id = "tcp6"
protocol = "TCP"
protocol_port = 22
default_pool_id = "tcp6-pool"

[[loadbalancer.pool]]
id = "tcp6-pool"
protocol = "TCP"
lb_algorithm = "ROUND_ROBIN"
[[loadbalancer.pool.member]]
id = "tcp6-1"
address = "{m16}"
protocol_port = 22
[[loadbalancer.pool.member]]
id = "tcp6-2"
address = "{m26}"
protocol_port = 22
{}"#,
        udp_pool("udp4", "10.0.0.2", "10.0.0.4"),
        udp_pool("udp6", &m16, &m26),
    )
}

/// A UDP server echoing every datagram, in `ns` on `addr`, until dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addr: IpAddr) -> UdpEcho {
        let sock = in_netns(ns, || UdpSocket::bind((addr, UDP_PORT)))
            .unwrap()
            .expect("bind the UDP echo");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The checksum errors namespace `ns` counted: TCP (both families), UDP, UDPv6.
fn csum_errors(ns: &str) -> [u64; 3] {
    let (snmp, snmp6) = in_netns(ns, || {
        (
            std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap(),
            std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap(),
        )
    })
    .unwrap();
    let field = |proto: &str| -> u64 {
        let mut lines = snmp
            .lines()
            .filter(|l| l.starts_with(&format!("{proto}: ")));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == "InCsumErrors")
            .unwrap_or_else(|| panic!("{proto} InCsumErrors in {names}"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    let udp6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
        .map(|v| v.trim().parse().unwrap())
        .expect("Udp6InCsumErrors");
    [field("Tcp"), field("Udp"), udp6]
}

/// 200 kB through a TCP connection to `vip`:22 and back (the member echoes).
fn tcp_echo(client: &str, vip: IpAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut c = connect(client, vip, 22)?;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut w = c.stream.try_clone()?;
    let p = payload.clone();
    let writer = std::thread::spawn(move || w.write_all(&p));
    let mut back = vec![0u8; payload.len()];
    c.stream.read_exact(&mut back)?;
    writer.join().unwrap()?;
    if back != payload {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}

/// `n` datagrams of 1000 bytes to `vip`, each from a new socket (a flow each, both members),
/// and how many came back.
fn udp_echo(client: &str, vip: IpAddr, n: usize) -> usize {
    in_netns(client, || {
        (0..n)
            .filter(|i| {
                let bind: SocketAddr = if vip.is_ipv4() {
                    "0.0.0.0:0".parse().unwrap()
                } else {
                    "[::]:0".parse().unwrap()
                };
                let s = UdpSocket::bind(bind).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let msg = vec![*i as u8; 1000];
                s.send_to(&msg, (vip, UDP_PORT)).unwrap();
                let mut buf = [0u8; 2000];
                matches!(s.recv(&mut buf), Ok(k) if buf[..k] == msg[..])
            })
            .count()
    })
    .unwrap()
}

fn receivers_verify(xdp_mode: &str) {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let text = std::fs::read_to_string(&setup.cfg.path).unwrap();
    std::fs::write(
        &setup.cfg.path,
        config(text, &setup.cfg.lb_id, &setup.cfg.port),
    )
    .unwrap();
    let _left = Leftovers {
        namespaces: vec![format!(
            "qlbaas-{}-6",
            &setup.cfg.lb_id[..setup.cfg.lb_id.len() - 2]
        )],
        dirs: vec![],
    };
    let topo = &setup.topo;
    topo.add_ipv6();
    // TX checksum offload off where the node hands packets to the client and the members.
    let node = topo.node.name.clone();
    let hosts = ["cl0", "mb0", "mb1"];
    for dev in hosts {
        topo.node.exec(&format!("ethtool -K {dev} tx off"));
        let k = topo.node.exec(&format!("ethtool -k {dev}"));
        assert!(k.contains("tx-checksumming: off"), "{dev}: {k}");
    }
    let _servers6: Vec<Server> = topo
        .members
        .iter()
        .map(|m| Server::start(&m.ns.name, v6_of(m.addr), 22))
        .collect();
    let _udp: Vec<UdpEcho> = topo
        .members
        .iter()
        .flat_map(|m| {
            [
                UdpEcho::start(&m.ns.name, m.addr.into()),
                UdpEcho::start(&m.ns.name, v6_of(m.addr).into()),
            ]
        })
        .collect();
    let mut daemon = setup.start(&["--xdp-mode", xdp_mode]);
    let client = topo.client.name.clone();
    let (vip4, vip6): (IpAddr, IpAddr) = (VIP.into(), VIP6.into());
    wait_for(
        "the IPv6 load balancer serving",
        Duration::from_secs(30),
        || connect(&client, vip6, 22).ok(),
    );
    let receivers: Vec<String> = std::iter::once(client.clone())
        .chain(topo.members.iter().map(|m| m.ns.name.clone()))
        .collect();
    let errors = || -> Vec<[u64; 3]> { receivers.iter().map(|ns| csum_errors(ns)).collect() };

    let before = errors();
    for vip in [vip4, vip6] {
        for _ in 0..4 {
            tcp_echo(&client, vip)
                .unwrap_or_else(|e| panic!("200 kB through {vip}: {e}\n{}", daemon.log_text()));
        }
        assert_eq!(udp_echo(&client, vip, 20), 20, "UDP echoes through {vip}");
    }
    let after = errors();
    eprintln!("CHECKSUM {xdp_mode}: errors at client, M1, M2 (tcp, udp, udp6): {after:?}");
    assert_eq!(before, after, "checksum errors counted by the receivers");

    // The planted fault: one bit of every checksum field flipped on the way to the members,
    // then on the way to the client. Each receiver sees it (the test can fail), and nothing
    // gets through intact.
    let members: Vec<String> = topo.members.iter().map(|m| m.ns.name.clone()).collect();
    for (devs, verifying) in [
        (&hosts[1..], members.clone()),
        (&hosts[..1], vec![client.clone()]),
    ] {
        let before: Vec<[u64; 3]> = verifying.iter().map(|ns| csum_errors(ns)).collect();
        let _faults: Vec<ChecksumFault> = devs
            .iter()
            .map(|dev| ChecksumFault::plant(&node, dev))
            .collect();
        for vip in [vip4, vip6] {
            assert!(
                tcp_echo(&client, vip).is_err(),
                "200 kB through {vip} with the fault on {devs:?}"
            );
            assert_eq!(
                udp_echo(&client, vip, 4),
                0,
                "UDP through {vip} with the fault on {devs:?}"
            );
        }
        let faulty: Vec<[u64; 3]> = verifying.iter().map(|ns| csum_errors(ns)).collect();
        eprintln!("CHECKSUM {xdp_mode} with the fault on {devs:?}: {before:?} -> {faulty:?}");
        for (ns, (b, a)) in verifying.iter().zip(before.iter().zip(&faulty)) {
            assert!(
                a[0] > b[0] && a[1] > b[1] && a[2] > b[2],
                "{ns} counted the bad checksums (tcp, udp, udp6): {b:?} -> {a:?}"
            );
        }
    }
    // The fault gone, everything passes again.
    tcp_echo(&client, vip4).expect("200 kB once the fault is gone");
    assert!(daemon.stop().unwrap().success());
}

#[test]
fn receivers_verify_every_checksum_tc() {
    receivers_verify("auto");
}

#[test]
fn receivers_verify_every_checksum_native_xdp() {
    receivers_verify("native");
}
