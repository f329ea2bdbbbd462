//! The benchmark's report: a Markdown document (BENCHMARKS.md) with the machine, the command,
//! the numbers, the targets of issue 3 against them, and an SVG plot. Hand-written analysis
//! below the `NOTES` marker of an existing report is kept when the numbers are rewritten.

use std::{fmt::Write as _, path::Path, process::Command};

use plotters::prelude::*;

use crate::{
    control::{self, AgentRun, Cost, Fleet, Proxy},
    kmem::{self, Object},
    micro::{Cell, Skipped},
    traffic::{Measure, Route, Wrk},
    Args, Spread,
};

const NOTES: &str = "<!-- Hand-written notes below this line are kept by `cargo xtask bench`. -->";

pub struct Report {
    pub cells: Vec<Cell>,
    pub skipped: Vec<Skipped>,
    pub traffic: Vec<Measure>,
    pub control: Option<control::Results>,
    command: String,
    runs: usize,
    seconds: u64,
    kept_notes: String,
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn fmt_n(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(s: &Spread) -> String {
    if s.n == 0 {
        return "-".into();
    }
    format!("{} ({}-{})", fmt_n(s.median), fmt_n(s.min), fmt_n(s.max))
}

/// A target line: what, measured, goal, met.
struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

impl Report {
    pub fn new(args: &Args) -> Report {
        let kept_notes = std::fs::read_to_string(&args.out)
            .ok()
            .and_then(|t| t.split_once(NOTES).map(|(_, n)| n.to_string()))
            .unwrap_or_else(|| "\n".into());
        Report {
            cells: vec![],
            skipped: vec![],
            traffic: vec![],
            control: None,
            command: args.command.clone(),
            runs: args.runs,
            seconds: args.seconds,
            kept_notes,
        }
    }

    fn routes(&self) -> Vec<Route> {
        let mut r: Vec<Route> = Vec::new();
        for m in &self.traffic {
            if !r.contains(&m.path) {
                r.push(m.path);
            }
        }
        r
    }

    /// The spread of `f` over every repetition of `route`.
    fn spread(&self, route: Route, f: impl Fn(&Measure) -> Option<f64>) -> Spread {
        Spread::of(
            self.traffic
                .iter()
                .filter(|m| m.path == route)
                .filter_map(&f)
                .collect(),
        )
    }

    fn per_million(w: &Wrk, cpu: f64) -> Option<f64> {
        (w.requests > 0).then(|| cpu / w.requests as f64 * 1e6)
    }

    /// The metrics of the traffic table: name, higher-is-better, extractor.
    #[allow(clippy::type_complexity)]
    fn metrics() -> Vec<(&'static str, bool, Box<dyn Fn(&Measure) -> Option<f64>>)> {
        vec![
            (
                "keep-alive requests/s",
                true,
                Box::new(|m| Some(m.keepalive.rps)),
            ),
            (
                "keep-alive p50 ms",
                false,
                Box::new(|m| Some(m.keepalive.p50_ms)),
            ),
            (
                "keep-alive p99 ms",
                false,
                Box::new(|m| Some(m.keepalive.p99_ms)),
            ),
            ("new connections/s", true, Box::new(|m| Some(m.close.rps))),
            (
                "new connection p50 ms",
                false,
                Box::new(|m| Some(m.close.p50_ms)),
            ),
            (
                "new connection p99 ms",
                false,
                Box::new(|m| Some(m.close.p99_ms)),
            ),
            (
                "new connection errors",
                false,
                Box::new(|m| Some(m.close.errors as f64)),
            ),
            (
                "new connections/s, 64 client addresses",
                true,
                Box::new(|m| Some(m.many_rps)),
            ),
            (
                "new connection errors, 64 client addresses",
                false,
                Box::new(|m| Some(m.many_errors as f64)),
            ),
            (
                "bulk Gbit/s (iperf3)",
                true,
                Box::new(|m| Some(m.bulk_gbps)),
            ),
            (
                "LB's own CPU s / 1M keep-alive req",
                false,
                Box::new(|m| Self::per_million(&m.keepalive, m.keepalive.own_cpu_s?)),
            ),
            (
                "LB's own CPU s / 1M new connections",
                false,
                Box::new(|m| Self::per_million(&m.close, m.close.own_cpu_s?)),
            ),
            (
                "machine CPU s / 1M keep-alive req",
                false,
                Box::new(|m| Self::per_million(&m.keepalive, m.keepalive.machine_cpu_s)),
            ),
            (
                "machine CPU s / 1M new connections",
                false,
                Box::new(|m| Self::per_million(&m.close, m.close.machine_cpu_s)),
            ),
        ]
    }

    fn ratio(&self, route: Route, f: &dyn Fn(&Measure) -> Option<f64>) -> Option<f64> {
        let base = self.spread(Route::Direct, f);
        let v = self.spread(route, f);
        (base.n > 0 && v.n > 0 && base.median != 0.0).then(|| v.median / base.median)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let has = |r: Route| self.traffic.iter().any(|m| m.path == r);
        let m = Self::metrics();
        let get = |name: &str| &m.iter().find(|x| x.0 == name).unwrap().2;
        if has(Route::Lb) && has(Route::Direct) {
            for (name, goal, higher) in [
                ("keep-alive requests/s", 0.9, true),
                ("new connections/s", 0.8, true),
                ("bulk Gbit/s (iperf3)", 0.95, true),
                ("keep-alive p99 ms", 1.2, false),
                ("new connection p99 ms", 1.2, false),
            ] {
                let r = self.ratio(Route::Lb, get(name).as_ref());
                t.push(Target {
                    what: format!(
                        "lb {name} {} {goal}x direct",
                        if higher { ">=" } else { "<=" }
                    ),
                    measured: r.map(|r| format!("{r:.2}x")).unwrap_or("-".into()),
                    met: r.map(|r| if higher { r >= goal } else { r <= goal }),
                });
            }
            for other in [Route::Haproxy, Route::Nftables] {
                if !has(other) {
                    continue;
                }
                for name in [
                    "keep-alive requests/s",
                    "new connections/s",
                    "bulk Gbit/s (iperf3)",
                ] {
                    let f = get(name);
                    let (a, b) = (self.spread(Route::Lb, f), self.spread(other, f));
                    t.push(Target {
                        what: format!("lb ahead of {other}: {name}"),
                        measured: format!("{} vs {}", fmt_n(a.median), fmt_n(b.median)),
                        met: Some(a.median > b.median),
                    });
                }
            }
        }
        if has(Route::Lb) && has(Route::LbAfter) {
            // Another stack served the VIP seconds before: its tuples are still in the
            // members' TIME_WAIT while lb measures (its first 60 s on the VIP).
            let f = get("new connections/s");
            let (after, fresh) = (self.spread(Route::LbAfter, f), self.spread(Route::Lb, f));
            let r = after.median / fresh.median;
            t.push(Target {
                what: "lb-after new connections/s >= 0.9x lb (its first 60 s after HAProxy and nftables served the VIP)".into(),
                measured: format!("{r:.2}x"),
                met: Some(r >= 0.9),
            });
        }
        if has(Route::Lb) && has(Route::LbLog) {
            // The connection log's cost: its new connections against lb's without it.
            for name in [
                "new connections/s",
                "new connections/s, 64 client addresses",
            ] {
                let f = get(name);
                let (on, off) = (self.spread(Route::LbLog, f), self.spread(Route::Lb, f));
                let r = on.median / off.median;
                t.push(Target {
                    what: format!("lb-log {name} >= 0.95x lb (connection log on vs off)"),
                    measured: format!("{r:.2}x"),
                    met: Some(r >= 0.95),
                });
            }
        }
        if has(Route::Lb) && has(Route::Haproxy) {
            for name in [
                "LB's own CPU s / 1M keep-alive req",
                "LB's own CPU s / 1M new connections",
            ] {
                let f = get(name);
                let (a, b) = (self.spread(Route::Lb, f), self.spread(Route::Haproxy, f));
                t.push(Target {
                    what: format!("{name}: lb <= 1/3 of HAProxy"),
                    measured: format!(
                        "{} vs {} ({:.2}x)",
                        fmt_n(a.median),
                        fmt_n(b.median),
                        a.median / b.median
                    ),
                    met: Some(a.median * 3.0 <= b.median),
                });
            }
            // The same question asked of the whole machine: what each path costs beyond the
            // direct path, per request (lb's softirq work on its port is in here, all of it).
            for (name, label) in [
                ("machine CPU s / 1M keep-alive req", "keep-alive"),
                ("machine CPU s / 1M new connections", "new connections"),
            ] {
                let f = get(name);
                let d = self.spread(Route::Direct, f).median;
                let (a, b) = (
                    self.spread(Route::Lb, f).median - d,
                    self.spread(Route::Haproxy, f).median - d,
                );
                t.push(Target {
                    what: format!("machine CPU beyond direct per 1M {label}: lb <= 1/3 of HAProxy"),
                    measured: format!("{} vs {} s", fmt_n(a), fmt_n(b)),
                    met: Some(a * 3.0 <= b),
                });
            }
        }
        for c in &self.cells {
            let r = c.established.median / c.trivial.median;
            t.push(Target {
                what: format!(
                    "established <= 3x trivial ({} members, {} flows)",
                    c.members, c.flows
                ),
                measured: format!("{r:.2}x"),
                met: Some(r <= 3.0),
            });
            let r = c.established_hot.median / c.trivial.median;
            t.push(Target {
                what: format!(
                    "established, one flow, <= 3x trivial ({} members, {} flows)",
                    c.members, c.flows
                ),
                measured: format!("{r:.2}x"),
                met: Some(r <= 3.0),
            });
        }
        let mut pools: Vec<u32> = self.cells.iter().map(|c| c.members).collect();
        pools.dedup();
        for p in pools {
            let of = |asked| {
                self.cells
                    .iter()
                    .find(|c| c.members == p && c.asked == asked)
            };
            if let (Some(small), Some(big)) = (of(1_000), of(1_000_000)) {
                let r = big.established.median / small.established.median;
                t.push(Target {
                    what: format!(
                        "established at 1M flows <= 1.3x at 1k ({p} members, a different flow every packet)"
                    ),
                    measured: format!("{r:.2}x"),
                    met: Some(r <= 1.3),
                });
                let r = big.established_hot.median / small.established_hot.median;
                t.push(Target {
                    what: format!("established at 1M flows <= 1.3x at 1k ({p} members, one flow)"),
                    measured: format!("{r:.2}x"),
                    met: Some(r <= 1.3),
                });
            }
        }
        for c in self.cells.iter().filter(|c| c.members == 256) {
            let r = c.syn.median / c.trivial.median;
            t.push(Target {
                what: format!("SYN with 256 members <= 10x trivial ({} flows)", c.flows),
                measured: format!("{r:.2}x"),
                met: Some(r <= 10.0),
            });
        }
        t
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Written by `{}` on {} (lb commit {}).\n\nMachine: {} cores ({}), {} memory, kernel {}; \
             versions: {}, {}, {}, {}, {}.\n",
            self.command,
            sh("date -u +'%Y-%m-%d %H:%M UTC'"),
            sh("git rev-parse --short HEAD 2>/dev/null"),
            sh("nproc"),
            cpu.trim(),
            sh("free -h | awk '/Mem:/{print $2}'"),
            sh("uname -r"),
            sh("haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3"),
            sh("nginx -v 2>&1 | cut -d' ' -f3"),
            sh("wrk -v 2>&1 | head -1 | cut -d' ' -f1-2"),
            sh("iperf3 -v 2>/dev/null | head -1 | cut -d' ' -f1-2"),
            sh("nft -v 2>/dev/null"),
        );
        if !self.traffic.is_empty() {
            let routes = self.routes();
            let _ = writeln!(
                s,
                "## Real traffic on the seed's topology\n\n\
                 Client namespace -> br-int -> the load balancer's namespace (VIP 10.0.0.250) -> \
                 two members (nginx, 2 workers each with SO_REUSEPORT, answering a 16-byte body; iperf3 on the \
                 first). Direct: the client talks to the first member. wrk -t2 -c32, {} s per \
                 run, keep-alive and `Connection: close`; iperf3 one stream, {} s, through a \
                 pool that holds the first member only. Every path on a fresh topology; paths \
                 interleaved in each of {} runs. Cells: median (min-max), and the median's \
                 ratio to direct.\n",
                self.seconds, self.seconds, self.runs
            );
            let _ = write!(s, "| |");
            for r in &routes {
                let _ = write!(s, " {r} |");
            }
            let _ = write!(s, "\n|---|");
            for _ in &routes {
                let _ = write!(s, "---|");
            }
            s.push('\n');
            for (name, _, f) in Self::metrics() {
                let _ = write!(s, "| {name} |");
                for &r in &routes {
                    let v = self.spread(r, f.as_ref());
                    let ratio = self
                        .ratio(r, f.as_ref())
                        .filter(|_| r != Route::Direct)
                        .map(|x| format!(" **{x:.2}x**"))
                        .unwrap_or_default();
                    let _ = write!(s, " {}{ratio} |", cell(&v));
                }
                s.push('\n');
            }
            let _ = writeln!(
                s,
                "\nLB's own CPU: lb = its XDP program's run time (kernel BPF statistics) plus \
                 the daemon process; HAProxy = its process (user + system). Machine CPU: every \
                 core's busy time in /proc/stat over the run (client, members and the bridge \
                 included), so its difference to direct is what the path costs.\n"
            );
        }
        if !self.cells.is_empty() {
            let _ = writeln!(
                s,
                "## BPF_PROG_TEST_RUN, ns/packet\n\n\
                 One run per call (XDP test runs do not restore the frame between repetitions, \
                 so a NAT program would see its own output), mean over 20,000 calls (SYN: 2,000 \
                 new clients), median (min-max) of {} runs. The trivial program is the object's \
                 `lb_peer_pass` (XDP_PASS), timed the same way in the same run: the ~75 ns of a \
                 test run's own overhead is in every figure. Established and reply packets \
                 cycle through the open flows, a different flow every call (in a large table, \
                 each a cache miss); \"one flow\" sends the same flow's packet every call; \
                 \"TC\" is the established case through `lb_tc` (an skb test run), the default \
                 attach mode's entry point to the same code. The grid's other columns time the \
                 XDP entry point `lb`, against the XDP trivial program. The table was filled \
                 by SYNs through the program (least connections spread them); memory is what the \
                 kernel charges to the maps (fdinfo `memlock`) after the SYN runs. Expiry is \
                 one cycle of the daemon's conntrack expiry over the filled table without the \
                 pauses the daemon takes between chunks: its CPU time, and the longest it held \
                 the CPU in one piece (one chunk of 4096 entries).\n",
                self.runs
            );
            let _ = writeln!(
                s,
                "| members | flows | trivial | established | established, one flow | established, TC | reply | SYN | est / trivial | SYN / trivial | conntrack MiB | all maps MiB | expiry cycle ms (longest chunk) |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for c in &self.cells {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2}x | {:.2}x | {:.1} (at {} flows) | {:.1} | {:.0} ({:.1}) |",
                    c.members,
                    c.flows,
                    cell(&c.trivial),
                    cell(&c.established),
                    cell(&c.established_hot),
                    cell(&c.established_tc),
                    cell(&c.reply),
                    cell(&c.syn),
                    c.established.median / c.trivial.median,
                    c.syn.median / c.trivial.median,
                    c.conntrack_bytes as f64 / 1048576.0,
                    c.flows_after_syn,
                    c.maps_bytes as f64 / 1048576.0,
                    c.expiry_ms,
                    c.expiry_chunk_ms,
                );
            }
            for k in &self.skipped {
                let _ = writeln!(
                    s,
                    "\nNot measured: {} members with {} flows: {}.",
                    k.members, k.asked, k.why
                );
            }
            let listed: Vec<&Cell> = self
                .cells
                .iter()
                .filter(|c| c.flows_cli.is_some())
                .collect();
            if !listed.is_empty() {
                let _ = writeln!(
                    s,
                    "\n`lb flows` over the filled tables (the CLI through a state file naming the \
                     pins; output read and thrown away), one run each:\n\n\
                     | members | flows | `--count` s | `--json` s | lines | max RSS MiB |\n|---|---|---|---|---|---|"
                );
                for c in listed {
                    let f = c.flows_cli.as_ref().unwrap();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.2} | {:.2} | {} | {:.1} |",
                        c.members,
                        c.flows_after_syn,
                        f.count_s,
                        f.json_s,
                        f.json_lines,
                        f.max_rss_mib
                    );
                }
            }
            s.push('\n');
        }
        if let Some(c) = &self.control {
            s.push_str(&control_section(c, self.runs));
        }
        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(
                s,
                "## Targets (issue 3)\n\n| target | measured | met |\n|---|---|---|"
            );
            for t in &targets {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "-",
                };
                let _ = writeln!(s, "| {} | {} | {met} |", t.what, t.measured);
            }
            s.push('\n');
        }
        let _ = write!(s, "{NOTES}{}", self.kept_notes);
        s
    }

    /// Two panels: real-traffic ratios to direct per path, and ns/packet over the grid.
    pub fn plot(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
        ];

        let routes: Vec<Route> = self
            .routes()
            .into_iter()
            .filter(|r| *r != Route::Direct)
            .collect();
        let metrics = Self::metrics();
        let shown = [
            "keep-alive requests/s",
            "new connections/s",
            "bulk Gbit/s (iperf3)",
        ];
        let mut ymax = 1.2f64;
        let mut bars = Vec::new();
        for (i, name) in shown.iter().enumerate() {
            let f = &metrics.iter().find(|m| m.0 == *name).unwrap().2;
            for (j, r) in routes.iter().enumerate() {
                if let Some(v) = self.ratio(*r, f.as_ref()) {
                    ymax = ymax.max(v * 1.1);
                    bars.push((i, j, v));
                }
            }
        }
        let mut c = ChartBuilder::on(&left)
            .caption(
                "real traffic, ratio to direct (same run)",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..3f64, 0f64..ymax)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(7)
            .x_label_formatter(&|x| {
                // Only the group centres (0.5, 1.5, 2.5) carry a name.
                if (x.fract() - 0.5).abs() > 0.01 {
                    return String::new();
                }
                ["keep-alive req/s", "new conn/s", "bulk Gbit/s"]
                    .get(x.floor() as usize)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
            .draw()?;
        let w = 0.8 / routes.len().max(1) as f64;
        for (j, r) in routes.iter().enumerate() {
            let color = colors[j % colors.len()];
            c.draw_series(bars.iter().filter(|b| b.1 == j).map(|&(i, j, v)| {
                let x0 = i as f64 + 0.1 + j as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v)], color.filled())
            }))?
            .label(r.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        c.draw_series(LineSeries::new(
            [(0.0, 1.0), (3.0, 1.0)],
            BLACK.stroke_width(1),
        ))?
        .label("direct = 1");
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;

        // ns/packet against conntrack size, per pool size: established and SYN, with trivial.
        let xmax = self
            .cells
            .iter()
            .map(|c| c.flows)
            .max()
            .unwrap_or(1000)
            .max(1000) as f64;
        let ymax = self
            .cells
            .iter()
            .map(|c| c.syn.median)
            .fold(100.0f64, f64::max)
            * 1.15;
        let mut c = ChartBuilder::on(&right)
            .caption("BPF_PROG_TEST_RUN ns/packet", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((500f64..xmax * 2.0).log_scale(), 0f64..ymax)?;
        c.configure_mesh()
            .x_desc("flows in conntrack")
            .x_label_formatter(&|x| {
                if *x >= 1e6 {
                    format!("{:.0}M", x / 1e6)
                } else {
                    format!("{:.0}k", x / 1e3)
                }
            })
            .draw()?;
        let mut pools: Vec<u32> = self.cells.iter().map(|c| c.members).collect();
        pools.dedup();
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
        ];
        for (k, p) in pools.iter().enumerate() {
            let color = palette[k % palette.len()];
            let pts = |f: &dyn Fn(&Cell) -> f64| -> Vec<(f64, f64)> {
                self.cells
                    .iter()
                    .filter(|c| c.members == *p)
                    .map(|c| (c.flows as f64, f(c)))
                    .collect()
            };
            c.draw_series(
                pts(&|c| c.syn.median)
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
            c.draw_series(
                pts(&|c| c.established.median)
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.stroke_width(1))),
            )?;
            c.draw_series(LineSeries::new(
                pts(&|c| c.syn.median),
                color.stroke_width(2),
            ))?
            .label(format!("SYN, {p} members"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
            c.draw_series(LineSeries::new(
                pts(&|c| c.established.median),
                color.stroke_width(1),
            ))?
            .label(format!("established, {p} members"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        }
        // The trivial program's figure at each table size (the largest pool has every size).
        let trivial: Vec<(f64, f64)> = self
            .cells
            .iter()
            .filter(|c| Some(&c.members) == pools.last())
            .map(|c| (c.flows as f64, c.trivial.median))
            .collect();
        c.draw_series(LineSeries::new(trivial, BLACK.stroke_width(1)))?
            .label("trivial XDP_PASS")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// The CPU count the control plane's memory targets are stated for.
const BIG_NODE_CPUS: usize = 64;

/// What a control-plane figure of lb is held to.
#[derive(Clone, Copy)]
enum Goal {
    None,
    /// At most this many times haproxy's median.
    TimesHaproxy(f64),
    /// At most this much (in the row's unit).
    AtMost(f64, &'static str),
}

impl Goal {
    /// The target's text and lb's verdict.
    fn judge(self, lb: &Spread, haproxy: &Spread) -> (String, String) {
        match self {
            Goal::None => (String::new(), String::new()),
            _ if lb.n == 0 => (String::new(), "-".into()),
            Goal::TimesHaproxy(goal) => {
                let met = if haproxy.n == 0 || haproxy.median == 0.0 {
                    "-".into()
                } else {
                    let r = lb.median / haproxy.median;
                    if r <= goal {
                        format!("met ({r:.2}x)")
                    } else {
                        format!("**missed**: {r:.1}x haproxy, {:.1}x the target", r / goal)
                    }
                };
                (format!("≤ {goal}x haproxy"), met)
            }
            Goal::AtMost(goal, unit) => (
                format!("≤ {goal} {unit} (lb)"),
                verdict(lb.median, goal, unit),
            ),
        }
    }
}

/// A goal a figure is held to: "met", or by how much it missed.
fn verdict(measured: f64, goal: f64, unit: &str) -> String {
    if measured <= goal {
        format!("met ({} vs {} {unit})", fmt_n(measured), fmt_n(goal))
    } else {
        format!(
            "**missed** by {} {unit} ({:.1}x the target)",
            fmt_n(measured - goal),
            measured / goal
        )
    }
}

/// "1.23x", lb's figure over haproxy's, where both exist.
fn times(lb: Option<f64>, haproxy: Option<f64>) -> String {
    match (lb, haproxy) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// One row of a control-plane table: the step, lb's and haproxy's figures, their ratio, the
/// target and lb's verdict.
fn control_row(s: &mut String, step: &str, lb: &Spread, haproxy: &Spread, goal: Goal) {
    let (target, met) = goal.judge(lb, haproxy);
    let some = |x: &Spread| (x.n > 0).then_some(x.median);
    let _ = writeln!(
        s,
        "| {step} | {} | {} | {} | {target} | {met} |",
        cell(lb),
        cell(haproxy),
        times(some(lb), some(haproxy))
    );
}

/// The control plane's section: the agent's steps per load balancer (lb against haproxy),
/// `lb run`'s own, the fleets, and the memory of an idle load balancer.
fn control_section(c: &control::Results, runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Control plane\n\n\
         What an operator does per load balancer, on the seed's topology, lb against the real \
         haproxy 2.6 in the same run. The agent's commands are the LBaaS agent's \
         (`tests/src/agent.rs`): `ip netns exec qlbaas-<id> haproxy -f conf -p pid [-sf pids]` \
         with `haproxy` on its PATH linked to lb or to /usr/sbin/haproxy, and the seed's \
         haproxy.cfg as the v1 driver writes it (daemon, user nobody, syslog, `option tcplog`) \
         with the v2 driver's `maxconn 2000`; every load balancer of the part shares one node's \
         lb state and bpffs root. lb verifies its programs once per node and build: the node's \
         first lb load balancer stays deployed through the agent's and `lb run`'s rows (its own \
         deploy is a row of its own), and goes before the fleets, whose first deploy verifies \
         again. Cells: median (min-max) of {runs} runs, lb and haproxy \
         alternating; ms unless said. CPU: the command's own rusage (wait4: `ip netns exec` and \
         the haproxy or lb it became) plus the daemons' utime + stime from /proc/<pid>/stat (10 ms \
         ticks) when the step is done (a daemon that exits: once it is a zombie, this process \
         being their subreaper). Load average (1 min) {:.2} when the part began, {:.2} when it \
         ended: the machine is shared, and a compile beside it inflates every figure here.\n",
        c.load.0, c.load.1
    );
    if let Some(why) = &c.haproxy_skipped {
        let _ = writeln!(s, "haproxy not measured: {why}.\n");
    }
    agent_table(&mut s, c);
    lb_run_table(&mut s, c);
    if !c.fleets.is_empty() {
        fleet_table(&mut s, &c.fleets);
    }
    if let Some(m) = c.agent.iter().rev().find_map(|a| a.memory.as_ref()) {
        memory_breakdown(&mut s, m);
    }
    s
}

/// The agent's steps on one load balancer: what, the figure (ms unless said), the goal.
#[allow(clippy::type_complexity)]
const AGENT_ROWS: &[(&str, fn(&AgentRun) -> f64, Goal)] = &[
    (
        "deploy: `haproxy -f conf -p pid` returned",
        |a| a.deploy.wall_s * 1e3,
        Goal::TimesHaproxy(2.0),
    ),
    (
        "deploy: serving (a connection through the VIP reaches a member)",
        |a| a.serving_s * 1e3,
        Goal::TimesHaproxy(2.0),
    ),
    (
        "deploy: CPU (the command, the daemon until it returned)",
        |a| a.deploy.cpu_s * 1e3,
        Goal::None,
    ),
    (
        "`-sf` update (a member's weight changed): returned",
        |a| a.update.wall_s * 1e3,
        Goal::TimesHaproxy(2.0),
    ),
    (
        "`-sf` update: CPU (the command, the new daemon until it returned, the old one until it exited)",
        |a| a.update.cpu_s * 1e3,
        Goal::AtMost(50.0, "ms"),
    ),
    (
        "teardown: SIGTERM until the daemon exited (lb: and its pins are gone)",
        |a| a.teardown.wall_s * 1e3,
        Goal::None,
    ),
    (
        "teardown: CPU of the daemon",
        |a| a.teardown.cpu_s * 1e3,
        Goal::None,
    ),
    (
        "idle daemon's VmRSS, MiB",
        |a| a.rss_kib as f64 / 1024.0,
        Goal::None,
    ),
];

/// The agent's steps on one load balancer, lb against haproxy.
fn agent_table(s: &mut String, c: &control::Results) {
    let _ = writeln!(
        s,
        "| step | lb | haproxy | lb / haproxy | target | |\n|---|---|---|---|---|---|"
    );
    let spread = |p: Proxy, f: fn(&AgentRun) -> f64| {
        Spread::of(c.agent.iter().filter(|a| a.proxy == p).map(f).collect())
    };
    let row = |s: &mut String, &(step, f, goal): &(&str, fn(&AgentRun) -> f64, Goal)| {
        let (lb, haproxy) = (spread(Proxy::Lb, f), spread(Proxy::Haproxy, f));
        control_row(s, step, &lb, &haproxy, goal);
    };
    // The deploy and update rows, the connections during the update, then the rest.
    let (deploy_update, rest) = AGENT_ROWS.split_at(5);
    let (deploy, update) = deploy_update.split_at(3);
    deploy.iter().for_each(|r| row(s, r));
    if let Some(first) = &c.first {
        // One run: the node's first lb load balancer, beside haproxy's every deploy.
        let one = |v: f64| Spread::of(vec![v * 1e3]);
        let haproxy = |f: fn(&AgentRun) -> f64| spread(Proxy::Haproxy, f);
        control_row(
            s,
            "deploy of the node's first load balancer of an lb build (it loads and verifies the program set; 1 run; lb's rows above join a node that serves one already): serving",
            &one(first.serving_s),
            &haproxy(|a| a.serving_s * 1e3),
            Goal::None,
        );
        control_row(
            s,
            "... its CPU",
            &one(first.deploy.cpu_s),
            &haproxy(|a| a.deploy.cpu_s * 1e3),
            Goal::None,
        );
    }
    update.iter().for_each(|r| row(s, r));
    let probes = |p: Proxy| {
        let (t, f, w) = c
            .agent
            .iter()
            .filter(|a| a.proxy == p)
            .fold((0, 0, 0), |x, a| {
                (
                    x.0 + a.probe.tried,
                    x.1 + a.probe.failed,
                    x.2 + a.probe.slow,
                )
            });
        format!("{f} of {t} ({w} took ≥ 0.9 s)")
    };
    let _ = writeln!(
        s,
        "| `-sf` update: connections through the VIP that failed during it (all runs; a client \
         connecting every 2 ms from before the command until the old daemon exited) | {} | {} | | | |",
        probes(Proxy::Lb),
        probes(Proxy::Haproxy)
    );
    rest.iter().for_each(|r| row(s, r));
    memory_rows(s, c);
}

/// Kernel memory of one idle load balancer (lb's pinned maps) against the targets: the part
/// that is not per CPU, the per-CPU part for one CPU, and all of it on a 64-CPU node.
fn memory_rows(s: &mut String, c: &control::Results) {
    let mems: Vec<&kmem::Memory> = c.agent.iter().filter_map(|a| a.memory.as_ref()).collect();
    let Some(here) = mems.first().map(|m| m.cpus as f64) else {
        s.push('\n');
        return;
    };
    // Per run: all of it, and the per-CPU part for one CPU, in KiB.
    let kib: Vec<(f64, f64)> = mems
        .iter()
        .map(|m| {
            let maps = m.maps_of(0);
            let per_cpu: u64 = maps.iter().map(|o| o.per_cpu).sum();
            let total: u64 = maps.iter().map(|o| o.bytes).sum();
            (total as f64 / 1024.0, per_cpu as f64 / here / 1024.0)
        })
        .collect();
    let of =
        |f: &dyn Fn(f64, f64) -> f64| Spread::of(kib.iter().map(|&(t, one)| f(t, one)).collect());
    let (none, big) = (Spread::default(), BIG_NODE_CPUS as f64);
    let step = format!(
        "kernel memory of an idle load balancer: its pinned maps (fdinfo memlock), KiB, here \
         ({here} possible CPUs)"
    );
    control_row(s, &step, &of(&|t, _| t), &none, Goal::None);
    let fixed = of(&|t, one| t - one * here);
    control_row(
        s,
        "... of which not per CPU, KiB",
        &fixed,
        &none,
        Goal::AtMost(2048.0, "KiB"),
    );
    let one = of(&|_, one| one);
    control_row(
        s,
        "... per CPU, for one CPU, KiB",
        &one,
        &none,
        Goal::AtMost(64.0, "KiB"),
    );
    let step = format!("... on a {BIG_NODE_CPUS}-CPU node, KiB");
    let at = of(&|t, one| t - one * here + one * big);
    control_row(
        s,
        &step,
        &at,
        &none,
        Goal::AtMost(2048.0 + 64.0 * big, "KiB"),
    );
    s.push('\n');
}

/// `lb run`'s own lifecycle (lb only): what, wall and CPU figures (ms), the goal on the wall.
#[allow(clippy::type_complexity)]
const RUN_ROWS: &[(&str, fn(&control::RunCycle) -> (f64, f64), Goal)] = &[
    (
        "start until \"load balancer up\"",
        |r| (r.start.wall_s, r.start.cpu_s),
        Goal::None,
    ),
    (
        "SIGHUP with a member added, until `lb stats --json` lists it with its weight",
        |r| (r.reload.wall_s, r.reload.cpu_s),
        Goal::AtMost(50.0, "ms"),
    ),
    (
        "`lb run --takeover` until up (CPU: the new process's, and the old one's until it exited)",
        |r| (r.takeover.wall_s, r.takeover.cpu_s),
        Goal::None,
    ),
    (
        "`lb run --takeover`: until the old process exited",
        |r| (r.takeover_old_exit_s, f64::NAN),
        Goal::None,
    ),
    (
        "SIGTERM until the process exited and its pins are gone",
        |r| (r.teardown.wall_s, r.teardown.cpu_s),
        Goal::None,
    ),
];

/// `lb run`'s own lifecycle (lb only).
fn lb_run_table(s: &mut String, c: &control::Results) {
    if c.runs.is_empty() {
        return;
    }
    let stats = Spread::of(c.runs.iter().map(|r| r.stats_s * 1e3).collect());
    let _ = writeln!(
        s,
        "`lb run --config` on the seed's TOML (its own namespace and port, lb's default table \
         size), lb only. One `lb stats --json` took {} ms: the SIGHUP figure is up to that late.\n\n\
         | step | wall, ms | CPU, ms | | target | |\n|---|---|---|---|---|---|",
        cell(&stats)
    );
    for &(step, f, goal) in RUN_ROWS {
        let of = |pick: fn((f64, f64)) -> f64| {
            Spread::of(
                c.runs
                    .iter()
                    .map(|r| pick(f(r)) * 1e3)
                    .filter(|v| !v.is_nan())
                    .collect(),
            )
        };
        let (wall, cpu) = (of(|x| x.0), of(|x| x.1));
        let (target, met) = goal.judge(&wall, &Spread::default());
        let _ = writeln!(
            s,
            "| {step} | {} | {} | | {target} | {met} |",
            cell(&wall),
            cell(&cpu)
        );
    }
    s.push('\n');
}

/// A fleet's step: its total (wall and CPU seconds) and the per-load-balancer spreads (ms).
fn fleet_sums(v: &[Cost]) -> (Cost, Spread, Spread) {
    (
        control::total(v),
        Spread::of(v.iter().map(|c| c.wall_s * 1e3).collect()),
        Spread::of(v.iter().map(|c| c.cpu_s * 1e3).collect()),
    )
}

/// A fleet step's cell: the total, and per load balancer.
fn fleet_step(v: &[Cost], cpu: bool) -> (f64, String) {
    let (t, wall, cpus) = fleet_sums(v);
    let (x, per) = if cpu {
        (t.cpu_s, cpus)
    } else {
        (t.wall_s, wall)
    };
    (x, format!("{} s (per LB {} ms)", fmt_n(x), cell(&per)))
}

/// Everything lb's load balancers of a fleet hold in the kernel, in MiB (and at 64 CPUs).
fn fleet_memory(f: &Fleet) -> (f64, String) {
    let Some(m) = &f.memory else {
        return (f64::NAN, "-".into());
    };
    let all: Vec<&Object> = m.all().collect();
    let (here, at) = kmem::bytes_at(&all, m.cpus, BIG_NODE_CPUS);
    let mib = here as f64 / 1048576.0;
    let at = fmt_n(at / 1048576.0);
    (
        mib,
        format!("{} ({at} at {BIG_NODE_CPUS} CPUs)", fmt_n(mib)),
    )
}

/// A fleet table row: what, its cell for one fleet (the figure the ratio uses, the text), and
/// the target lb's fleet is held to (text and verdict), if any.
#[allow(clippy::type_complexity)]
const FLEET_ROWS: &[(
    &str,
    fn(&Fleet) -> (f64, String),
    fn(&Fleet) -> Option<(String, String)>,
)] = &[
    (
        "deploys: wall",
        |f| fleet_step(&f.deploys, false),
        |f| {
            let total = control::total(&f.deploys).wall_s;
            (f.n == 100).then(|| ("≤ 30 s (lb)".into(), verdict(total, 30.0, "s")))
        },
    ),
    ("deploys: CPU", |f| fleet_step(&f.deploys, true), |_| None),
    (
        "updates (`-sf`): wall",
        |f| fleet_step(&f.updates, false),
        |_| None,
    ),
    (
        "updates: CPU (the old daemons' share included)",
        |f| fleet_step(&f.updates, true),
        |f| {
            let per_update = fleet_sums(&f.updates).2.median;
            Some((
                "≤ 50 ms per update (lb)".into(),
                verdict(per_update, 50.0, "ms"),
            ))
        },
    ),
    (
        "serving after the deploys",
        |f| (f.serving as f64, format!("{} of {}", f.serving, f.n)),
        |_| None,
    ),
    (
        "the daemons' VmRSS after the updates, MiB",
        |f| (f.rss_kib as f64 / 1024.0, fmt_n(f.rss_kib as f64 / 1024.0)),
        |_| None,
    ),
    (
        "kernel memory after the updates (every load balancer's pins, the node's, what the \
         daemons hold pinned nowhere), MiB",
        fleet_memory,
        |_| None,
    ),
    (
        "SIGTERM to all until every daemon exited (lb: and all pins are gone)",
        |f| (f.teardown_s, format!("{} s", fmt_n(f.teardown_s))),
        |_| None,
    ),
];

/// Many load balancers on one node, deployed then updated one after another, lb against
/// haproxy.
fn fleet_table(s: &mut String, fleets: &[Fleet]) {
    let _ = writeln!(
        s,
        "N load balancers on one node, deployed one after another as the agent does (each in its \
         own qlbaas namespace with its own port on br-int and VIP in 10.0.0.10-249), then each \
         updated once with `-sf`, then all sent SIGTERM at once. One pass per size; \"per LB\": \
         median (min-max) over the N.\n\n\
         | N | | lb | haproxy | lb / haproxy | target | |\n|---|---|---|---|---|---|---|"
    );
    let mut sizes: Vec<usize> = fleets.iter().map(|f| f.n).collect();
    sizes.dedup();
    for n in &sizes {
        let get = |p: Proxy| fleets.iter().find(|f| f.n == *n && f.proxy == p);
        let (lb, haproxy) = (get(Proxy::Lb), get(Proxy::Haproxy));
        for &(what, show, goal) in FLEET_ROWS {
            let (a, b) = (lb.map(show), haproxy.map(show));
            let (target, met) = lb.and_then(goal).unwrap_or_default();
            let _ = writeln!(
                s,
                "| {n} | {what} | {} | {} | {} | {target} | {met} |",
                a.as_ref().map_or("-", |x| x.1.as_str()),
                b.as_ref().map_or("-", |x| x.1.as_str()),
                times(
                    a.as_ref().map(|x| x.0),
                    b.as_ref().map(|x| x.0).filter(|x| !x.is_nan())
                )
            );
        }
    }
    if !sizes.contains(&100) {
        let _ = writeln!(
            s,
            "\n100 load balancers not measured in this run (`--control-lbs`): the target \
             \"100 deployed ≤ 30 s\" is open."
        );
    }
    s.push('\n');
}

/// The maps of one idle load balancer, what the node holds once for all, and what its daemon
/// holds that is pinned nowhere.
fn memory_breakdown(s: &mut String, m: &kmem::Memory) {
    let here = m.cpus;
    let kib = |b: f64| fmt_n(b / 1024.0);
    let _ = writeln!(
        s,
        "Kernel memory of one idle load balancer by map (fdinfo `memlock` of each map pinned in \
         its directory; a per-CPU map's values scale with the possible CPUs, {here} here):\n\n\
         | map | type | KiB here | of which per CPU | KiB at {BIG_NODE_CPUS} CPUs |\n|---|---|---|---|---|"
    );
    let mut maps = m.maps_of(0);
    maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    for o in &maps {
        let (_, at) = kmem::bytes_at(&[o], here, BIG_NODE_CPUS);
        let name = o.name.split_once('/').map_or(o.name.as_str(), |x| x.1);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            o.kind,
            kib(o.bytes as f64),
            kib(o.per_cpu as f64),
            kib(at)
        );
    }
    let (total, at) = kmem::bytes_at(&maps, here, BIG_NODE_CPUS);
    let _ = writeln!(s, "| all | | {} | | {} |\n", kib(total as f64), kib(at));
    let node: Vec<&Object> = m.node_wide.iter().collect();
    if m.outside.is_empty() {
        let _ = writeln!(
            s,
            "Pinned outside the load balancers' directories: nothing.\n"
        );
    } else {
        let (total, at) = kmem::bytes_at(&node, here, BIG_NODE_CPUS);
        let _ = writeln!(
            s,
            "Node-wide, shared by all load balancers (pinned under the bpffs root outside their \
             directories: {}): {} KiB ({} at {BIG_NODE_CPUS} CPUs) in {} maps and programs.\n",
            m.outside.join(", "),
            kib(total as f64),
            kib(at),
            node.len()
        );
    }
    let is_program = |o: &&Object| o.kind == kmem::PROGRAM;
    let own: Vec<&Object> = m.per_lb[0].iter().filter(is_program).collect();
    if !own.is_empty() {
        let _ = writeln!(
            s,
            "Programs pinned in the load balancer's directory: {}.\n",
            summary(&own)
        );
    }
    let (programs, maps): (Vec<&Object>, Vec<&Object>) = m.unpinned.iter().partition(is_program);
    let _ = writeln!(
        s,
        "Held by the daemon and pinned nowhere (not in the figures above): programs {}; maps {}.\n",
        summary(&programs),
        summary(&maps)
    );
}

/// "3, 148 KiB (a, b, c)": how many objects, their memory, their names.
fn summary(objects: &[&Object]) -> String {
    let bytes: u64 = objects.iter().map(|o| o.bytes).sum();
    let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    format!(
        "{}, {} KiB ({})",
        objects.len(),
        fmt_n(bytes as f64 / 1024.0),
        names.join(", ")
    )
}
