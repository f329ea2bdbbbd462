//! `cargo xtask perf`: the numbers issue 2 asks for, measured side by side in one run.
//! - BPF_PROG_TEST_RUN ns/packet of lb's SYN (new flow), established and reply paths, against
//!   the trivial XDP_PASS program of the same object;
//! - single-stream TCP bulk throughput client -> member: direct, through lb with native XDP,
//!   with generic XDP, and at TC (the default).
//!
//! Numbers are reported, never asserted: machines here are shared and noisy.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Parser;
use integration_tests::{fixture::*, in_netns, topology, Tcp, TCP_ACK, TCP_PSH, TCP_SYN};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    lb: PathBuf,
    /// seconds per throughput run
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// repetitions of each measurement (the median is reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn test_run_numbers(runs: usize) -> anyhow::Result<()> {
    // SYN cookies off here: this environment times the stateful SYN path; `cookies` below
    // (every SYN answered with a cookie) times the cookie path.
    let seed = include_str!("../../../examples/seed.toml");
    let with_limit = |l: i64| integration_tests::with_half_open_limit(seed, l);
    let started = Instant::now();
    let mut env = Env::with_capacity(&with_limit(-1), 131_072)
        .ok_or_else(|| anyhow::anyhow!("needs root"))?;
    // What the verifier did for the object just loaded (maps, then every program): the
    // newest loaded program of each name is this one's.
    let load = started.elapsed();
    // The IPv6 programs, which only an IPv6 load balancer loads.
    let started6 = Instant::now();
    let _v6 = Env::new6(&integration_tests::fixture::ipv6_config(""));
    let load6 = started6.elapsed();
    let mut newest: std::collections::BTreeMap<String, (u32, Option<u32>)> = Default::default();
    for p in aya::programs::loaded_programs().flatten() {
        let Some(name) = p.name_as_str() else {
            continue;
        };
        if [
            "lb",
            "lb6",
            "lb6_icmp",
            "lb6_cookie",
            "lb_tc",
            "lb_tc6",
            "lb_tc6_icmp",
            "lb_tc6_cookie",
            "lb_tc_fast",
        ]
        .contains(&name)
            && newest.get(name).is_none_or(|(id, _)| p.id() > *id)
        {
            newest.insert(name.into(), (p.id(), p.verified_instruction_count()));
        }
    }
    let counts: Vec<String> = newest
        .iter()
        .map(|(n, (_, c))| format!("{n} {}", c.map_or("?".into(), |c| c.to_string())))
        .collect();
    println!(
        "object load (maps and programs, verification included): {:.0} ms (IPv6 load balancer: {:.0} ms); verified instructions: {}",
        load.as_secs_f64() * 1e3,
        load6.as_secs_f64() * 1e3,
        counts.join(", ")
    );
    let mut cookies = Env::with_capacity(&with_limit(0), 131_072);
    // A connection (the member answers before its data comes).
    let (member, _, snat) = env.connect(50000);
    let data = Tcp::new(CLIENT, 50000, VIP, 22, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PORT_MAC)
        .payload(&[0u8; 64])
        .build();
    let reply = Tcp::new(member, 22, VIP, snat, TCP_ACK)
        .macs(mac_of(member), PORT_MAC)
        .payload(&[0u8; 64])
        .build();
    let ns = env.ns.name.clone();
    let dp = &mut env.dp;
    // XDP test runs do not restore the frame between repetitions, so a NAT program would see
    // its own output from the second repetition on: every path is timed one run per call,
    // averaged over many calls, and so is the trivial program it is compared with.
    let n = 20_000u32;
    let rows = in_netns(&ns, || -> anyhow::Result<Vec<(String, f64)>> {
        let mut per_run =
            |prog: &str, frame: &dyn Fn(u32) -> Vec<u8>, want: u32| -> anyhow::Result<f64> {
                let mut total = 0u128;
                for i in 0..n {
                    let (a, _, d) = dp.test_run_program(prog, &frame(i), 1)?;
                    anyhow::ensure!(
                        a == want,
                        "{prog}: packet {i}: action {a}, verdicts {:?}",
                        dp.maps.verdicts()?
                    );
                    total += d.as_nanos();
                }
                Ok(total as f64 / n as f64)
            };
        let (mut trivial, mut est, mut rep, mut syn) = (vec![], vec![], vec![], vec![]);
        for r in 0..runs as u32 {
            trivial.push(per_run("lb_peer_pass", &|_| data.clone(), 2)?);
            est.push(per_run("lb", &|_| data.clone(), XDP_TX)?);
            rep.push(per_run("lb", &|_| reply.clone(), XDP_TX)?);
            // New flows: every SYN from a distinct client.
            syn.push(per_run(
                "lb",
                &|i| {
                    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i + r * n);
                    Tcp::new(src, 40000, VIP, 22, TCP_SYN)
                        .macs(CLIENT_MAC, PORT_MAC)
                        .build()
                },
                XDP_TX,
            )?);
        }
        Ok(vec![
            ("trivial XDP_PASS".into(), median(trivial)),
            ("lb established, client->member".into(), median(est)),
            ("lb reply, member->client".into(), median(rep)),
            ("lb SYN, new flow, 2 members".into(), median(syn)),
        ])
    })??;
    let mut rows = rows;
    if let Some(c) = cookies.as_mut() {
        let ns = c.ns.name.clone();
        let dp = &mut c.dp;
        let r = in_netns(&ns, || -> anyhow::Result<Vec<(String, f64)>> {
            let (mut syn, mut ack) = (vec![], vec![]);
            for r in 0..runs as u32 {
                let (mut t_syn, mut t_ack) = (0u128, 0u128);
                for i in 0..n {
                    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 0, 0)) + i + r * n);
                    let s = Tcp::new(src, 40000, VIP, 22, TCP_SYN)
                        .macs(CLIENT_MAC, PORT_MAC)
                        .options(&[2, 4, 0x05, 0xb4])
                        .build();
                    let (a, out, d) = dp.test_run_program("lb", &s, 1)?;
                    anyhow::ensure!(a == XDP_TX, "cookie SYN {i}: action {a}");
                    t_syn += d.as_nanos();
                    let o = Tcp::parse(&out).ok_or_else(|| anyhow::anyhow!("no SYN-ACK"))?;
                    let mut k = Tcp::new(src, 40000, VIP, 22, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
                    (k.seq, k.ack) = (o.ack, o.seq.wrapping_add(1));
                    let (a, _, d) = dp.test_run_program("lb", &k.build(), 1)?;
                    anyhow::ensure!(a == XDP_TX, "cookie ACK {i}: action {a}");
                    t_ack += d.as_nanos();
                }
                syn.push(t_syn as f64 / n as f64);
                ack.push(t_ack as f64 / n as f64);
            }
            Ok(vec![
                ("lb SYN answered with a SYN cookie".into(), median(syn)),
                (
                    "lb cookie ACK: flow opened, SYN to the member".into(),
                    median(ack),
                ),
            ])
        })??;
        rows.extend(r);
    }
    println!(
        "BPF_PROG_TEST_RUN, ns/packet, one run per call, mean of {n} calls (median of {runs}):"
    );
    for (k, v) in rows {
        println!("  {k:<52} {v:>8.1}");
    }
    println!(
        "  (conntrack grew to {} flows during the SYN runs)",
        n as usize * runs
    );
    // The daemon's expiry cycle over the table (expiry + drift correction), without pauses.
    let members: Vec<u32> = env.plan.members.iter().map(|m| m.index).collect();
    let r = env.dp.sweep(&members, &[0], &[])?;
    println!(
        "expiry cycle over {} flows ({} entries): {:.1} ms, longest chunk {:.2} ms",
        r.flows,
        r.entries,
        r.duration.as_secs_f64() * 1e3,
        r.longest_chunk.as_secs_f64() * 1e3
    );
    // Walking the table with two syscalls per entry, as before batch lookups.
    let t = Instant::now();
    let entries = env.dp.maps.flows().len();
    println!(
        "entry-by-entry walk of the same table ({entries} entries): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn bulk(client_ns: &str, to: Ipv4Addr, seconds: u64) -> anyhow::Result<f64> {
    let mut c = topology::connect(client_ns, to, 22)?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        c.stream.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(sent as f64 * 8.0 / secs / 1e9)
}

/// Single-stream bulk throughput direct and through lb, with the hosts' offloads off (every
/// frame an MTU-sized segment with a complete checksum) or on (TSO/GSO and CHECKSUM_PARTIAL,
/// as real hosts send).
fn throughput(args: &Args, offloads: bool) -> anyhow::Result<()> {
    const M: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    let mut rows: Vec<(String, Vec<f64>)> = vec![
        ("direct".into(), vec![]),
        ("lb native XDP".into(), vec![]),
        ("lb generic XDP".into(), vec![]),
        ("lb tc (default)".into(), vec![]),
    ];
    for _ in 0..args.runs {
        for (mode, i) in [("direct", 0usize), ("native", 1), ("generic", 2), ("tc", 3)] {
            let cfg = topology::TestConfig::seed(|t| {
                let cut = t.find("[[loadbalancer.pool.member]]\nid = \"227b").unwrap();
                t[..cut].to_string()
            });
            let _left = cfg.leftovers();
            let topo = topology::SeedTopology::build(&[M], false, offloads);
            let gbps = if mode == "direct" {
                bulk(&topo.client.name, M, args.seconds)?
            } else {
                let mut d = topology::Daemon::start(
                    &args.lb,
                    &topo.node.name,
                    &cfg.path,
                    &["--xdp-mode", mode],
                );
                topology::wait_running(&mut d, &cfg);
                let g = bulk(&topo.client.name, topology::VIP, args.seconds)?;
                d.stop();
                g
            };
            rows[i].1.push(gbps);
        }
    }
    println!(
        "single TCP stream client -> member, Gbit/s (median of {}, {} s each; offloads {} on the hosts):",
        args.runs,
        args.seconds,
        if offloads { "on" } else { "off" }
    );
    let direct = median(rows[0].1.clone());
    for (k, v) in rows {
        let m = median(v.clone());
        println!(
            "  {k:<16} {m:>7.2}  ({:.2}x direct)  runs: {}",
            m / direct,
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    test_run_numbers(args.runs)?;
    throughput(&args, false)?;
    throughput(&args, true)
}
