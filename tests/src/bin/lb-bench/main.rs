//! `cargo xtask bench`: lb side by side with a direct path, the seed's HAProxy and nftables full
//! NAT, in one run on one topology, plus BPF_PROG_TEST_RUN ns/packet against a trivial program
//! over conntrack sizes and pool sizes, and the control plane (deploy, update, reload, takeover,
//! teardown, many load balancers on a node, memory) beside the real haproxy. Prints a table and
//! writes BENCHMARKS.md and a plot.
//!
//! Every figure is a median over `--runs` repetitions with its spread, and every comparison is
//! a ratio to a baseline measured in the same run. Nothing here asserts a target: machines are
//! shared and noisy; the report says which targets the numbers meet.
//!
//! Knobs for investigating (not used for the report): `LB_BENCH_CONNECTIONS=N` (wrk's
//! connections, default 32), `LB_BENCH_DIAG=1` (TCP counters of client and members after each
//! new-connection run: SYN retransmissions, PAWS and TIME_WAIT refusals), `LB_BENCH_NO_TS=1`
//! (TCP timestamps off on the client).

mod control;
mod kmem;
mod micro;
mod report;
mod traffic;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use traffic::Route;

#[derive(Parser)]
struct Args {
    /// The `lb` binary (release)
    #[arg(long)]
    lb: PathBuf,
    /// Seconds per wrk / iperf3 run
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Repetitions of every measurement (median and spread are reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Paths to drive real traffic through (direct is the baseline and always runs)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lb,lb-xdp,lb-log,haproxy,nftables,lb-after"
    )]
    paths: Vec<Route>,
    /// Conntrack sizes for the ns/packet grid
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    flows: Vec<u32>,
    /// Pool sizes for the ns/packet grid
    #[arg(long, value_delimiter = ',', default_value = "2,64,256")]
    members: Vec<u32>,
    /// Skip the real-traffic part
    #[arg(long)]
    no_traffic: bool,
    /// Skip the ns/packet grid
    #[arg(long)]
    no_grid: bool,
    /// Skip the control plane (deploy, -sf, reload, takeover, teardown, many load balancers)
    #[arg(long, conflicts_with = "only_control")]
    no_control: bool,
    /// Measure the control plane only (no real traffic, no ns/packet grid)
    #[arg(long)]
    only_control: bool,
    /// Load balancers the control plane deploys and updates one after another on one node,
    /// lb and haproxy each (at most 240)
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    control_lbs: Vec<usize>,
    /// The real haproxy the control plane compares with
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
    /// Where to write the report and the plot
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    #[arg(long, default_value = "docs/benchmarks.svg")]
    plot: PathBuf,
    /// The command line to quote in the report
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

/// A median over repetitions, with the extremes.
#[derive(Clone, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark needs root (BPF, namespaces)"
    );
    let mut r = report::Report::new(&args);
    if !args.no_grid && !args.only_control {
        eprintln!(
            "bench: BPF_PROG_TEST_RUN ns/packet, pools {:?} x conntrack {:?}, {} runs",
            args.members, args.flows, args.runs
        );
        let (cells, skipped) = micro::run(args.runs, &args.members, &args.flows, &args.lb)?;
        r.cells = cells;
        r.skipped = skipped;
    }
    if !args.no_traffic && !args.only_control {
        // Kernel run-time statistics of BPF programs (lb's own CPU) while this fd is open;
        // off during the grid, where they would add their own cost to every test run.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let mut routes = vec![Route::Direct];
        routes.extend(args.paths.iter().filter(|p| **p != Route::Direct));
        for run in 0..args.runs {
            // Interleaved, so drift on a shared machine touches every path alike.
            for &route in &routes {
                eprintln!("bench: run {}/{}: {route}", run + 1, args.runs);
                let m = traffic::measure(route, &args.lb, args.seconds)
                    .with_context(|| format!("measuring {route}"))?;
                eprintln!(
                    "  keep-alive {:.0} req/s p99 {:.2} ms | new conn {:.0}/s p99 {:.2} ms (errors {}) | bulk {:.2} Gbit/s",
                    m.keepalive.rps,
                    m.keepalive.p99_ms,
                    m.close.rps,
                    m.close.p99_ms,
                    m.close.errors,
                    m.bulk_gbps
                );
                r.traffic.push(m);
            }
        }
    }
    if !args.no_control {
        let lb = args
            .lb
            .canonicalize()
            .with_context(|| format!("the lb binary {}", args.lb.display()))?;
        let plan = control::Plan {
            lb: &lb,
            haproxy: &args.haproxy,
            runs: args.runs,
            fleets: &args.control_lbs,
        };
        r.control = Some(control::run(&plan).context("measuring the control plane")?);
    }
    let text = r.render();
    println!("{text}");
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    if args.only_control {
        // Nothing to plot: the plot's panels are real traffic and the grid.
        eprintln!("bench: wrote {}", args.out.display());
        return Ok(());
    }
    r.plot(&args.plot)
        .with_context(|| format!("writing {}", args.plot.display()))?;
    eprintln!(
        "bench: wrote {} and {}",
        args.out.display(),
        args.plot.display()
    );
    Ok(())
}
