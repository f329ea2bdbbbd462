//! Tier 2b: the data path on two CPUs at once. Threads pinned to CPU 0 and CPU 1 run the
//! program (BPF_PROG_TEST_RUN runs it on the calling CPU) on the same flows at the same
//! instant: the client's FIN against the member's FIN, RST against RST, a SYN against the
//! same SYN, a cookie ACK against the same ACK, a retransmitted SYN moving its SNAT port
//! against the member's SYN-ACK on the old one. Counters must be exact afterwards, without any expiry cycle to correct them.

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use integration_tests::{fixture::*, *};
use lb::dataplane::ProgramRunner;
use lb_common::{reason, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_SYNACK};
use nix::{
    sched::{sched_setaffinity, CpuSet},
    unistd::Pid,
};

const FLOWS: u16 = 3000;
const BASE_PORT: u16 = 20000;

/// Two CPUs to collide on, or None (the test then says it is skipped).
fn two_cpus() -> Option<(usize, usize)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        integration_tests::skip::skip("needs two CPUs");
        return None;
    }
    Some((0, 1))
}

/// Runs `a(i)` pinned to one CPU and `b(i)` pinned to the other for every `i`, the two
/// released together each time by spinning on a shared counter (a sleeping barrier wakes
/// its threads microseconds apart, longer than the program runs); both run inside
/// namespace `ns` (FIB lookups).
fn collide(
    ns: &str,
    cpus: (usize, usize),
    n: usize,
    a: impl Fn(usize) + Sync,
    b: impl Fn(usize) + Sync,
) {
    let arrived = AtomicUsize::new(0);
    let side = |cpu: usize, f: &(dyn Fn(usize) + Sync)| {
        let mut set = CpuSet::new();
        set.set(cpu).unwrap();
        sched_setaffinity(Pid::from_raw(0), &set).expect("pin to a CPU");
        lb::node::enter(ns).unwrap();
        for i in 0..n {
            arrived.fetch_add(1, Ordering::SeqCst);
            while arrived.load(Ordering::SeqCst) < 2 * (i + 1) {
                std::hint::spin_loop();
            }
            f(i);
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| side(cpus.0, &a));
        s.spawn(|| side(cpus.1, &b));
    });
}

/// Opens FLOWS flows from CLIENT (ports BASE_PORT..), completes each handshake (member ISN
/// 5000, windows 1000 and 2000); returns each flow's (member, snat port).
fn open_established(env: &mut Env) -> Vec<(Ipv4Addr, u16)> {
    (0..FLOWS)
        .map(|i| {
            let port = BASE_PORT + i;
            let (member, _, snat) = env.open(port);
            let mut synack =
                Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
            (synack.seq, synack.ack, synack.win) = (5000, 1001, 1000);
            env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
            let mut ack = Tcp::new(CLIENT, port, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
            (ack.seq, ack.ack, ack.win) = (1001, 5001, 2000);
            env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
            (member, snat)
        })
        .collect()
}

fn total_active(env: &Env) -> i64 {
    [M1, M2]
        .iter()
        .map(|&m| env.active(env.member_index(m)))
        .sum()
}

fn total_half_open(env: &Env) -> i64 {
    [M1, M2]
        .iter()
        .map(|&m| env.half_open(env.member_index(m)))
        .sum()
}

/// Runs `frames[i]` on both CPUs at the same instant, for every `i`; returns each frame's
/// two outcomes (verdict, frame as the program left it). Frames are built beforehand and
/// results kept per side: nothing but the run happens between releases.
fn collide_same(env: &Env, cpus: (usize, usize), frames: &[Vec<u8>]) -> Vec<Vec<(u32, Vec<u8>)>> {
    let (a, b) = (env.dp.runner("lb").unwrap(), env.dp.runner("lb").unwrap());
    let (outs_a, outs_b) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    collide(
        &env.ns.name,
        cpus,
        frames.len(),
        |i| outs_a.lock().unwrap().push((i, a.run(&frames[i]).unwrap())),
        |i| outs_b.lock().unwrap().push((i, b.run(&frames[i]).unwrap())),
    );
    let mut by_frame = vec![Vec::new(); frames.len()];
    for (i, r) in outs_a
        .into_inner()
        .unwrap()
        .into_iter()
        .chain(outs_b.into_inner().unwrap())
    {
        by_frame[i].push(r);
    }
    by_frame
}

/// The client's SYN of every flow (ports BASE_PORT..).
fn client_syns() -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            Tcp::new(CLIENT, BASE_PORT + i, VIP, 22, TCP_SYN)
                .macs(CLIENT_MAC, PORT_MAC)
                .build()
        })
        .collect()
}

/// The SNAT ports the table holds: (member, port) of every reverse entry.
fn held_ports(
    flows: &[(lb_common::FlowKey, lb_common::Flow)],
) -> std::collections::HashSet<(Ipv4Addr, u16)> {
    flows
        .iter()
        .filter(|(k, _)| k.dir == lb_common::FLOW_DIR_REVERSE)
        .map(|(k, _)| {
            (
                Ipv4Addr::from(u32::from_be(k.src_be)),
                u16::from_be(k.dport_be),
            )
        })
        .collect()
}

fn run_ok(r: &ProgramRunner, frame: &[u8], want: u32) {
    let (action, _) = r.run(frame).expect("test run");
    assert_eq!(action, want);
}

/// The client's FIN and the member's FIN at the same instant on two CPUs: both bits
/// recorded, every flow stops counting exactly once.
#[test]
fn fins_from_both_sides_at_once_lose_no_bit_and_uncount_once() {
    let Some(cpus) = two_cpus() else { return };
    let Some(mut env) = Env::with_capacity(&stateful(), 16384) else {
        return;
    };
    let flows = open_established(&mut env);
    assert_eq!(total_active(&env), FLOWS as i64);
    let (a, b) = (env.dp.runner("lb").unwrap(), env.dp.runner("lb").unwrap());
    collide(
        &env.ns.name,
        cpus,
        flows.len(),
        |i| {
            let mut fin = Tcp::new(CLIENT, BASE_PORT + i as u16, VIP, 22, TCP_FIN | TCP_ACK)
                .macs(CLIENT_MAC, PORT_MAC);
            (fin.seq, fin.ack) = (1001, 5001);
            run_ok(&a, &fin.build(), XDP_TX);
        },
        |i| {
            let (member, snat) = flows[i];
            let mut fin =
                Tcp::new(member, 22, VIP, snat, TCP_FIN | TCP_ACK).macs(mac_of(member), PORT_MAC);
            (fin.seq, fin.ack) = (5001, 1001);
            run_ok(&b, &fin.build(), XDP_TX);
        },
    );
    for i in 0..FLOWS {
        let f = env.flow(BASE_PORT + i).unwrap();
        assert_eq!(
            f.state & (CT_FIN_CLIENT | CT_FIN_MEMBER),
            CT_FIN_CLIENT | CT_FIN_MEMBER,
            "flow {i}: a FIN bit lost"
        );
        assert!(!f.counted(), "flow {i} still counted");
    }
    assert_eq!(total_active(&env), 0, "every flow uncounted exactly once");
    assert_eq!(env.dp.maps.listener_live.get(0).active, 0);
}

/// A RST from each side at the same instant: the flow stops counting exactly once.
#[test]
fn rsts_from_both_sides_at_once_uncount_once() {
    let Some(cpus) = two_cpus() else { return };
    let Some(mut env) = Env::with_capacity(&stateful(), 16384) else {
        return;
    };
    let flows = open_established(&mut env);
    let (a, b) = (env.dp.runner("lb").unwrap(), env.dp.runner("lb").unwrap());
    collide(
        &env.ns.name,
        cpus,
        flows.len(),
        |i| {
            let mut rst =
                Tcp::new(CLIENT, BASE_PORT + i as u16, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
            rst.seq = 1001;
            run_ok(&a, &rst.build(), XDP_TX);
        },
        |i| {
            let (member, snat) = flows[i];
            let mut rst = Tcp::new(member, 22, VIP, snat, TCP_RST).macs(mac_of(member), PORT_MAC);
            rst.seq = 5001;
            run_ok(&b, &rst.build(), XDP_TX);
        },
    );
    assert_eq!(total_active(&env), 0, "every flow uncounted exactly once");
    assert_eq!(env.dp.maps.listener_live.get(0).active, 0);
}

/// The same SYN on two CPUs at once (a duplicated frame, or a retransmission racing the
/// original): one flow, counted once as a handshake, and both copies go to its member; none
/// is dropped as if the table were full.
#[test]
fn the_same_syn_on_two_cpus_opens_one_flow() {
    let Some(cpus) = two_cpus() else { return };
    let Some(env) = Env::with_capacity(&stateful(), 16384) else {
        return;
    };
    let syns = client_syns();
    let mut sent = std::collections::HashSet::new();
    for (i, outs) in collide_same(&env, cpus, &syns).iter().enumerate() {
        for (action, _) in outs {
            assert_eq!(*action, XDP_TX, "SYN of flow {i} dropped");
        }
        let pair: Vec<Tcp> = outs.iter().map(|(_, f)| Tcp::parse(f).unwrap()).collect();
        assert_eq!(
            (pair[0].dst, pair[0].sport),
            (pair[1].dst, pair[1].sport),
            "flow {i}: both copies to the same member and port"
        );
        sent.insert((pair[0].dst, pair[0].sport));
    }
    // The loser of each race gave back the SNAT port it had taken: one reverse entry (the
    // port held) per flow, at the member and port both copies went out with.
    let flows = env.dp.maps.flows();
    let held = held_ports(&flows);
    let forward = flows
        .iter()
        .filter(|(k, _)| k.dir == lb_common::FLOW_DIR_FORWARD)
        .count();
    assert_eq!(forward, FLOWS as usize, "one forward entry per flow");
    assert_eq!(
        flows.len(),
        2 * FLOWS as usize,
        "a forward and a reverse entry per flow, nothing more"
    );
    assert_eq!(held, sent, "the ports held are the ports used");
    let v = env.verdicts();
    assert_eq!(v[reason::DROP_CT_FULL as usize], 0);
    assert_eq!(
        total_half_open(&env),
        FLOWS as i64,
        "each handshake counted once"
    );
    assert_eq!(env.dp.maps.listener_live.get(0).half_open, FLOWS as i64);
    assert_eq!(
        total_active(&env),
        0,
        "no connection before the handshake ends"
    );
}

/// The client's ACK of the SYN-ACK seen on two CPUs at once: the connection is counted
/// once, and its handshake uncounted once.
#[test]
fn the_handshake_ends_once_when_its_ack_is_seen_twice() {
    let Some(cpus) = two_cpus() else { return };
    let Some(mut env) = Env::with_capacity(&stateful(), 16384) else {
        return;
    };
    for i in 0..FLOWS {
        let port = BASE_PORT + i;
        let (member, _, snat) = env.open(port);
        let mut synack =
            Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
        (synack.seq, synack.ack) = (5000, 1001);
        env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    }
    let acks: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            let mut a =
                Tcp::new(CLIENT, BASE_PORT + i, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
            (a.seq, a.ack) = (1001, 5001);
            a.build()
        })
        .collect();
    let (a, b) = (env.dp.runner("lb").unwrap(), env.dp.runner("lb").unwrap());
    collide(
        &env.ns.name,
        cpus,
        FLOWS as usize,
        |i| run_ok(&a, &acks[i], XDP_TX),
        |i| run_ok(&b, &acks[i], XDP_TX),
    );
    assert_eq!(
        total_active(&env),
        FLOWS as i64,
        "each connection counted once"
    );
    assert_eq!(total_half_open(&env), 0);
    let ls = env.dp.maps.listener_stats(0).unwrap();
    assert_eq!(ls.total_connections, FLOWS as u64);
}

/// The client's ACK carrying a SYN cookie, on two CPUs at once (a retransmission racing
/// the original): one flow opens, counted as one handshake, and both copies become the same
/// SYN to the same member and SNAT port.
#[test]
fn the_same_cookie_ack_on_two_cpus_opens_one_flow() {
    let Some(cpus) = two_cpus() else { return };
    let cfg = with_half_open_limit(include_str!("../../examples/seed.toml"), 0);
    let Some(mut env) = Env::with_capacity(&cfg, 16384) else {
        return;
    };
    let acks: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            let syn = Tcp::new(CLIENT, BASE_PORT + i, VIP, 22, TCP_SYN)
                .macs(CLIENT_MAC, PORT_MAC)
                .options(&[2, 4, 0x05, 0xb4]);
            let out = env.expect(&syn.build(), XDP_TX, reason::TX_SYNCOOKIE);
            let o = Tcp::parse(&out).unwrap();
            let mut ack =
                Tcp::new(CLIENT, BASE_PORT + i, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
            (ack.seq, ack.ack) = (o.ack, o.seq.wrapping_add(1));
            ack.build()
        })
        .collect();
    for (i, outs) in collide_same(&env, cpus, &acks).iter().enumerate() {
        let mut pair = Vec::new();
        for (action, frame) in outs {
            assert_eq!(*action, XDP_TX, "cookie ACK of flow {i}");
            let o = Tcp::parse(frame).unwrap();
            assert_eq!(o.flags, TCP_SYN, "flow {i}: lb's SYN to the member");
            pair.push((o.dst, o.sport));
        }
        assert_eq!(
            pair[0], pair[1],
            "flow {i}: both copies to the same member and port"
        );
    }
    assert_eq!(
        total_half_open(&env),
        FLOWS as i64,
        "each cookie handshake counted once"
    );
    assert_eq!(env.dp.maps.listener_live.get(0).half_open, FLOWS as i64);
    assert_eq!(env.verdicts()[reason::DROP_CT_FULL as usize], 0);
}

/// A client's retransmitted SYN, a second after its first (it leaves on another SNAT port),
/// against the member's SYN-ACK on the first port, on two CPUs at once. No state bit is
/// lost (a SYN-ACK taken keeps its `CT_SYNACK`: the move writes the port and the MAC, not
/// the whole flow), no SNAT port leaks or goes missing (one reverse entry per flow, at the
/// port its forward entry names), each handshake is counted once. A SYN-ACK taken on the
/// old port keeps the flow there (the move gives its new port back), except when it finds
/// the old reverse entry in the few instructions between the move's check and its removal:
/// those are counted and printed (the client's ACK then reaches the member on the new port,
/// which resets it).
#[test]
fn a_retransmitted_syn_moving_port_races_the_member_s_synack() {
    let Some(cpus) = two_cpus() else { return };
    // A connect timeout far beyond the set-up (opening 3,000 flows takes seconds under the
    // VM's emulation): the retransmission stays with its member, it is not redispatched.
    let cfg = stateful().replace(
        "timeout_member_connect = 5000 ",
        "timeout_member_connect = 600000 ",
    );
    assert_ne!(cfg, stateful(), "the connect timeout raised");
    let Some(mut env) = Env::with_capacity(&cfg, 16384) else {
        return;
    };
    let opened: Vec<(Ipv4Addr, u16)> = (0..FLOWS)
        .map(|i| {
            let (member, _, snat) = env.open(BASE_PORT + i);
            env.age(BASE_PORT + i, 1_100_000_000);
            (member, snat)
        })
        .collect();
    let syns = client_syns();
    let synacks: Vec<Vec<u8>> = opened
        .iter()
        .map(|&(member, snat)| {
            let mut s =
                Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
            (s.seq, s.ack) = (5000, 1001);
            s.build()
        })
        .collect();
    let (a, b) = (env.dp.runner("lb").unwrap(), env.dp.runner("lb").unwrap());
    let n = FLOWS as usize;
    let (outs_a, outs_b) = (Mutex::new(vec![0u32; n]), Mutex::new(vec![0u32; n]));
    collide(
        &env.ns.name,
        cpus,
        n,
        |i| outs_a.lock().unwrap()[i] = a.run(&syns[i]).unwrap().0,
        |i| outs_b.lock().unwrap()[i] = b.run(&synacks[i]).unwrap().0,
    );
    let (outs_a, outs_b) = (outs_a.into_inner().unwrap(), outs_b.into_inner().unwrap());
    assert!(
        outs_a.iter().all(|&v| v == XDP_TX),
        "every retransmitted SYN forwarded"
    );
    assert!(
        outs_b.iter().all(|&v| v == XDP_TX || v == XDP_PASS),
        "a SYN-ACK is taken or left to the stack: {:?}",
        outs_b
            .iter()
            .filter(|&&v| v != XDP_TX && v != XDP_PASS)
            .collect::<Vec<_>>()
    );
    let flows = env.dp.maps.flows();
    let forward: std::collections::HashMap<u16, lb_common::Flow> = flows
        .iter()
        .filter(|(k, _)| k.dir == lb_common::FLOW_DIR_FORWARD)
        .map(|(k, f)| (u16::from_be(k.sport_be), *f))
        .collect();
    let reverse = held_ports(&flows);
    assert_eq!(forward.len(), n, "one forward entry per flow");
    assert_eq!(reverse.len(), n, "one reverse entry (SNAT port) per flow");
    let (mut taken, mut moved, mut window) = (0, 0, 0);
    for i in 0..n {
        let f = forward[&(BASE_PORT + i as u16)];
        let (member, first_port) = opened[i];
        let port = u16::from_be(f.snat_port_be);
        assert_eq!(
            f.member_be,
            u32::from(member).to_be(),
            "flow {i}: same member"
        );
        assert!(
            reverse.contains(&(member, port)),
            "flow {i}: its port {port} is held"
        );
        let synack_taken = outs_b[i] == XDP_TX;
        if synack_taken {
            taken += 1;
            assert_ne!(f.state & CT_SYNACK, 0, "flow {i}: the SYN-ACK's bit kept");
            if port != first_port {
                window += 1;
            }
        } else {
            assert_ne!(
                port, first_port,
                "flow {i}: left on its first port unanswered"
            );
            moved += 1;
        }
    }
    eprintln!(
        "RACE: of {n} flows, {taken} SYN-ACKs taken on the first port ({window} of them moved in the window), {moved} moved with their SYN-ACK left to the stack"
    );
    assert_eq!(
        total_half_open(&env),
        n as i64,
        "each handshake counted once"
    );
    assert_eq!(env.dp.maps.listener_live.get(0).half_open, n as i64);
    // Measured on the host: 16-66 of 3,000 in the window, released in lockstep. The VM's
    // emulation stretches it (365 of 3,000 on 6.1): there the bits, ports and counts above
    // are the check.
    if std::env::var_os("LB_VM_TEST").is_none() {
        assert!(
            window * 10 < n,
            "{window} of {n} SYN-ACKs taken on a port the flow left"
        );
    }
}

/// The seed's config with SYN cookies off: these tests open thousands of handshakes at once
/// and race the stateful path (cookies have their own tests, tests/tests/syn_cookies.rs).
fn stateful() -> String {
    with_half_open_limit(include_str!("../../examples/seed.toml"), -1)
}
