//! `lb run`: the daemon. It brings every load balancer of its config up (or takes over what an
//! earlier run left, or what a running daemon hands over), keeps them healthy, applies a
//! changed config on SIGHUP, and ends in one of two ways:
//! - SIGINT/SIGTERM: tears down everything lb owns (data path, maps, namespace, port);
//! - SIGUSR1: exits leaving the data path attached with every flow (pinned), for a next
//!   `lb run` to take over: an upgrade or restart without losing a connection. Without a
//!   daemon, flows keep being translated; only expiry, health checks and stats pause.
//!
//! `lb run --takeover` does both halves of an upgrade: it checks and loads its own programs
//! against the pinned maps first (a mismatch is refused and the running daemon is left
//! alone), then asks the running daemon to hand over (SIGUSR1), takes each load balancer's
//! lock as it is released, and replaces the programs under the pinned attachments atomically.
//!
//! Parts: `lock` (one daemon per load balancer), `instance` (one load balancer's lifecycle),
//! `attach` (attachments that outlive the process), `reconcile` (reload as a transaction),
//! `monitors` (health checks), `expiry` (the conntrack expiry thread).

pub mod attach;
pub mod expiry;
pub mod gc;
pub mod instance;
pub mod lock;
pub mod monitors;
pub mod reconcile;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

use self::{
    expiry::{Expiry, Freed},
    instance::{Claim, Ctx, Instance, Mode},
    lock::{Acquire, LbLock},
    reconcile::{Backend, Running},
};
use crate::{
    config::{Config, LoadBalancer, XdpModeChoice},
    dataplane::Dataplane,
    health::Transition,
    plan::Plan,
    state::State,
};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// How long a start waits for a lock held by something other than a daemon (`lb stats`
/// collecting what a killed daemon left holds one for an instant); a daemon holds its lock
/// for its whole life, so waiting this long changes no refusal.
const TRANSIENT_HOLD: Duration = Duration::from_millis(300);

/// How long `--takeover` waits for the running daemon to let go of a load balancer.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure `dir` will be on a bpffs, mounting one at /sys/fs/bpf if nothing is there.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    // Two threads mounting at once would stack two bpffs instances, the second hiding what
    // the first pinned.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            bail!("{} has no existing parent", dir.display());
        }
    }
    let fs =
        nix::sys::statfs::statfs(&probe).with_context(|| format!("statfs {}", probe.display()))?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let sysfs_bpf = Path::new("/sys/fs/bpf");
    if probe == sysfs_bpf {
        info!("mounting bpffs on /sys/fs/bpf");
        nix::mount::mount(
            Some("bpf"),
            sysfs_bpf,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mount -t bpf bpf /sys/fs/bpf")?;
        return Ok(());
    }
    bail!(
        "{} is not on a bpffs (mount one, or set daemon.bpffs under /sys/fs/bpf)",
        dir.display()
    )
}

/// The signals the daemon acts on.
pub fn daemon_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::Signal::*;
    let mut s = nix::sys::signal::SigSet::empty();
    for sig in [SIGINT, SIGTERM, SIGHUP, SIGUSR1] {
        s.add(sig);
    }
    s
}

/// The signals the daemon acts on, registered before anything else so that none of them
/// kills it during bring-up (they wait until it is up).
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let s = Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        };
        // `lb run` blocks them from its first instant (cli/run.rs); now they have handlers.
        daemon_signals().thread_unblock()?;
        Ok(s)
    }
}

/// What `lb run` was asked.
pub struct Options {
    pub source: Source,
    pub mode: Option<XdpModeChoice>,
    /// Hand running load balancers over from the daemon that runs them.
    pub takeover: bool,
    /// What a caller embedding the daemon adds (the haproxy drop-in).
    pub embedding: Option<Embedding>,
    /// Where to serve Prometheus metrics; overrides `[daemon] metrics_address`.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Where the configuration comes from.
pub enum Source {
    /// lb's TOML file, re-read on SIGHUP.
    File(PathBuf),
    /// A configuration made by the caller (the haproxy drop-in, which reloads by starting a
    /// new process with `-sf`, as haproxy does).
    Fixed(Config),
}

/// A change a caller asks the event loop to make (it is the single writer of the maps'
/// configuration): the haproxy stats socket's admin commands.
pub struct Request {
    pub loadbalancer: String,
    pub kind: RequestKind,
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

pub enum RequestKind {
    Member {
        member: String,
        change: MemberChange,
    },
    /// The SNAT ports of every listener's new flows; None: lb's whole range.
    SnatPorts(Option<(u16, u16)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Weight(u16),
    /// haproxy's `set server ... state ready|drain|maint`.
    Ready,
    Drain,
    Maint,
}

/// Runs once every load balancer is up.
pub type UpHook = Box<dyn FnOnce(&[Instance]) -> anyhow::Result<()> + Send>;

/// What the haproxy drop-in adds to the daemon.
pub struct Embedding {
    /// Runs once every load balancer is up, before the event loop (the drop-in writes its pid
    /// file, opens its stats sockets and tells its waiting parent); an error ends the run as
    /// a failed start does.
    pub up: UpHook,
    pub requests: mpsc::UnboundedReceiver<Request>,
    /// The only daemons a lock may be taken over from (`-sf`/`-st`); others are refused.
    pub takeover_from: Vec<u32>,
    /// SNAT ports new flows take from the start (a HAProxy replaced may still hold tuples
    /// from the namespace's old ephemeral range); None: lb's whole range.
    pub snat_ports: Option<(u16, u16)>,
}

impl Running for Instance {
    fn lb(&self) -> &LoadBalancer {
        &self.lb
    }
    fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// The daemon's side of the reconciler: real load balancers.
struct Daemon<'a> {
    ctx: &'a Ctx,
}

impl Backend for Daemon<'_> {
    type Lb = Instance;

    async fn start(&mut self, lb: &LoadBalancer) -> anyhow::Result<Instance> {
        let claim = claim_one(self.ctx, lb)?;
        Instance::start(self.ctx, claim).await
    }

    fn update(&mut self, r: &mut Instance, lb: &LoadBalancer, plan: Plan) -> anyhow::Result<()> {
        r.update(self.ctx, lb, plan)
    }

    async fn stop(&mut self, r: Instance) {
        r.teardown(self.ctx).await
    }
}

/// Takes `lb`'s lock (refusing if another daemon runs it) and reads what an earlier run left.
fn claim_one(ctx: &Ctx, lb: &LoadBalancer) -> anyhow::Result<Claim> {
    match lock_lb(ctx, &lb.id)? {
        Acquire::Acquired(lock) => Ok(Claim {
            prior: prior_state(ctx, &lb.id),
            lb: lb.clone(),
            lock,
            preloaded: None,
        }),
        Acquire::HeldBy(pid) => bail!("{}", already_running(&lb.id, pid)),
    }
}

/// Takes load balancer `id`'s lock. A holder that is the daemon its state file names holds
/// it for its whole life: answered at once (a `-sf` or `--takeover` asks that one to hand
/// over). Anything else (`lb stats` collecting what a killed daemon left) is waited for
/// `TRANSIENT_HOLD`.
fn lock_lb(ctx: &Ctx, id: &str) -> anyhow::Result<Acquire> {
    let locking = || format!("locking {}", lock::path(&ctx.state_dir, id).display());
    match LbLock::try_acquire(&ctx.state_dir, id).with_context(locking)? {
        Acquire::HeldBy(Some(pid))
            if State::read(&ctx.state_dir, id).is_some_and(|s| s.pid == pid) =>
        {
            Ok(Acquire::HeldBy(Some(pid)))
        }
        Acquire::Acquired(lock) => Ok(Acquire::Acquired(lock)),
        Acquire::HeldBy(_) => {
            LbLock::acquire_within(&ctx.state_dir, id, TRANSIENT_HOLD).with_context(locking)
        }
    }
}

fn already_running(lb: &str, pid: Option<u32>) -> String {
    let who = pid.map_or("another lb".into(), |p| format!("lb (pid {p})"));
    format!(
        "load balancer {lb} is already run by {who}; stop that one first, or start this one \
         with --takeover to have it hand over without dropping connections"
    )
}

/// What an earlier run left of `lb`: its state file.
fn prior_state(ctx: &Ctx, lb: &str) -> Option<State> {
    State::read(&ctx.state_dir, lb)
}

/// Locks every load balancer of `cfg`, taking over from the daemons that run them if asked.
/// Returns the claims, and the load balancers those daemons ran that `cfg` does not have
/// (to be torn down, as a reload would).
async fn claim_all(
    ctx: &Ctx,
    cfg: &Config,
    takeover: bool,
    allowed: Option<&[u32]>,
) -> anyhow::Result<(Vec<Claim>, Vec<(State, LbLock)>)> {
    let mut claims = Vec::new();
    let mut held: Vec<(&LoadBalancer, u32)> = Vec::new();
    for lb in &cfg.loadbalancer {
        match lock_lb(ctx, &lb.id)? {
            Acquire::Acquired(lock) => claims.push(Claim {
                prior: prior_state(ctx, &lb.id),
                lb: lb.clone(),
                lock,
                preloaded: None,
            }),
            Acquire::HeldBy(Some(pid)) if takeover && allowed.is_none_or(|a| a.contains(&pid)) => {
                held.push((lb, pid))
            }
            Acquire::HeldBy(Some(pid)) if allowed.is_some() => bail!(
                "load balancer {} is run by lb (pid {pid}), which is not among the pids given \
                 to -sf/-st",
                lb.id
            ),
            Acquire::HeldBy(pid) => bail!("{}", already_running(&lb.id, pid)),
        }
    }
    if held.is_empty() {
        return Ok((claims, Vec::new()));
    }
    // Preflight, before the running daemon is disturbed: the same shape, maps this build can
    // use, programs the kernel accepts against them.
    let mut preloaded: Vec<(&LoadBalancer, u32, State, Dataplane)> = Vec::new();
    for (lb, pid) in held {
        let state = State::read(&ctx.state_dir, &lb.id).with_context(|| {
            format!(
                "load balancer {} is run by lb (pid {pid}) but {} cannot be read",
                lb.id,
                State::path(&ctx.state_dir, &lb.id).display()
            )
        })?;
        instance::check_takeover(ctx, lb, &state)?;
        let sizing = ctx.sizing(lb, &ctx.plan(lb, Some(&state.plan))?);
        let dp = instance::open_dataplane(&ctx.pin_dir(&lb.id), sizing)
            .await
            .with_context(|| {
                format!(
                    "load balancer {}: taking over from lb (pid {pid}) refused; it keeps running \
                 unchanged",
                    lb.id
                )
            })?;
        preloaded.push((lb, pid, state, dp));
    }
    let mut pids: Vec<u32> = preloaded.iter().map(|(_, p, _, _)| *p).collect();
    pids.sort_unstable();
    pids.dedup();
    let others: Vec<State> = State::read_all(&ctx.state_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| pids.contains(&s.pid))
        .filter(|s| !cfg.loadbalancer.iter().any(|lb| lb.id == s.loadbalancer))
        .collect();
    let started = Instant::now();
    // Tells the old daemon that its SIGUSR1 is a handover (leave everything running), not a
    // haproxy soft stop (drain, then tear down).
    for (lb, _, _, _) in &preloaded {
        let _ = std::fs::write(
            handover_path(&ctx.state_dir, &lb.id),
            std::process::id().to_string(),
        );
    }
    for &pid in &pids {
        info!(pid, "asking the running lb to hand over (SIGUSR1)");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .with_context(|| format!("signalling lb (pid {pid})"))?;
    }
    for (lb, pid, _, dp) in preloaded {
        match LbLock::acquire_within(&ctx.state_dir, &lb.id, HANDOVER_TIMEOUT)? {
            Acquire::Acquired(lock) => claims.push(Claim {
                prior: prior_state(ctx, &lb.id),
                lb: lb.clone(),
                lock,
                preloaded: Some(dp),
            }),
            Acquire::HeldBy(_) => bail!(
                "lb (pid {pid}) did not hand load balancer {} over within {:?}",
                lb.id,
                HANDOVER_TIMEOUT
            ),
        }
    }
    info!(
        took_ms = started.elapsed().as_millis() as u64,
        "handed over: every load balancer's lock is ours"
    );
    let mut left = Vec::new();
    for s in others {
        if let Acquire::Acquired(lock) =
            LbLock::acquire_within(&ctx.state_dir, &s.loadbalancer, HANDOVER_TIMEOUT)?
        {
            if let Some(s) = State::read(&ctx.state_dir, &s.loadbalancer) {
                left.push((s, lock));
            }
        }
    }
    Ok((claims, left))
}

/// `<state_dir>/<id>.handover`: the pid of a daemon taking the load balancer over.
pub fn handover_path(state_dir: &Path, lb: &str) -> PathBuf {
    state_dir.join(format!("{lb}.handover"))
}

/// Whether a live process other than this one is taking over any of `running`.
fn handing_over(ctx: &Ctx, running: &[Instance]) -> bool {
    running.iter().any(|r| {
        std::fs::read_to_string(handover_path(&ctx.state_dir, &r.lb.id))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists())
    })
}

/// How the daemon ends.
enum End {
    Teardown,
    Leave,
}

/// Runs the daemon until SIGINT/SIGTERM (tear down) or SIGUSR1 (leave running).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let (path, mut cfg) = match opts.source {
        Source::File(p) => {
            let c = Config::load(&p)?;
            (Some(p), c)
        }
        Source::Fixed(c) => (None, c),
    };
    // The drop-in's lines carry haproxy's tag, so that log routing made for haproxy holds.
    let log_tag = if opts.embedding.is_some() {
        crate::haproxy::syslog::TAG
    } else {
        "lb"
    };
    let connection_log = cfg
        .daemon
        .connection_log
        .iter()
        .map(|t| {
            crate::syslog::Target::parse(t)
                .map_err(|e| anyhow::anyhow!("daemon.connection_log {t:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let connection_log = (!connection_log.is_empty())
        .then(|| std::sync::Arc::new(crate::syslog::Sender::new(log_tag, connection_log)));
    let (up_hook, mut requests, allowed, snat_ports) = match opts.embedding {
        Some(e) => (
            Some(e.up),
            Some(e.requests),
            Some(e.takeover_from),
            e.snat_ports,
        ),
        None => (None, None, None, None),
    };
    let choice = opts.mode.unwrap_or(cfg.daemon.xdp_mode);
    let (transitions, mut rx) = mpsc::unbounded_channel::<Transition>();
    let (freed_tx, mut freed) = mpsc::unbounded_channel::<Freed>();
    let ctx = Ctx {
        bpffs: PathBuf::from(&cfg.daemon.bpffs),
        state_dir: PathBuf::from(&cfg.daemon.state_dir),
        conntrack_flows: cfg.daemon.conntrack_flows,
        mode: Mode::from_choice(choice),
        transitions,
        expiry: Expiry::start(freed_tx)?,
        snat_ports,
        connection_log,
    };
    ensure_bpffs(&ctx.bpffs)?;
    gc::collect(&ctx.state_dir);
    // Program sets whose load balancers' pins went another way than lb's teardown.
    let _ = crate::dataplane::programs::collect(&ctx.bpffs);
    // Bound before anything is brought up: a metrics address that cannot be used fails the
    // start, naming it, with nothing touched.
    if let Some(addr) = opts.metrics_address.or(cfg.daemon.metrics_address) {
        crate::metrics::serve(addr, ctx.state_dir.clone()).await?;
    }

    // SIGINT or SIGTERM during the bring-up stops it: a load of the programs under way is
    // interrupted, and what this run made is torn down (a load balancer taken over from a
    // running daemon before it stopped is left running, as after any failed start).
    let mut stop: Option<&str> = None;
    let up = {
        let bring_up = bring_up(&ctx, &cfg, opts.takeover, allowed.as_deref(), up_hook);
        tokio::pin!(bring_up);
        loop {
            tokio::select! {
                r = &mut bring_up => break r,
                _ = signals.int.recv(), if stop.is_none() => {
                    stop = Some("SIGINT");
                    crate::dataplane::cancel::request();
                }
                _ = signals.term.recv(), if stop.is_none() => {
                    stop = Some("SIGTERM");
                    crate::dataplane::cancel::request();
                }
            }
        }
    };
    let mut running = match (up, stop) {
        (Ok(running), None) => running,
        (Ok(running), Some(sig)) => {
            info!("{sig} during the start: tearing down");
            for r in running.into_iter().rev() {
                r.teardown(&ctx).await;
            }
            return Ok(());
        }
        (Err(e), Some(sig)) => {
            info!("{sig} during the start: stopped ({e:#}); what this run made is torn down");
            return Ok(());
        }
        (Err(e), None) => return Err(e),
    };

    // `lb run` under systemd (`Type=notify`): serving now. The drop-in's master speaks for
    // its workers (haproxy/master.rs).
    let systemd = requests.is_none();
    notify(systemd, &[sd_notify::NotifyState::Ready]);
    // The haproxy drop-in's SIGUSR1 without a handover is haproxy's soft stop.
    let soft_stop = requests.is_some();
    let mut draining = false;
    let mut drain_tick = tokio::time::interval(Duration::from_secs(1));
    let end = loop {
        // A fresh start's SNAT ports end a minute later (`Instance::snat_restore_at`).
        let restore_at = running.iter().filter_map(|r| r.snat_restore_at).min();
        tokio::select! {
            _ = signals.int.recv() => { info!("SIGINT: tearing down"); break End::Teardown; }
            () = async {
                match restore_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = std::time::Instant::now();
                for r in running.iter_mut().filter(|r| r.snat_restore_at.is_some_and(|t| t <= now)) {
                    if let Err(e) = r.set_snat_ports(None) {
                        error!(loadbalancer = %r.lb.id, error = format!("{e:#}"), "cannot give new flows lb's whole SNAT range back");
                    }
                }
            }
            _ = signals.term.recv() => { info!("SIGTERM: tearing down"); break End::Teardown; }
            _ = signals.usr1.recv() => {
                if soft_stop && !handing_over(&ctx, &running) {
                    info!("SIGUSR1: soft stop: new connections go to the namespace's stack (a haproxy taking over); established ones carry on until they end");
                    for r in running.iter_mut() {
                        if let Err(e) = r.drain() {
                            error!(error = format!("{e:#}"), "cannot drain");
                        }
                    }
                    draining = true;
                    continue;
                }
                info!("SIGUSR1: leaving the data path running for the next lb to take over");
                break End::Leave;
            }
            _ = drain_tick.tick(), if draining => {
                let open: i64 = running.iter().map(|r| r.open_connections()).sum();
                if open <= 0 {
                    info!("soft stop: the last connection ended; tearing down");
                    break End::Teardown;
                }
            }
            _ = signals.hup.recv() => match &path {
                Some(path) => {
                    info!(config = %path.display(), "SIGHUP: reloading");
                    notify(systemd, &[
                        sd_notify::NotifyState::Reloading,
                        sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Reloading),
                    ]);
                    // A SIGINT or SIGTERM meanwhile stops a load under way (a new load
                    // balancer's first programs); the reload ends there and so does lb.
                    let r = reload(path, &mut cfg, &mut running, &ctx);
                    tokio::pin!(r);
                    let mut stop = None;
                    loop {
                        tokio::select! {
                            () = &mut r => break,
                            _ = signals.int.recv(), if stop.is_none() => {
                                stop = Some("SIGINT");
                                crate::dataplane::cancel::request();
                            }
                            _ = signals.term.recv(), if stop.is_none() => {
                                stop = Some("SIGTERM");
                                crate::dataplane::cancel::request();
                            }
                        }
                    }
                    if let Some(sig) = stop {
                        info!("{sig} during the reload: tearing down");
                        break End::Teardown;
                    }
                    notify(systemd, &[sd_notify::NotifyState::Ready]);
                }
                None => info!("SIGHUP: this configuration is replaced by starting a new process with -sf, as haproxy's is"),
            },
            Some(req) = async { match requests.as_mut() { Some(r) => r.recv().await, None => None } } => {
                let r = match (running.iter_mut().find(|r| r.lb.id == req.loadbalancer), req.kind) {
                    (Some(r), RequestKind::Member { member, change }) => r.change_member(&member, change),
                    (Some(r), RequestKind::SnatPorts(range)) => r.set_snat_ports(range).map_err(|e| format!("{e:#}")),
                    (None, _) => Err(format!("no load balancer {}", req.loadbalancer)),
                };
                let _ = req.reply.send(r);
            }
            Some(t) = rx.recv() => {
                if let Some(r) = running.iter_mut().find(|r| r.lb.id == t.loadbalancer) {
                    if t.up { info!(loadbalancer = %t.loadbalancer, member = %t.member_id, reason = %t.reason, "member UP"); }
                    else { warn!(loadbalancer = %t.loadbalancer, member = %t.member_id, reason = %t.reason, "member DOWN"); }
                    if let Err(e) = r.apply_transition(&t) {
                        error!(error = format!("{e:#}"), "cannot record member health");
                    }
                }
            }
            Some(f) = freed.recv() => {
                if let Some(r) = running.iter_mut().find(|r| r.lb.id == f.loadbalancer) {
                    r.free_slots(&f.slots);
                }
            }
        }
    };
    notify(systemd, &[sd_notify::NotifyState::Stopping]);
    for r in running.into_iter().rev() {
        match end {
            End::Teardown => r.teardown(&ctx).await,
            End::Leave => r.leave(&ctx),
        }
    }
    Ok(())
}

/// Tells systemd (`$NOTIFY_SOCKET`, when it runs lb as a `Type=notify` service).
fn notify(systemd: bool, states: &[sd_notify::NotifyState]) {
    if systemd {
        if let Err(e) = sd_notify::notify(states) {
            warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Claims every load balancer of `cfg` (taking over if asked), starts them, tears down those
/// the daemons it took over ran that `cfg` lacks, and runs the caller's hook. On a failure,
/// what this run started is torn down (or left, if it was taken over).
async fn bring_up(
    ctx: &Ctx,
    cfg: &Config,
    takeover: bool,
    allowed: Option<&[u32]>,
    up_hook: Option<UpHook>,
) -> anyhow::Result<Vec<Instance>> {
    let (claims, left) = claim_all(ctx, cfg, takeover, allowed).await?;
    let mut running: Vec<Instance> = Vec::new();
    for claim in claims {
        match Instance::start(ctx, claim).await {
            Ok(i) => running.push(i),
            Err(e) => {
                // What this run made goes; what it took over stays as it was.
                for r in running.into_iter().rev() {
                    r.leave_or_teardown(ctx).await;
                }
                return Err(e);
            }
        }
    }
    for (state, lock) in left {
        instance::teardown_left(state, &ctx.state_dir, lock).await;
    }
    if let Some(up) = up_hook {
        if let Err(e) = up(&running) {
            for r in running.into_iter().rev() {
                r.leave_or_teardown(ctx).await;
            }
            return Err(e);
        }
    }
    Ok(running)
}

impl Instance {
    /// After a failed bring-up of another load balancer: one this run made is torn down,
    /// one it took over is left running.
    async fn leave_or_teardown(self, ctx: &Ctx) {
        if self.inherited() {
            self.leave(ctx)
        } else {
            self.teardown(ctx).await
        }
    }
}

/// Applies the config now in `path` as one transaction: refused as a whole if it does not
/// validate or cannot be applied in place; rolled back if a step fails.
async fn reload(path: &Path, cfg: &mut Config, running: &mut Vec<Instance>, ctx: &Ctx) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: {e}; the running configuration stays");
            return;
        }
    };
    let changes = match reconcile::diff(running, &cfg.daemon, &new) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: {e:#}; the running configuration stays (nothing was changed)");
            return;
        }
    };
    if changes.is_empty() {
        info!("SIGHUP: nothing changed");
        *cfg = new;
        return;
    }
    match reconcile::apply(&mut Daemon { ctx }, running, changes).await {
        Ok(a) => {
            info!(
                started = ?a.started, updated = ?a.updated, stopped = ?a.stopped,
                "SIGHUP: configuration applied"
            );
            *cfg = new;
        }
        Err(e) => error!("SIGHUP: {e:#}"),
    }
}
