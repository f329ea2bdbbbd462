use anyhow::Context as _;
use lb::config::Config;

use super::{CheckArgs, RunArgs};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(lb::daemon::run(lb::daemon::Options {
        config: args.config,
        mode: args.xdp_mode,
        takeover: args.takeover,
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
            lb.vip_prefixlen,
            p.listeners.len(),
            p.members.len()
        );
    }
    println!("config OK");
    Ok(())
}
