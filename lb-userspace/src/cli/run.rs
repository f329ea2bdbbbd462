use anyhow::Context as _;
use lb::config::Config;

use super::{CheckArgs, RunArgs};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // Held pending from the first instant until the daemon's handlers are installed (the
    // first thing `daemon::run` does): a signal during start-up is acted on once the daemon
    // is up, never the default action that would kill it halfway. Threads started meanwhile
    // (the runtime's) keep them blocked; the main thread unblocks them.
    lb::daemon::daemon_signals()
        .thread_block()
        .context("blocking signals")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(lb::daemon::run(lb::daemon::Options {
        source: lb::daemon::Source::File(args.config),
        mode: args.xdp_mode,
        takeover: args.takeover,
        embedding: None,
        metrics_address: args.metrics_address,
    }))
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    for lb in &cfg.loadbalancer {
        let p = lb::plan::plan(lb, None)?;
        println!(
            "loadbalancer {}: namespace {}, port {}, VIP {}/{}, {} listener(s), {} member(s)",
            lb.id,
            lb.namespace(),
            lb.port.name,
            lb.vip_address,
            lb.prefixlen(),
            p.listeners.len(),
            p.members.len()
        );
    }
    println!("config OK");
    Ok(())
}
