use super::ExplainArgs;

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let e = lb::explain::explain(&args.state_dir, &args.loadbalancer, args.client, args.vip)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", lb::explain::render_text(&e));
    }
    Ok(())
}
