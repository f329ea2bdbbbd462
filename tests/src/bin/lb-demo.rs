//! `cargo xtask demo`: the seed's scenario, end to end, in namespaces this program creates and
//! removes (also on Ctrl-C): a node with br-int, a client (10.0.0.1), members 10.0.0.2 and
//! 10.0.0.4 serving port 22, and `lb run` with examples/seed.toml in between.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Parser;
use integration_tests::topology::*;

#[derive(Parser)]
struct Args {
    /// the lb binary
    #[arg(long)]
    lb: PathBuf,
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// keep everything up until Ctrl-C
    #[arg(long)]
    hold: bool,
}

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
/// Not in the seed: joins the pool by a reload at the end of the demo.
const M3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const SEED_ID: &str = "574a31da-a28a-449f-8c9d-3d3687c3c02a";

fn step(s: &str) {
    println!("\n== {s}");
}

/// `n` clients connect through the VIP and stay connected; prints who greeted each.
fn connect_n(topo: &SeedTopology, n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::new();
    for i in 0..n {
        let c = connect(&topo.client.name, VIP, 22)?;
        println!(
            "client #{i} -> 10.0.0.250:22  greeted by: {}",
            c.greeting.trim()
        );
        conns.push(c);
    }
    Ok(conns)
}

/// `lb stats`, after the daemon's next once-a-second sweep so the flow census is current.
fn print_stats(lb: &PathBuf) {
    std::thread::sleep(Duration::from_millis(1100));
    let out = Command::new(lb).args(["stats"]).output().expect("lb stats");
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the demo creates namespaces and loads BPF: run it as root");
    }
    if lb::node::netns_exists(&format!("qlbaas-{SEED_ID}")) {
        anyhow::bail!(
            "namespace qlbaas-{SEED_ID} already exists: is another lb (or demo) running the seed?"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))?;
    }
    let _left = Leftovers {
        namespaces: vec![format!("qlbaas-{SEED_ID}")],
        dirs: vec![PathBuf::from("/sys/fs/bpf/lb").join(SEED_ID)],
    };

    step("topology (all in fresh namespaces): client 10.0.0.1, members 10.0.0.2 and 10.0.0.4 on br-int (and 10.0.0.6, not in the pool yet)");
    let mut topo = SeedTopology::new(&[M1, M2, M3]);
    println!(
        "node namespace {} with br-int; client {}; members {}",
        topo.node.name,
        topo.client.name,
        topo.members
            .iter()
            .map(|m| format!("{} ({})", m.addr, m.ns.name))
            .collect::<Vec<_>>()
            .join(", ")
    );

    step("lb run --config examples/seed.toml (inside the node namespace)");
    // A copy, so the reload step can edit it.
    let seed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed.toml");
    let config = std::env::temp_dir().join(format!("lb-demo-{}.toml", std::process::id()));
    std::fs::copy(&seed, &config)?;
    let mut daemon = Daemon::start(
        &args.lb,
        &topo.node.name,
        &config,
        &["--xdp-mode", &args.xdp_mode],
    );
    let t0 = Instant::now();
    let running = |pid: Option<u32>| {
        lb::state::State::read(Path::new("/run/lb"), SEED_ID)
            .is_some_and(|s| Some(s.pid) == pid && s.phase == lb::state::Phase::Running)
    };
    while !running(daemon.pid()) {
        if let Some(s) = daemon.exited() {
            anyhow::bail!("lb exited ({s}):\n{}", daemon.log_text());
        }
        if t0.elapsed() > Duration::from_secs(20) || stop.load(Ordering::Relaxed) {
            anyhow::bail!("lb did not come up:\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    print!("{}", daemon.log_text());

    step("six clients connect to 10.0.0.250:22 and stay connected (leastconn spreads them)");
    let conns = connect_n(&topo, 6)?;
    for m in &topo.members {
        let peers = m.server.peers.lock().unwrap();
        let from: Vec<_> = peers
            .iter()
            .filter(|p| p.port() < 60000)
            .map(|p| p.to_string())
            .collect();
        if !from.is_empty() {
            println!("member {} saw connections from {}", m.addr, from.join(", "));
        }
    }
    print_stats(&args.lb);

    step("clients disconnect: active counts return to 0");
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    print_stats(&args.lb);

    step("member 10.0.0.2 dies; the TCP monitor (delay 5 s, fall 3) marks it down");
    topo.member(M1).server.kill();
    let t0 = Instant::now();
    loop {
        let s = stats(&args.lb, &PathBuf::from("/run/lb"));
        let down = s[0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["address"] == "10.0.0.2" && m["operating_status"] == "ERROR");
        if down {
            println!("marked down after {:.1} s", t0.elapsed().as_secs_f64());
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) || stop.load(Ordering::Relaxed) {
            anyhow::bail!("member not marked down");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut conns = connect_n(&topo, 4)?;
    print_stats(&args.lb);

    step(
        "the operator adds member 10.0.0.6 to the file and sends SIGHUP; the 4 connections stay up",
    );
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str("\n[[loadbalancer.pool.member]]\nid = \"b1c0ffee-0000-4000-8000-000000000006\"\naddress = \"10.0.0.6\"\nprotocol_port = 22\nweight = 1\n");
    std::fs::write(&config, text)?;
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let t0 = Instant::now();
    while stats(&args.lb, &PathBuf::from("/run/lb"))[0]["members"]
        .as_array()
        .map_or(0, |m| m.len())
        < 3
    {
        if t0.elapsed() > Duration::from_secs(10) || stop.load(Ordering::Relaxed) {
            anyhow::bail!("reload not applied:\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in &mut conns {
        c.echo(b"still there?\n")?;
    }
    println!("the 4 established connections still echo through lb");
    let more = connect_n(&topo, 4)?;
    print_stats(&args.lb);
    drop(more);

    step("an upgrade: a new lb takes over with `lb run --takeover`; the 4 connections stay up");
    let mut upgraded = Daemon::start(
        &args.lb,
        &topo.node.name,
        &config,
        &["--xdp-mode", &args.xdp_mode, "--takeover"],
    );
    let t0 = Instant::now();
    while !running(upgraded.pid()) {
        if let Some(s) = upgraded.exited() {
            anyhow::bail!("the new lb exited ({s}):\n{}", upgraded.log_text());
        }
        if t0.elapsed() > Duration::from_secs(20) || stop.load(Ordering::Relaxed) {
            anyhow::bail!("the new lb did not take over:\n{}", upgraded.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let old = loop {
        if let Some(s) = daemon.exited() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            anyhow::bail!("the old lb did not exit:\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in upgraded.log_text().lines().filter(|l| {
        l.contains("replaced atomically")
            || l.contains("handed over")
            || l.contains("load balancer up")
    }) {
        println!("{line}");
    }
    println!(
        "took over in {} ms; the old lb exited ({old}) leaving the data path in place",
        t0.elapsed().as_millis()
    );
    for c in &mut conns {
        c.echo(b"after the upgrade\n")?;
    }
    println!("the 4 established connections still echo through lb");
    drop(conns);
    let mut daemon = upgraded;

    if args.hold {
        step("holding; try: sudo ip netns exec <client ns> nc 10.0.0.250 22 ; lb stats --watch 1 ; Ctrl-C to stop");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    step(
        "SIGTERM: lb detaches its programs, unpins maps, removes the namespace and port it created",
    );
    let status = daemon.stop();
    print!(
        "{}",
        daemon
            .log_text()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = std::fs::remove_file(&config);
    println!(
        "\nlb exited: {status:?}; namespace still there: {}",
        lb::node::netns_exists(&format!("qlbaas-{SEED_ID}"))
    );
    Ok(())
}
