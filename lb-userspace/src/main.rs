use clap::Parser as _;
use tracing_subscriber::EnvFilter;

mod cli;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = cli::Cli::parse();
    let r = match cli.command {
        cli::Command::Run(a) => cli::run::run(a),
        cli::Command::Stats(a) => cli::stats::run(a),
        cli::Command::Check(a) => cli::run::check(a),
    };
    if let Err(e) = r {
        eprintln!("lb: error: {e:#}");
        std::process::exit(1);
    }
}
