//! Every clap type of the `lb` binary; one module per subcommand does the work.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lb::config::XdpModeChoice;

pub mod explain;
pub mod flows;
pub mod run;
pub mod stats;

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "L4 load balancer for network nodes: XDP full NAT, weighted least connections, health monitors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: create each load balancer's namespace, port and VIP
    /// (or take over what an earlier run left), attach the data path, run health monitors,
    /// expire idle flows. SIGHUP reloads the config; SIGINT/SIGTERM tear down everything lb
    /// created (adopted ports are returned); SIGUSR1 exits leaving the data path running with
    /// every flow, for the next `lb run` to take over.
    Run(RunArgs),
    /// Print counters of running load balancers, read from the pinned maps.
    Stats(StatsArgs),
    /// List the flows of running load balancers from their conntrack tables (as `conntrack
    /// -L` or `ipvsadm -Lnc` do), streamed as the table is read
    Flows(FlowsArgs),
    /// Which member a client would get now and why (the data path's own choice: its program
    /// run on a synthetic SYN against a copy of the maps, nothing changed); for a connection
    /// that exists, its conntrack entry
    Explain(ExplainArgs),
    /// Check a configuration file and print what it would run, without touching anything.
    Check(CheckArgs),
    /// Print a shell completion script (e.g. `lb completions bash > /etc/bash_completion.d/lb`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `lb man > /usr/local/share/man/man1/lb.1`
    Man,
    /// Stand in for haproxy: `lb haproxy -f <conf> -p <pidfile> [-sf <pids>]` (or lb invoked
    /// as `haproxy`) serves a mode tcp haproxy configuration in the network namespace it is
    /// started in, with haproxy's pid file, -sf/-st handover and stats socket; configurations
    /// that need L7 run the real haproxy (see README, "Replacing HAProxy in the LBaaS agent")
    #[command(disable_help_flag = true)]
    Haproxy {
        /// haproxy's arguments: -f FILE, -p PIDFILE, -sf PID..., -st PID..., -D, -db, -W, -Ws
        /// (master-worker; systemd notify, USR2 reload), -L NAME, -q, -c, -v, -vv
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML configuration (see examples/seed.toml)
    #[arg(long, short)]
    pub config: PathBuf,
    /// Where the data path runs; overrides daemon.xdp_mode. auto = tc (TC ingress, fastest on
    /// veth and tap ports); native or generic XDP on request
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeChoice>,
    /// Take over load balancers another `lb run` is running (an upgrade or restart without
    /// dropping connections): check this binary's maps and programs against the pinned ones,
    /// then have the running daemon hand over (SIGUSR1) and replace its programs atomically.
    /// A mismatch is refused and the running daemon is left alone
    #[arg(long)]
    pub takeover: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (the load balancers this daemon
    /// runs); overrides daemon.metrics_address
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only this load balancer's flows (its id)
    #[arg(long)]
    pub loadbalancer: Option<String>,
    /// Only this listener's flows (its id)
    #[arg(long)]
    pub listener: Option<String>,
    /// Only the flows to this member (its id or its address)
    #[arg(long)]
    pub member: Option<String>,
    /// Only flows in this state: SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, TIME_WAIT, CLOSE
    #[arg(long)]
    pub state: Option<String>,
    /// One JSON object per flow and line (JSON Lines), as they are read
    #[arg(long)]
    pub json: bool,
    /// Only the number of flows per load balancer and state
    #[arg(long)]
    pub count: bool,
    /// Where the daemon publishes its state files (daemon.state_dir)
    #[arg(long, default_value = "/run/lb")]
    pub state_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The load balancer (its id)
    #[arg(long)]
    pub loadbalancer: String,
    /// The client's address and port, e.g. 10.0.0.1:40000 or [2001:db8::1]:40000
    pub client: std::net::SocketAddr,
    /// The VIP and listener port, e.g. 10.0.0.250:22 or [2001:db8::fa]:22
    pub vip: std::net::SocketAddr,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Where the daemon publishes its state files (daemon.state_dir)
    #[arg(long, default_value = "/run/lb")]
    pub state_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Where the daemon publishes its state files (daemon.state_dir)
    #[arg(long, default_value = "/run/lb")]
    pub state_dir: PathBuf,
    /// Print again every N seconds: a table of at most 80 columns with connections, bytes in
    /// and out per second beside the totals (colours only on a terminal); with --json, one
    /// report per line
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long, short)]
    pub config: PathBuf,
}
