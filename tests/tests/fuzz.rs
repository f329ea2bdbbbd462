//! Fuzzing the data path under BPF_PROG_TEST_RUN: frames from the seed corpus
//! (`tests/fuzz/seeds.txt`: SYN, ACK, data, FIN, RST from both sides, ICMP errors both ways,
//! IPv4 options, fragments, not-IPv4, not-TCP; the flood variants' shapes: a SYN with one NOP
//! option, RSTs and FINs around the window, the member's segments before its SYN-ACK, an IPv6
//! SYN with a destination-options header), mutated in lengths, header offsets, flags,
//! options, fragment fields, protocols, MACs, and retargeted onto flows lb holds; plus wholly
//! random frames. Every frame must get a defined verdict; frames passed or dropped must come
//! back unchanged; the verdict counters must sum to the frames sent; the live counts must
//! equal the table at the end, and fall to 0 once every flow has expired.
//!
//! Reproducible: `LB_FUZZ_SEED` (default below) and `LB_FUZZ_FRAMES` (default 1,000,000 for
//! the XDP program, a quarter of it for TC and for the cookie path). A failure names the seed, the frame's number and
//! its bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use integration_tests::{fixture::*, *};
use lb_common::{reason, CT_COUNTED, CT_HALF_OPEN, FLOW_DIR_FORWARD};

const DEFAULT_SEED: u64 = 0x1b_5eed_f00d;
const SEEDS: &str = include_str!("../fuzz/seeds.txt");

/// The verdict counters that are not 0, as `name=count`.
fn nonzero(v: &[u64]) -> Vec<String> {
    v.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{}={n}", reason::NAMES[r]))
        .collect()
}

/// xorshift64*: small, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The corpus as the builders make it (`seed_corpus_is_the_committed_one` keeps the file
/// equal to this; LB_FUZZ_WRITE_SEEDS=1 rewrites it).
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let linux_syn = [
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x10, 0, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    let c = |flags: u8| Tcp::new(CLIENT, 40000, VIP, 22, flags).macs(CLIENT_MAC, PORT_MAC);
    let m = |flags: u8| Tcp::new(M1, 22, VIP, 10000, flags).macs(M1_MAC, PORT_MAC);
    let mut data = c(TCP_ACK | TCP_PSH).payload(b"SSH-2.0-fuzz\r\n");
    (data.seq, data.ack) = (1001, 5001);
    let mut synack = m(TCP_SYN | TCP_ACK).options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7]);
    (synack.seq, synack.ack) = (5000, 1001);
    let mut reply = m(TCP_ACK | TCP_PSH).payload(&[0x42; 100]);
    (reply.seq, reply.ack) = (5001, 1015);
    let mut ip_opts = c(TCP_SYN);
    ip_opts.ip_options = vec![0x94, 4, 0, 0];
    let first_fragment = {
        let mut f = c(TCP_SYN).build();
        f[20] |= 0x20; // MF
        f
    };
    let later_fragment = {
        let mut f = c(TCP_ACK).payload(&[7; 64]).build();
        f[20] = 0x20;
        f[21] = 0x08; // offset 64
        f
    };
    let to_member = m(TCP_ACK).build();
    let embedded_to_member = {
        let e = Tcp::new(VIP, 10000, M1, 22, TCP_ACK).build();
        e[14..14 + 28].to_vec()
    };
    let embedded_to_client = {
        let e = Tcp::new(VIP, 22, CLIENT, 40000, TCP_ACK).build();
        e[14..14 + 28].to_vec()
    };
    let _ = to_member;
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP.octets());
    let mut ipv6 = PORT_MAC.to_vec();
    ipv6.extend_from_slice(&CLIENT_MAC);
    ipv6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 6, 64]);
    ipv6.extend_from_slice(&[0; 32]);
    let udp = {
        let mut f = c(TCP_SYN).build();
        f[23] = 17;
        f
    };
    vec![
        (
            "client_syn_linux_options",
            c(TCP_SYN).options(&linux_syn).build(),
        ),
        ("client_syn_bare", c(TCP_SYN).build()),
        ("client_ack", {
            let mut a = c(TCP_ACK);
            (a.seq, a.ack) = (1001, 5001);
            a.build()
        }),
        ("client_data", data.build()),
        ("client_fin", {
            let mut f = c(TCP_FIN | TCP_ACK);
            (f.seq, f.ack) = (1015, 5101);
            f.build()
        }),
        ("client_rst", {
            let mut r = c(TCP_RST);
            r.seq = 1001;
            r.build()
        }),
        ("member_synack", synack.build()),
        ("member_data", reply.build()),
        ("member_fin", {
            let mut f = m(TCP_FIN | TCP_ACK);
            (f.seq, f.ack) = (5101, 1015);
            f.build()
        }),
        ("member_rst_refusal", {
            let mut r = m(TCP_RST | TCP_ACK);
            r.ack = 1001;
            r.build()
        }),
        (
            "icmp_frag_needed_from_member",
            icmp_error(
                M1_MAC,
                PORT_MAC,
                M1,
                VIP,
                3,
                4,
                [0, 0, 0x05, 0xdc],
                &embedded_to_member,
            ),
        ),
        (
            "icmp_unreachable_from_client",
            icmp_error(
                CLIENT_MAC,
                PORT_MAC,
                CLIENT,
                VIP,
                3,
                3,
                [0; 4],
                &embedded_to_client,
            ),
        ),
        ("client_syn_ip_options", ip_opts.build()),
        // The flood variants' shapes: a SYN with one NOP option, RSTs and FINs around the
        // window, the member's segments before its SYN-ACK.
        ("client_syn_nop_option", {
            let mut s = c(TCP_SYN);
            s.ip_options = vec![1, 1, 1, 1];
            s.build()
        }),
        ("client_rst_in_window_not_exact", {
            let mut r = c(TCP_RST | TCP_ACK);
            (r.seq, r.ack) = (1500, 5001);
            r.build()
        }),
        ("client_fin_outside_window", {
            let mut f = c(TCP_FIN | TCP_ACK);
            (f.seq, f.ack) = (0x8000_0000, 5001);
            f.build()
        }),
        ("member_ack_before_synack", {
            let mut a = m(TCP_ACK);
            (a.seq, a.ack) = (5001, 777);
            a.build()
        }),
        ("member_synack_stale", {
            let mut s = m(TCP_SYN | TCP_ACK);
            (s.seq, s.ack) = (5000, 999);
            s.build()
        }),
        ("client_syn_first_fragment", first_fragment),
        ("client_later_fragment", later_fragment),
        ("arp_request", arp),
        ("ipv6", ipv6),
        ("udp_to_vip", udp),
    ]
}

#[test]
fn seed_corpus_is_the_committed_one() {
    let text: String = corpus()
        .iter()
        .map(|(name, f)| format!("{name} {}\n", hex(f)))
        .collect();
    if std::env::var("LB_FUZZ_WRITE_SEEDS").is_ok() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds.txt"),
            &text,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        SEEDS, text,
        "tests/fuzz/seeds.txt differs from the builders: LB_FUZZ_WRITE_SEEDS=1"
    );
}

fn seeds() -> Vec<Vec<u8>> {
    SEEDS
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, h)| unhex(h.trim())))
        .collect()
}

/// A flow lb holds, by the tuples each side uses.
#[derive(Clone, Copy)]
struct Held {
    client_port: u16,
    member: Ipv4Addr,
    snat: u16,
}

/// One mutation of `f` (at least 14 bytes stay: shorter is no Ethernet frame at all).
fn mutate(rng: &mut Rng, f: &mut Vec<u8>, held: &[Held]) {
    let ip = 14;
    let ihl = if f.len() > ip {
        ((f[ip] & 0x0f) as usize) * 4
    } else {
        20
    };
    let l4 = ip + ihl.max(20);
    let len = f.len();
    match rng.below(16) {
        0 => {
            let i = rng.below(len);
            f[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(len);
            f[i] = rng.byte();
        }
        2 => {
            let n = 14 + rng.below(len - 13);
            f.truncate(n);
        }
        3 => {
            for _ in 0..1 + rng.below(64) {
                f.push(rng.byte());
            }
        }
        4 if len > ip => f[ip] = (f[ip] & 0xf0) | rng.below(16) as u8,
        5 if len > ip + 3 => {
            let v = match rng.below(3) {
                0 => rng.next() as u16,
                1 => (len - 14) as u16,
                _ => ((len - 14) as u16)
                    .wrapping_add(rng.below(9) as u16)
                    .wrapping_sub(4),
            };
            f[ip + 2..ip + 4].copy_from_slice(&v.to_be_bytes());
        }
        6 if len > ip + 7 => {
            let v: u16 = match rng.below(4) {
                0 => 0x2000,
                1 => 0x2000 | rng.below(0x2000) as u16,
                2 => rng.below(0x2000) as u16,
                _ => rng.next() as u16,
            };
            f[ip + 6..ip + 8].copy_from_slice(&v.to_be_bytes());
        }
        7 if len > l4 + 12 => f[l4 + 12] = (rng.below(16) as u8) << 4 | (f[l4 + 12] & 0x0f),
        8 if len > l4 + 13 => f[l4 + 13] = rng.byte(),
        9 if len > l4 + 20 => {
            for b in &mut f[l4 + 20..len.min(l4 + 60)] {
                if rng.below(3) == 0 {
                    *b = [0, 1, 2, 3, 4, 8, rng.byte()][rng.below(7)];
                }
            }
        }
        10 if len > ip + 9 => f[ip + 9] = [6, 1, 17, rng.byte()][rng.below(4)],
        11 if len > l4 + 4 && !held.is_empty() => {
            // Onto a flow lb holds, as its client or its member would address it.
            let h = held[rng.below(held.len())];
            if rng.below(2) == 0 {
                f[ip + 12..ip + 16].copy_from_slice(&CLIENT.octets());
                f[ip + 16..ip + 20].copy_from_slice(&VIP.octets());
                f[l4..l4 + 2].copy_from_slice(&h.client_port.to_be_bytes());
                f[l4 + 2..l4 + 4].copy_from_slice(&22u16.to_be_bytes());
            } else {
                f[ip + 12..ip + 16].copy_from_slice(&h.member.octets());
                f[ip + 16..ip + 20].copy_from_slice(&VIP.octets());
                f[l4..l4 + 2].copy_from_slice(&22u16.to_be_bytes());
                f[l4 + 2..l4 + 4].copy_from_slice(&h.snat.to_be_bytes());
            }
        }
        12 => {
            let mac = [PORT_MAC, [0xff; 6], [2, 0, 0, 0, 0, rng.byte()]][rng.below(3)];
            f[0..6].copy_from_slice(&mac);
        }
        13 if len > l4 + 12 => {
            let v = rng.next() as u32;
            let at = l4 + 4 + 4 * rng.below(2);
            f[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        14 if len > 13 => f[12..14].copy_from_slice(
            &[[8, 0], [8, 6], [0x86, 0xdd], [rng.byte(), rng.byte()]][rng.below(4)],
        ),
        _ => {
            let i = rng.below(len);
            f[i] = f[i].wrapping_add(1);
        }
    }
}

/// An IPv4 or IPv6 frame shorter than its network header.
fn too_short(f: &[u8]) -> bool {
    match (f[12], f[13]) {
        (0x08, 0x00) => f.len() < 34 || f.len() < 14 + ((f[14] & 0x0f) as usize) * 4,
        (0x86, 0xdd) => f.len() < 54,
        _ => false,
    }
}

fn frame(rng: &mut Rng, seeds: &[Vec<u8>], held: &[Held]) -> Vec<u8> {
    if rng.below(50) == 0 {
        let n = 14 + rng.below(200);
        return (0..n).map(|_| rng.byte()).collect();
    }
    let mut f = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(3) {
        mutate(rng, &mut f, held);
    }
    f
}

fn fuzz(program: &str, share: u64, half_open_limit: Option<i64>) {
    let mut config = include_str!("../../examples/seed.toml").to_string();
    if let Some(l) = half_open_limit {
        config = with_half_open_limit(&config, l);
        // Passive health off: members that never answer (there are none here) would be out
        // of selection after ten SYNs, and the cookie ACKs would find no member to open.
        config = config.replacen(
            "lb_algorithm = \"LEAST_CONNECTIONS\"",
            "lb_algorithm = \"LEAST_CONNECTIONS\"\nerror_limit = 0",
            1,
        );
    }
    let Some(mut env) = Env::with_capacity(&config, 65536) else {
        return;
    };
    let seed = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(DEFAULT_SEED);
    let frames: u64 = std::env::var("LB_FUZZ_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
        / share;
    // Flows for mutated frames to land on: established and half-open.
    let mut held = Vec::new();
    let stateful = half_open_limit != Some(0);
    for p in (0..8u16).filter(|_| stateful) {
        let (member, _, snat) = if p < 6 {
            env.connect(46000 + p)
        } else {
            env.open(46000 + p)
        };
        held.push(Held {
            client_port: 46000 + p,
            member,
            snat,
        });
    }
    let seeds = seeds();
    let runner = env.dp.runner(program).unwrap();
    let before: u64 = env.verdicts().iter().sum();
    let (pass, drop) = if program == "lb" {
        (XDP_PASS, XDP_DROP)
    } else {
        (0, 2)
    };
    let allowed: &[u32] = if program == "lb" {
        &[XDP_DROP, XDP_PASS, XDP_TX]
    } else {
        &[0, 2, 7]
    };
    let mut rng = Rng(seed | 1);
    let mut by_action = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    let ns = env.ns.name.clone();
    let mut refused = 0u64;
    in_netns(&ns, || {
        let mut answer: Option<Vec<u8>> = None;
        for i in 0..frames {
            // Now and then the ACK a client would send to the last SYN-ACK lb made itself (a
            // valid cookie), itself possibly mutated: cookie flows get opened too.
            let f = match answer.take() {
                Some(mut a) if rng.below(4) == 0 => {
                    if rng.below(3) == 0 {
                        mutate(&mut rng, &mut a, &held);
                    }
                    a
                }
                _ => frame(&mut rng, &seeds, &held),
            };
            let (action, out) = match runner.run(&f) {
                Ok(r) => r,
                // The kernel builds no skb for an IPv4 or IPv6 frame shorter than its
                // network header (`bpf_prog_test_run_skb`): nothing ran, nothing counted.
                Err(e) if program != "lb" && e.raw_os_error() == Some(22) && too_short(&f) => {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!(
                    "seed {seed:#x} frame {i}: test_run failed: {e}\n{}",
                    hex(&f)
                ),
            };
            assert!(
                allowed.contains(&action),
                "seed {seed:#x} frame {i}: verdict {action}\n{}",
                hex(&f)
            );
            if action == pass || action == drop {
                assert_eq!(
                    hex(&out[..f.len().min(out.len())]),
                    hex(&f),
                    "seed {seed:#x} frame {i}: passed or dropped, yet changed"
                );
            }
            *by_action.entry(action).or_insert(0u64) += 1;
            if let Some(o) =
                Tcp::parse(&out).filter(|o| o.flags == TCP_SYN | TCP_ACK && o.src == VIP)
            {
                let mut a =
                    Tcp::new(o.dst, o.dport, VIP, o.sport, TCP_ACK).macs(o.dst_mac, PORT_MAC);
                (a.seq, a.ack) = (o.ack, o.seq.wrapping_add(1));
                answer = Some(a.build());
            }
        }
    })
    .unwrap();
    let took = started.elapsed();
    let after: u64 = env.verdicts().iter().sum();
    let v = env.verdicts();
    let named = nonzero(&v);
    println!(
        "FUZZ program={program} seed={seed:#x} frames={frames} (test_run refused {refused} too short for an skb) took={took:.1?} actions={by_action:?} verdicts: {}",
        named.join(" ")
    );
    assert_eq!(
        after - before,
        frames - refused,
        "verdict counters sum to the frames run"
    );

    // Every reverse entry belongs to its forward entry...
    let flows = env.dp.maps.flows();
    let table: std::collections::HashMap<_, _> = flows.iter().map(|(k, f)| (*k, *f)).collect();
    let orphans: Vec<String> = flows
        .iter()
        .filter(|(k, f)| {
            k.dir != FLOW_DIR_FORWARD
                && table.get(&f.forward_key()).map(|fw| fw.reverse_key()) != Some(*k)
        })
        .map(|(k, f)| format!("{k:?} -> forward {:?}", table.get(&f.forward_key())))
        .collect();
    assert!(
        orphans.is_empty(),
        "{} reverse entries without their flow: {:?}",
        orphans.len(),
        &orphans[..orphans.len().min(3)]
    );
    // ...the live counts equal the table...
    let (mut counted, mut half) = (0i64, 0i64);
    for (k, f) in &flows {
        if k.dir == FLOW_DIR_FORWARD {
            counted += (f.state & CT_COUNTED != 0) as i64;
            half += (f.state & CT_HALF_OPEN != 0) as i64;
        }
    }
    let ll = env.dp.maps.listener_live.get(0);
    assert_eq!(
        (ll.active, ll.half_open),
        (counted, half),
        "listener counts = table"
    );
    let members: Vec<u32> = [M1, M2].iter().map(|m| env.member_index(*m)).collect();
    let sum = |env: &Env, f: &dyn Fn(lb_common::Live) -> i64| -> i64 {
        members
            .iter()
            .map(|i| f(env.dp.maps.member_live.get(*i)))
            .sum()
    };
    assert_eq!(
        (sum(&env, &|l| l.active), sum(&env, &|l| l.half_open)),
        (counted, half),
        "member counts = table"
    );
    // ...and no flow is left counted once every flow has expired.
    let mut l = env.plan.listeners[0].clone();
    l.conf.timeout_member_connect_ns = 1_000;
    l.conf.timeout_data_ns = 1_000;
    env.dp.maps.set_listener(l.key, l.conf).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    env.dp.sweep(&members, &[0], &[]).unwrap();
    let ll = env.dp.maps.listener_live.get(0);
    let still: Vec<_> = env
        .dp
        .maps
        .flows()
        .into_iter()
        .filter(|(k, f)| k.dir == FLOW_DIR_FORWARD && f.state & (CT_COUNTED | CT_HALF_OPEN) != 0)
        .collect();
    assert_eq!(
        (ll.active, ll.half_open),
        (0, 0),
        "nothing counted after expiry: {still:?}"
    );
    assert_eq!(
        (sum(&env, &|l| l.active), sum(&env, &|l| l.half_open)),
        (0, 0)
    );
    let left: Vec<_> = env
        .dp
        .maps
        .flows()
        .into_iter()
        // (Reverse entries are copies made at the SYN; the forward entry holds the state.)
        .filter(|(k, f)| k.dir == FLOW_DIR_FORWARD && f.state & (CT_COUNTED | CT_HALF_OPEN) != 0)
        .collect();
    assert!(left.is_empty(), "flows left counted: {left:?}");
}

#[test]
fn a_million_mutated_frames_through_xdp() {
    fuzz("lb", 1, None);
}

#[test]
fn mutated_frames_through_tc() {
    fuzz("lb_tc", 4, None);
}

/// Every SYN answered with a cookie (`half_open_limit = 0`), and the clients' ACKs to them.
#[test]
fn mutated_frames_through_syn_cookies() {
    fuzz("lb", 4, Some(0));
}

/// IPv6 frames for the IPv6 programs: a SYN, the same behind extension headers, a UDP query,
/// data of a held flow, a first and a later fragment, Packet Too Big about a held flow, and a
/// neighbour solicitation.
fn corpus6(held: &(Ipv6Addr, u16)) -> Vec<Vec<u8>> {
    let (member, snat) = *held;
    let c = |flags| L4v6::tcp(CLIENT6, 47000, VIP6, 22, flags).macs(CLIENT_MAC, PORT_MAC);
    let mut ext = c(TCP_SYN);
    ext.ext = vec![
        (0, vec![0, 0, 1, 4, 0, 0, 0, 0]),
        (43, vec![0, 0, 0, 0, 0, 0, 0, 0]),
        (60, vec![0, 0, 1, 4, 0, 0, 0, 0]),
    ];
    let mut first = L4v6::udp(CLIENT6, 47001, VIP6, 53).payload(&[1; 24]);
    first.ext = vec![(44, vec![0, 0, 0, 1, 0, 0, 0, 9])];
    let mut later = first.clone();
    later.ext = vec![(44, vec![0, 0, 0, 0x18, 0, 0, 0, 9])];
    let to_member = L4v6::tcp(VIP6, snat, member, 22, TCP_ACK)
        .macs(PORT_MAC, mac_of6(member))
        .payload(&[9; 40])
        .build();
    // A SYN with one destination-options header (the IPv6 flood variant).
    let mut dest_opts = c(TCP_SYN);
    dest_opts.ext = vec![(60, vec![0, 0, 1, 4, 0, 0, 0, 0])];
    vec![
        c(TCP_SYN).build(),
        ext.build(),
        dest_opts.build(),
        L4v6::udp(CLIENT6, 47002, VIP6, 53)
            .macs(CLIENT_MAC, PORT_MAC)
            .payload(b"q")
            .build(),
        c(TCP_ACK).payload(b"data").build(),
        first.macs(CLIENT_MAC, PORT_MAC).build(),
        later.macs(CLIENT_MAC, PORT_MAC).build(),
        icmp6_error(
            mac_of6(member),
            PORT_MAC,
            member,
            VIP6,
            2,
            0,
            1280u32.to_be_bytes(),
            &to_member[14..],
        ),
        neighbour_solicitation6(),
        // The member's SYN-ACK (in cookie mode: the cookie program's step).
        L4v6::tcp(member, 22, VIP6, snat, TCP_SYN | TCP_ACK)
            .macs(mac_of6(member), PORT_MAC)
            .build(),
    ]
}

/// Mutated IPv6 frames through the IPv6 programs (entered from `lb` and `lb_tc` by tail
/// calls): bytes flipped anywhere in the headers (next headers, lengths, extension header
/// lengths, fragment fields, ICMPv6 types, embedded headers), frames cut short or grown. Every
/// frame gets one of the programs' verdicts, passed or dropped frames come back unchanged,
/// and the verdict counters sum to the frames run.
#[test]
fn mutated_ipv6_frames_through_xdp_and_tc() {
    fuzz6("", 5);
}

/// The same with the listener in cookie mode (`half_open_limit = 0`): every SYN, ACK and
/// member SYN-ACK of the corpus goes through the cookie program too.
#[test]
fn mutated_ipv6_frames_in_cookie_mode() {
    fuzz6("half_open_limit = 0", 10);
}

/// `frames / share` mutated frames (LB_FUZZ_FRAMES, 1M by default) through each of `lb` and
/// `lb_tc`, the IPv6 listener configured with `listener_extra`.
fn fuzz6(listener_extra: &str, share: u64) {
    let Some(mut env) = Env::new6(&integration_tests::fixture::ipv6_config(listener_extra)) else {
        return;
    };
    let frames: u64 = std::env::var("LB_FUZZ_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
        / share;
    // A held flow for data and errors to land on (in cookie mode: opened by the cookie ACK).
    let syn = L4v6::tcp(CLIENT6, 47000, VIP6, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    let (_, out) = env.run(&syn.build());
    let mut o = L4v6::parse(&out).expect("the SYN answered");
    if o.flags == TCP_SYN | TCP_ACK {
        let mut ack = L4v6::tcp(CLIENT6, 47000, VIP6, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
        (ack.seq, ack.ack) = (1001, o.seq.wrapping_add(1));
        let (_, out) = env.run(&ack.build());
        o = L4v6::parse(&out).expect("the cookie ACK balanced");
    }
    let seeds = corpus6(&(o.dst, o.sport));
    let mut rng = Rng(DEFAULT_SEED | 1);
    for (program, allowed, unchanged) in [
        (
            "lb",
            &[XDP_DROP, XDP_PASS, XDP_TX][..],
            &[XDP_DROP, XDP_PASS][..],
        ),
        ("lb_tc", &[0, 2, 7][..], &[0, 2][..]),
    ] {
        let runner = env.dp.runner(program).unwrap();
        let before: u64 = env.verdicts().iter().sum();
        let ns = env.ns.name.clone();
        let mut refused = 0u64;
        in_netns(&ns, || {
            for i in 0..frames / 2 {
                let mut f = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(3) {
                    match rng.below(6) {
                        0 => f.truncate(14 + rng.below(f.len().saturating_sub(13))),
                        1 => f.extend((0..rng.below(16)).map(|_| rng.byte())),
                        _ => {
                            // Headers: the first 130 bytes (outer, extension, transport,
                            // ICMPv6 and the start of its embedded packet).
                            let at = 14 + rng.below(f.len().min(130).saturating_sub(14).max(1));
                            if at < f.len() {
                                f[at] = rng.byte();
                            }
                        }
                    }
                }
                let (action, out) = match runner.run(&f) {
                    Ok(r) => r,
                    Err(e) if program != "lb" && e.raw_os_error() == Some(22) && too_short(&f) => {
                        refused += 1;
                        continue;
                    }
                    Err(e) => panic!("IPv6 frame {i}: test_run failed: {e}\n{}", hex(&f)),
                };
                assert!(
                    allowed.contains(&action),
                    "IPv6 frame {i} through {program}: verdict {action}\n{}",
                    hex(&f)
                );
                if unchanged.contains(&action) {
                    assert_eq!(
                        hex(&out[..f.len().min(out.len())]),
                        hex(&f),
                        "IPv6 frame {i} through {program}: passed or dropped, yet changed"
                    );
                }
            }
        })
        .unwrap();
        let after: u64 = env.verdicts().iter().sum();
        let v = env.verdicts();
        let named = nonzero(&v);
        println!(
            "FUZZ6 program={program} frames={} refused={refused} verdicts: {}",
            frames / 2,
            named.join(" ")
        );
        assert_eq!(
            after - before,
            frames / 2 - refused,
            "verdict counters sum to the frames run"
        );
    }
}
