//! Tier 2 for IPv6: the IPv6 programs (`lb6`, `lb_tc6`, entered from `lb` and `lb_tc` by a
//! tail call) under BPF_PROG_TEST_RUN, with exact output bytes, as `xdp_fixtures.rs` does
//! for IPv4.

use std::net::Ipv6Addr;

use integration_tests::{fixture::*, *};
use lb_common::reason;

fn env() -> Option<Env> {
    Env::new6(&ipv6_config(""))
}

/// What lb sends a member for client frame `t`: VIP6:snat -> member, port MAC -> member's.
fn to_member6(t: &L4v6, member: Ipv6Addr, snat: u16) -> L4v6 {
    L4v6 {
        src_mac: PORT_MAC,
        dst_mac: mac_of6(member),
        src: VIP6,
        dst: member,
        sport: snat,
        ..t.clone()
    }
}

/// What lb sends the client for member frame `t`.
fn to_client6(t: &L4v6, listener: u16, client_port: u16) -> L4v6 {
    L4v6 {
        src_mac: PORT_MAC,
        dst_mac: CLIENT_MAC,
        src: VIP6,
        sport: listener,
        dst: CLIENT6,
        dport: client_port,
        ..t.clone()
    }
}

fn member_slot(env: &Env, id: &str) -> u32 {
    env.plan.members.iter().find(|m| m.id == id).unwrap().index
}

#[test]
fn a_tcp_flow_over_ipv6_exact_bytes() {
    let Some(mut env) = env() else { return };
    let syn = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = L4v6::parse(&out).expect("IPv6 out");
    let member = o.dst;
    assert!(member == M16 || member == M26, "{member}");
    assert_eq!(o.sport, 40000, "the client's port first");
    assert_eq!(out, to_member6(&syn, member, 40000).build(), "SYN bytes");
    assert!(checksum6_ok(&out));
    let m = member_slot(&env, if member == M16 { "s1" } else { "s2" });
    assert_eq!((env.active(m), env.half_open(m)), (0, 1));

    let mut synack =
        L4v6::tcp(member, 22, VIP6, 40000, TCP_SYN | TCP_ACK).macs(mac_of6(member), PORT_MAC);
    synack.seq = 5000;
    synack.ack = 1001;
    let out = env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(out, to_client6(&synack, 22, 40000).build(), "SYN-ACK bytes");

    let mut ack = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_ACK)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"SSH-2.0-x\r\n!");
    ack.seq = 1001;
    ack.ack = 5001;
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_eq!(out, to_member6(&ack, member, 40000).build(), "data bytes");
    assert!(checksum6_ok(&out));
    assert_eq!(
        (env.active(m), env.half_open(m)),
        (1, 0),
        "a connection now"
    );

    // The TC program (entered through lb_tc's tail call) writes the same bytes.
    let (action, out) = env.run_program("lb_tc", &ack.build());
    assert_eq!(action, 7, "TC_ACT_REDIRECT");
    assert_eq!(out, to_member6(&ack, member, 40000).build(), "TC bytes");

    let mut fin = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    fin.seq = 1013;
    env.expect(&fin.build(), XDP_TX, reason::TX_TO_MEMBER);
    let mut finack =
        L4v6::tcp(member, 22, VIP6, 40000, TCP_FIN | TCP_ACK).macs(mac_of6(member), PORT_MAC);
    finack.seq = 5001;
    finack.ack = 1014;
    env.expect(&finack.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(env.active(m), 0, "both FINs: closed");
    let flows = env.dp.maps.flows6();
    assert_eq!(flows.len(), 2, "forward and reverse entries in CONNTRACK6");
    assert!(env.dp.maps.flows().is_empty(), "nothing in the IPv4 table");
    let st = env.dp.maps.member_stats(m).unwrap();
    assert_eq!(
        (st.total_connections, st.packets_in, st.packets_out),
        (1, 4, 2)
    );
}

#[test]
fn a_udp_flow_over_ipv6_exact_bytes() {
    let Some(mut env) = env() else { return };
    let q = L4v6::udp(CLIENT6, 41000, VIP6, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"\x12\x34 a query, odd");
    let out = env.expect(&q.build(), XDP_TX, reason::TX_TO_MEMBER);
    let member = L4v6::parse(&out).unwrap().dst;
    assert_eq!(out, to_member6(&q, member, 41000).build(), "query bytes");
    assert!(checksum6_ok(&out));
    let m = member_slot(&env, if member == M16 { "d1" } else { "d2" });
    assert_eq!(
        env.active(m),
        1,
        "a UDP flow is a connection from its first datagram"
    );
    let a = L4v6::udp(member, 53, VIP6, 41000)
        .macs(mac_of6(member), PORT_MAC)
        .payload(b"an answer");
    let out = env.expect(&a.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(out, to_client6(&a, 53, 41000).build(), "answer bytes");
    assert!(checksum6_ok(&out));
    // A second client port: the other member.
    let q2 = L4v6::udp(CLIENT6, 41001, VIP6, 53).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&q2.build(), XDP_TX, reason::TX_TO_MEMBER);
    assert_ne!(L4v6::parse(&out).unwrap().dst, member);
    let (action, out) = env.run_program("lb_tc", &q.build());
    assert_eq!(action, 7);
    assert_eq!(out, to_member6(&q, member, 41000).build(), "TC bytes");
}

/// A hop-by-hop header and a destination options header (PadN), 8 bytes each.
fn options_headers() -> Vec<(u8, Vec<u8>)> {
    vec![
        (0, vec![0, 0, 1, 4, 0, 0, 0, 0]),
        (60, vec![0, 0, 1, 4, 0, 0, 0, 0]),
    ]
}

#[test]
fn ipv6_extension_headers_are_walked_and_kept() {
    let Some(mut env) = env() else { return };
    let mut syn = L4v6::tcp(CLIENT6, 40100, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    syn.ext = options_headers();
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    // The member's address is where the header puts it; the options stay as they were.
    let member = Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap());
    assert_eq!(
        out,
        to_member6(&syn, member, 40100).build(),
        "bytes with options"
    );

    // A first fragment of a datagram to the listener: no reassembly, dropped and counted.
    let mut frag = L4v6::udp(CLIENT6, 41100, VIP6, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(&[1; 16]);
    frag.ext = vec![(44, vec![0, 0, 0, 1, 0, 0, 0, 7])];
    env.expect(&frag.build(), XDP_DROP, reason::DROP_FRAGMENT);
    // A later fragment carries no ports: the kernel's.
    frag.ext = vec![(44, vec![0, 0, 0, 0x10, 0, 0, 0, 7])];
    env.expect(&frag.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
}

#[test]
fn ipv6_that_is_not_balanced_or_malformed_gets_its_verdict() {
    let Some(mut env) = env() else { return };
    // Neighbour solicitation for the VIP: ICMPv6, the kernel's.
    let ns = neighbour_solicitation6();
    env.expect(&ns, XDP_PASS, reason::PASS_NOT_BALANCED);
    // TCP to a port without a listener; UDP to the TCP listener's port.
    let other = L4v6::tcp(CLIENT6, 40000, VIP6, 2222, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&other.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    let udp22 = L4v6::udp(CLIENT6, 40000, VIP6, 22).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&udp22.build(), XDP_PASS, reason::PASS_NOT_BALANCED);
    // A stray ACK for the listener: the namespace answers it.
    let stray = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&stray.build(), XDP_PASS, reason::PASS_NO_FLOW);
    // Truncated header, version 4 in an IPv6 frame, payload length past the frame.
    let good = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .build();
    env.expect(&good[..40], XDP_DROP, reason::DROP_BAD_IPV6);
    let mut v4 = good.clone();
    v4[14] = 0x40;
    env.expect(&v4, XDP_DROP, reason::DROP_BAD_IPV6);
    let mut long = good.clone();
    long[18..20].copy_from_slice(&100u16.to_be_bytes());
    env.expect(&long, XDP_DROP, reason::DROP_BAD_IPV6);
    // A TCP data offset under 5.
    let mut doff = good.clone();
    doff[54 + 12] = 4 << 4;
    env.expect(&doff, XDP_DROP, reason::DROP_BAD_L4);
    assert!(env.dp.maps.flows6().is_empty());
}

#[test]
fn allowed_cidrs_over_ipv6() {
    let Some(mut env) = Env::new6(&ipv6_config(r#"allowed_cidrs = ["2001:db8::/126"]"#)) else {
        return;
    };
    // 2001:db8::1 is inside ::/126; 2001:db8::1:1 is not.
    let inside = L4v6::tcp(CLIENT6, 40000, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&inside.build(), XDP_TX, reason::TX_TO_MEMBER);
    let far = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 1);
    let outside = L4v6::tcp(far, 40000, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&outside.build(), XDP_DROP, reason::DROP_NOT_ALLOWED);
}

#[test]
fn ipv6_flows_expire_and_counters_return_to_zero() {
    let Some(mut env) = env() else { return };
    for p in 43000..43004 {
        let d = L4v6::udp(CLIENT6, p, VIP6, 53).macs(CLIENT_MAC, PORT_MAC);
        env.expect(&d.build(), XDP_TX, reason::TX_TO_MEMBER);
    }
    let members: Vec<u32> = ["d1", "d2"]
        .iter()
        .map(|id| member_slot(&env, id))
        .collect();
    let total = |env: &Env| members.iter().map(|&m| env.active(m)).sum::<i64>();
    assert_eq!(total(&env), 4);
    let r = env.dp.sweep(&members, &[1], &[]).unwrap();
    assert_eq!((r.flows, r.expired), (4, 0));
    let mut l = env.plan.listeners[1].clone();
    l.conf.timeout_data_ns = 1_000_000;
    env.dp.maps.set_planned_listener(&l).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = env.dp.sweep(&members, &[1], &[]).unwrap();
    assert_eq!((r.flows, r.expired), (4, 4));
    assert_eq!(total(&env), 0);
    assert!(env.dp.maps.flows6().is_empty());
}

#[test]
fn ipv6_packet_too_big_reaches_the_client_translated() {
    let Some(mut env) = env() else { return };
    let syn = L4v6::tcp(CLIENT6, 49000, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let out = env.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    let member = L4v6::parse(&out).unwrap().dst;
    let mut data = L4v6::tcp(CLIENT6, 49000, VIP6, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(&[7u8; 100]);
    data.seq = 1001;
    let from_client = data.build();
    let to_member = env.expect(&from_client, XDP_TX, reason::TX_TO_MEMBER);
    // A router on the member's side (or the member itself) cannot forward it: Packet Too
    // Big, MTU 1280, to the VIP, embedding what lb sent (48 bytes of it, or all).
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
    for (from, embedded_len) in [(router, 48), (member, to_member.len() - 14)] {
        let ptb = icmp6_error(
            mac_of6(member),
            PORT_MAC,
            from,
            VIP6,
            2,
            0,
            1280u32.to_be_bytes(),
            &to_member[14..14 + embedded_len],
        );
        let out = env.expect(&ptb, XDP_TX, reason::TX_ICMP_TO_CLIENT);
        // To the client, from the VIP, about the segment the client sent.
        let want = icmp6_error(
            PORT_MAC,
            CLIENT_MAC,
            VIP6,
            CLIENT6,
            2,
            0,
            1280u32.to_be_bytes(),
            &from_client[14..14 + embedded_len],
        );
        assert_eq!(
            out, want,
            "Packet Too Big to the client, {embedded_len} bytes embedded"
        );
        // The TC program likewise.
        let (action, out) = env.run_program("lb_tc", &ptb);
        assert_eq!((action, &out), (7, &want), "TC");
    }
}

#[test]
fn ipv6_icmp_errors_from_the_client_side_reach_the_member() {
    let Some(mut env) = env() else { return };
    let q = L4v6::udp(CLIENT6, 42000, VIP6, 53)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(b"query");
    let out = env.expect(&q.build(), XDP_TX, reason::TX_TO_MEMBER);
    let member = L4v6::parse(&out).unwrap().dst;
    let a = L4v6::udp(member, 53, VIP6, 42000)
        .macs(mac_of6(member), PORT_MAC)
        .payload(b"late answer");
    let from_member = a.build();
    let to_client = env.expect(&from_member, XDP_TX, reason::TX_TO_CLIENT);
    // The client's port is closed: port unreachable (type 1, code 4) about the answer.
    let unreachable = icmp6_error(
        CLIENT_MAC,
        PORT_MAC,
        CLIENT6,
        VIP6,
        1,
        4,
        [0; 4],
        &to_client[14..],
    );
    let out = env.expect(&unreachable, XDP_TX, reason::TX_ICMP_TO_MEMBER);
    let want = icmp6_error(
        PORT_MAC,
        mac_of6(member),
        VIP6,
        member,
        1,
        4,
        [0; 4],
        &from_member[14..],
    );
    assert_eq!(out, want, "port unreachable to the member");
    // Errors about traffic lb did not send, and ICMPv6 that is not an error, pass.
    let stray = icmp6_error(
        CLIENT_MAC,
        PORT_MAC,
        CLIENT6,
        VIP6,
        1,
        4,
        [0; 4],
        &L4v6::udp(VIP6, 53, CLIENT6, 1).build()[14..],
    );
    env.expect(&stray, XDP_PASS, reason::PASS_NOT_BALANCED);
}

/// MSS 1440, SACK permitted, timestamps, window scale 7: what Linux puts in an IPv6 SYN.
const LINUX_SYN6_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xa0, 4, 2, 8, 10, 0, 0, 0x10, 0, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// An IPv6 listener past its half-open budget (0: every SYN).
fn cookie_env() -> Option<Env> {
    Env::new6(&ipv6_config("half_open_limit = 0"))
}

fn syn6(port: u16) -> L4v6 {
    let mut s = L4v6::tcp(CLIENT6, port, VIP6, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .options(&LINUX_SYN6_OPTIONS);
    s.seq = 7000;
    s
}

/// Runs the SYN through `program` and checks the SYN-ACK `lb6_cookie` made of it; returns
/// the cookie.
fn cookie6_of(env: &mut Env, program: &str, port: u16) -> u32 {
    let (action, out) = env.run_program(program, &syn6(port).build());
    let want = if program == "lb" { XDP_TX } else { 7 };
    assert_eq!(
        action, want,
        "{program}: the SYN-ACK goes back out of the port"
    );
    assert!(checksum6_ok(&out), "{program}: SYN-ACK checksum");
    let o = L4v6::parse(&out).expect("an IPv6 TCP frame");
    assert_eq!(out.len(), 14 + 40 + 24);
    assert_eq!(&out[14..22], &[0x60, 0, 0, 0, 0, 24, 6, 64], "IPv6 header");
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src, o.dst, o.sport, o.dport),
        (PORT_MAC, CLIENT_MAC, VIP6, CLIENT6, 22, port)
    );
    assert_eq!((o.flags, o.ack, o.win), (TCP_SYN | TCP_ACK, 7001, 65535));
    assert_eq!(
        o.options,
        vec![2, 4, 0x05, 0xa0],
        "MSS only (the cookie's 1440)"
    );
    assert!(o.payload.is_empty());
    // Exact bytes: the fields above, and the rest as the builder writes them (traffic
    // class and flow label 0, hop limit 64, lengths, checksum).
    assert_eq!(out, o.build(), "SYN-ACK bytes");
    o.seq
}

/// SYN cookies for an IPv6 listener (`lb6` -> `lb6_cookie` by tail call): past the budget a
/// SYN is answered with the kernel's IPv6 cookie and nothing is kept; the ACK carrying it
/// opens the flow and becomes lb's SYN to the member; the member's SYN-ACK becomes lb's ACK;
/// then sequence numbers are translated both ways, exact bytes.
#[test]
fn ipv6_syn_cookies_past_the_budget() {
    let Some(mut env) = cookie_env() else { return };
    let cookie = cookie6_of(&mut env, "lb", 46000);
    assert_eq!(env.verdicts()[reason::TX_SYNCOOKIE as usize], 1);
    assert!(env.dp.maps.flows6().is_empty(), "a cookie keeps no flow");
    let tc = cookie6_of(&mut env, "lb_tc", 46000);
    assert_eq!(cookie, tc, "one tuple, one cookie, XDP or TC");

    // A wrong cookie: not lb's, the namespace's stack answers it. (Not cookie + 2: the low
    // bits are the MSS's index, and IPv6's table has a fourth entry above 1440.)
    let mut bad = L4v6::tcp(CLIENT6, 46000, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (bad.seq, bad.ack) = (7001, cookie.wrapping_add(1000));
    env.expect(&bad.build(), XDP_PASS, reason::PASS_NO_FLOW);
    assert!(env.dp.maps.flows6().is_empty());

    // The client's ACK of the cookie: the flow opens, the frame becomes lb's SYN.
    let mut ack = L4v6::tcp(CLIENT6, 46000, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack, ack.win) = (7001, cookie.wrapping_add(1), 502);
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert!(checksum6_ok(&out), "SYN to the member: checksum");
    let o = L4v6::parse(&out).unwrap();
    let (member, snat) = (o.dst, o.sport);
    assert!(member == M16 || member == M26, "{member}");
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src),
        (PORT_MAC, mac_of6(member), VIP6)
    );
    assert_eq!((o.flags, o.seq, o.ack, o.win), (TCP_SYN, 7000, 0, 502));
    assert_eq!(
        o.options,
        vec![2, 4, 0x05, 0xa0],
        "the MSS the cookie encodes (the client's 1440)"
    );
    assert_eq!(out, o.build(), "SYN bytes");
    let m = member_slot(&env, if member == M16 { "s1" } else { "s2" });
    assert_eq!((env.half_open(m), env.active(m)), (1, 0));
    let flows = env.dp.maps.flows6();
    assert_eq!(flows.len(), 2, "forward and reverse entries");
    assert!(flows
        .iter()
        .all(|(_, f)| f.state & lb_common::CT_COOKIE != 0));

    // Repeated before the member answered: the same SYN again. Data waits (dropped: the
    // client sends it again) and repeats the SYN too.
    let again = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert_eq!(again, out);
    let data = L4v6 {
        flags: TCP_ACK | TCP_PSH,
        payload: b"SSH-2.0-x\r\n".to_vec(),
        ..ack.clone()
    };
    let again = env.expect(&data.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert_eq!(again, out);

    // The member's SYN-ACK becomes lb's ACK to the member: established.
    let mut synack = L4v6::tcp(member, 22, VIP6, snat, TCP_SYN | TCP_ACK)
        .macs(mac_of6(member), PORT_MAC)
        .options(&[2, 4, 0x05, 0xa0]);
    (synack.seq, synack.ack) = (90_000, 7001);
    let out = env.expect(&synack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert!(checksum6_ok(&out), "ACK to the member: checksum");
    let o = L4v6::parse(&out).unwrap();
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src, o.dst, o.sport, o.dport),
        (PORT_MAC, mac_of6(member), VIP6, member, snat, 22)
    );
    assert_eq!((o.flags, o.seq, o.ack, o.win), (TCP_ACK, 7001, 90_001, 502));
    assert_eq!(o.options, vec![1, 1, 1, 1]);
    assert_eq!(out, o.build(), "ACK bytes");
    assert_eq!((env.half_open(m), env.active(m)), (0, 1));

    // Data both ways, the member's numbers translated to the cookie's.
    let out = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    let mut want = to_member6(&data, member, snat);
    want.ack = 90_001;
    assert_eq!(
        out,
        want.build(),
        "client data, acknowledging in the member's numbers"
    );
    let mut reply = L4v6::tcp(member, 22, VIP6, snat, TCP_ACK | TCP_PSH)
        .macs(mac_of6(member), PORT_MAC)
        .payload(b"SSH-2.0-y\r\n");
    (reply.seq, reply.ack) = (90_001, 7012);
    let out = env.expect(&reply.build(), XDP_TX, reason::TX_TO_CLIENT);
    let mut want = to_client6(&reply, 22, 46000);
    want.seq = cookie.wrapping_add(1);
    assert_eq!(out, want.build(), "member data, in the cookie's numbers");
    // Through TC too.
    let (action, out) = env.run_program("lb_tc", &reply.build());
    assert_eq!((action, out), (7, want.build()));
}

/// A cookie ACK whose flow cannot open (no member up) gets a RST in the client's window
/// (counted among the listener's drops as `drop_no_member`); in cookie mode a SYN with an
/// extension header gets no cookie and opens no flow: it is dropped, as an IPv4 SYN with
/// options is.
#[test]
fn ipv6_cookie_ack_without_member_is_reset_and_extension_headers_are_dropped() {
    let Some(mut env) = cookie_env() else { return };
    let mut with_ext = syn6(46100);
    with_ext.ext = options_headers();
    env.expect(&with_ext.build(), XDP_DROP, reason::DROP_SYN_OPTIONS);
    let drops = env.dp.maps.listener_drops(0).unwrap();
    assert_eq!(drops[reason::DROP_SYN_OPTIONS as usize], 1);
    let cookie = cookie6_of(&mut env, "lb", 46101);
    for id in ["s1", "s2"] {
        let m = member_slot(&env, id);
        let mut c = env.dp.maps.member(m).unwrap();
        c.flags &= !lb_common::MEMBER_F_UP;
        env.dp.maps.set_member(m, c).unwrap();
    }
    let mut ack = L4v6::tcp(CLIENT6, 46101, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (7001, cookie.wrapping_add(1));
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_RESET);
    assert!(checksum6_ok(&out));
    let o = L4v6::parse(&out).unwrap();
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src, o.dst, o.sport, o.dport),
        (PORT_MAC, CLIENT_MAC, VIP6, CLIENT6, 22, 46101)
    );
    assert_eq!(
        (o.flags, o.seq, o.ack, o.win),
        (TCP_RST | TCP_ACK, cookie.wrapping_add(1), 7001, 0)
    );
    assert_eq!(o.options, vec![1, 1, 1, 1]);
    assert_eq!(out, o.build(), "RST bytes");
    let drops = env.dp.maps.listener_drops(0).unwrap();
    assert_eq!(drops[reason::DROP_NO_MEMBER as usize], 1);
    assert!(env.dp.maps.flows6().is_empty(), "no flow at all");
}

/// An IPv6 flow's SNAT port comes back a quiet second after the flow closed when the new
/// SYN carries timestamps (the member's TIME_WAIT accepts it on lb's rising clock), not
/// after the 10 s linger: with one SNAT port, the next connection to the same member waits
/// for that second, then gets the port.
#[test]
fn ipv6_snat_port_is_reclaimed_after_a_quiet_second() {
    let Some(mut env) = env() else { return };
    let mut l = env.plan.listeners[0].clone();
    (l.conf.snat_min, l.conf.snat_max) = (40000, 40000);
    env.dp.maps.set_planned_listener(&l).unwrap();
    // One member up: every flow goes to it, and its tuples collide.
    let s2 = member_slot(&env, "s2");
    let mut c = env.dp.maps.member(s2).unwrap();
    c.flags &= !lb_common::MEMBER_F_UP;
    env.dp.maps.set_member(s2, c).unwrap();
    let ts = |val: u32| {
        let mut o = vec![1, 1, 8, 10];
        o.extend(val.to_be_bytes());
        o.extend(0u32.to_be_bytes());
        o
    };
    let syn = |port: u16| {
        L4v6::tcp(CLIENT6, port, VIP6, 22, TCP_SYN)
            .macs(CLIENT_MAC, PORT_MAC)
            .options(&ts(1000))
    };
    let out = env.expect(&syn(47000).build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = L4v6::parse(&out).unwrap();
    assert_eq!((o.dst, o.sport), (M16, 40000));
    // A connection, then closed both ways.
    let mut synack =
        L4v6::tcp(M16, 22, VIP6, 40000, TCP_SYN | TCP_ACK).macs(mac_of6(M16), PORT_MAC);
    (synack.seq, synack.ack) = (5000, 1001);
    env.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    let mut ack = L4v6::tcp(CLIENT6, 47000, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (1001, 5001);
    env.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
    let mut fin = L4v6::tcp(CLIENT6, 47000, VIP6, 22, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (fin.seq, fin.ack) = (1001, 5001);
    env.expect(&fin.build(), XDP_TX, reason::TX_TO_MEMBER);
    let mut finack =
        L4v6::tcp(M16, 22, VIP6, 40000, TCP_FIN | TCP_ACK).macs(mac_of6(M16), PORT_MAC);
    (finack.seq, finack.ack) = (5001, 1002);
    env.expect(&finack.build(), XDP_TX, reason::TX_TO_CLIENT);
    // At once: the port is still the closed flow's.
    env.expect(&syn(47001).build(), XDP_DROP, reason::DROP_SNAT_EXHAUSTED);
    // Without timestamps the member could not tell the new connection from the old one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let bare = L4v6::tcp(CLIENT6, 47002, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    env.expect(&bare.build(), XDP_DROP, reason::DROP_SNAT_EXHAUSTED);
    // A quiet second later, with timestamps: the port is taken back.
    let out = env.expect(&syn(47003).build(), XDP_TX, reason::TX_TO_MEMBER);
    let o = L4v6::parse(&out).unwrap();
    assert_eq!((o.dst, o.sport), (M16, 40000));
    let flows = env.dp.maps.flows6();
    assert_eq!(flows.len(), 2, "the old flow's entries are gone: {flows:?}");
    assert!(flows
        .iter()
        .all(|(_, f)| u16::from_be(f.client_port_be) == 47003));
}

/// An IPv6 client's MSS reaches the member as its cookie encodes it (IPv6's table: 1220,
/// 1420, 1440, 8940): 1220 for a client at the minimum MTU, not a fixed 1460.
#[test]
fn ipv6_the_member_s_syn_carries_the_mss_the_cookie_encodes() {
    let Some(mut env) = cookie_env() else { return };
    let mut port = 46300;
    for (offered, encoded) in [(1220u16, 1220u16), (1430, 1420), (9000, 8940)] {
        port += 1;
        let m = offered.to_be_bytes();
        let mut syn = L4v6::tcp(CLIENT6, port, VIP6, 22, TCP_SYN)
            .macs(CLIENT_MAC, PORT_MAC)
            .options(&[2, 4, m[0], m[1]]);
        syn.seq = 7000;
        let (_, out) = env.run_program("lb", &syn.build());
        let o = L4v6::parse(&out).expect("the SYN-ACK");
        let e = encoded.to_be_bytes();
        assert_eq!(
            (o.flags, o.options.clone()),
            (TCP_SYN | TCP_ACK, vec![2, 4, e[0], e[1]]),
            "the cookie's MSS for an offer of {offered}"
        );
        let mut ack = L4v6::tcp(CLIENT6, port, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
        (ack.seq, ack.ack, ack.win) = (7001, o.seq.wrapping_add(1), 502);
        let out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
        assert!(checksum6_ok(&out), "SYN to the member: checksum");
        let o = L4v6::parse(&out).expect("the SYN to the member");
        assert_eq!(
            (o.flags, o.seq, o.options),
            (TCP_SYN, 7000, vec![2, 4, e[0], e[1]]),
            "the member is offered {encoded} for a client's {offered}"
        );
    }
}
