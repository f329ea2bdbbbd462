use super::StatsArgs;

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let Some(every) = args.watch else {
        let reports = lb::stats::collect_all(&args.state_dir)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            print!("{}", lb::stats::render_text(&reports));
        }
        return Ok(());
    };
    // Rates per second beside the totals, in 80 columns; colour and screen clearing only on a
    // terminal (a pipe gets one frame after another).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut prev: Option<(std::time::Instant, Vec<lb::stats::LoadBalancerReport>)> = None;
    loop {
        let reports = lb::stats::collect_all(&args.state_dir)?;
        let now = std::time::Instant::now();
        if args.json {
            println!("{}", serde_json::to_string(&reports)?);
        } else {
            let secs = prev.as_ref().map_or(0.0, |(t, _)| (now - *t).as_secs_f64());
            let frame = lb::stats::render_watch(
                &reports,
                prev.as_ref().map(|(_, r)| r.as_slice()),
                secs,
                tty,
            );
            if tty {
                print!("\x1b[H\x1b[2J{frame}");
            } else {
                println!("{frame}");
            }
        }
        prev = Some((now, reports));
        std::thread::sleep(std::time::Duration::from_secs(every.max(1)));
    }
}
