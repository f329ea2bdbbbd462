use clap::Parser as _;
use tracing_subscriber::EnvFilter;

mod cli;

fn main() {
    // Invoked as `haproxy` (a link placed first on PATH), or as `lb haproxy ...`: the drop-in
    // for the haproxy the LBaaS agent runs. It sets up its own logging (syslog when it is a
    // daemon, as haproxy).
    let mut argv: Vec<String> = std::env::args().collect();
    let invoked_as = std::path::Path::new(argv.first().map(String::as_str).unwrap_or(""))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked_as == "haproxy" {
        std::process::exit(lb::haproxy::run::main(argv.split_off(1)));
    }
    if argv.get(1).map(String::as_str) == Some("haproxy") {
        std::process::exit(lb::haproxy::run::main(argv.split_off(2)));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = cli::Cli::parse();
    if matches!(
        cli.command,
        cli::Command::Run(_)
            | cli::Command::Stats(_)
            | cli::Command::Flows(_)
            | cli::Command::Explain(_)
    ) {
        // Under `ip netns exec` (a private mount namespace with a fresh /sys): pins and state
        // must be the host's, where every other lb command sees them.
        if let Err(e) = lb::haproxy::namespace::join_host_mounts() {
            eprintln!("lb: error: joining the mount namespace ip netns exec was run from: {e}");
            std::process::exit(1);
        }
    }
    let r = match cli.command {
        cli::Command::Run(a) => cli::run::run(a),
        cli::Command::Stats(a) => cli::stats::run(a),
        cli::Command::Flows(a) => cli::flows::run(a),
        cli::Command::Explain(a) => cli::explain::run(a),
        cli::Command::Check(a) => cli::run::check(a),
        cli::Command::Completions { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lb", &mut std::io::stdout());
            Ok(())
        }
        cli::Command::Haproxy { args } => std::process::exit(lb::haproxy::run::main(args)),
        cli::Command::Man => {
            let cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(Into::into)
        }
    };
    if let Err(e) = r {
        eprintln!("lb: error: {e:#}");
        std::process::exit(1);
    }
}
