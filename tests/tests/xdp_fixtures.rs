//! Tier 2: the loaded XDP program under BPF_PROG_TEST_RUN. Each fixture is an input frame,
//! the expected verdict and the exact expected output frame (MACs, addresses, ports,
//! checksums), then the counters; a flow's steps carry state from one to the next.
//!
//! The program runs in a namespace of the test's own with the VIP's subnet on a veth and
//! permanent neighbour entries for the members, so `bpf_fib_lookup` answers deterministically.

use std::net::Ipv4Addr;

use integration_tests::{fixture::*, *};
use lb_common::{reason, CT_FIN_CLIENT, CT_FIN_MEMBER, MEMBER_F_UP, SNAT_PORT_MAX, SNAT_PORT_MIN};

#[test]
fn one_flow_syn_reply_data_fin_exact_bytes() {
    let Some(mut env) = Env::seed() else { return };

    // SYN: client -> VIP:22 becomes VIP:snat -> member:22, MACs port -> member.
    let syn = Tcp::new(CLIENT, 40000, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).expect("tcp out");
    let member = o.dst;
    assert!(member == M1 || member == M2);
    let snat = o.sport;
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&snat),
        "snat port {snat} in range"
    );
    assert_eq!(
        out,
        to_member(&syn, member, snat).build(),
        "SYN output bytes"
    );
    assert!(checksums_ok(&out));
    let m = env.member_index(member);
    // A handshake until the client acknowledges the member's SYN-ACK: not a connection yet.
    assert_eq!((env.active(m), env.half_open(m)), (0, 1));
    let st = env.dp.maps.member_stats(m).unwrap();
    assert_eq!(
        (st.total_connections, st.packets_in, st.bytes_in),
        (0, 1, 40)
    );

    // SYN-ACK from the member: reverse-translated to the client, MACs port -> client.
    let mut synack =
        Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    synack.seq = 5000;
    synack.ack = 1001;
    let out = env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(
        out,
        to_client(&synack, 40000).build(),
        "SYN-ACK output bytes"
    );

    // Data from the client, with an odd-length payload for the checksum's sake.
    let mut data = Tcp::new(CLIENT, 40000, VIP, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"SSH-2.0-x\r\n!");
    data.seq = 1001;
    data.ack = 5001;
    let out = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(
        out,
        to_member(&data, member, snat).build(),
        "data output bytes"
    );
    assert!(checksums_ok(&out));

    // FIN from the client: still active until the member's FIN.
    let mut fin = Tcp::new(CLIENT, 40000, VIP, 22, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (fin.seq, fin.ack) = (1013, 5001);
    env.expect(&fin.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(env.active(m), 1);

    let mut finack =
        Tcp::new(member, 22, VIP, snat, TCP_FIN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (finack.seq, finack.ack) = (5001, 1014);
    let out = env.expect(&finack.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert!(checksums_ok(&out));
    assert_eq!(env.active(m), 0, "both FINs seen: no longer active");
    assert!(env.flow(40000).unwrap().is_closed());

    // The last ACK still reaches the member: the entry lingers after close.
    let last = Tcp::new(CLIENT, 40000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&last.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(Tcp::parse(&out).unwrap().dst, member);
    assert_eq!(env.active(m), 0);
    let ls = env.dp.maps.listener_stats(0).unwrap();
    assert_eq!(
        (ls.packets_in, ls.packets_out, ls.total_connections),
        (4, 2, 1)
    );
    assert_eq!(env.dp.maps.listener_live.get(0).active, 0);
}

#[test]
fn rst_closes_and_new_syn_reuses_tuple() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.connect(40100);
    let m = env.member_index(member);
    assert_eq!(env.active(m), 1);
    // The member resets the connection: a RST at the sequence it would send next.
    let mut rst = Tcp::new(member, 22, VIP, snat, TCP_RST | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (rst.seq, rst.ack) = (5001, 1001);
    let out = env.expect(&rst.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(out, to_client(&rst, 40100).build(), "RST output bytes");
    assert_eq!(env.active(m), 0, "RST from the member closes the flow");
    // The client reuses the tuple: a fresh flow is counted again, exactly once.
    let (member2, _, _) = env.open(40100);
    let m2 = env.member_index(member2);
    assert_eq!(env.half_open(m2), 1);
    let mut rst = Tcp::new(CLIENT, 40100, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
    rst.seq = 1001;
    env.expect(&rst.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(
        env.half_open(env.member_index(M1)) + env.half_open(env.member_index(M2)),
        0
    );
}

/// A member refusing a SYN (RST+ACK acknowledging it) does not reach the client while the
/// listener's `retries` allow another member: the RST is dropped, the refusal counted against
/// the member, and the client's next SYN goes to the other member. Past `retries` moves, the
/// refusal reaches the client as it would without lb.
#[test]
fn member_refusal_is_redispatched_until_retries_run_out() {
    let cfg = include_str!("../../examples/seed.toml").replace("retries = 3", "retries = 1");
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let (first, _, snat) = env.open(40200);
    let (i1, other) = (env.member_index(first), if first == M1 { M2 } else { M1 });
    let i2 = env.member_index(other);
    let refuse = |member: Ipv4Addr, snat: u16| {
        let mut rst =
            Tcp::new(member, 22, VIP, snat, TCP_RST | TCP_ACK).macs(mac_of(member), PORT_MAC);
        rst.ack = 1001;
        rst
    };
    env.expect(&refuse(first, snat).build(), XDP_DROP, reason::DROP_REFUSED);
    assert_eq!(env.dp.maps.member_live.get(i1).failures, 1);
    assert_eq!(
        env.half_open(i1),
        1,
        "still a handshake until the client tries again"
    );
    // The client's retransmitted SYN goes to the other member, from the same tuple.
    let syn = Tcp::new(CLIENT, 40200, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert_eq!(o.dst, other, "redispatched");
    assert_eq!((env.half_open(i1), env.half_open(i2)), (0, 1));
    // That one refuses too: one move was all `retries = 1` allows, so the client sees it.
    let rst = refuse(other, o.sport);
    let out = env.expect(&rst.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(out, to_client(&rst, 40200).build(), "RST output bytes");
    assert_eq!((env.half_open(i1), env.half_open(i2)), (0, 0));
    assert_eq!(env.dp.maps.member_live.get(i2).failures, 1);
    // A member that answers a SYN ends its run of failures.
    let (m, _, _) = env.open(40201);
    assert_eq!(
        m, first,
        "the idle member: both have failed once, neither past the limit"
    );
    env.establish_on(40201, 22);
    assert_eq!(env.dp.maps.member_live.get(i1).failures, 0);
    assert_eq!(env.verdicts()[reason::DROP_REFUSED as usize], 1);
}

/// Passive health (`observe layer4` + `error-limit`): a member that refused `error_limit`
/// new connections in a row is out of selection although its monitor still says up; the
/// daemon clears its failures when a check passes, and it is chosen again.
#[test]
fn member_past_its_error_limit_is_out_until_cleared() {
    let cfg = include_str!("../../examples/seed.toml").replace(
        "lb_algorithm = \"LEAST_CONNECTIONS\"",
        "lb_algorithm = \"LEAST_CONNECTIONS\"\nerror_limit = 2",
    );
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let (bad, good) = (M1, M2);
    let ib = env.member_index(bad);
    // Every SYN sent to `bad` is refused; the client retries and gets `good`.
    let mut port = 40300;
    while env.dp.maps.member_live.get(ib).failures < 2 {
        let (m, _, snat) = env.open(port);
        if m == bad {
            let mut rst =
                Tcp::new(bad, 22, VIP, snat, TCP_RST | TCP_ACK).macs(mac_of(bad), PORT_MAC);
            rst.ack = 1001;
            env.expect(&rst.build(), XDP_DROP, reason::DROP_REFUSED);
        } else {
            env.establish_on(port, 22);
        }
        port += 1;
        assert!(port < 40320, "bad member never chosen");
    }
    // Past the limit: every new connection goes to `good`, busier or not.
    for p in 40400..40406 {
        assert_eq!(env.open(p).0, good, "a failed member is out");
    }
    let limit = env.dp.maps.pool(0).unwrap().error_limit;
    assert_eq!(limit, 2);
    assert!(lb_common::member_failed(
        env.dp.maps.member_live.get(ib).failures,
        limit
    ));
    // A passing check clears the run.
    env.dp.maps.member_live.clear_failures(ib);
    assert_eq!(
        env.open(40410).0,
        bad,
        "back in selection, and the idle one"
    );
}

/// A member that cannot be sent to (here: no neighbour entry, so the FIB lookup fails)
/// costs the SYN nothing: another member takes it in the same packet. That failure is lb's,
/// not the member's: its passive health does not count it.
#[test]
fn bind_failure_picks_another_member_in_the_same_packet() {
    let Some(mut env) = Env::seed() else { return };
    env.ns.ip(&format!("neigh del {M1} dev port0"));
    let im = env.member_index(M1);
    for p in 40500..40504 {
        assert_eq!(
            env.open(p).0,
            M2,
            "every SYN reaches the member that can be sent to"
        );
    }
    assert_eq!(env.dp.maps.member_live.get(im).failures, 0);
    assert_eq!(env.half_open(im), 0);
    assert_eq!(env.half_open(env.member_index(M2)), 4);
}

#[test]
fn least_connections_and_down_members() {
    let Some(mut env) = Env::seed() else { return };
    let (a, _, _) = env.connect(41000);
    let (b, _, _) = env.connect(41001);
    assert_ne!(a, b, "second connection goes to the idle member");
    let (c, _, _) = env.connect(41002);
    let (d, _, _) = env.connect(41003);
    assert_ne!(c, d, "with one each, the next two split again");
    assert_eq!(env.active(env.member_index(M1)), 2);
    assert_eq!(env.active(env.member_index(M2)), 2);

    // M2 goes down: every new flow lands on M1 although M1 is busier.
    env.set_member_flags(M2, |f| f & !MEMBER_F_UP);
    for p in 41010..41016 {
        assert_eq!(env.open(p).0, M1, "down member never chosen");
    }
    // Both down: the SYN is dropped and counted.
    env.set_member_flags(M1, |f| f & !MEMBER_F_UP);
    let syn = Tcp::new(CLIENT, 41020, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_DROP, reason::DROP_NO_MEMBER);
    assert!(env.flow(41020).is_none());
    assert_eq!(
        env.dp.maps.listener_drops(0).unwrap()[reason::DROP_NO_MEMBER as usize],
        1
    );
}

#[test]
fn weights_and_drain() {
    let cfg = include_str!("../../examples/seed.toml").replacen("weight = 1", "weight = 3", 1);
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let mut n1 = 0;
    for p in 0..8 {
        if env.connect(42000 + p).0 == M1 {
            n1 += 1;
        }
    }
    assert_eq!(n1, 6, "weights 3:1 over 8 held connections");
    // Weight 0 drains: no new flows, existing ones continue.
    let idx = env.member_index(M1);
    let mut c = env.dp.maps.member(idx).unwrap();
    c.weight = 0;
    env.dp.maps.set_member(idx, c).unwrap();
    assert_eq!(env.open(42100).0, M2);
    let data = Tcp::new(CLIENT, 42000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(
        Tcp::parse(&out).unwrap().dst,
        M1,
        "a drained member keeps its flows"
    );
}

#[test]
fn retransmitted_syn_to_down_member_is_redispatched() {
    let Some(mut env) = Env::seed() else { return };
    let (first, _, snat) = env.open(43000);
    let other = if first == M1 { M2 } else { M1 };
    env.set_member_flags(first, |f| f & !MEMBER_F_UP);
    let syn = Tcp::new(CLIENT, 43000, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert_eq!(o.dst, other, "redispatched");
    assert_eq!(o.dst_mac, mac_of(other));
    assert!(checksums_ok(&out));
    // Still a handshake, now on the other member.
    let (old, new) = (env.member_index(first), env.member_index(other));
    assert_eq!((env.half_open(old), env.half_open(new)), (0, 1));
    assert_eq!(env.dp.maps.member_stats(old).unwrap().redispatches, 1);
    let ls = env.dp.maps.listener_stats(0).unwrap();
    assert_eq!(
        (ls.total_connections, ls.redispatches, ls.packets_in),
        (0, 1, 2),
        "no connection yet, two SYNs"
    );
    // The old reverse entry is gone: a late SYN-ACK from the first member is not translated.
    let late = Tcp::new(first, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(first), PORT_MAC);
    env.expect(&late.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // The new member's reply is.
    let mut reply =
        Tcp::new(other, 22, VIP, o.sport, TCP_SYN | TCP_ACK).macs(mac_of(other), PORT_MAC);
    (reply.seq, reply.ack) = (5000, 1001);
    let out = env.expect(&reply.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(Tcp::parse(&out).unwrap().dport, 43000);
    // The client's ACK makes it a connection: counted once, on the member that answered.
    let mut ack = Tcp::new(CLIENT, 43000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (1001, 5001);
    env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!((env.active(new), env.half_open(new)), (1, 0));
    assert_eq!(env.dp.maps.member_stats(new).unwrap().total_connections, 1);
    assert_eq!(env.dp.maps.listener_stats(0).unwrap().total_connections, 1);
}

#[test]
fn retransmitted_syn_past_retries_is_redispatched() {
    let cfg = include_str!("../../examples/seed.toml").replace("\nretries = 3", "\nretries = 1");
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let (first, _, snat) = env.open(43100);
    let syn = Tcp::new(CLIENT, 43100, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    // Duplicates sooner than the initial RTO are not retransmissions: same member, however
    // many (a client cannot walk its connections through the members so), same port.
    for _ in 0..5 {
        let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
        let o = Tcp::parse(&out).unwrap();
        assert_eq!((o.dst, o.sport), (first, snat));
    }
    assert_eq!(env.flow(43100).unwrap().syn_retries, 0);
    // First retransmission, a second later: within `retries`, same member, on another SNAT
    // port (the member may hold the old tuple: another stack's TIME_WAIT refuses every SYN
    // on it for a minute).
    env.age(43100, 1_100_000_000);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert!(checksums_ok(&out));
    assert_eq!(o.dst, first);
    assert_ne!(
        o.sport, snat,
        "the retransmitted SYN goes out on another port"
    );
    assert_eq!(env.flow(43100).unwrap().snat_port_be, o.sport.to_be());
    assert_eq!(
        env.half_open(env.member_index(first)),
        1,
        "still one handshake"
    );
    assert_eq!(
        env.dp
            .maps
            .member_stats(env.member_index(first))
            .unwrap()
            .redispatches,
        0
    );
    // The old port is free: the member's late answer on it is not this flow's.
    let late = Tcp::new(first, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(first), PORT_MAC);
    env.expect(&late.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // Second: past `retries`, redispatched to the other member.
    env.age(43100, 1_100_000_000);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_ne!(Tcp::parse(&out).unwrap().dst, first);
    assert_eq!(
        env.half_open(env.member_index(M1)) + env.half_open(env.member_index(M2)),
        1
    );
}

#[test]
fn traffic_that_is_not_balanced_passes_untouched() {
    let Some(mut env) = Env::seed() else { return };
    // ARP request for the VIP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP.octets());
    env.expect(&arp, XDP_PASS, reason::PASS_NOT_IP);
    // ICMP echo to the VIP.
    let mut icmp = Tcp::new(CLIENT, 0, VIP, 0, 0)
        .macs(CLIENT_MAC, PORT_MAC)
        .build();
    icmp[23] = 1;
    env.expect(&icmp, XDP_PASS, reason::PASS_NOT_BALANCED);
    // TCP to a VIP port without a listener (ssh into the namespace, say).
    let other = Tcp::new(CLIENT, 40000, VIP, 2222, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&other.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // A member's answer to the namespace's own connection (a health check from port 60001).
    let hc = Tcp::new(M1, 22, VIP, 60001, TCP_SYN | TCP_ACK).macs(M1_MAC, PORT_MAC);
    env.expect(&hc.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // Mid-connection packet to the listener without a flow: the kernel answers (RST).
    let stray = Tcp::new(CLIENT, 40000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&stray.build(), XDP_PASS, reason::PASS_NO_FLOW);
    // IPv6 to an IPv4 load balancer (which loads no IPv6 programs): not IP it balances.
    let v6 = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&v6.build(), XDP_PASS, reason::PASS_NOT_IP);
}

#[test]
fn malformed_packets_get_one_counted_verdict_each() {
    let Some(mut env) = Env::seed() else { return };
    let good = Tcp::new(CLIENT, 40000, VIP, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .build();
    // (Frames shorter than an Ethernet header are refused by BPF_PROG_TEST_RUN itself and by
    // drivers; the program's DROP_TRUNCATED_ETH branch is defensive.)
    // Nothing but an Ethernet header saying IPv4.
    env.expect(&good[..14], XDP_DROP, reason::DROP_BAD_IPV4);
    // IPv4 header cut short.
    env.expect(&good[..14 + 12], XDP_DROP, reason::DROP_BAD_IPV4);
    // IHL below 5.
    let mut f = good.clone();
    f[14] = 0x44;
    env.expect(&f, XDP_DROP, reason::DROP_BAD_IPV4);
    // Total length beyond the frame.
    let mut f = good.clone();
    f[16..18].copy_from_slice(&200u16.to_be_bytes());
    env.expect(&f, XDP_DROP, reason::DROP_BAD_IPV4);
    // Not version 4.
    let mut f = good.clone();
    f[14] = 0x65;
    env.expect(&f, XDP_DROP, reason::DROP_BAD_IPV4);
    // TCP header cut short (IP total length consistent with the short frame).
    let mut f = good[..14 + 20 + 10].to_vec();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    env.expect(&f, XDP_DROP, reason::DROP_BAD_L4);
    // TCP data offset below 5.
    let mut f = good.clone();
    f[14 + 20 + 12] = 4 << 4;
    env.expect(&f, XDP_DROP, reason::DROP_BAD_L4);
    // First fragment addressed to the listener.
    let mut f = good.clone();
    f[20] = 0x20; // MF
    env.expect(&f, XDP_DROP, reason::DROP_FRAGMENT);
    // Later fragment: no ports to balance on, the kernel's reassembly decides.
    let mut f = good.clone();
    f[20] = 0x00;
    f[21] = 0x10;
    env.expect(&f, XDP_PASS, reason::PASS_NOT_BALANCED);
    assert_eq!(
        env.dp.maps.flows().len(),
        0,
        "no malformed packet created a flow"
    );
}

#[test]
fn missing_neighbour_drops_the_syn_and_counts_it() {
    let cfg = include_str!("../../examples/seed.toml").replace("\"10.0.0.4\"", "\"10.0.0.9\"");
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    env.set_member_flags(M1, |f| f & !MEMBER_F_UP);
    let syn = Tcp::new(CLIENT, 44000, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_DROP, reason::DROP_NO_NEIGH);
    assert!(env.flow(44000).is_none(), "no flow is left behind");
    assert_eq!(env.dp.maps.flows().len(), 0, "nor a reverse entry");
    let m9 = env.member_index(Ipv4Addr::new(10, 0, 0, 9));
    assert_eq!(env.active(m9), 0);
    let st = env.dp.maps.member_stats(m9).unwrap();
    assert_eq!(
        st.drops,
        [1, 0, 0, 0],
        "counted against the member as drop_no_neigh"
    );
}

#[test]
fn connection_limit_is_enforced() {
    let cfg = include_str!("../../examples/seed.toml")
        .replace("\nretries = 3", "\nretries = 3\nconnection_limit = 2");
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    env.connect(45000);
    env.connect(45001);
    let syn = Tcp::new(CLIENT, 45002, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_DROP, reason::DROP_CONN_LIMIT);
    let drops = env.dp.maps.listener_drops(0).unwrap();
    assert_eq!(
        drops[reason::DROP_CONN_LIMIT as usize],
        1,
        "counted against the listener"
    );
    assert_eq!(drops.iter().sum::<u64>(), 1);
}

/// The load balancer's limit (haproxy's global `maxconn`) counts every listener's open
/// connections together.
#[test]
fn the_load_balancer_s_limit_counts_all_listeners() {
    let seed = include_str!("../../examples/seed.toml");
    let second = seed
        .split("[[loadbalancer.listener]]")
        .nth(1)
        .unwrap()
        .split("[[loadbalancer.pool]]")
        .next()
        .unwrap()
        .replace("df25900f", "0000900f")
        .replace("protocol_port = 22", "protocol_port = 2222");
    let cfg = seed
        .replace(
            "vip_prefixlen = 24\n",
            "vip_prefixlen = 24\nconnection_limit = 3\n",
        )
        .replace(
            "[[loadbalancer.pool]]",
            &format!("[[loadbalancer.listener]]{second}[[loadbalancer.pool]]"),
        );
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let syn = |port: u16, listener: u16| {
        Tcp::new(CLIENT, port, VIP, listener, TCP_SYN)
            .macs(CLIENT_MAC, PORT_MAC)
            .build()
    };
    for (port, listener) in [(45000, 22), (45001, 2222), (45002, 2222)] {
        env.expect(&syn(port, listener), XDP_TX, reason::TX_TO_MEMBER);
        env.establish_on(port, listener);
    }
    env.expect(&syn(45003, 22), XDP_DROP, reason::DROP_CONN_LIMIT);
    env.expect(&syn(45004, 2222), XDP_DROP, reason::DROP_CONN_LIMIT);
}

#[test]
fn sweep_expires_idle_flows_and_corrects_drift() {
    let Some(mut env) = Env::seed() else { return };
    for p in 0..4 {
        env.connect(46000 + p);
    }
    let members: Vec<u32> = env.plan.members.iter().map(|m| m.index).collect();
    let total = |env: &Env| members.iter().map(|&m| env.active(m)).sum::<i64>();
    assert_eq!(total(&env), 4);
    // Drift (as a lost race would leave): the table says 2 each.
    env.dp.maps.member_live.add(members[0], 5);
    let r = env.dp.sweep(&members, &[0], &[]).unwrap();
    assert_eq!((r.flows, r.expired, r.orphans, r.corrected), (4, 0, 0, 1));
    assert_eq!((env.active(members[0]), env.active(members[1])), (2, 2));
    // Idle past the data timeout: every flow expires, counters return to 0.
    let mut l = env.plan.listeners[0].clone();
    l.conf.timeout_data_ns = 1_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = env.dp.sweep(&members, &[0], &[]).unwrap();
    assert_eq!((r.flows, r.expired, r.corrected), (4, 4, 0));
    assert_eq!(total(&env), 0);
    assert_eq!(env.dp.maps.listener_live.get(0).active, 0);
    assert_eq!(
        env.dp.maps.flows().len(),
        0,
        "forward and reverse entries removed"
    );
}

#[test]
fn full_pool_of_256_members_is_scanned() {
    let mut cfg = include_str!("../../examples/seed.toml").to_string();
    let first = cfg.find("[[loadbalancer.pool.member]]").unwrap();
    cfg.truncate(first);
    for i in 0..256u32 {
        cfg.push_str(&format!(
            "[[loadbalancer.pool.member]]\nid = \"m{i}\"\naddress = \"10.0.0.2\"\nprotocol_port = {}\n\n",
            1000 + i
        ));
    }
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    // Every member busy but one; whichever slot the rotation starts at, the idle one wins.
    for m in &env.plan.members {
        if m.protocol_port != 1200 {
            env.dp.maps.member_live.add(m.index, 3);
        }
    }
    for p in 0..3 {
        let syn = Tcp::new(CLIENT, 47000 + p, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
        let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
        assert_eq!(
            Tcp::parse(&out).unwrap().dport,
            1200,
            "the least loaded of 256 members"
        );
        env.establish_on(47000 + p, 22);
    }
    // Now slot 1200 has 3 like everyone else: the next SYN goes elsewhere.
    let syn = Tcp::new(CLIENT, 47010, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_ne!(Tcp::parse(&out).unwrap().dport, 1200);
}

#[test]
fn ip_options_are_honoured() {
    let Some(mut env) = Env::seed() else { return };
    // Record-route-sized padding: 4 NOPs, IHL 6.
    let mut syn = Tcp::new(CLIENT, 48000, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    syn.ip_options = vec![1, 1, 1, 1];
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert_eq!(
        out,
        to_member(&syn, o.dst, o.sport).build(),
        "options kept, ports found after them"
    );
    assert!(checksums_ok(&out));
}

/// "Fragmentation needed" from the member about a segment lb sent it reaches the client, from
/// the VIP, embedding the segment the client sent: with 8 bytes of TCP (RFC 792's minimum)
/// and with the whole TCP header, whose checksum must then be translated too.
#[test]
fn icmp_error_from_member_reaches_client_translated() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, _) = env.open(49000);
    let mut data = Tcp::new(CLIENT, 49000, VIP, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(&[7u8; 100]);
    data.seq = 1001;
    let from_client = data.build();
    let to_member = env.expect(&from_client, XDP_TX, reason::TX_TO_MEMBER);
    for embedded_len in [28, 48] {
        let frag_needed = icmp_error(
            mac_of(member),
            PORT_MAC,
            member,
            VIP,
            3,
            4,
            [0, 0, 0x05, 0x78],
            &to_member[14..14 + embedded_len],
        );
        let out = env.expect(&frag_needed, XDP_TX, reason::TX_ICMP_TO_CLIENT);
        let want = icmp_error(
            PORT_MAC,
            CLIENT_MAC,
            VIP,
            CLIENT,
            3,
            4,
            [0, 0, 0x05, 0x78],
            &from_client[14..14 + embedded_len],
        );
        assert_eq!(
            out, want,
            "ICMP to the client, {embedded_len} bytes embedded"
        );
    }
}

/// A time-exceeded from the client's side about a reply lb sent reaches the member, from the
/// VIP, embedding the reply the member sent.
#[test]
fn icmp_error_from_client_side_reaches_member_translated() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.open(49100);
    let mut synack =
        Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    synack.seq = 7000;
    synack.ack = 1001;
    let from_member = synack.build();
    let to_client = env.expect(&from_member, XDP_TX, reason::TX_TO_CLIENT);
    let router = Ipv4Addr::new(10, 0, 0, 1);
    let exceeded = icmp_error(
        CLIENT_MAC,
        PORT_MAC,
        router,
        VIP,
        11,
        0,
        [0; 4],
        &to_client[14..],
    );
    let out = env.expect(&exceeded, XDP_TX, reason::TX_ICMP_TO_MEMBER);
    let want = icmp_error(
        PORT_MAC,
        mac_of(member),
        VIP,
        member,
        11,
        0,
        [0; 4],
        &from_member[14..],
    );
    assert_eq!(out, want);
}

#[test]
fn icmp_errors_about_unknown_flows_pass_untouched() {
    let Some(mut env) = Env::seed() else { return };
    let stray = Tcp::new(VIP, 60001, M1, 22, TCP_SYN).build();
    let unreach = icmp_error(M1_MAC, PORT_MAC, M1, VIP, 3, 3, [0; 4], &stray[14..14 + 28]);
    env.expect(&unreach, XDP_PASS, reason::PASS_NOT_BALANCED);
    // An error whose embedded header is cut short cannot name a flow.
    let short = icmp_error(M1_MAC, PORT_MAC, M1, VIP, 3, 3, [0; 4], &stray[14..14 + 10]);
    env.expect(&short, XDP_PASS, reason::PASS_NOT_BALANCED);
    // Echo requests to the VIP are the kernel's.
    let echo = icmp_error(
        CLIENT_MAC,
        PORT_MAC,
        CLIENT,
        VIP,
        8,
        0,
        [0, 1, 0, 1],
        b"ping",
    );
    env.expect(&echo, XDP_PASS, reason::PASS_NOT_BALANCED);
}

/// A member on another subnet is reached through the namespace's route: the frame goes to the
/// router's MAC, addressed to the member.
#[test]
fn routed_member_gets_the_next_hop_mac() {
    let cfg = include_str!("../../examples/seed.toml").replace("\"10.0.0.4\"", "\"10.1.0.5\"");
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    env.ns
        .ip("neigh replace 10.0.0.1 lladdr 02:00:00:00:00:fe nud permanent dev port0");
    env.ns.ip("route add 10.1.0.0/16 via 10.0.0.1");
    env.set_member_flags(M1, |f| f & !lb_common::MEMBER_F_UP);
    let syn = Tcp::new(CLIENT, 49500, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert_eq!(
        (o.dst, o.dst_mac),
        (Ipv4Addr::new(10, 1, 0, 5), [0x02, 0, 0, 0, 0, 0xfe])
    );
    assert!(checksums_ok(&out));
}

/// A member slot retired by a reload is free again only once no flow names it, lingering
/// closed ones included.
#[test]
fn retired_slot_is_freed_once_its_last_flow_is_gone() {
    let Some(mut env) = Env::seed() else { return };
    // Flow A waits for its SYN-ACK on member X; connection B, on member Y, was reset and
    // lingers.
    let (x, _, _) = env.open(49700);
    let (y, _, snat_b) = env.connect(49701);
    assert_ne!(x, y);
    let mut rst = Tcp::new(CLIENT, 49701, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
    rst.seq = 1001;
    env.expect(&rst.build(), XDP_TX, reason::TX_TO_MEMBER);
    let _ = snat_b;
    let (ix, iy) = (env.member_index(x), env.member_index(y));
    // A reload removes both members: their slots are retired (cleared in MEMBERS).
    for i in [ix, iy] {
        env.dp
            .maps
            .set_member(i, lb_common::MemberConf::default())
            .unwrap();
    }
    let r = env.dp.sweep(&[], &[0], &[ix, iy]).unwrap();
    assert!(r.freed.is_empty(), "both still named by a flow");
    assert_eq!(
        (env.half_open(ix), env.half_open(iy)),
        (1, 0),
        "A still counts while it drains"
    );
    // A's connect timeout passes: it expires and X is free; B lingers (10 s) and holds Y.
    let mut l = env.plan.listeners[0].clone();
    l.conf.timeout_member_connect_ns = 1_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let r = env.dp.sweep(&[], &[0], &[ix, iy]).unwrap();
    assert_eq!(r.expired, 1);
    assert_eq!(r.freed, vec![ix]);
    assert_eq!(env.dp.maps.member_live.get(iy).refs, 1);
    assert_eq!(env.half_open(ix), 0);
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// `xdp_mode = "tc"`: the classifiers share the XDP program's data path and maps. Its SYN
/// opens a flow the XDP program then serves; its output for established, reply and ICMP
/// frames is byte for byte what the XDP program emits (the kernel's checksum helpers against
/// lb's own incremental update); it passes and drops what XDP passes and drops.
#[test]
fn tc_program_shares_the_data_path_and_rewrites_the_same_bytes() {
    let Some(mut env) = Env::seed() else { return };
    let tc = |env: &mut Env, frame: &[u8]| env.run_program("lb_tc", frame);
    // A SYN through TC: a member, the VIP as source, valid checksums, the flow in the table.
    let syn = Tcp::new(CLIENT, 51000, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let (a, out) = tc(&mut env, &syn.build());
    assert_eq!(a, TC_ACT_REDIRECT, "out of the port it came in on");
    let o = Tcp::parse(&out).unwrap();
    assert!(checksums_ok(&out));
    let (member, snat) = (o.dst, o.sport);
    assert_eq!(
        out,
        to_member(&syn, member, snat).build(),
        "SYN output bytes"
    );
    assert!(env.flow(51000).is_some());
    // (The member answers before anything else of its comes.)
    env.establish_on(51000, 22);

    // Established and reply frames: identical to the XDP program's output.
    let mut data = Tcp::new(CLIENT, 51000, VIP, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"odd-length payload!");
    data.seq = 77;
    let reply = Tcp::new(member, 22, VIP, snat, TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .payload(&[9u8; 33]);
    for (frame, why) in [
        (data.build(), reason::TX_TO_MEMBER),
        (reply.build(), reason::TX_TO_CLIENT),
    ] {
        let (a, by_tc) = tc(&mut env, &frame);
        assert_eq!(a, TC_ACT_REDIRECT);
        let by_xdp = env.expect(&frame, XDP_TX, why);
        assert_eq!(
            by_tc,
            by_xdp,
            "TC and XDP emit the same bytes ({})",
            reason::NAMES[why as usize]
        );
    }
    assert_eq!(
        tc(&mut env, &data.build()).1,
        to_member(&data, member, snat).build()
    );

    // An ICMP error from the member's side about a segment lb sent.
    let sent = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    let err = icmp_error(
        mac_of(member),
        PORT_MAC,
        member,
        VIP,
        3,
        4,
        [0, 0, 0x05, 0x78],
        &sent[14..14 + 48],
    );
    let (a, by_tc) = tc(&mut env, &err);
    assert_eq!(a, TC_ACT_REDIRECT);
    assert_eq!(by_tc, env.expect(&err, XDP_TX, reason::TX_ICMP_TO_CLIENT));

    // The shortcut on the port's outer end: established segments in both directions come
    // out as the port's program would emit them; a SYN, and anything unknown, goes on into
    // the namespace untouched and uncounted (the port's program counts it there).
    let fast = |env: &mut Env, frame: &[u8]| env.run_program("lb_tc_fast", frame);
    for frame in [data.build(), reply.build()] {
        let (a, by_fast) = fast(&mut env, &frame);
        assert_eq!(a, TC_ACT_REDIRECT);
        assert_eq!(
            by_fast,
            tc(&mut env, &frame).1,
            "the shortcut emits the same bytes"
        );
    }
    let before = env.verdicts();
    let new_syn = Tcp::new(CLIENT, 51002, VIP, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .build();
    assert_eq!(fast(&mut env, &new_syn), (TC_ACT_OK, new_syn.clone()));
    assert!(
        env.flow(51002).is_none(),
        "a SYN opens no flow on the shortcut"
    );
    let unknown = Tcp::new(M1, 22, VIP, 12345, TCP_ACK)
        .macs(M1_MAC, PORT_MAC)
        .build();
    assert_eq!(fast(&mut env, &unknown), (TC_ACT_OK, unknown.clone()));
    assert_eq!(
        env.verdicts(),
        before,
        "what the shortcut passes on is not counted"
    );

    // Not balanced: passed untouched. Malformed: dropped.
    let other = Tcp::new(CLIENT, 51001, VIP, 23, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .build();
    assert_eq!(tc(&mut env, &other), (TC_ACT_OK, other.clone()));
    let mut bad = other.clone();
    bad[14] = 0x44;
    assert_eq!(tc(&mut env, &bad).0, TC_ACT_SHOT);
}

/// CLOCK_MONOTONIC in milliseconds (the clock `bpf_ktime_get_ns` reads), truncated to 32 bits.
fn monotonic_ms() -> u32 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000) as u32
}

/// NOP, NOP, timestamps: the layout Linux uses on established segments.
fn ts_option(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend(val.to_be_bytes());
    o.extend(ecr.to_be_bytes());
    o
}

/// Members see lb's millisecond clock in TSval whichever client a connection came from (so a
/// reused SNAT port meets rising timestamps in the member's TIME_WAIT); the client gets its
/// own values back in TSecr. Checksums follow, also for an option at an odd offset, and the
/// TC program writes the same bytes.
#[test]
fn tcp_timestamps_towards_members_follow_lbs_clock() {
    let Some(mut env) = Env::seed() else { return };
    // Linux's SYN layout: MSS, SACK permitted, timestamps, NOP, window scale.
    let mut opts = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    opts.extend(1000u32.to_be_bytes());
    opts.extend(0u32.to_be_bytes());
    opts.extend([1, 3, 3, 7]);
    let syn = Tcp::new(CLIENT, 52000, VIP, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .options(&opts);
    let before = monotonic_ms();
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let after = monotonic_ms();
    assert!(checksums_ok(&out));
    let o = Tcp::parse(&out).unwrap();
    let (member, snat) = (o.dst, o.sport);
    let (val, ecr) = o.timestamps().expect("timestamps kept");
    assert!(
        val.wrapping_sub(before) <= after.wrapping_sub(before),
        "TSval {val} is lb's clock (between {before} and {after} ms)"
    );
    assert_eq!(ecr, 0);
    let mut want = opts.clone();
    want[8..12].copy_from_slice(&val.to_be_bytes());
    assert_eq!(
        out,
        to_member(&syn.clone().options(&want), member, snat).build(),
        "nothing else changes"
    );
    env.establish_on(52000, 22);

    // Later segments: the client's clock moved 5 ms, so does what the member sees.
    let data = Tcp::new(CLIENT, 52000, VIP, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .options(&ts_option(1005, 7000))
        .payload(b"hello");
    let out = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert!(checksums_ok(&out));
    assert_eq!(
        Tcp::parse(&out).unwrap().timestamps(),
        Some((val.wrapping_add(5), 7000)),
        "TSval shifted, TSecr (the member's own clock) untouched"
    );
    // The member echoes lb's value; the client gets its own back.
    let reply = Tcp::new(member, 22, VIP, snat, TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .options(&ts_option(7001, val.wrapping_add(5)))
        .payload(b"world!");
    let out = env.expect(&reply.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert!(checksums_ok(&out));
    assert_eq!(Tcp::parse(&out).unwrap().timestamps(), Some((7001, 1005)));

    // The TC program: the same bytes.
    for frame in [data.build(), reply.build()] {
        let (_, by_tc) = env.run_program("lb_tc", &frame);
        let (_, by_xdp) = env.run(&frame);
        assert_eq!(by_tc, by_xdp, "TC and XDP translate timestamps alike");
    }

    // An option at an odd offset (NOP, timestamps, NOP NOP NOP): the checksum still holds.
    let mut odd = vec![1, 8, 10];
    odd.extend(1010u32.to_be_bytes());
    odd.extend(7002u32.to_be_bytes());
    let late = Tcp::new(CLIENT, 52000, VIP, 22, TCP_ACK)
        .macs(CLIENT_MAC, PORT_MAC)
        .options(&odd)
        .payload(b"odd");
    let out = env.expect(&late.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert!(
        checksums_ok(&out),
        "checksum with the option at an odd offset"
    );
    assert_eq!(
        Tcp::parse(&out).unwrap().timestamps(),
        Some((val.wrapping_add(10), 7002))
    );
}

/// A member slot or listener index that serves someone new starts with every counter at 0:
/// the slot of a removed member is freed once no flow names it, then given to a new member;
/// a listener's index goes to a listener added later.
#[test]
fn a_reused_index_starts_with_zeroed_counters() {
    use lb::{config::Config, plan::plan};
    let Some(mut env) = Env::seed() else { return };
    let seed = Config::parse(include_str!("../../examples/seed.toml"), "seed").unwrap();
    let (x, _, _) = env.connect(49800);
    let ix = env.member_index(x);
    let before = env.dp.maps.member_stats(ix).unwrap();
    assert_eq!((before.total_connections, before.packets_in), (1, 2));
    assert_eq!(env.dp.maps.listener_stats(0).unwrap().total_connections, 1);

    // A reload removes member X, and the listener.
    let mut lb = seed.loadbalancer[0].clone();
    lb.pool[0].member.retain(|m| m.address != x);
    lb.listener.clear();
    let without = plan(&lb, Some(&env.plan)).unwrap();
    assert_eq!(without.retired, vec![ix]);
    env.dp.write_plan(&without, Some(&env.plan)).unwrap();
    // X's flow has no listener any more: the next expiry cycle removes it and frees the slot.
    let r = env.dp.sweep(&[], &[], &without.retired).unwrap();
    assert_eq!((r.expired, r.freed.clone()), (1, vec![ix]));
    let mut freed = without.clone();
    freed.retired.clear();

    // The next reload adds a member and a listener: they take the freed slot and index 0.
    let mut lb2 = seed.loadbalancer[0].clone();
    lb2.pool[0].member.retain(|m| m.address != x);
    let mut newcomer = seed.loadbalancer[0].pool[0].member[0].clone();
    newcomer.id = "newcomer".into();
    newcomer.address = Ipv4Addr::new(10, 0, 0, 9).into();
    lb2.pool[0].member.push(newcomer);
    lb2.listener[0].id = "new-listener".into();
    let again = plan(&lb2, Some(&freed)).unwrap();
    let slot = again
        .members
        .iter()
        .find(|m| m.id == "newcomer")
        .unwrap()
        .index;
    assert_eq!(slot, ix, "the freed slot is reused");
    assert_eq!(again.fresh_members, vec![ix]);
    assert_eq!(again.listeners[0].index, 0);
    assert_eq!(again.fresh_listeners, vec![0]);
    // Dirty the live counters too, as a lost race would.
    env.dp.maps.member_live.add(ix, 3);
    env.dp.maps.listener_live.add(0, 2);
    env.dp.write_plan(&again, Some(&freed)).unwrap();

    assert_eq!(
        env.dp.maps.member_stats(ix).unwrap(),
        lb_common::Stats::default()
    );
    assert_eq!(
        env.dp.maps.listener_stats(0).unwrap(),
        lb_common::Stats::default()
    );
    assert!(env
        .dp
        .maps
        .listener_drops(0)
        .unwrap()
        .iter()
        .all(|&d| d == 0));
    for live in [
        env.dp.maps.member_live.get(ix),
        env.dp.maps.listener_live.get(0),
    ] {
        assert_eq!((live.active, live.rr, live.table, live.refs), (0, 0, 0, 0));
    }
    // A member that kept its slot kept its counters.
    let kept = again
        .members
        .iter()
        .find(|m| m.id != "newcomer")
        .unwrap()
        .index;
    assert_eq!(
        kept,
        env.plan
            .members
            .iter()
            .find(|m| m.address != x)
            .unwrap()
            .index
    );
}

/// Pinned maps are reused only as they were made: a different capacity or a schema that
/// differs is refused before anything loads, naming the map and the difference.
#[test]
fn pinned_maps_that_differ_are_refused_naming_the_difference() {
    let Some(env) = Env::seed() else { return };
    let dir = env.dp.maps.dir.clone();
    // The fixture's table holds 1024 flows (2048 entries).
    let e = match lb::dataplane::Dataplane::load(&dir, 4096) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a different capacity was accepted"),
    };
    assert!(
        e.contains("CONNTRACK: max_entries is 2048, this lb needs 8192 (conntrack_flows)"),
        "{e}"
    );
    assert!(
        lb::dataplane::Dataplane::load(&dir, 1024).is_ok(),
        "the same is reused"
    );
    // A schema version the pins were not made with.
    let schema = aya::maps::MapData::from_pin(dir.join("SCHEMA")).unwrap();
    let mut schema: aya::maps::Array<_, lb_common::schema::SchemaEntry> =
        aya::maps::Array::try_from(aya::maps::Map::Array(schema)).unwrap();
    let (i, mut entry) = schema
        .iter()
        .filter_map(Result::ok)
        .enumerate()
        .find(|(_, e)| e.name() == "MEMBERS")
        .unwrap();
    entry.version += 1;
    schema.set(i as u32, entry, 0).unwrap();
    let e = match lb::dataplane::Dataplane::load(&dir, 1024) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a different schema was accepted"),
    };
    assert!(
        e.contains("MEMBERS: schema version is 3, this lb needs 2"),
        "{e}"
    );
}

/// A draining listener (haproxy's soft stop, when a real haproxy takes over) opens no new
/// flow: a SYN goes to the namespace's stack untouched; established flows carry on.
#[test]
fn a_draining_listener_passes_new_syns_and_keeps_established_flows() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.open(49900);
    let mut l = env.plan.listeners[0].clone();
    l.conf.flags |= lb_common::LISTENER_F_DRAIN;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    let syn = Tcp::new(CLIENT, 49901, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_PASS, reason::PASS_NO_FLOW);
    assert!(env.flow(49901).is_none(), "no flow opened");
    let ack = Tcp::new(CLIENT, 49900, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert_eq!((o.dst, o.sport), (member, snat));
}

/// A listener's SNAT ports narrowed (the drop-in replacing a HAProxy keeps clear of the
/// namespace's old ephemeral range): new flows take ports in that range only, the client's
/// own port when it is in it.
#[test]
fn new_flows_take_snat_ports_in_the_listener_s_range() {
    let Some(mut env) = Env::seed() else { return };
    let mut l = env.plan.listeners[0].clone();
    (l.conf.snat_min, l.conf.snat_max) = (20_000, 20_063);
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    // First, before the range fills: the client's own port, when it is in the range.
    let (_, _, snat) = env.open(20_050);
    assert_eq!(
        snat, 20_050,
        "the client's own port first, when in the range"
    );
    for p in 0..40u16 {
        let (_, _, snat) = env.open(45_000 + p);
        assert!((20_000..=20_063).contains(&snat), "port {snat}");
    }
}

/// A SYN from `client`:`port`; the member it reaches.
fn open_from(env: &mut Env, client: Ipv4Addr, port: u16) -> Ipv4Addr {
    let syn = Tcp::new(client, port, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    Tcp::parse(&out).unwrap().dst
}

/// `SOURCE_IP` (haproxy's `balance source`) is weighted: 400 clients on weights 1 and 3
/// split about 100/300, and each client keeps its member; while one member is down every
/// client goes to the other, and comes back to its own when it is up again.
#[test]
fn source_hashing_follows_the_weights_and_keeps_each_client_on_its_member() {
    let cfg = include_str!("../../examples/seed.toml")
        .replace("LEAST_CONNECTIONS", "SOURCE_IP")
        .replacen("weight = 1", "weight = 3", 1);
    // Four flows from each of 400 clients.
    let Some(mut env) = Env::with_capacity(&cfg, 8192) else {
        return;
    };
    let client = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 0)) + i);
    let mut first = Vec::new();
    for i in 0..400u32 {
        let m = open_from(&mut env, client(i), 40_000);
        assert_eq!(
            open_from(&mut env, client(i), 40_001),
            m,
            "{} keeps its member",
            client(i)
        );
        first.push(m);
    }
    let on_m1 = first.iter().filter(|&&m| m == M1).count();
    assert!(
        (270..=330).contains(&on_m1),
        "weight 3 of 4 took {on_m1} of 400"
    );
    env.set_member_flags(M1, |f| f & !MEMBER_F_UP);
    for i in 0..400u32 {
        assert_ne!(open_from(&mut env, client(i), 40_002), M1, "M1 is down");
    }
    env.set_member_flags(M1, |f| f | MEMBER_F_UP);
    for (i, &m) in (0..400u32).zip(&first) {
        assert_eq!(open_from(&mut env, client(i), 40_003), m, "back to its own");
    }
}

/// ROUND_ROBIN is weighted and smooth: on weights 1 and 3 every four new flows are one to
/// the light member and three to the heavy one, the light one never twice in a row; with the
/// heavy one down, every flow goes to the other.
#[test]
fn round_robin_follows_the_weights_smoothly() {
    let cfg = include_str!("../../examples/seed.toml")
        .replace("LEAST_CONNECTIONS", "ROUND_ROBIN")
        .replacen("weight = 1", "weight = 3", 1);
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let client = Ipv4Addr::new(192, 168, 1, 1);
    let got: Vec<Ipv4Addr> = (0..40u16)
        .map(|i| open_from(&mut env, client, 42_000 + i))
        .collect();
    let on_m1 = got.iter().filter(|&&m| m == M1).count();
    assert_eq!(on_m1, 30, "weight 3 of 4: {got:?}");
    assert!(
        got.windows(2).all(|w| !(w[0] == M2 && w[1] == M2)),
        "the light member twice in a row: {got:?}"
    );
    env.set_member_flags(M1, |f| f & !MEMBER_F_UP);
    for i in 0..8u16 {
        assert_eq!(open_from(&mut env, client, 43_000 + i), M2, "M1 is down");
    }
}

/// SOURCE_IP_PORT hashes the client's port too: one client's connections spread over both
/// members (SOURCE_IP would keep them on one), by weight.
#[test]
fn source_ip_port_spreads_one_clients_connections() {
    let cfg =
        include_str!("../../examples/seed.toml").replace("LEAST_CONNECTIONS", "SOURCE_IP_PORT");
    let Some(mut env) = Env::with_capacity(&cfg, 4096) else {
        return;
    };
    let client = Ipv4Addr::new(192, 168, 2, 2);
    let on_m1 = (0..400u16)
        .filter(|i| open_from(&mut env, client, 44_000 + i) == M1)
        .count();
    assert!((150..=250).contains(&on_m1), "{on_m1} of 400 on M1");
}

/// `allowed_cidrs`: a client in one of the prefixes is balanced; one outside gets nothing
/// (its SYN dropped and counted, and a stray ACK too, which would otherwise reach the
/// namespace's stack and be answered with a RST); reloads that widen, narrow and empty the
/// list each take effect on the next SYN.
#[test]
fn allowed_cidrs_balance_only_the_clients_inside() {
    let seed = include_str!("../../examples/seed.toml");
    let with = |cidrs: &str| {
        seed.replacen(
            "retries = 3",
            &format!("retries = 3\nallowed_cidrs = [{cidrs}]"),
            1,
        )
    };
    let Some(mut env) = Env::new(&with("\"192.168.10.0/24\", \"172.16.0.9\"")) else {
        return;
    };
    let inside = Ipv4Addr::new(192, 168, 10, 77);
    let single = Ipv4Addr::new(172, 16, 0, 9);
    let outside = Ipv4Addr::new(192, 168, 11, 77);
    let syn = |c: Ipv4Addr, port: u16| {
        Tcp::new(c, port, VIP, 22, TCP_SYN)
            .macs(CLIENT_MAC, PORT_MAC)
            .build()
    };
    env.expect(&syn(inside, 45_000), XDP_TX, reason::TX_TO_MEMBER);
    env.expect(&syn(single, 45_000), XDP_TX, reason::TX_TO_MEMBER);
    let out = env.expect(&syn(outside, 45_000), XDP_DROP, reason::DROP_NOT_ALLOWED);
    assert_eq!(out, syn(outside, 45_000), "dropped as it came");
    let stray = Tcp::new(outside, 45_001, VIP, 22, TCP_ACK)
        .macs(CLIENT_MAC, PORT_MAC)
        .build();
    env.expect(&stray, XDP_DROP, reason::DROP_NOT_ALLOWED);
    assert_eq!(
        env.dp.maps.listener_drops(0).unwrap()[reason::DROP_NOT_ALLOWED as usize],
        2,
        "counted on the listener"
    );
    // Reloads, each followed by traffic: widened, narrowed again, emptied.
    let reload = |env: &mut Env, cidrs: &str| {
        let cfg = lb::config::Config::parse(&with(cidrs), "reload").unwrap();
        let new = lb::plan::plan(&cfg.loadbalancer[0], Some(&env.plan)).unwrap();
        env.dp.write_plan(&new, Some(&env.plan)).unwrap();
        env.plan = new;
    };
    let elsewhere = Ipv4Addr::new(10, 9, 9, 9);
    reload(&mut env, "\"192.168.0.0/16\"");
    env.expect(&syn(outside, 45_002), XDP_TX, reason::TX_TO_MEMBER);
    env.expect(&syn(inside, 45_003), XDP_TX, reason::TX_TO_MEMBER);
    env.expect(&syn(single, 45_004), XDP_DROP, reason::DROP_NOT_ALLOWED);
    env.expect(&syn(elsewhere, 45_005), XDP_DROP, reason::DROP_NOT_ALLOWED);
    reload(&mut env, "\"192.168.10.0/24\"");
    env.expect(&syn(outside, 45_006), XDP_DROP, reason::DROP_NOT_ALLOWED);
    env.expect(&syn(inside, 45_007), XDP_TX, reason::TX_TO_MEMBER);
    env.expect(&syn(single, 45_008), XDP_DROP, reason::DROP_NOT_ALLOWED);
    reload(&mut env, "");
    for (c, port) in [(outside, 45_009), (single, 45_010), (elsewhere, 45_011)] {
        env.expect(&syn(c, port), XDP_TX, reason::TX_TO_MEMBER);
    }
    assert_eq!(
        env.dp.maps.listener_drops(0).unwrap()[reason::DROP_NOT_ALLOWED as usize],
        6,
        "every refusal counted"
    );
}

/// Persistence ends after `persistence_timeout` without a new connection. The client's
/// member is drained to weight 0 first, so that it still gets the client while the entry
/// holds (haproxy keeps persistent clients on a drained server) and never once it is gone.
#[test]
fn persistence_expires_after_its_timeout() {
    let persisting = |timeout: &str| {
        include_str!("../../examples/seed.toml").replace(
            "lb_algorithm = \"LEAST_CONNECTIONS\"",
            &format!(
                "lb_algorithm = \"LEAST_CONNECTIONS\"\nsession_persistence = {{ type = \"SOURCE_IP\"{timeout} }}"
            ),
        )
    };
    let sticky = Ipv4Addr::new(192, 168, 7, 7);
    let drain = |env: &mut Env, member: Ipv4Addr| {
        let idx = env.member_index(member);
        let mut conf = env.dp.maps.member(idx).unwrap();
        conf.weight = 0;
        env.dp.maps.set_member(idx, conf).unwrap();
    };

    let Some(mut env) = Env::new(&persisting(", persistence_timeout = 1")) else {
        return;
    };
    let first = open_from(&mut env, sticky, 41_000);
    drain(&mut env, first);
    assert_eq!(
        open_from(&mut env, sticky, 41_001),
        first,
        "within the timeout"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_ne!(
        open_from(&mut env, sticky, 41_002),
        first,
        "1.1 s after its last connection the client is balanced anew"
    );
}

/// `stick on src` / SOURCE_IP persistence: a client keeps the member least connections gave
/// it, however the load shifts, while that member is up (drained too); then it sticks to the
/// next one.
#[test]
fn source_persistence_keeps_a_client_on_its_member_while_it_is_up() {
    let cfg = include_str!("../../examples/seed.toml").replace(
        "lb_algorithm = \"LEAST_CONNECTIONS\"",
        "lb_algorithm = \"LEAST_CONNECTIONS\"\nsession_persistence = { type = \"SOURCE_IP\", persistence_timeout = 60 }",
    );
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let sticky = Ipv4Addr::new(192, 168, 7, 7);
    let first = open_from(&mut env, sticky, 41_000);
    // Others load that member: least connections alone would send the next one elsewhere.
    for p in 0..6 {
        let other = Ipv4Addr::new(192, 168, 8, p as u8);
        let _ = open_from(&mut env, other, 42_000 + p);
    }
    for p in 1..5 {
        assert_eq!(
            open_from(&mut env, sticky, 41_000 + p),
            first,
            "sticks while up"
        );
    }
    // Drained to weight 0 (haproxy's `set weight` 0, `state drain`): still sticks.
    let idx = env.member_index(first);
    let mut conf = env.dp.maps.member(idx).unwrap();
    let weight = conf.weight;
    conf.weight = 0;
    env.dp.maps.set_member(idx, conf).unwrap();
    assert_eq!(
        open_from(&mut env, sticky, 41_050),
        first,
        "sticks while drained"
    );
    conf.weight = weight;
    env.dp.maps.set_member(idx, conf).unwrap();
    env.set_member_flags(first, |f| f & !MEMBER_F_UP);
    let next = open_from(&mut env, sticky, 41_100);
    assert_ne!(next, first, "a member that is down is not kept");
    env.set_member_flags(first, |f| f | MEMBER_F_UP);
    assert_eq!(
        open_from(&mut env, sticky, 41_101),
        next,
        "now it sticks to the new one"
    );
}

/// The member's SYN-ACK (ISN `isn`, window `win`, options `opts`) and the client's ACK of it
/// (window `cwin`) for a flow opened from CLIENT:`port` (client ISN 1000).
fn handshake(env: &mut Env, port: u16, isn: u32, win: u16, cwin: u16, opts: &[u8]) {
    let f = env.flow(port).unwrap();
    let (member, snat) = (
        Ipv4Addr::from(u32::from_be(f.member_be)),
        u16::from_be(f.snat_port_be),
    );
    let mut synack = Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .options(opts);
    (synack.seq, synack.ack, synack.win) = (isn, 1001, win);
    env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    let mut ack = Tcp::new(CLIENT, port, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack, ack.win) = (1001, isn + 1, cwin);
    env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
}

/// RFC 5961: a RST closes a flow only when it carries exactly the number its receiver
/// acknowledged last, or the one after the last byte its sender sent (its own RST after
/// data the receiver has not acknowledged yet). Any other RST, in the window or not, is still
/// forwarded (the endpoint's stack answers it with a challenge ACK) but the flow stays open
/// and counted: a blind sweep of the window closes nothing. A FIN outside the window of
/// the side it goes to is forwarded and ignored.
#[test]
fn only_an_exact_rst_closes_and_a_fin_out_of_window_is_ignored() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.open(43000);
    let m = env.member_index(member);
    handshake(&mut env, 43000, 5000, 1000, 2000, &[]);
    let seg = |from_client: bool, flags: u8, seq: u32| {
        let mut r = if from_client {
            Tcp::new(CLIENT, 43000, VIP, 22, flags).macs(CLIENT_MAC, PORT_MAC)
        } else {
            Tcp::new(member, 22, VIP, snat, flags).macs(mac_of(member), PORT_MAC)
        };
        r.seq = seq;
        (r.ack, r.win) = if from_client {
            (5001, 2000)
        } else {
            (1001, 1000)
        };
        r.build()
    };
    // The member's window is [1001, 2001), the client's [5001, 7001): RSTs anywhere but at
    // its left edge, in the window and out of it, from either side.
    for seq in [1000, 1002, 1500, 2000, 2001, 900_000] {
        env.expect(&seg(true, TCP_RST, seq), XDP_TX, reason::TX_TO_MEMBER);
        assert_eq!(env.active(m), 1, "client RST seq {seq} closes nothing");
    }
    for seq in [5000, 5002, 6000, 7000, 7001, 1001] {
        env.expect(&seg(false, TCP_RST, seq), XDP_TX, reason::TX_TO_CLIENT);
        assert_eq!(env.active(m), 1, "member RST seq {seq} closes nothing");
    }
    // FINs outside the window (far enough that their numbers are not recorded either):
    // forwarded, not honoured.
    env.expect(
        &seg(true, TCP_FIN | TCP_ACK, 300_000),
        XDP_TX,
        reason::TX_TO_MEMBER,
    );
    env.expect(
        &seg(false, TCP_FIN | TCP_ACK, 900_000),
        XDP_TX,
        reason::TX_TO_CLIENT,
    );
    let f = env.flow(43000).unwrap();
    assert_eq!(
        f.state & (CT_FIN_CLIENT | CT_FIN_MEMBER),
        0,
        "no FIN honoured"
    );
    // The client sends 100 bytes the member has not acknowledged: its RST after them
    // carries 1101, which closes.
    let mut data = Tcp::new(CLIENT, 43000, VIP, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(&[7; 100]);
    (data.seq, data.ack) = (1001, 5001);
    env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    env.expect(&seg(true, TCP_RST, 1101), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(env.active(m), 0, "the sender's own RST: closed");
    assert!(env.flow(43000).unwrap().is_closed());

    // The member's exact RST (the client acknowledged 5001) closes too; so do FINs in the
    // windows, scaled: window scale 7 offered both ways, the client's window 100 is 12800.
    let wscale = [1, 3, 3, 7];
    let open_scaled = |env: &mut Env, port: u16| {
        let syn = Tcp::new(CLIENT, port, VIP, 22, TCP_SYN)
            .macs(CLIENT_MAC, PORT_MAC)
            .options(&wscale);
        env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
        let f = env.flow(port).unwrap();
        let member = Ipv4Addr::from(u32::from_be(f.member_be));
        handshake(env, port, 8000, 1000, 100, &wscale);
        (member, u16::from_be(f.snat_port_be))
    };
    let (member, snat) = open_scaled(&mut env, 43001);
    let m = env.member_index(member);
    let mut r = Tcp::new(member, 22, VIP, snat, TCP_RST).macs(mac_of(member), PORT_MAC);
    r.seq = 8001 + 12_000;
    env.expect(&r.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(env.active(m), 1, "in the scaled window but not exact: open");
    r.seq = 8001;
    env.expect(&r.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(env.active(m), 0, "exact: closed");

    let (member, snat) = open_scaled(&mut env, 43002);
    let m = env.member_index(member);
    let mut fin = Tcp::new(member, 22, VIP, snat, TCP_FIN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (fin.seq, fin.ack) = (8001 + 12_000, 1001);
    env.expect(&fin.build(), XDP_TX, reason::TX_TO_CLIENT);
    let mut fin = Tcp::new(CLIENT, 43002, VIP, 22, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (fin.seq, fin.ack) = (1001, 8001);
    env.expect(&fin.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(env.active(m), 0, "FINs in the scaled windows: closed");
}

/// Frames a bridge floods to every port (not addressed to the port's MAC) are not balanced:
/// passed untouched and counted as such; replies leave with the port's MAC.
#[test]
fn frames_for_another_mac_are_not_balanced() {
    let Some(mut env) = Env::seed() else { return };
    let other = [0x02, 0xaa, 0, 0, 0, 1];
    let syn = Tcp::new(CLIENT, 44000, VIP, 22, TCP_SYN).macs(CLIENT_MAC, other);
    env.expect(&syn.build(), XDP_PASS, reason::PASS_NOT_FOR_PORT);
    assert!(env.flow(44000).is_none(), "no flow opened");
    let (member, _, snat) = env.connect(44001);
    let reply = Tcp::new(member, 22, VIP, snat, TCP_ACK).macs(mac_of(member), other);
    env.expect(&reply.build(), XDP_PASS, reason::PASS_NOT_FOR_PORT);
    let reply = Tcp::new(member, 22, VIP, snat, TCP_ACK).macs(mac_of(member), PORT_MAC);
    let out = env.expect(&reply.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(Tcp::parse(&out).unwrap().src_mac, PORT_MAC);
    // An ICMP error about the flow, flooded to the port: not translated.
    let data = Tcp::new(CLIENT, 44001, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    let sent = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    let err = icmp_error(
        mac_of(member),
        other,
        member,
        VIP,
        3,
        4,
        [0, 0, 5, 120],
        &sent[14..42],
    );
    env.expect(&err, XDP_PASS, reason::PASS_NOT_FOR_PORT);
}

/// A SYN the member answers but whose client never acknowledges the SYN-ACK (a spoofed
/// source) is a handshake, not a connection: not in `active`, least connections or the
/// connection limit, and gone `timeout_member_connect` after its SYN however often the
/// member retransmits its SYN-ACK.
#[test]
fn a_handshake_is_not_a_connection_until_the_client_acknowledges() {
    let cfg = include_str!("../../examples/seed.toml")
        .replace("\nretries = 3", "\nretries = 3\nconnection_limit = 1");
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let (member, _, snat) = env.open(50000);
    let m = env.member_index(member);
    let mut synack =
        Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (synack.seq, synack.ack) = (5000, 1001);
    env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!((env.active(m), env.half_open(m)), (0, 1));
    assert_eq!(env.dp.maps.listener_live.get(0).half_open, 1);
    // The handshake holds the limit of 1 while it lasts (a burst of SYNs must not pass a
    // limit that counts only connections).
    let syn = Tcp::new(CLIENT, 50002, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_DROP, reason::DROP_CONN_LIMIT);
    // The member keeps retransmitting its SYN-ACK; the handshake still ends on time.
    let mut l = env.plan.listeners[0].clone();
    l.conf.timeout_member_connect_ns = 20_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(25));
    env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    let members: Vec<u32> = env.plan.members.iter().map(|m| m.index).collect();
    let r = env.dp.sweep(&members, &[0], &[]).unwrap();
    assert_eq!(r.expired, 1, "the handshake");
    assert_eq!(env.half_open(m), 0);
    assert_eq!(env.dp.maps.listener_live.get(0).half_open, 0);
    // Now a real client gets through, and then the limit holds.
    let mut l = env.plan.listeners[0].clone();
    l.conf.timeout_member_connect_ns = 5_000_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    env.connect(50001);
    assert_eq!(env.dp.maps.listener_live.get(0).active, 1);
    env.expect(&syn.build(), XDP_DROP, reason::DROP_CONN_LIMIT);
}

/// Found by the fuzzer: a handshake closed by a RST before the client's ACK, then that ACK
/// (late, or reordered) must not make it a connection: it would stay counted for ever. The
/// RST removes the flow at once (a handshake that failed holds no slot or port), so the
/// late ACK finds none: the namespace's stack answers it.
#[test]
fn a_handshake_reset_before_its_ack_is_never_counted() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.open(47000);
    let m = env.member_index(member);
    let mut synack =
        Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (synack.seq, synack.ack) = (5000, 1001);
    env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    let mut rst = Tcp::new(CLIENT, 47000, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
    rst.seq = 1001;
    env.expect(&rst.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!((env.active(m), env.half_open(m)), (0, 0));
    assert!(env.flow(47000).is_none(), "removed with the RST");
    assert!(env.dp.maps.flows().is_empty(), "both entries");
    let mut ack = Tcp::new(CLIENT, 47000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (1001, 5001);
    env.expect(&ack.build(), XDP_PASS, reason::PASS_NO_FLOW);
    assert_eq!(
        (env.active(m), env.half_open(m)),
        (0, 0),
        "a closed flow is no connection"
    );
    assert_eq!(env.dp.maps.listener_live.get(0).active, 0);
}

/// SNAT ports come back a second after their flow closed, instead of ten, for a new flow
/// with timestamps (the member's TIME_WAIT accepts it: its timestamps follow lb's clock);
/// a SYN without timestamps still waits.
#[test]
fn a_closed_flow_gives_its_snat_port_to_a_timestamped_syn_after_a_second() {
    let Some(mut env) = Env::seed() else { return };
    env.set_member_flags(M2, |f| f & !MEMBER_F_UP);
    let ts = |v: u32| {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&v.to_be_bytes());
        o.extend_from_slice(&[0; 4]);
        o
    };
    let syn_from = |env: &mut Env, client: Ipv4Addr, opts: &[u8]| {
        let syn = Tcp::new(client, 40600, VIP, 22, TCP_SYN)
            .macs(CLIENT_MAC, PORT_MAC)
            .options(opts);
        let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
        Tcp::parse(&out).unwrap().sport
    };
    // Client A takes port 40600 (its own), connects and closes.
    assert_eq!(syn_from(&mut env, CLIENT, &ts(100)), 40600);
    env.establish_on(40600, 22);
    let mut fin = Tcp::new(CLIENT, 40600, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
    fin.seq = 1001;
    let closed = std::time::Instant::now();
    env.expect(&fin.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert!(env.flow(40600).unwrap().is_closed());
    // Within the second: another client with the same source port gets another port (two
    // runs of the program, milliseconds apart even under emulation; the message says how far).
    let b = Ipv4Addr::new(10, 0, 0, 9);
    assert_ne!(
        syn_from(&mut env, b, &ts(200)),
        40600,
        "still held {:?} after the close",
        closed.elapsed()
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Past it: without timestamps, still another port; with them, A's port.
    assert_ne!(syn_from(&mut env, Ipv4Addr::new(10, 0, 0, 11), &[]), 40600);
    assert_eq!(
        syn_from(&mut env, Ipv4Addr::new(10, 0, 0, 10), &ts(300)),
        40600
    );
    assert!(env.flow(40600).is_none(), "A's closed flow made way");
}

/// The seed with a DNS listener beside its ssh one (`with_udp_listener`), its idle timeout
/// 30 s.
fn udp_config() -> String {
    with_udp_listener(
        include_str!("../../examples/seed.toml"),
        "timeout_client_data = 30000\ntimeout_member_data = 30000\n",
    )
}

/// The UDP pool's member slot for `addr`.
fn udp_member(env: &Env, addr: Ipv4Addr) -> u32 {
    env.plan
        .members
        .iter()
        .find(|m| m.address == addr && m.pool_id == "dns-pool")
        .unwrap()
        .index
}

/// The datagram lb should emit for client datagram `d` towards `member` from SNAT port `snat`.
fn udp_to_member(d: &Udp, member: Ipv4Addr, snat: u16) -> Udp {
    Udp {
        src_mac: PORT_MAC,
        dst_mac: mac_of(member),
        src: VIP,
        dst: member,
        sport: snat,
        ..d.clone()
    }
}

#[test]
fn udp_datagrams_both_ways_exact_bytes() {
    let Some(mut env) = Env::new(&udp_config()) else {
        return;
    };
    // A query: client -> VIP:53 becomes VIP:snat -> member:53 (odd payload length).
    let q = Udp::new(CLIENT, 41000, VIP, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"\x12\x34 a query, odd");
    let out = env.expect(&q.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = Udp::parse(&out).expect("udp out");
    let member = o.dst;
    assert!(member == M1 || member == M2);
    // The client's own port first, as for TCP.
    assert_eq!(o.sport, 41000, "SNAT port");
    assert_eq!(out, udp_to_member(&q, member, 41000).build(), "query bytes");
    assert!(udp_checksums_ok(&out));
    // No handshake: a connection (least connections counts it) from the first datagram.
    let m = udp_member(&env, member);
    assert_eq!((env.active(m), env.half_open(m)), (1, 0));
    let st = env.dp.maps.member_stats(m).unwrap();
    assert_eq!(
        (st.total_connections, st.packets_in, st.bytes_in),
        (1, 1, q.build().len() as u64 - 14)
    );
    let f = env.flow_udp(41000, 53).expect("a UDP forward entry");
    assert_eq!(f.state & lb_common::CT_UDP, lb_common::CT_UDP);
    assert!(env.flow_on(41000, 53).is_none(), "not a TCP flow");

    // The same tuple again: the same flow and member, no new connection.
    let out = env.expect(&q.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(out, udp_to_member(&q, member, 41000).build());
    assert_eq!(env.active(m), 1);
    assert_eq!(env.dp.maps.member_stats(m).unwrap().total_connections, 1);

    // The answer: member:53 -> VIP:snat becomes VIP:53 -> client.
    let a = Udp::new(member, 53, VIP, 41000)
        .macs(mac_of(member), PORT_MAC)
        .payload(b"\x12\x34 the answer");
    let out = env.expect(&a.build(), XDP_TX, reason::TX_TO_CLIENT);
    let want = Udp {
        src_mac: PORT_MAC,
        dst_mac: CLIENT_MAC,
        src: VIP,
        sport: 53,
        dst: CLIENT,
        dport: 41000,
        ..a.clone()
    };
    assert_eq!(out, want.build(), "answer bytes");
    assert!(udp_checksums_ok(&out));

    // A datagram without a checksum (IPv4 allows it) is sent on without one.
    let mut bare = q.clone();
    bare.no_checksum = true;
    let out = env.expect(&bare.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(out, udp_to_member(&bare, member, 41000).build());
    assert!(Udp::parse(&out).unwrap().no_checksum);

    // Another client port: another flow, on the other member (least connections).
    let q2 = Udp::new(CLIENT, 41001, VIP, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"q2");
    let out = env.expect(&q2.build(), XDP_TX, reason::TX_TO_MEMBER);
    let other = Udp::parse(&out).unwrap().dst;
    assert_ne!(other, member, "least connections counts UDP flows");
    assert_eq!(env.active(udp_member(&env, other)), 1);

    // The TC program rewrites the same bytes, checksum or none.
    for (port, no_checksum) in [(41002, false), (41003, true)] {
        let mut d = Udp::new(CLIENT, port, VIP, 53)
            .macs(CLIENT_MAC, PORT_MAC)
            .payload(b"via tc");
        d.no_checksum = no_checksum;
        let (action, out) = env.run_program("lb_tc", &d.build());
        assert_eq!(action, 7, "TC_ACT_REDIRECT");
        let o = Udp::parse(&out).unwrap();
        assert_eq!(out, udp_to_member(&d, o.dst, port).build(), "TC bytes");
        assert_eq!(o.no_checksum, no_checksum);
    }
    // The node-side shortcut translates a known UDP flow's datagrams the same way.
    let (action, out) = env.run_program("lb_tc_fast", &q.build());
    assert_eq!(action, 7, "TC_ACT_REDIRECT");
    assert_eq!(
        out,
        udp_to_member(&q, member, 41000).build(),
        "fast path bytes"
    );
    let ls = env.dp.maps.listener_stats(1).unwrap();
    assert_eq!(
        (ls.total_connections, ls.packets_in, ls.packets_out),
        (4, 7, 1)
    );
}

#[test]
fn udp_that_is_not_balanced_or_malformed_gets_its_verdict() {
    let Some(mut env) = Env::new(&udp_config()) else {
        return;
    };
    // UDP to the TCP listener's port: not a listener of lb's (the namespace answers).
    let d = Udp::new(CLIENT, 41000, VIP, 22).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&d.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // A TCP SYN to the UDP listener's port likewise.
    let syn = Tcp::new(CLIENT, 41000, VIP, 53, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // A UDP length shorter than its header, or longer than the IPv4 packet.
    let good = Udp::new(CLIENT, 41000, VIP, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"abcd")
        .build();
    for len in [7u16, 13] {
        let mut f = good.clone();
        f[38..40].copy_from_slice(&len.to_be_bytes());
        env.expect(&f, XDP_DROP, reason::DROP_BAD_L4);
    }
    // Truncated: the IPv4 header says 8 bytes of UDP, the frame ends after 4.
    let mut f = good[..38].to_vec();
    f[16..18].copy_from_slice(&24u16.to_be_bytes());
    let c = lb_common::checksum::ipv4_header(&{
        let mut h = f[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    f[24..26].copy_from_slice(&c.to_be_bytes());
    env.expect(&f, XDP_DROP, reason::DROP_BAD_L4);
    assert_eq!(env.dp.maps.flows().len(), 0, "no flow opened");
}

#[test]
fn icmp_errors_about_udp_flows_are_translated_both_ways() {
    let Some(mut env) = Env::new(&udp_config()) else {
        return;
    };
    let q = Udp::new(CLIENT, 42000, VIP, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(&[0x5a; 40]);
    let from_client = q.build();
    let to_member = env.expect(&from_client, XDP_TX, reason::TX_TO_MEMBER);
    let member = Udp::parse(&to_member).unwrap().dst;
    // The member's port is closed: its port unreachable reaches the client about the
    // datagram the client sent (8 bytes of UDP, or all of it).
    for embedded_len in [28, from_client.len() - 14] {
        let unreachable = icmp_error(
            mac_of(member),
            PORT_MAC,
            member,
            VIP,
            3,
            3,
            [0; 4],
            &to_member[14..14 + embedded_len],
        );
        let out = env.expect(&unreachable, XDP_TX, reason::TX_ICMP_TO_CLIENT);
        let want = icmp_error(
            PORT_MAC,
            CLIENT_MAC,
            VIP,
            CLIENT,
            3,
            3,
            [0; 4],
            &from_client[14..14 + embedded_len],
        );
        assert_eq!(
            out, want,
            "port unreachable to the client, {embedded_len} bytes embedded"
        );
    }
    // The client's port is closed when the answer comes: its error reaches the member about
    // the answer the member sent.
    let a = Udp::new(member, 53, VIP, 42000)
        .macs(mac_of(member), PORT_MAC)
        .payload(b"late answer");
    let from_member = a.build();
    let to_client = env.expect(&from_member, XDP_TX, reason::TX_TO_CLIENT);
    let unreachable = icmp_error(
        CLIENT_MAC,
        PORT_MAC,
        CLIENT,
        VIP,
        3,
        3,
        [0; 4],
        &to_client[14..],
    );
    let out = env.expect(&unreachable, XDP_TX, reason::TX_ICMP_TO_MEMBER);
    let want = icmp_error(
        PORT_MAC,
        mac_of(member),
        VIP,
        member,
        3,
        3,
        [0; 4],
        &from_member[14..],
    );
    assert_eq!(out, want, "port unreachable to the member");
}

#[test]
fn udp_flows_end_at_the_idle_timeout_or_when_their_member_goes() {
    let Some(mut env) = Env::new(&udp_config()) else {
        return;
    };
    for port in 43000..43004 {
        let d = Udp::new(CLIENT, port, VIP, 53).macs(CLIENT_MAC, PORT_MAC);
        env.expect(&d.build(), XDP_TX, reason::TX_TO_MEMBER);
    }
    let members: Vec<u32> = [M1, M2].iter().map(|&a| udp_member(&env, a)).collect();
    let total = |env: &Env| members.iter().map(|&m| env.active(m)).sum::<i64>();
    assert_eq!(total(&env), 4);
    // A TCP connection to M1 (the ssh pool's M2 down while it opens).
    env.set_member_flags(M2, |f| f & !MEMBER_F_UP);
    assert_eq!(env.connect(43100).0, M1);
    env.set_member_flags(M2, |f| f | MEMBER_F_UP);
    let tcp_m1 = env.member_index(M1);
    let census: Vec<u32> = members.iter().copied().chain([tcp_m1]).collect();
    // Within the timeout: kept and counted.
    let r = env.dp.sweep(&census, &[0, 1], &[]).unwrap();
    assert_eq!((r.flows, r.expired, r.corrected), (5, 0, 0));
    // M1 goes down (in both pools): its UDP flows end at the next cycle (the client's next
    // datagram opens a flow to M2); its TCP connection carries on.
    env.set_member_flags(M1, |f| f & !MEMBER_F_UP);
    let m1 = udp_member(&env, M1);
    let mut c = env.dp.maps.member(m1).unwrap();
    c.flags &= !MEMBER_F_UP;
    env.dp.maps.set_member(m1, c).unwrap();
    let r = env.dp.sweep(&census, &[0, 1], &[]).unwrap();
    assert_eq!((r.flows, r.expired), (5, 2));
    assert_eq!((env.active(m1), env.active(udp_member(&env, M2))), (0, 2));
    assert!(env.flow(43100).is_some(), "the TCP flow to M1 stays");
    assert_eq!(env.active(tcp_m1), 1);
    let d = Udp::new(CLIENT, 43000, VIP, 53).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&d.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(Udp::parse(&out).unwrap().dst, M2);
    // Idle past the timeout: gone, both entries, and no longer counted.
    let mut l = env.plan.listeners[1].clone();
    l.conf.timeout_data_ns = 1_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = env.dp.sweep(&census, &[0, 1], &[]).unwrap();
    assert_eq!((r.flows, r.expired), (4, 3));
    assert_eq!(total(&env), 0);
    assert_eq!(env.dp.maps.listener_live.get(1).active, 0);
    assert_eq!(
        env.dp.maps.flows().len(),
        2,
        "only the TCP flow's two entries"
    );
}

/// The connection log's ring when its reader falls behind: each connection that ends is one
/// event while the ring has room; past that, each is lost and counted for its listener
/// (`connection_log_lost`), never waited for; once drained, the next is recorded again.
#[test]
fn a_full_connection_log_ring_loses_events_and_counts_each() {
    let config = format!(
        "[daemon]\nconnection_log = \"stderr daemon\"\n\n{}",
        include_str!("../../examples/seed.toml")
    );
    let Some(mut env) = Env::logging(&config, 16384) else {
        return;
    };
    let mut ring = env.dp.take_conn_log().expect("the connection log's ring");
    // A record is the event and the ring's 8-byte header, 8-byte aligned.
    let record = (std::mem::size_of::<lb_common::ConnEvent>() + 8).div_ceil(8) * 8;
    let fits = lb_common::CONN_LOG_BYTES as usize / record;
    let close = |env: &mut Env, port: u16| {
        env.connect(port);
        let mut rst = Tcp::new(CLIENT, port, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
        rst.seq = 1001;
        env.expect(&rst.build(), XDP_TX, reason::TX_TO_MEMBER);
    };
    let n = fits + 100;
    for i in 0..n {
        close(&mut env, 20000 + i as u16);
    }
    let lost = env.dp.maps.conn_log_lost(0).unwrap();
    let mut read = 0usize;
    while let Some(e) = ring.next() {
        assert_eq!(e.len(), std::mem::size_of::<lb_common::ConnEvent>());
        read += 1;
    }
    eprintln!("CONNLOG {n} connections ended: {read} events in the ring, {lost} lost");
    assert_eq!(
        read as u64 + lost,
        n as u64,
        "every end is an event or a loss"
    );
    assert_eq!(read, fits, "the ring held what fits");
    assert_eq!(lost, 100);
    // Drained: the next connection's end is an event again, and nothing more is lost.
    close(&mut env, 19999);
    assert!(ring.next().is_some(), "recorded after the drain");
    assert_eq!(env.dp.maps.conn_log_lost(0).unwrap(), 100);
}

/// The persistence table when more clients come than it holds (`STICKY_ENTRIES`): the
/// kernel's LRU hash evicts to make room, so every new client is remembered (none refused),
/// the table never holds more than its size, and a client that keeps coming back keeps its
/// entry and its member while one-time clients churn through (the LRU keeps entries looked
/// up again ahead of entries never looked up again).
#[test]
fn a_full_persistence_table_evicts_one_time_clients_first() {
    let cfg = include_str!("../../examples/seed.toml")
        .replace(
            "lb_algorithm = \"LEAST_CONNECTIONS\"",
            "lb_algorithm = \"LEAST_CONNECTIONS\"\nsession_persistence = { type = \"SOURCE_IP\", persistence_timeout = 600 }",
        )
        .replace("\nretries = 3 ", "\nhalf_open_limit = -1\nretries = 3 ");
    let n = lb_common::STICKY_ENTRIES + lb_common::STICKY_ENTRIES / 4;
    let Some(mut env) = Env::with_capacity(&cfg, 2 * n.next_power_of_two()) else {
        return;
    };
    let pin = env.pin_dir().join("STICKY");
    let client = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i);
    let returning = Ipv4Addr::new(192, 168, 9, 9);
    let mut port = 20_000u16;
    let mut next_port = || {
        port += 1;
        port
    };
    let home = open_from(&mut env, returning, next_port());
    for i in 0..n {
        open_from(&mut env, client(i), 30_000);
        if i % 512 == 0 {
            assert_eq!(
                open_from(&mut env, returning, next_port()),
                home,
                "the returning client's member after {i} others"
            );
        }
    }
    let data = aya::maps::MapData::from_pin(&pin).expect("STICKY");
    let table = aya::maps::HashMap::<_, lb_common::StickyKey, lb_common::Sticky>::try_from(
        aya::maps::Map::LruHashMap(data),
    )
    .expect("an LRU hash");
    let keys: Vec<lb_common::StickyKey> = table.keys().map(|k| k.unwrap()).collect();
    let held = |a: Ipv4Addr| keys.iter().any(|k| k.client_be == u32::from(a).to_be());
    eprintln!(
        "STICKY {} entries after {} clients (table of {})",
        keys.len(),
        n + 1,
        lb_common::STICKY_ENTRIES
    );
    assert!(keys.len() <= lb_common::STICKY_ENTRIES as usize);
    assert!(held(returning), "the returning client kept its entry");
    let newest = (n - 64..n).filter(|&i| held(client(i))).count();
    assert_eq!(newest, 64, "the newest clients are remembered");
    let oldest = (0..lb_common::STICKY_ENTRIES / 4)
        .filter(|&i| held(client(i)))
        .count();
    assert!(
        oldest < (lb_common::STICKY_ENTRIES / 4) as usize,
        "some of the oldest one-time clients made room: {oldest} still held"
    );
    assert_eq!(open_from(&mut env, returning, next_port()), home);
}

/// `lb_tc_fast` keeps a drop a drop: a member's RST refusing a SYN is kept from the client
/// (its next SYN goes elsewhere) by the shortcut as by the port's program, and counted as
/// the port's program counts it, instead of being redirected into the bridge as the member
/// sent it (a learning bridge would then move the member's MAC to the port).
#[test]
fn the_shortcut_drops_what_the_port_drops() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.open(51500);
    let mut rst = Tcp::new(member, 22, VIP, snat, TCP_RST | TCP_ACK).macs(mac_of(member), PORT_MAC);
    rst.ack = 1001;
    let before = env.verdicts();
    let (a, out) = env.run_program("lb_tc_fast", &rst.build());
    assert_eq!((a, out), (TC_ACT_SHOT, rst.build()), "shot, untouched");
    let after = env.verdicts();
    for (i, (b, n)) in before.iter().zip(&after).enumerate() {
        let want = b + (i as u32 == reason::DROP_REFUSED) as u64;
        assert_eq!(*n, want, "verdict counter {}", reason::NAMES[i]);
    }
    assert_ne!(env.flow(51500).unwrap().state & lb_common::CT_REFUSED, 0);
    assert_eq!(
        env.dp
            .maps
            .member_live
            .get(env.member_index(member))
            .failures,
        1
    );
}

/// Handshakes in progress count against `connection_limit` and `maxconn`: a burst of SYNs
/// within one round trip does not pass a limit that counted only connections.
#[test]
fn a_burst_of_syns_does_not_overshoot_the_limits() {
    let seed = include_str!("../../examples/seed.toml");
    for (cfg, what) in [
        (
            seed.replace("\nretries = 3", "\nretries = 3\nconnection_limit = 3"),
            "the listener's connection_limit",
        ),
        (
            seed.replace(
                "\nvip_prefixlen = 24",
                "\nvip_prefixlen = 24\nconnection_limit = 3",
            ),
            "the load balancer's connection_limit (maxconn)",
        ),
    ] {
        let Some(mut env) = Env::new(&cfg) else {
            return;
        };
        let mut refused = 0;
        for p in 52000..52010 {
            let syn = Tcp::new(CLIENT, p, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
            let (a, _) = env.run(&syn.build());
            refused += (a == XDP_DROP) as u32;
        }
        assert_eq!(refused, 7, "{what}: 3 handshakes, 7 refused");
        assert_eq!(
            env.dp.maps.listener_drops(0).unwrap()[reason::DROP_CONN_LIMIT as usize],
            7
        );
    }
}

/// UDP admission: a UDP listener holds at most its share of the table (`flow_limit`;
/// default: half the table shared among the UDP listeners) and opens at most `flow_rate` new
/// flows a second, the excess dropped and counted per listener; its flows do not count in
/// the load balancer's `maxconn`, so a UDP flood leaves the TCP listener its connections; a
/// flow the member never answered ends after the connect timeout, one it answered after the
/// data timeout.
#[test]
fn udp_floods_are_bounded_per_listener() {
    let cfg = udp_config()
        .replace(
            "\nvip_prefixlen = 24",
            "\nvip_prefixlen = 24\nconnection_limit = 2",
        )
        .replace(
            "timeout_client_data = 30000\n",
            "timeout_client_data = 30000\nflow_limit = 4\nflow_rate = 0\n",
        );
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    let dns = env
        .plan
        .listeners
        .iter()
        .find(|l| l.id == "dns")
        .unwrap()
        .index;
    let datagram = |port: u16| {
        Udp::new(CLIENT, port, VIP, 53)
            .macs(CLIENT_MAC, PORT_MAC)
            .payload(b"query")
            .build()
    };
    for p in 43000..43004 {
        env.expect(&datagram(p), XDP_TX, reason::TX_TO_MEMBER);
    }
    // Its 4 flows are its share: the fifth source port is dropped.
    env.expect(&datagram(43004), XDP_DROP, reason::DROP_UDP_LIMIT);
    // UDP flows are not the load balancer's connections: its maxconn of 2 is free for ssh.
    env.connect(43100);
    env.connect(43101);
    let syn = Tcp::new(CLIENT, 43102, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&syn.build(), XDP_DROP, reason::DROP_CONN_LIMIT);

    // The member answers flow 43000; the others stay unanswered and end after the connect
    // timeout (here 20 ms), the answered one after the data timeout.
    let f = env.flow_udp(43000, 53).unwrap();
    let (member, snat) = (
        Ipv4Addr::from(u32::from_be(f.member_be)),
        u16::from_be(f.snat_port_be),
    );
    let answer = Udp::new(member, 53, VIP, snat)
        .macs(mac_of(member), PORT_MAC)
        .payload(b"answer");
    env.expect(&answer.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_ne!(
        env.flow_udp(43000, 53).unwrap().state & lb_common::CT_ANSWERED,
        0
    );
    let mut l = env
        .plan
        .listeners
        .iter()
        .find(|l| l.id == "dns")
        .unwrap()
        .clone();
    l.conf.timeout_member_connect_ns = 20_000_000;
    env.dp.maps.set_planned_listener(&l).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let members: Vec<u32> = env.plan.members.iter().map(|m| m.index).collect();
    let r = env.dp.sweep(&members, &[0, dns], &[]).unwrap();
    assert_eq!(r.expired, 3, "the three unanswered flows");
    assert!(env.flow_udp(43000, 53).is_some(), "the answered one stays");
    assert_eq!(env.dp.maps.listener_live.get(dns).active, 1);

    // Room again: three more, then the share is full again.
    for p in 43010..43013 {
        env.expect(&datagram(p), XDP_TX, reason::TX_TO_MEMBER);
    }
    env.expect(&datagram(43013), XDP_DROP, reason::DROP_UDP_LIMIT);
    let drops = env.dp.maps.listener_drops(dns).unwrap();
    assert_eq!(drops[reason::DROP_UDP_LIMIT as usize], 2);

    // The rate: 3 new flows a second, the fourth dropped (within the second).
    let cfg = udp_config().replace(
        "timeout_client_data = 30000\n",
        "timeout_client_data = 30000\nflow_rate = 3\n",
    );
    let Some(mut env) = Env::new(&cfg) else {
        return;
    };
    for p in 43200..43203 {
        env.expect(&datagram(p), XDP_TX, reason::TX_TO_MEMBER);
    }
    env.expect(&datagram(43203), XDP_DROP, reason::DROP_UDP_RATE);
    // A known flow is no new flow: its datagrams still pass.
    env.expect(&datagram(43200), XDP_TX, reason::TX_TO_MEMBER);
    // The default share: half of the fixture's 1024-flow table for its one UDP listener.
    let l = env.plan.listeners.iter().find(|l| l.id == "dns").unwrap();
    assert_eq!(env.dp.maps.listener_conf(l).unwrap().flow_limit, 512);
}

/// A member caches one path MTU towards the VIP for every client, so a "fragmentation
/// needed" going to a member is honoured only about data the client has not acknowledged
/// yet (a blind sender cannot forge one) and for at least 1280 bytes: one client cannot
/// take every member's segments down to 552 bytes for everyone. Other errors pass as before.
#[test]
fn fragmentation_needed_towards_a_member_is_checked() {
    let Some(mut env) = Env::seed() else { return };
    let (member, _, snat) = env.connect(49200);
    let mut reply = Tcp::new(member, 22, VIP, snat, TCP_ACK | TCP_PSH)
        .macs(mac_of(member), PORT_MAC)
        .payload(&[0x42; 1400]);
    (reply.seq, reply.ack) = (5001, 1001);
    let from_member = reply.build();
    let to_client = env.expect(&from_member, XDP_TX, reason::TX_TO_CLIENT);
    let router = Ipv4Addr::new(10, 0, 0, 1);
    let frag_needed = |mtu: u16| {
        let m = mtu.to_be_bytes();
        icmp_error(
            CLIENT_MAC,
            PORT_MAC,
            router,
            VIP,
            3,
            4,
            [0, 0, m[0], m[1]],
            &to_client[14..14 + 28],
        )
    };
    // Below the floor: dropped, the frame untouched.
    env.expect(&frag_needed(1000), XDP_DROP, reason::DROP_ICMP_UNVERIFIED);
    // About unacknowledged data, at 1400: to the member, translated.
    let out = env.expect(&frag_needed(1400), XDP_TX, reason::TX_ICMP_TO_MEMBER);
    let want = icmp_error(
        PORT_MAC,
        mac_of(member),
        VIP,
        member,
        3,
        4,
        [0, 0, 0x05, 0x78],
        &from_member[14..14 + 28],
    );
    assert_eq!(out, want);
    // Once the client acknowledged that data, an error about it is no one's: dropped.
    let mut ack = Tcp::new(CLIENT, 49200, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack, ack.win) = (1001, 6401, 2000);
    env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
    env.expect(&frag_needed(1400), XDP_DROP, reason::DROP_ICMP_UNVERIFIED);
    let drops = env.dp.maps.listener_drops(0).unwrap();
    assert_eq!(
        drops[reason::DROP_ICMP_UNVERIFIED as usize],
        0,
        "not a listener's"
    );
    // A time exceeded about the same segment still reaches the member.
    let exceeded = icmp_error(
        CLIENT_MAC,
        PORT_MAC,
        router,
        VIP,
        11,
        0,
        [0; 4],
        &to_client[14..14 + 28],
    );
    env.expect(&exceeded, XDP_TX, reason::TX_ICMP_TO_MEMBER);
}
