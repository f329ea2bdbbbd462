//! BPF_PROG_TEST_RUN ns/packet of lb's paths against the trivial XDP program of the same object,
//! with the conntrack table filled to each size and pools of each member count, and the memory
//! the kernel charges to the maps at each size.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context as _};
use integration_tests::{fixture::*, in_netns, Tcp, TCP_ACK, TCP_PSH, TCP_SYN};
use lb_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};

use crate::Spread;

const TC_ACT_REDIRECT: u32 = 7;

/// New flows timed per run of the SYN path (they stay in the table).
const SYN_CALLS: u32 = 2_000;
/// Calls per run of the other paths.
const CALLS: u32 = 20_000;

/// One cell of the grid: a pool size and a table size.
pub struct Cell {
    pub members: u32,
    /// Flows asked for, and flows in the table while established/reply were timed.
    pub asked: u32,
    pub flows: u32,
    pub trivial: Spread,
    pub established: Spread,
    /// The same flow every call (its entry cached).
    pub established_hot: Spread,
    /// As `established`, through the TC program (skb test runs).
    pub established_tc: Spread,
    pub reply: Spread,
    pub syn: Spread,
    /// Flows in the table after the SYN runs (the memory is measured then).
    pub flows_after_syn: u32,
    pub conntrack_bytes: u64,
    pub maps_bytes: u64,
    /// One expiry cycle over the table without pauses (the daemon rests between chunks):
    /// its CPU time and its longest chunk, in ms.
    pub expiry_ms: f64,
    pub expiry_chunk_ms: f64,
    /// `lb flows` over the table (the CLI, as an operator runs it).
    pub flows_cli: Option<FlowsCli>,
}

/// `lb flows --count` and `lb flows --json` over a filled table: seconds each, and the most
/// memory either process held.
pub struct FlowsCli {
    pub count_s: f64,
    pub json_s: f64,
    pub json_lines: u64,
    pub max_rss_mib: f64,
}

/// Runs `lb <args>` with stdout counted and thrown away: (seconds, lines, max RSS in KiB).
fn timed_lb(lb: &std::path::Path, args: &[&str]) -> anyhow::Result<(f64, u64, u64)> {
    use std::io::Read as _;
    let start = std::time::Instant::now();
    let mut child = std::process::Command::new(lb)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for this child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(
        rc == pid && status == 0,
        "lb {args:?} failed (status {status})"
    );
    Ok((start.elapsed().as_secs_f64(), lines, usage.ru_maxrss as u64))
}

/// `lb flows` over `env`'s table, through a state file that names its pins.
fn flows_cli(env: &Env, lb: &std::path::Path) -> anyhow::Result<FlowsCli> {
    let dir = std::env::temp_dir().join(integration_tests::unique("flows-state"));
    let state = lb::state::State {
        loadbalancer: "bench".into(),
        namespace: env.ns.name.clone(),
        port: "port0".into(),
        vip_address: VIP.into(),
        pin_dir: env.pin_dir().to_path_buf(),
        xdp_mode: "tc".into(),
        pid: std::process::id(),
        plan: env.plan.clone(),
        owned: Default::default(),
        attachments: Vec::new(),
        phase: lb::state::Phase::Running,
        program_set: String::new(),
        slot: 0,
        checks: Default::default(),
    };
    state.write(&dir)?;
    let d = dir.display().to_string();
    let r = (|| {
        let (count_s, _, rss_a) = timed_lb(lb, &["flows", "--count", "--state-dir", &d])?;
        let (json_s, json_lines, rss_b) = timed_lb(lb, &["flows", "--json", "--state-dir", &d])?;
        Ok(FlowsCli {
            count_s,
            json_s,
            json_lines,
            max_rss_mib: rss_a.max(rss_b) as f64 / 1024.0,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// A cell that cannot be filled: why.
pub struct Skipped {
    pub members: u32,
    pub asked: u32,
    pub why: String,
}

/// An open flow: what the client sent from and what lb chose for it.
#[derive(Clone, Copy)]
struct Open {
    client: Ipv4Addr,
    member: Ipv4Addr,
    member_port: u16,
    snat: u16,
}

/// The seed's listener with a pool of `n` members: 10.0.0.2..=10.0.0.129, port 22 for the
/// first 128, 23 for the next (every member its own address:port, so its own SNAT space).
/// SYN cookies off: the grid times the stateful path at each table size, and fills the table
/// with handshakes far past any half-open budget.
fn pool_config(n: u32) -> String {
    // The grid's flows are handshakes (SYNs only): a connect timeout longer than the grid
    // keeps them all in the table, so the expiry pass is a pure census and `lb flows` lists
    // every flow filled (with the seed's 5 s, a million-flow fill lost its oldest ones).
    let mut cfg = integration_tests::with_half_open_limit(
        &include_str!("../../../../examples/seed.toml").replace(
            "timeout_member_connect = 5000",
            "timeout_member_connect = 3600000",
        ),
        -1,
    );
    let first = cfg.find("[[loadbalancer.pool.member]]").unwrap();
    cfg.truncate(first);
    for i in 0..n {
        cfg.push_str(&format!(
            "[[loadbalancer.pool.member]]\nid = \"m{i}\"\naddress = \"10.0.0.{}\"\nprotocol_port = {}\n\n",
            2 + i % 128,
            22 + i / 128
        ));
    }
    cfg
}

/// Distinct clients 10.1.0.0 + k, each from port 40000.
fn client(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + k)
}

fn syn(k: u32) -> Vec<u8> {
    Tcp::new(client(k), 40000, VIP, 22, TCP_SYN)
        .macs(CLIENT_MAC, PORT_MAC)
        .build()
}

pub fn run(
    runs: usize,
    member_counts: &[u32],
    flow_levels: &[u32],
    lb: &std::path::Path,
) -> anyhow::Result<(Vec<Cell>, Vec<Skipped>)> {
    let mut cells = Vec::new();
    let mut skipped = Vec::new();
    for &members in member_counts {
        let top = *flow_levels.iter().max().unwrap_or(&0);
        let capacity = top + SYN_CALLS * runs as u32 * flow_levels.len() as u32 + 1024;
        let mut env = Env::with_capacity(&pool_config(members), capacity)
            .context("BPF_PROG_TEST_RUN needs root")?;
        for i in 0..members.min(128) {
            neighbour(&env.ns, Ipv4Addr::new(10, 0, 0, 2 + i as u8));
        }
        // Every member has its own SNAT port space; past ~80% of it, random tries start to
        // fail (SNAT_TRIES), so a table this pool cannot hold is reported, not faked.
        let snat_space = members * (SNAT_PORT_MAX - SNAT_PORT_MIN + 1) as u32;
        let limit = snat_space / 10 * 8;
        let ns = env.ns.name.clone();
        let mut open: Vec<Open> = Vec::new();
        let mut next = 0u32;
        for &asked in flow_levels {
            if asked > limit {
                skipped.push(Skipped {
                    members,
                    asked,
                    why: format!(
                        "{members} members x {} SNAT ports = {snat_space} flows at most \
                         (one VIP address towards each member); filled to 80% that is {limit}",
                        SNAT_PORT_MAX - SNAT_PORT_MIN + 1
                    ),
                });
                continue;
            }
            let dp = &mut env.dp;
            let cell = in_netns(&ns, || -> anyhow::Result<Cell> {
                // Fill with real SYNs through the program: least connections spreads them.
                while next < asked {
                    let (a, out, _) = dp.test_run_program("lb", &syn(next), 1)?;
                    ensure!(
                        a == XDP_TX,
                        "filling: SYN {next} got action {a}, verdicts {:?}",
                        dp.maps.verdicts()?
                    );
                    let o = Tcp::parse(&out).context("SYN output")?;
                    open.push(Open {
                        client: client(next),
                        member: o.dst,
                        member_port: o.dport,
                        snat: o.sport,
                    });
                    next += 1;
                }
                // Every SYN so far opened a flow (the earlier sizes' SYN runs included).
                let flows = next;
                let mut time = |prog: &str,
                                calls: u32,
                                frame: &mut dyn FnMut(u32) -> Vec<u8>,
                                want: u32|
                 -> anyhow::Result<f64> {
                    let mut total = 0u128;
                    for i in 0..calls {
                        let (a, _, d) = dp.test_run_program(prog, &frame(i), 1)?;
                        ensure!(
                            a == want,
                            "{prog}: call {i}: action {a}, verdicts {:?}",
                            dp.maps.verdicts()?
                        );
                        total += d.as_nanos();
                    }
                    Ok(total as f64 / calls as f64)
                };
                // Established and reply packets cycle through the open flows with a large
                // prime stride: every call a different flow, as on a busy node.
                let pick = |i: u32, r: usize| {
                    open[((i as u64 * 7_919 + r as u64 * 104_729) % open.len() as u64) as usize]
                };
                let (mut trivial, mut est, mut rep, mut syns) = (vec![], vec![], vec![], vec![]);
                let (mut hot, mut tc) = (vec![], vec![]);
                for r in 0..runs {
                    let data = |i: u32| {
                        let f = pick(i, r);
                        Tcp::new(f.client, 40000, VIP, 22, TCP_ACK | TCP_PSH)
                            .macs(CLIENT_MAC, PORT_MAC)
                            .payload(&[0u8; 64])
                            .build()
                    };
                    trivial.push(time("lb_peer_pass", CALLS, &mut |i| data(i), XDP_PASS)?);
                    est.push(time("lb", CALLS, &mut |i| data(i), XDP_TX)?);
                    // One flow over and over: its entry stays in cache, so this is the cost of
                    // the path itself, without the memory latency of a large table.
                    hot.push(time("lb", CALLS, &mut |_| data(0), XDP_TX)?);
                    // The same path through the TC entry point (the default attach mode).
                    tc.push(time("lb_tc", CALLS, &mut |i| data(i), TC_ACT_REDIRECT)?);
                    rep.push(time(
                        "lb",
                        CALLS,
                        &mut |i| {
                            let f = pick(i, r);
                            Tcp::new(f.member, f.member_port, VIP, f.snat, TCP_ACK)
                                .macs(mac_of(f.member), PORT_MAC)
                                .payload(&[0u8; 64])
                                .build()
                        },
                        XDP_TX,
                    )?);
                    let first = next;
                    syns.push(time("lb", SYN_CALLS, &mut |i| syn(first + i), XDP_TX)?);
                    next += SYN_CALLS;
                }
                // Expiry over the filled table (nothing is idle: a pure census pass).
                let members_ix: Vec<u32> = (0..members).collect();
                let expiry = dp.sweep(&members_ix, &[0], &[])?;
                let memory = lb::dataplane::map_memory(&dp.maps.dir)?;
                Ok(Cell {
                    members,
                    asked,
                    flows,
                    trivial: Spread::of(trivial),
                    established: Spread::of(est),
                    established_hot: Spread::of(hot),
                    established_tc: Spread::of(tc),
                    reply: Spread::of(rep),
                    syn: Spread::of(syns),
                    flows_after_syn: next,
                    conntrack_bytes: memory
                        .iter()
                        .filter(|(n, _)| n == "CONNTRACK")
                        .map(|(_, b)| b)
                        .sum(),
                    maps_bytes: memory.iter().map(|(_, b)| b).sum(),
                    expiry_ms: expiry.duration.as_secs_f64() * 1e3,
                    expiry_chunk_ms: expiry.longest_chunk.as_secs_f64() * 1e3,
                    flows_cli: None,
                })
            })??;
            let mut cell = cell;
            if asked >= 100_000 {
                let f = flows_cli(&env, lb)?;
                eprintln!(
                    "  lb flows over {} flows: --count {:.2} s, --json {:.2} s ({} lines), max RSS {:.1} MiB",
                    cell.flows_after_syn, f.count_s, f.json_s, f.json_lines, f.max_rss_mib
                );
                cell.flows_cli = Some(f);
            }
            // The SYN runs' flows stay open; established/reply at the next size use them too.
            eprintln!(
                "  {members:>3} members, {:>7} flows: trivial {:.0}  established {:.0}  reply {:.0}  SYN {:.0} ns; expiry cycle {:.0} ms (longest chunk {:.1} ms)",
                cell.flows,
                cell.trivial.median,
                cell.established.median,
                cell.reply.median,
                cell.syn.median,
                cell.expiry_ms,
                cell.expiry_chunk_ms
            );
            cells.push(cell);
        }
    }
    Ok((cells, skipped))
}
