use std::{collections::BTreeMap, io::Write as _};

use super::FlowsArgs;

pub fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let filter = lb::flows::Filter {
        loadbalancer: args.loadbalancer,
        listener: args.listener,
        member: args.member,
        state: args.state,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut counts: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut n = 0u64;
    lb::flows::walk(&args.state_dir, &filter, |r| {
        n += 1;
        if args.count {
            *counts.entry((r.loadbalancer.clone(), r.state)).or_default() += 1;
        } else if args.json {
            serde_json::to_writer(&mut out, &r)?;
            out.write_all(b"\n")?;
        } else {
            writeln!(
                out,
                "{} {:<11} src={} dst={} member={} snat={} age={:.0}s idle={:.0}s{} lb={} listener={} member_id={}",
                r.protocol,
                r.state,
                r.client,
                r.vip,
                r.member_address,
                r.snat_port,
                r.age_s,
                r.idle_s,
                if r.cookie { " [cookie]" } else { "" },
                r.loadbalancer,
                r.listener,
                r.member
            )?;
        }
        Ok(())
    })?;
    if args.count {
        for ((lb, state), c) in &counts {
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"loadbalancer": lb, "state": state, "flows": c})
                )?;
            } else {
                writeln!(out, "{lb} {state:<11} {c}")?;
            }
        }
        if !args.json {
            writeln!(out, "flows: {n}")?;
        }
    }
    out.flush()?;
    Ok(())
}
