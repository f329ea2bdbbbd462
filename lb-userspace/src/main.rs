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
        cli::Command::Completions { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lb", &mut std::io::stdout());
            Ok(())
        }
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
