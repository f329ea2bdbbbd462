//! SYN cookies under BPF_PROG_TEST_RUN: past a listener's half-open budget the program
//! answers a SYN itself and keeps nothing; the client's ACK with a valid cookie opens the
//! flow and becomes lb's SYN to the member; the member's SYN-ACK becomes lb's ACK to it; then
//! sequence numbers are translated both ways. Every emitted frame is checked field by field
//! and by its checksums.

use integration_tests::{fixture::*, *};
use lb_common::{reason, CT_COOKIE};

const TC_ACT_REDIRECT: u32 = 7;
/// MSS 1460, SACK permitted, timestamps, window scale 7: what Linux puts in a SYN.
const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x10, 0, 0, 0, 0, 0, 1, 3, 3, 7,
];

fn env(limit: i64) -> Option<Env> {
    let cfg = with_half_open_limit(include_str!("../../examples/seed.toml"), limit);
    Env::new(&cfg)
}

fn syn(port: u16) -> Tcp {
    let mut s = Tcp::new(CLIENT, port, VIP, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .options(&LINUX_SYN_OPTIONS);
    s.seq = 7000;
    s
}

/// Runs the SYN through `program` and checks the SYN-ACK lb made of it; returns the cookie.
fn cookie_of(env: &mut Env, program: &str, port: u16) -> u32 {
    let s = syn(port);
    let (action, out) = env.run_program(program, &s.build());
    let want = if program == "lb" {
        XDP_TX
    } else {
        TC_ACT_REDIRECT
    };
    assert_eq!(
        action, want,
        "{program}: the SYN-ACK goes back out of the port"
    );
    let o = Tcp::parse(&out).expect("a TCP frame");
    assert!(checksums_ok(&out), "{program}: SYN-ACK checksums");
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src, o.dst, o.sport, o.dport),
        (PORT_MAC, CLIENT_MAC, VIP, CLIENT, 22, port)
    );
    assert_eq!((o.flags, o.ack, o.win), (TCP_SYN | TCP_ACK, 7001, 65535));
    assert_eq!(
        o.tcp_options,
        vec![2, 4, 0x05, 0xb4],
        "MSS only (the cookie's 1460)"
    );
    assert!(o.payload.is_empty());
    assert!(env.flow(port).is_none(), "a cookie keeps no flow");
    o.seq
}

#[test]
fn past_the_budget_a_syn_is_answered_with_a_cookie_and_the_ack_opens_the_flow() {
    let Some(mut env) = env(0) else { return };
    let cookie = cookie_of(&mut env, "lb", 45000);
    assert_eq!(env.verdicts()[reason::TX_SYNCOOKIE as usize], 1);
    for m in [M1, M2] {
        assert_eq!(env.half_open(env.member_index(m)), 0);
    }

    // An ACK with a wrong cookie: not lb's; the namespace's stack answers it.
    let mut bad = Tcp::new(CLIENT, 45000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (bad.seq, bad.ack) = (7001, cookie.wrapping_add(2));
    env.expect(&bad.build(), XDP_PASS, reason::PASS_NO_FLOW);
    assert!(env.flow(45000).is_none());

    // The client's ACK of the cookie: the flow opens and the frame becomes lb's SYN.
    let mut ack = Tcp::new(CLIENT, 45000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack, ack.win) = (7001, cookie.wrapping_add(1), 502);
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    assert!(checksums_ok(&out), "SYN to the member: checksums");
    let (member, snat) = (o.dst, o.sport);
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src),
        (PORT_MAC, mac_of(member), VIP)
    );
    assert_eq!((o.flags, o.seq, o.ack, o.win), (TCP_SYN, 7000, 0, 502));
    assert_eq!(o.tcp_options, vec![2, 4, 0x05, 0xb4]);
    let m = env.member_index(member);
    let f = env.flow(45000).expect("flow opened by the cookie");
    assert_ne!(f.state & CT_COOKIE, 0);
    assert_eq!((env.half_open(m), env.active(m)), (1, 0));

    // The client repeats its ACK before the member answered: lb repeats its SYN.
    let out2 = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert_eq!(out2, out);
    // Its data waits (dropped: the client sends it again), and it repeats lb's SYN too (a
    // SYN lost, or met by an earlier connection's state at the member, goes again).
    let data = Tcp {
        flags: TCP_ACK | TCP_PSH,
        payload: b"GET /\r\n".to_vec(),
        ..ack.clone()
    };
    let out3 = env.expect(&data.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert_eq!(out3, out);

    // The member's SYN-ACK becomes lb's ACK to the member: established.
    let mut synack = Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .options(&[2, 4, 0x05, 0xb4]);
    (synack.seq, synack.ack) = (90_000, 7001);
    let out = env.expect(&synack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert!(checksums_ok(&out), "ACK to the member: checksums");
    let o = Tcp::parse(&out).unwrap();
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src, o.dst, o.sport, o.dport),
        (PORT_MAC, mac_of(member), VIP, member, snat, 22)
    );
    assert_eq!((o.flags, o.seq, o.ack, o.win), (TCP_ACK, 7001, 90_001, 502));
    assert_eq!(o.tcp_options, vec![1, 1, 1, 1]);
    assert_eq!((env.half_open(m), env.active(m)), (0, 1));
    assert_eq!(env.dp.maps.listener_stats(0).unwrap().total_connections, 1);

    // Data both ways, with the member's numbers translated to the cookie's.
    let out = env.expect(&data.build(), XDP_TX, reason::TX_TO_MEMBER);
    let mut want = to_member(&data, member, snat);
    want.ack = 90_001;
    assert_eq!(
        out,
        want.build(),
        "client data: acknowledgment in the member's numbers"
    );
    let mut reply = Tcp::new(member, 22, VIP, snat, TCP_ACK | TCP_PSH)
        .macs(mac_of(member), PORT_MAC)
        .payload(b"HTTP/1.0 200 OK\r\n");
    (reply.seq, reply.ack) = (90_001, 7008);
    let out = env.expect(&reply.build(), XDP_TX, reason::TX_TO_CLIENT);
    let mut want = to_client(&reply, 45000);
    want.seq = cookie.wrapping_add(1);
    assert_eq!(
        out,
        want.build(),
        "member data: sequence in the cookie's numbers"
    );

    // A RST from the member in its own numbers is in the client's window once translated.
    let mut rst = Tcp::new(member, 22, VIP, snat, TCP_RST | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (rst.seq, rst.ack) = (90_018, 7008);
    let out = env.expect(&rst.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(Tcp::parse(&out).unwrap().seq, cookie.wrapping_add(18));
    assert_eq!(env.active(m), 0, "the RST closed it");
}

/// Below the budget a SYN opens a flow as always; once `half_open_limit` handshakes are in
/// progress the next SYN gets a cookie, and so does every SYN for the hold that follows.
#[test]
fn cookies_start_at_the_half_open_limit() {
    let Some(mut env) = env(2) else { return };
    env.open(45100);
    env.open(45101);
    cookie_of(&mut env, "lb", 45102);
    // The two handshakes end; the listener stays in cookie mode for its hold.
    for p in [45100, 45101] {
        env.establish_on(p, 22);
    }
    cookie_of(&mut env, "lb", 45103);
    assert_eq!(env.verdicts()[reason::TX_SYNCOOKIE as usize], 2);
}

/// The TC program makes the same SYN-ACK (an skb, through the kernel's helpers), and a
/// listener with `half_open_limit = -1` never sends cookies.
#[test]
fn tc_sends_the_same_cookie_and_minus_one_turns_cookies_off() {
    let Some(mut env) = env(0) else { return };
    let xdp = cookie_of(&mut env, "lb", 45200);
    let tc = cookie_of(&mut env, "lb_tc", 45200);
    assert_eq!(xdp, tc, "one tuple, one cookie (within the same minute)");

    let Some(mut off) = self::env(-1) else { return };
    for p in 45300..45310 {
        off.open(p);
    }
    assert_eq!(off.verdicts()[reason::TX_SYNCOOKIE as usize], 0);
}

/// A member refusing lb's SYN on a cookie connection: the client already holds a
/// connection, so it hears the refusal, in its own numbers.
#[test]
fn a_refusal_on_a_cookie_connection_reaches_the_client_in_window() {
    let Some(mut env) = env(0) else { return };
    let cookie = cookie_of(&mut env, "lb", 45400);
    let mut ack = Tcp::new(CLIENT, 45400, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (7001, cookie.wrapping_add(1));
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    let o = Tcp::parse(&out).unwrap();
    let mut rst =
        Tcp::new(o.dst, 22, VIP, o.sport, TCP_RST | TCP_ACK).macs(mac_of(o.dst), PORT_MAC);
    (rst.seq, rst.ack) = (0, 7001);
    let out = env.expect(&rst.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(Tcp::parse(&out).unwrap().seq, cookie.wrapping_add(1));
    assert!(checksums_ok(&out));
    let m = env.member_index(o.dst);
    assert_eq!((env.half_open(m), env.active(m)), (0, 0));
    assert_eq!(env.dp.maps.member_live.get(m).failures, 1);
}

/// A valid cookie ACK whose flow cannot open (here: no member is up) gets a RST in the
/// client's window, instead of a connection nobody serves (the client would not send
/// another SYN); the reason is counted among the listener's drops.
#[test]
fn a_cookie_ack_that_cannot_open_its_flow_is_reset() {
    let Some(mut env) = env(0) else { return };
    let cookie = cookie_of(&mut env, "lb", 45500);
    for m in [M1, M2] {
        env.set_member_flags(m, |f| f & !lb_common::MEMBER_F_UP);
    }
    let mut ack = Tcp::new(CLIENT, 45500, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (7001, cookie.wrapping_add(1));
    let out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_RESET);
    assert!(checksums_ok(&out));
    let o = Tcp::parse(&out).unwrap();
    assert_eq!(
        (o.src_mac, o.dst_mac, o.src, o.dst, o.sport, o.dport),
        (PORT_MAC, CLIENT_MAC, VIP, CLIENT, 22, 45500)
    );
    assert_eq!(
        (o.flags, o.seq, o.ack),
        (TCP_RST | TCP_ACK, cookie.wrapping_add(1), 7001)
    );
    assert!(env.flow(45500).is_none());
    assert_eq!(
        env.dp.maps.listener_drops(0).unwrap()[reason::DROP_NO_MEMBER as usize],
        1
    );
}

/// Spoofed SYN+RST pairs (a SYN with its own ISN, then a RST at ISN+1): each handshake that
/// ends so gives back its slot and SNAT port with the RST (it used to linger 10 s), and
/// counts as a failed attempt against the half-open budget, so that a stream of pairs turns
/// cookie mode on as a stream of SYNs does, although no handshake stays in progress.
#[test]
fn syn_rst_pairs_free_their_flows_and_turn_cookies_on() {
    let Some(mut env) = env(4) else { return };
    for p in 46000..46004 {
        let (_, _, snat) = env.open(p);
        let mut rst = Tcp::new(CLIENT, p, VIP, 22, TCP_RST).macs(CLIENT_MAC, PORT_MAC);
        rst.seq = 1001;
        let out = env.expect(&rst.build(), XDP_TX, reason::TX_TO_MEMBER);
        let o = Tcp::parse(&out).unwrap();
        assert_eq!(
            (o.sport, o.flags),
            (snat, TCP_RST),
            "the member hears the RST"
        );
        assert!(
            env.flow(p).is_none(),
            "the handshake's flow is gone with its RST"
        );
        assert!(
            env.dp.maps.flows().is_empty(),
            "and its reverse entry (the port)"
        );
    }
    for m in [M1, M2] {
        assert_eq!(env.half_open(env.member_index(m)), 0);
    }
    // Four failed handshakes within the second: the budget of 4 is spent.
    cookie_of(&mut env, "lb", 46004);
    assert!(env.dp.maps.flows().is_empty());
}

/// In cookie mode a SYN with IPv4 options (here one NOP word) gets no cookie and opens no
/// flow: it is dropped and counted; the same SYN without options gets its cookie.
#[test]
fn in_cookie_mode_a_syn_with_ip_options_is_dropped() {
    let Some(mut env) = env(0) else { return };
    let mut s = syn(46100);
    s.ip_options = vec![1, 1, 1, 0];
    env.expect(&s.build(), XDP_DROP, reason::DROP_SYN_OPTIONS);
    let (a, _) = env.run_program("lb_tc", &s.build());
    assert_eq!(a, 2, "TC: shot");
    assert!(env.dp.maps.flows().is_empty(), "no flow");
    assert_eq!(
        env.dp.maps.listener_drops(0).unwrap()[reason::DROP_SYN_OPTIONS as usize],
        2
    );
    cookie_of(&mut env, "lb", 46100);
    // Below the budget such a SYN opens its flow as any other.
    let Some(mut open) = self::env(1000) else {
        return;
    };
    open.expect(&s.build(), XDP_TX, reason::TX_TO_MEMBER);
}

/// `lb_tc_fast` (the shortcut on the port's outer end) leaves a cookie flow whose member has
/// not answered lb's SYN to the port's program: the client's data is neither forwarded
/// with an untranslated acknowledgment nor lost there, and a repeated pure ACK repeats lb's
/// SYN in the namespace, as on the port's own path. Once the member answered, the shortcut
/// translates the flow's numbers as the port's program does.
#[test]
fn the_shortcut_leaves_an_unanswered_cookie_flow_to_the_port() {
    let Some(mut env) = env(0) else { return };
    let fast = |env: &mut Env, frame: &[u8]| env.run_program("lb_tc_fast", frame);
    let cookie = cookie_of(&mut env, "lb", 46200);
    let mut ack = Tcp::new(CLIENT, 46200, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack, ack.win) = (7001, cookie.wrapping_add(1), 502);
    let syn_out = env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    let o = Tcp::parse(&syn_out).unwrap();
    let (member, snat) = (o.dst, o.sport);
    let data = Tcp {
        flags: TCP_ACK | TCP_PSH,
        payload: b"GET /\r\n".to_vec(),
        ..ack.clone()
    };
    let before = env.verdicts();
    for frame in [ack.build(), data.build()] {
        assert_eq!(
            fast(&mut env, &frame),
            (0, frame.clone()),
            "into the namespace, untouched"
        );
    }
    assert_eq!(
        env.verdicts(),
        before,
        "counted by the port's program, not here"
    );
    // There, the port's program repeats the SYN (for the data too, which it holds).
    for frame in [ack.build(), data.build()] {
        assert_eq!(
            env.expect(&frame, XDP_TX, reason::TX_COOKIE_TO_MEMBER),
            syn_out
        );
    }
    // The member answers: from then on the shortcut translates, as the port's program does.
    let mut synack = Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .options(&[2, 4, 0x05, 0xb4]);
    (synack.seq, synack.ack) = (90_000, 7001);
    env.expect(&synack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    let (a, out) = fast(&mut env, &data.build());
    assert_eq!(a, TC_ACT_REDIRECT);
    let mut want = to_member(&data, member, snat);
    want.ack = 90_001;
    assert_eq!(out, want.build(), "acknowledgment in the member's numbers");
}

/// A member's SYN-ACK that does not acknowledge the flow's SYN comes from an earlier flow's
/// half-open connection on the same SNAT port (a spoofed handshake that expired at lb while
/// the member still retransmits its SYN-ACK). Taken, it would complete that handshake at the
/// member with the wrong numbers and wedge the client's connection (found by the flood
/// tests). lb answers it with a RST as a host would, drops any other member segment before
/// the SYN-ACK, and takes the member's real answer when it comes: on a cookie flow and on an
/// ordinary one.
#[test]
fn a_stale_synack_is_reset_not_taken() {
    let Some(mut env) = env(0) else { return };
    let cookie = cookie_of(&mut env, "lb", 46300);
    let mut ack = Tcp::new(CLIENT, 46300, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack) = (7001, cookie.wrapping_add(1));
    let o = Tcp::parse(&env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER)).unwrap();
    let (member, snat) = (o.dst, o.sport);
    let stale = |flags: u8| {
        let mut s = Tcp::new(member, 22, VIP, snat, flags).macs(mac_of(member), PORT_MAC);
        (s.seq, s.ack) = (50_000, 1001);
        s
    };
    let out = env.expect(
        &stale(TCP_SYN | TCP_ACK).build(),
        XDP_TX,
        reason::TX_STALE_RESET,
    );
    assert!(checksums_ok(&out));
    let r = Tcp::parse(&out).unwrap();
    assert_eq!(
        (r.src_mac, r.dst_mac, r.src, r.dst, r.sport, r.dport),
        (PORT_MAC, mac_of(member), VIP, member, snat, 22)
    );
    assert_eq!(
        (r.flags, r.seq, r.ack),
        (TCP_RST, 1001, 0),
        "RST at its ACK"
    );
    env.expect(&stale(TCP_ACK).build(), XDP_DROP, reason::DROP_STALE);
    let f = env.flow(46300).unwrap();
    assert_eq!(f.state & lb_common::CT_SYNACK, 0, "still waiting");
    assert_eq!(f.member_ack, 7001);
    // The member's real answer.
    let mut synack = Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .options(&[2, 4, 0x05, 0xb4]);
    (synack.seq, synack.ack) = (90_000, 7001);
    let out = env.expect(&synack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    assert_eq!(Tcp::parse(&out).unwrap().ack, 90_001);
    let m = env.member_index(member);
    assert_eq!((env.half_open(m), env.active(m)), (0, 1));

    // An ordinary flow (below the budget): the same.
    let Some(mut env) = self::env(1000) else {
        return;
    };
    let (member, _, snat) = env.open(46301);
    let mut s = Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK).macs(mac_of(member), PORT_MAC);
    (s.seq, s.ack) = (50_000, 4242);
    let r = Tcp::parse(&env.expect(&s.build(), XDP_TX, reason::TX_STALE_RESET)).unwrap();
    assert_eq!((r.flags, r.seq, r.dst), (TCP_RST, 4242, member));
    env.establish_on(46301, 22);
    let m = env.member_index(member);
    assert_eq!(env.active(m), 1);
}

/// A flood must leave at least half the budget's worth of cookies unanswered per hold to
/// keep the listener in cookie mode past a hold: a trickle of spoofed SYNs (here 81 in a
/// hold, with a budget of 200) used to hold it for ever, and with it every connection
/// without window scaling. Below the floor the trickle fits the budget as flows.
#[test]
fn a_trickle_of_spoofed_syns_does_not_hold_cookie_mode() {
    let Some(mut env) = env(200) else { return };
    // A connect timeout of 5 s: a hold of 10 s, long enough for the trickle even under the
    // VM's emulation.
    let mut l = env.plan.listeners[0].clone();
    l.conf.timeout_member_connect_ns = 5_000_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    // 200 handshakes in progress turn cookie mode on.
    for p in 47000..47200 {
        env.open(p);
    }
    let began = std::time::Instant::now();
    for p in 47200..47281 {
        cookie_of(&mut env, "lb", p);
    }
    let hold = std::time::Duration::from_secs(10);
    assert!(began.elapsed() < hold, "the trickle fits in the hold");
    // The handshakes end (their connect timeout, shortened now: the hold stays as it began).
    l.conf.timeout_member_connect_ns = 1_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let members: Vec<u32> = env.plan.members.iter().map(|m| m.index).collect();
    let r = env.dp.sweep(&members, &[0], &[]).unwrap();
    assert_eq!(r.expired, 200);
    l.conf.timeout_member_connect_ns = 5_000_000_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(
        (hold + std::time::Duration::from_millis(300)).saturating_sub(began.elapsed()),
    );
    // 81 cookies unanswered in the hold: more than 64, fewer than half the budget.
    env.open(47300);
    assert!(env.flow(47300).is_some(), "cookie mode ended with its hold");
}

/// The client's side reports a "fragmentation needed" about a segment lb sent it on a cookie
/// flow: lb sent it with the member's sequence number plus the flow's `seq_delta`, so the
/// error reaches the member with the number the member sent (its stack drops one about a
/// number it never sent), checksums (ICMP, and the embedded TCP one when carried) following.
#[test]
fn icmp_errors_about_cookie_flows_carry_the_members_numbers() {
    let Some(mut env) = env(0) else { return };
    let cookie = cookie_of(&mut env, "lb", 47400);
    let mut ack = Tcp::new(CLIENT, 47400, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
    (ack.seq, ack.ack, ack.win) = (7001, cookie.wrapping_add(1), 8000);
    let o = Tcp::parse(&env.expect(&ack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER)).unwrap();
    let (member, snat) = (o.dst, o.sport);
    let mut synack = Tcp::new(member, 22, VIP, snat, TCP_SYN | TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .options(&[2, 4, 0x05, 0xb4]);
    (synack.seq, synack.ack) = (90_000, 7001);
    env.expect(&synack.build(), XDP_TX, reason::TX_COOKIE_TO_MEMBER);
    // The member's data, in the client's numbers on its way out.
    let mut reply = Tcp::new(member, 22, VIP, snat, TCP_ACK | TCP_PSH)
        .macs(mac_of(member), PORT_MAC)
        .payload(&[0x42; 1400]);
    (reply.seq, reply.ack) = (90_001, 7001);
    let from_member = reply.build();
    let to_client = env.expect(&from_member, XDP_TX, reason::TX_TO_CLIENT);
    assert_eq!(Tcp::parse(&to_client).unwrap().seq, cookie.wrapping_add(1));
    let router = std::net::Ipv4Addr::new(10, 0, 0, 1);
    for embedded_len in [28, 48] {
        let err = icmp_error(
            CLIENT_MAC,
            PORT_MAC,
            router,
            VIP,
            3,
            4,
            [0, 0, 0x05, 0x00],
            &to_client[14..14 + embedded_len],
        );
        let out = env.expect(&err, XDP_TX, reason::TX_ICMP_TO_MEMBER);
        let want = icmp_error(
            PORT_MAC,
            mac_of(member),
            VIP,
            member,
            3,
            4,
            [0, 0, 0x05, 0x00],
            &from_member[14..14 + embedded_len],
        );
        assert_eq!(out, want, "{embedded_len} bytes embedded");
    }
}

/// The SYN to the member carries the MSS the client offered, as its cookie encodes it (the
/// kernel's table value at or below it: 536, 1300, 1440, 1460), not a fixed 1460: a client
/// behind a smaller MTU would otherwise get segments it cannot take. XDP and TC alike.
#[test]
fn the_member_s_syn_carries_the_mss_the_cookie_encodes() {
    let Some(mut env) = env(0) else { return };
    let mut port = 45300;
    for program in ["lb", "lb_tc"] {
        for (offered, encoded) in [(1460u16, 1460u16), (1400, 1300), (1300, 1300), (1200, 536)] {
            port += 1;
            let m = offered.to_be_bytes();
            let mut syn = Tcp::new(CLIENT, port, VIP, 22, TCP_SYN)
                .macs(CLIENT_MAC, PORT_MAC)
                .options(&[2, 4, m[0], m[1]]);
            syn.seq = 7000;
            let (_, out) = env.run_program(program, &syn.build());
            let o = Tcp::parse(&out).expect("the SYN-ACK");
            let e = encoded.to_be_bytes();
            assert_eq!(
                (o.flags, o.tcp_options.clone()),
                (TCP_SYN | TCP_ACK, vec![2, 4, e[0], e[1]]),
                "{program}: the cookie's MSS for an offer of {offered}"
            );
            let mut ack = Tcp::new(CLIENT, port, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
            (ack.seq, ack.ack, ack.win) = (7001, o.seq.wrapping_add(1), 502);
            let (_, out) = env.run_program(program, &ack.build());
            assert!(
                checksums_ok(&out),
                "{program}: SYN to the member: checksums"
            );
            let o = Tcp::parse(&out).expect("the SYN to the member");
            assert_eq!(
                (o.flags, o.seq, o.tcp_options),
                (TCP_SYN, 7000, vec![2, 4, e[0], e[1]]),
                "{program}: the member is offered {encoded} for a client's {offered}"
            );
        }
    }
    assert_eq!(env.verdicts()[reason::TX_COOKIE_TO_MEMBER as usize], 8);
}
