//! The control plane as an operator meets it, per load balancer, beside the real haproxy 2.6
//! in the same run: what the LBaaS agent's commands cost (`tests/src/agent.rs` drives lb and
//! haproxy alike, `haproxy` on its PATH linked to one or the other), what `lb run`'s own
//! lifecycle costs, a node deploying and updating many load balancers one after another, and
//! what an idle load balancer holds (kernel memory, the daemon's RSS).
//!
//! Wall times are taken from the command's start; CPU is the command's own rusage (`wait4`: `ip
//! netns exec` and the haproxy or lb it became) plus the daemons' utime + stime from
//! `/proc/<pid>/stat` (10 ms ticks), read when the step is done, or, for a daemon that
//! exits, once it is a zombie (this process is their subreaper, so a daemonized process stays
//! readable until it is reaped here). Nothing is asserted: the report compares with targets.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use integration_tests::{
    agent::Agent,
    topology::{self, Daemon, Leftovers, SeedTopology, TestConfig, VIP},
    unique,
};
use nix::{
    sys::{
        signal::{kill, Signal},
        wait::waitpid,
    },
    unistd::Pid,
};

use crate::{
    kmem::Memory,
    traffic::{process_cpu, seed_haproxy, M1, M2},
};

/// The seed's listener port.
const PORT: u16 = 22;
/// The member a reload adds (nothing serves there; it only has to appear).
const ADDED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
/// How long a freshly deployed daemon is left alone before its memory is read.
const IDLE: Duration = Duration::from_secs(1);
/// What `lb run` logs once a load balancer serves.
const UP: &str = "load balancer up";

/// Which program `haproxy` on the agent's PATH is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proxy {
    Lb,
    Haproxy,
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proxy::Lb => "lb",
            Proxy::Haproxy => "haproxy",
        })
    }
}

/// A step's cost: its wall time, and the CPU of the processes it involved, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// Connections through the VIP while something changed: tried, failed (refused, reset, no
/// greeting, 3 s without an answer), and slow (1 s or more: a SYN was lost and retried).
#[derive(Clone, Copy, Debug, Default)]
pub struct Probe {
    pub tried: u64,
    pub failed: u64,
    pub slow: u64,
}

/// The agent's sequence on one load balancer, once: deploy, idle, `-sf` under connections,
/// SIGTERM.
#[derive(Clone, Debug)]
pub struct AgentRun {
    pub proxy: Proxy,
    /// `haproxy -f conf -p pid` until it returned; CPU: the command's and the daemon's so far.
    pub deploy: Cost,
    /// From the deploy's start until a connection through the VIP got a member's greeting.
    pub serving_s: f64,
    /// `-sf <pid>` with one member's weight changed, until it returned; CPU: the command's, the
    /// new daemon's until then, and what the old daemon used from the update until it exited.
    pub update: Cost,
    pub probe: Probe,
    /// SIGTERM until the daemon exited and its pins are gone (lb); CPU: the daemon's meanwhile.
    pub teardown: Cost,
    /// The idle daemon's VmRSS.
    pub rss_kib: u64,
    /// lb's kernel memory while idle (None for haproxy).
    pub memory: Option<Memory>,
}

/// `lb run` on the seed's TOML, once.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCycle {
    /// Start until "load balancer up"; CPU: the daemon's until then.
    pub start: Cost,
    /// SIGHUP with a member added to the file, until `lb stats --json` shows it; CPU: the
    /// daemon's meanwhile.
    pub reload: Cost,
    /// How long one `lb stats --json` took (the reload's figure is up to this late).
    pub stats_s: f64,
    /// `lb run --takeover` until it is up; CPU: the new daemon's until then and the old one's
    /// until it exited.
    pub takeover: Cost,
    /// From the takeover's start until the old process exited.
    pub takeover_old_exit_s: f64,
    /// SIGTERM until the daemon exited and its pins are gone.
    pub teardown: Cost,
}

/// `n` load balancers on one node, deployed one after another, then each updated once.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub proxy: Proxy,
    pub n: usize,
    pub deploys: Vec<Cost>,
    pub updates: Vec<Cost>,
    /// Load balancers a connection through their VIP reached a member of, after the deploys.
    pub serving: usize,
    /// VmRSS of every daemon, after the updates.
    pub rss_kib: u64,
    /// lb's kernel memory after the updates (None for haproxy).
    pub memory: Option<Memory>,
    /// SIGTERM to every daemon at once until all exited and their pins are gone.
    pub teardown_s: f64,
}

/// The deploy of the node's first lb load balancer: the one that loads and verifies the
/// node's program set (every later one of the same build only adds a slot). It stays deployed
/// through the agent's sequences and `lb run`'s lifecycle, so those measure a load balancer
/// joining a node that already serves, and goes before the fleets (each fleet starts on a
/// node with no lb load balancer, its first deploy verifying).
#[derive(Clone, Copy, Debug, Default)]
pub struct First {
    pub deploy: Cost,
    pub serving_s: f64,
}

/// Everything the control-plane part measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub first: Option<First>,
    pub agent: Vec<AgentRun>,
    pub runs: Vec<RunCycle>,
    pub fleets: Vec<Fleet>,
    /// Why haproxy was not measured, if it was not.
    pub haproxy_skipped: Option<String>,
    /// The machine's 1-minute load average when the part started and ended.
    pub load: (f64, f64),
}

/// What the part is asked to do.
pub struct Plan<'a> {
    pub lb: &'a Path,
    pub haproxy: &'a Path,
    pub runs: usize,
    pub fleets: &'a [usize],
}

/// Runs the whole part: `runs` times the agent's sequence (lb, then haproxy) and `lb run`'s
/// lifecycle, then each fleet size with lb and with haproxy.
pub fn run(plan: &Plan) -> anyhow::Result<Results> {
    let _reaper = Reaper::new()?;
    let node = Node::new()?;
    let topo = SeedTopology::new(&[M1, M2]);
    let mut r = Results {
        load: (load_average(), 0.0),
        ..Default::default()
    };
    let mut proxies = vec![(Proxy::Lb, plan.lb)];
    if plan.haproxy.exists() {
        proxies.push((Proxy::Haproxy, plan.haproxy));
    } else {
        r.haproxy_skipped = Some(format!("{} does not exist", plan.haproxy.display()));
    }
    eprintln!("bench: control: the node's first lb load balancer (verifies the programs)");
    let (first, anchor) = first_deploy(&topo, &node, plan.lb).context("the first deploy")?;
    eprintln!(
        "  deploy {:.0} ms (serving {:.0} ms, CPU {:.0} ms)",
        first.deploy.wall_s * 1e3,
        first.serving_s * 1e3,
        first.deploy.cpu_s * 1e3
    );
    r.first = Some(first);
    for run in 1..=plan.runs {
        for &(proxy, bin) in &proxies {
            eprintln!(
                "bench: control {run}/{}: the agent's sequence, {proxy}",
                plan.runs
            );
            let a = agent_run(&topo, &node, proxy, bin)
                .with_context(|| format!("the agent's sequence with {proxy}"))?;
            a.print();
            r.agent.push(a);
        }
        eprintln!("bench: control {run}/{}: lb run", plan.runs);
        let c = run_cycle(&topo, &node, plan.lb).context("lb run's lifecycle")?;
        c.print();
        r.runs.push(c);
    }
    let (pid, agent) = anchor;
    terminate(pid, Some(&node.bpffs.join(&agent.id)))?;
    let _ = std::fs::remove_file(agent.pidfile());
    drop(agent);
    for &n in plan.fleets {
        for &(proxy, bin) in &proxies {
            eprintln!("bench: control: {n} load balancers on one node, {proxy}");
            let f = fleet(&topo, &node, proxy, bin, n)
                .with_context(|| format!("{n} load balancers with {proxy}"))?;
            f.print();
            r.fleets.push(f);
        }
    }
    r.load.1 = load_average();
    Ok(r)
}

/// The sum of steps' costs.
pub fn total(steps: &[Cost]) -> Cost {
    steps.iter().fold(Cost::default(), |a, c| Cost {
        wall_s: a.wall_s + c.wall_s,
        cpu_s: a.cpu_s + c.cpu_s,
    })
}

impl AgentRun {
    fn print(&self) {
        eprintln!(
            "  deploy {:.0} ms (serving {:.0} ms, CPU {:.0} ms) | -sf {:.0} ms (CPU {:.0} ms), \
             {} of {} connections failed, {} slow | SIGTERM {:.0} ms | RSS {} KiB",
            self.deploy.wall_s * 1e3,
            self.serving_s * 1e3,
            self.deploy.cpu_s * 1e3,
            self.update.wall_s * 1e3,
            self.update.cpu_s * 1e3,
            self.probe.failed,
            self.probe.tried,
            self.probe.slow,
            self.teardown.wall_s * 1e3,
            self.rss_kib
        );
    }
}

impl RunCycle {
    fn print(&self) {
        eprintln!(
            "  up {:.0} ms | SIGHUP applied {:.0} ms | takeover up {:.0} ms, old gone {:.0} ms \
             | SIGTERM {:.0} ms",
            self.start.wall_s * 1e3,
            self.reload.wall_s * 1e3,
            self.takeover.wall_s * 1e3,
            self.takeover_old_exit_s * 1e3,
            self.teardown.wall_s * 1e3
        );
    }
}

impl Fleet {
    fn print(&self) {
        let (d, u) = (total(&self.deploys), total(&self.updates));
        eprintln!(
            "  deploys {:.1} s (CPU {:.1} s), {} of {} serving | updates {:.1} s (CPU {:.1} s) \
             | RSS {} MiB | SIGTERM to all {:.1} s",
            d.wall_s,
            d.cpu_s,
            self.serving,
            self.n,
            u.wall_s,
            u.cpu_s,
            self.rss_kib / 1024,
            self.teardown_s
        );
    }
}

/// The node's lb state directory and bpffs root, shared by every load balancer of the part
/// (so what lb pins for the whole node is made once and shared, as on a real node), removed
/// at the end whatever happened.
struct Node {
    state: PathBuf,
    bpffs: PathBuf,
    _left: Leftovers,
}

impl Node {
    fn new() -> anyhow::Result<Node> {
        let tag = unique("cp");
        let state = std::env::temp_dir().join(format!("{tag}-state"));
        let bpffs = PathBuf::from("/sys/fs/bpf").join(&tag);
        let node = Node {
            _left: Leftovers {
                namespaces: vec![],
                dirs: vec![state.clone(), bpffs.clone()],
            },
            state,
            bpffs,
        };
        lb::daemon::ensure_bpffs(&node.bpffs)?;
        for d in [&node.state, &node.bpffs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(node)
    }
}

/// This process adopts the daemons the commands leave behind (they fork, and their parent
/// exits), so each stays readable in /proc until reaped here; on drop, every child that has
/// exited is reaped and the process stops adopting.
struct Reaper;

impl Reaper {
    fn new() -> anyhow::Result<Reaper> {
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        Ok(Reaper)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        use nix::sys::wait::{WaitPidFlag, WaitStatus};
        // Daemons killed by the guards' clean-up may take a moment to die.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                Ok(_) => {}
                Err(_) => break, // no children left
            }
        }
        let _ = nix::sys::prctl::set_child_subreaper(false);
    }
}

/// Whether process `pid` has exited: gone, or a zombie not yet reaped.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_none_or(|(_, r)| r.starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

/// Reaps `pid` (a child, or a daemon adopted through `Reaper`) once it has exited.
fn reap(pid: u32) {
    let _ = waitpid(Pid::from_raw(pid as i32), None);
}

/// The daemon's VmRSS in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The machine's 1-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `done` every millisecond (steps are timed to the millisecond, which `wait_for`'s
/// 50 ms naps would blur) until it holds: the seconds since `t0`, or an error after `limit`.
fn until(
    t0: Instant,
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<f64> {
    loop {
        if done()? {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > limit {
            bail!("{what}: not after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for `child` to end: its wait status and resource usage (`wait4`, which std does not
/// give).
fn wait4(child: &Child) -> std::io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for this child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: status and usage are valid for writes; the pid is this process's child.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        return Err(std::io::Error::last_os_error());
    }
    Ok((status, usage))
}

/// User + system time of a rusage, in seconds.
fn rusage_s(u: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs `cmd` to its end, its output in `log`: its wall time and own CPU, or its log as the
/// error if it failed.
fn run_timed(mut cmd: Command, log: &Path) -> anyhow::Result<Cost> {
    let f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let t0 = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (status, usage) = wait4(&child).with_context(|| format!("waiting for {cmd:?}"))?;
    let wall_s = t0.elapsed().as_secs_f64();
    ensure!(
        status == 0,
        "{cmd:?} failed (wait status {status:#x}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    Ok(Cost {
        wall_s,
        cpu_s: rusage_s(&usage),
    })
}

/// The agent's `_spawn` of `conf`, timed until the command returned; CPU: the command's and
/// the daemon's so far. Returns the daemon's pid too.
fn spawn(agent: &Agent, conf: &str) -> anyhow::Result<(Cost, u32)> {
    let cmd = agent.spawn_command(conf, &[]);
    let mut cost = run_timed(cmd, &agent.dir.join("haproxy.out"))?;
    let pid = *agent
        .pids()
        .first()
        .context("the command returned with no pid in the pid file")?;
    cost.cpu_s += process_cpu(pid);
    Ok((cost, pid))
}

/// The seed's haproxy.cfg as the agent writes it for `agent`'s load balancer at `vip`.
fn conf(agent: &Agent, vip: Ipv4Addr, weights: [u16; 2]) -> String {
    seed_haproxy(&agent.id, &agent.sock(), vip, PORT, weights, true)
}

/// Forgets every neighbour the client and members learnt: a VIP now on a new port has a new
/// MAC, and a SYN to the old one would wait a second for its retry.
fn forget_neighbours(topo: &SeedTopology) {
    topo.client.ip("neigh flush all");
    for m in &topo.members {
        m.ns.ip("neigh flush all");
    }
}

/// Whether a connection through `vip` gets a member's greeting now.
fn serves(topo: &SeedTopology, vip: Ipv4Addr) -> bool {
    topology::connect(&topo.client.name, vip, PORT).is_ok()
}

/// SIGTERM to `pid` until it exited and `pins` (if any) are gone; CPU: the daemon's meanwhile.
fn terminate(pid: u32, pins: Option<&Path>) -> anyhow::Result<Cost> {
    let before = process_cpu(pid);
    let t0 = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).context("SIGTERM to the daemon")?;
    let wall_s = until(t0, Duration::from_secs(60), "the daemon to end", || {
        Ok(exited(pid) && !pins.is_some_and(Path::exists))
    })?;
    let cpu_s = process_cpu(pid) - before;
    reap(pid);
    Ok(Cost { wall_s, cpu_s })
}

/// The VIP of the load balancer deployed first, clear of the fleets' and the seed's.
const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 251);

/// Deploys the node's first lb load balancer, until it serves: its cost, its daemon's pid and
/// its agent (for the caller to stop).
fn first_deploy(
    topo: &SeedTopology,
    node: &Node,
    lb: &Path,
) -> anyhow::Result<(First, (u32, Agent))> {
    forget_neighbours(topo);
    let mut agent = Agent::on_node(topo, lb, &node.state, &node.bpffs);
    agent.plug(FIRST_VIP);
    let (deploy, pid) = spawn(&agent, &conf(&agent, FIRST_VIP, [1, 1]))?;
    let t0 = Instant::now();
    let serving_s = deploy.wall_s
        + until(
            t0,
            Duration::from_secs(10),
            "a connection through the first VIP",
            || Ok(serves(topo, FIRST_VIP)),
        )?;
    Ok((First { deploy, serving_s }, (pid, agent)))
}

/// Deploy, idle, `-sf` under connections and SIGTERM of one load balancer by `proxy`.
fn agent_run(
    topo: &SeedTopology,
    node: &Node,
    proxy: Proxy,
    bin: &Path,
) -> anyhow::Result<AgentRun> {
    forget_neighbours(topo);
    let mut agent = Agent::on_node(topo, bin, &node.state, &node.bpffs);
    agent.plug(VIP);
    let (deploy, pid) = spawn(&agent, &conf(&agent, VIP, [1, 1]))?;
    let t0 = Instant::now();
    let serving_s = deploy.wall_s
        + until(
            t0,
            Duration::from_secs(10),
            "a connection through the VIP",
            || Ok(serves(topo, VIP)),
        )?;
    std::thread::sleep(IDLE);
    let rss_kib = vm_rss_kib(pid);
    let memory = match proxy {
        Proxy::Lb => Some(Memory::of(&node.bpffs, &[&agent.id], &[pid])?),
        Proxy::Haproxy => None,
    };
    let (update, probe, pid) = update_under_connections(topo, &agent, pid)?;
    let pins = node.bpffs.join(&agent.id);
    let teardown = terminate(pid, Some(&pins))?;
    let _ = std::fs::remove_file(agent.pidfile());
    Ok(AgentRun {
        proxy,
        deploy,
        serving_s,
        update,
        probe,
        teardown,
        rss_kib,
        memory,
    })
}

/// The agent's update (a member's weight 1 -> 2) with `-sf <old>` while a client connects
/// through the VIP over and over: its cost, the client's connections, the new daemon's pid.
fn update_under_connections(
    topo: &SeedTopology,
    agent: &Agent,
    old: u32,
) -> anyhow::Result<(Cost, Probe, u32)> {
    let prober = Prober::start(&topo.client.name, VIP);
    std::thread::sleep(Duration::from_millis(300));
    let before = process_cpu(old);
    let (mut update, new) = spawn(agent, &conf(agent, VIP, [2, 1]))?;
    until(
        Instant::now(),
        Duration::from_secs(30),
        "the old daemon to exit",
        || Ok(exited(old)),
    )?;
    update.cpu_s += process_cpu(old) - before;
    reap(old);
    std::thread::sleep(Duration::from_millis(300));
    Ok((update, prober.finish(), new))
}

/// A client connecting through the VIP over and over (every 2 ms) from its namespace.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Probe>>,
}

impl Prober {
    fn start(client: &str, vip: Ipv4Addr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, client) = (stop.clone(), client.to_string());
        let thread = std::thread::spawn(move || {
            let mut p = Probe::default();
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                if topology::connect(&client, vip, PORT).is_err() {
                    p.failed += 1;
                }
                p.tried += 1;
                if t.elapsed() >= Duration::from_millis(900) {
                    p.slow += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            p
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Probe {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `daemon` logged "load balancer up": the seconds since `t0` (an error with its
/// log if it exited first).
fn wait_up(daemon: &Daemon, t0: Instant) -> anyhow::Result<f64> {
    let pid = daemon.pid().context("lb run's pid")?;
    until(t0, Duration::from_secs(60), "lb run up", || {
        if daemon.log_text().contains(UP) {
            return Ok(true);
        }
        if exited(pid) {
            bail!("lb run exited before it was up:\n{}", daemon.log_text());
        }
        Ok(false)
    })
}

/// `lb run` on the seed's TOML (its own namespace, port and state, the node's bpffs root; lb's
/// default table size): start, a SIGHUP adding a member, a takeover, SIGTERM.
fn run_cycle(topo: &SeedTopology, node: &Node, lb: &Path) -> anyhow::Result<RunCycle> {
    forget_neighbours(topo);
    let mut cfg = TestConfig::seed(|t| t);
    // Its namespace, state and own bpffs directory (unused) go whatever happens; the node's
    // bpffs root is the node's to remove.
    let _left = cfg.leftovers();
    let text = std::fs::read_to_string(&cfg.path)?;
    let at = format!("bpffs = \"{}\"\n", cfg.bpffs.display());
    ensure!(text.contains(&at), "the seed's TOML names no bpffs root");
    let text = text.replace(&at, &format!("bpffs = \"{}\"\n", node.bpffs.display()));
    std::fs::write(&cfg.path, text)?;
    cfg.bpffs = node.bpffs.clone();
    let mut logs = Vec::new();
    let r = run_cycle_with(topo, lb, &cfg, &mut logs);
    for f in logs.iter().chain([&cfg.path]) {
        let _ = std::fs::remove_file(f);
    }
    r
}

/// `run_cycle` on `cfg`; the daemons' logs are pushed to `logs` (for the caller to remove).
fn run_cycle_with(
    topo: &SeedTopology,
    lb: &Path,
    cfg: &TestConfig,
    logs: &mut Vec<PathBuf>,
) -> anyhow::Result<RunCycle> {
    let text = std::fs::read_to_string(&cfg.path)?;
    std::fs::write(&cfg.path, text.replace("conntrack_flows = 4096\n", ""))?;
    let t0 = Instant::now();
    let first = Daemon::start(lb, &topo.node.name, &cfg.path, &[]);
    logs.push(first.log.clone());
    let pid = first.pid().context("lb run's pid")?;
    let up = wait_up(&first, t0)?;
    let start = Cost {
        wall_s: up,
        cpu_s: process_cpu(pid),
    };
    let (reload, stats_s) = reload(lb, cfg, &first)?;

    let before = process_cpu(pid);
    let t0 = Instant::now();
    let second = Daemon::start(lb, &topo.node.name, &cfg.path, &["--takeover"]);
    logs.push(second.log.clone());
    let new = second.pid().context("lb run --takeover's pid")?;
    let up = wait_up(&second, t0)?;
    let new_cpu = process_cpu(new);
    let takeover_old_exit_s = until(
        t0,
        Duration::from_secs(30),
        "the old lb run to exit",
        || Ok(exited(pid)),
    )?;
    let takeover = Cost {
        wall_s: up,
        cpu_s: new_cpu + process_cpu(pid) - before,
    };
    drop(first);
    let teardown = terminate(new, Some(&cfg.bpffs.join(&cfg.lb_id)))?;
    drop(second);
    Ok(RunCycle {
        start,
        reload,
        stats_s,
        takeover,
        takeover_old_exit_s,
        teardown,
    })
}

/// A member added to the file and SIGHUP, until `lb stats --json` lists it with its weight:
/// the cost, and the median time one `lb stats` took.
fn reload(lb: &Path, cfg: &TestConfig, daemon: &Daemon) -> anyhow::Result<(Cost, f64)> {
    let pid = daemon.pid().context("lb run's pid")?;
    let text = std::fs::read_to_string(&cfg.path)?;
    std::fs::write(
        &cfg.path,
        format!(
            "{text}\n[[loadbalancer.pool.member]]\nid = \"bench-added\"\naddress = \"{ADDED}\"\n\
             protocol_port = {PORT}\nweight = 1\n"
        ),
    )?;
    // Listed from the state file's plan, and its weight read from the members map: written.
    let listed = |s: &serde_json::Value| {
        s[0]["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["address"] == ADDED.to_string() && m["weight"] == 1)
        })
    };
    let mut polls = Vec::new();
    let before = process_cpu(pid);
    let t0 = Instant::now();
    daemon.signal(Signal::SIGHUP);
    let wall_s = until(
        t0,
        Duration::from_secs(20),
        "the added member in lb stats",
        || {
            let t = Instant::now();
            let s = topology::stats(lb, &cfg.state_dir);
            polls.push(t.elapsed().as_secs_f64());
            Ok(listed(&s))
        },
    )?;
    let cost = Cost {
        wall_s,
        cpu_s: process_cpu(pid) - before,
    };
    Ok((cost, crate::Spread::of(polls).median))
}

/// The fleet's `i`th VIP: 10.0.0.10 and up, clear of the client, members and seed VIP.
fn fleet_vip(i: usize) -> anyhow::Result<Ipv4Addr> {
    ensure!(i < 240, "at most 240 load balancers fit 10.0.0.10-249");
    Ok(Ipv4Addr::new(10, 0, 0, 10 + i as u8))
}

/// `n` load balancers of `proxy` deployed one after another as the agent does (each in its
/// own qlbaas namespace and port on br-int), then each updated with `-sf`, then all stopped.
fn fleet(
    topo: &SeedTopology,
    node: &Node,
    proxy: Proxy,
    bin: &Path,
    n: usize,
) -> anyhow::Result<Fleet> {
    forget_neighbours(topo);
    let mut agents = Vec::new();
    let mut deploys = Vec::new();
    for i in 0..n {
        let vip = fleet_vip(i)?;
        let mut agent = Agent::on_node(topo, bin, &node.state, &node.bpffs);
        agent.plug(vip);
        deploys.push(spawn(&agent, &conf(&agent, vip, [1, 1]))?.0);
        agents.push((agent, vip));
    }
    let serving = agents.iter().filter(|(_, vip)| serves(topo, *vip)).count();
    let mut updates = Vec::new();
    let mut old = Vec::new();
    for (agent, vip) in &agents {
        let pid = *agent.pids().first().context("no pid in the pid file")?;
        old.push((pid, process_cpu(pid)));
        updates.push(spawn(agent, &conf(agent, *vip, [2, 1]))?.0);
    }
    // The old daemons' share of each update, once each has gone.
    for ((pid, before), update) in old.into_iter().zip(&mut updates) {
        until(
            Instant::now(),
            Duration::from_secs(60),
            "an old daemon to exit",
            || Ok(exited(pid)),
        )?;
        update.cpu_s += process_cpu(pid) - before;
        reap(pid);
    }
    let pids: Vec<u32> = agents
        .iter()
        .filter_map(|(a, _)| a.pids().first().copied())
        .collect();
    let rss_kib = pids.iter().map(|&p| vm_rss_kib(p)).sum();
    let ids: Vec<&str> = agents.iter().map(|(a, _)| a.id.as_str()).collect();
    let memory = match proxy {
        Proxy::Lb => Some(Memory::of(&node.bpffs, &ids, &pids)?),
        Proxy::Haproxy => None,
    };
    let teardown_s = stop_all(&pids, &ids, &node.bpffs)?;
    for (agent, _) in &agents {
        let _ = std::fs::remove_file(agent.pidfile());
    }
    Ok(Fleet {
        proxy,
        n,
        deploys,
        updates,
        serving,
        rss_kib,
        memory,
        teardown_s,
    })
}

/// SIGTERM to every daemon at once, until all exited and every load balancer's pins are gone.
fn stop_all(pids: &[u32], ids: &[&str], bpffs: &Path) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for &p in pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
    }
    let s = until(t0, Duration::from_secs(300), "every daemon to end", || {
        Ok(pids.iter().all(|&p| exited(p)) && ids.iter().all(|id| !bpffs.join(id).exists()))
    })?;
    for &p in pids {
        reap(p);
    }
    Ok(s)
}
