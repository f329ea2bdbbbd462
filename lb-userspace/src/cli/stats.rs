use super::StatsArgs;

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    loop {
        let reports = lb::stats::collect_all(&args.state_dir)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            print!("{}", lb::stats::render_text(&reports));
        }
        match args.watch {
            Some(s) => std::thread::sleep(std::time::Duration::from_secs(s.max(1))),
            None => return Ok(()),
        }
    }
}
