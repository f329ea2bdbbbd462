//! `lb run`: bring every load balancer of the config up, keep it healthy, apply a changed
//! config on SIGHUP, tear it down on SIGINT/SIGTERM.
//!
//! Order of bring-up per load balancer: namespace and port, maps (pools, members, then
//! listeners, so traffic starts only once it can be served), XDP attach, health monitors, and
//! last the state file that tells `lb stats` (and tests) it is running. Any failure undoes
//! everything created so far, for every load balancer: nothing is left half-built.
//!
//! A reload is a diff: load balancers gone from the file are torn down, new ones brought up,
//! and the others get their map entries rewritten in place with stable indexes (see
//! `plan::plan`), so established flows carry on. A file that does not validate changes
//! nothing.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::{
    programs::{tc, SchedClassifier, TcAttachType, XdpMode},
    util::KernelVersion,
};
use lb_common::{MemberConf, PoolConf, MEMBER_F_UP};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, LoadBalancer, XdpModeChoice},
    dataplane::Dataplane,
    health::{self, MonitorTarget, Transition},
    node::{self, Node},
    plan::{plan, Plan},
    state::State,
};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

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

/// One load balancer, up.
pub struct Running {
    pub lb: LoadBalancer,
    pub plan: Plan,
    node: Node,
    dataplane: Option<Dataplane>,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    mode: &'static str,
    health: Option<Health>,
}

/// The health monitor thread of one load balancer and the way to stop it.
struct Health {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

/// Where the data path runs on the port.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attach {
    Xdp(XdpMode),
    Tc,
}

fn choose_mode(choice: XdpModeChoice) -> (Attach, &'static str) {
    match choice {
        XdpModeChoice::Native => (Attach::Xdp(XdpMode::Driver), "native"),
        XdpModeChoice::Generic => (Attach::Xdp(XdpMode::Skb), "generic"),
        // On the veth and tap ports of a network node, TC beats XDP: the stack hands the port
        // GSO super-packets with partial checksums, which TC rewrites whole and XDP only sees
        // cut into MTU-sized frames (BENCHMARKS.md: bulk 0.2x direct with XDP, ~0.85x with
        // TC). Native XDP is for NICs whose driver runs it; ask for it by name.
        XdpModeChoice::Tc | XdpModeChoice::Auto => (Attach::Tc, "tc"),
    }
}

/// tcx links (kernel 6.6+): TC programs that go with the process, like XDP links.
fn tcx_supported() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Removes `dev`'s clsact qdisc and every filter on it (in the current namespace), if any.
fn remove_clsact(dev: &str) {
    let _ = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", dev, "clsact"])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Attaches `prog` at TC `at` of `dev` (in the current namespace): a tcx link on 6.6 and
/// newer (gone with this process, like the XDP link); before that a clsact filter, replacing
/// whatever clsact an earlier run left on the device.
fn attach_tc(prog: &mut SchedClassifier, dev: &str, at: TcAttachType) -> anyhow::Result<()> {
    if !tcx_supported() {
        remove_clsact(dev);
        tc::qdisc_add_clsact(dev).with_context(|| format!("adding clsact to {dev}"))?;
    }
    prog.attach(dev, at)?;
    Ok(())
}

/// Writes `new` into the maps: pools and members first, listeners last (a listener is live as
/// soon as it is written); entries `old` had and `new` has not are cleared. A member whose
/// address and port did not change keeps the health verdict the data path has.
fn write_plan(dp: &mut Dataplane, new: &Plan, old: Option<&Plan>) -> anyhow::Result<()> {
    for p in &new.pools {
        dp.maps.set_pool(p.index, p.conf)?;
    }
    for m in &new.members {
        let mut conf = m.conf;
        if let Ok(cur) = dp.maps.member(m.index) {
            if cur.addr_be == conf.addr_be
                && cur.port_be == conf.port_be
                && cur.flags & MEMBER_F_UP == 0
            {
                conf.flags &= !MEMBER_F_UP;
            }
        }
        dp.maps.set_member(m.index, conf)?;
    }
    for &i in &new.retired {
        dp.maps.set_member(i, MemberConf::default())?;
    }
    if let Some(old) = old {
        for p in old
            .pools
            .iter()
            .filter(|p| !new.pools.iter().any(|n| n.index == p.index))
        {
            dp.maps.set_pool(p.index, PoolConf::default())?;
        }
    }
    let wanted: Vec<_> = new.listeners.iter().map(|l| l.key).collect();
    for (key, _) in dp.maps.listeners() {
        if !wanted.contains(&key) {
            dp.maps.remove_listener(&key)?;
        }
    }
    for l in &new.listeners {
        dp.maps.set_listener(l.key, l.conf)?;
    }
    Ok(())
}

impl Running {
    pub async fn start(
        cfg: &Config,
        lb: &LoadBalancer,
        mode_choice: XdpModeChoice,
        tx: mpsc::UnboundedSender<Transition>,
    ) -> anyhow::Result<Running> {
        let state_dir = PathBuf::from(&cfg.daemon.state_dir);
        let previous = State::read(&state_dir, &lb.id);
        if let Some(pid) = previous.as_ref().and_then(|s| s.live_owner()) {
            bail!(
                "load balancer {} is already run by lb (pid {pid}); stop that one first",
                lb.id
            );
        }
        let pin_dir = Path::new(&cfg.daemon.bpffs).join(&lb.id);
        ensure_bpffs(&pin_dir)?;
        // Maps pinned by a run that never tore down keep their flows: plan with the indexes
        // that run used, so those flows still name the right members.
        let prev_plan = previous.filter(|_| pin_dir.exists()).map(|s| s.plan);
        let plan =
            plan(lb, prev_plan.as_ref()).with_context(|| format!("load balancer {}", lb.id))?;
        let node = Node::setup(lb)
            .await
            .with_context(|| format!("load balancer {}: setting up namespace and port", lb.id))?;
        let mut r = Running {
            lb: lb.clone(),
            plan,
            node,
            dataplane: None,
            pin_dir,
            state_dir,
            mode: "",
            health: None,
        };
        if let Err(e) = r.bring_up(cfg, mode_choice, prev_plan.as_ref(), tx) {
            r.stop().await;
            return Err(e.context(format!("load balancer {}", lb.id)));
        }
        Ok(r)
    }

    fn bring_up(
        &mut self,
        cfg: &Config,
        mode_choice: XdpModeChoice,
        prev_plan: Option<&Plan>,
        tx: mpsc::UnboundedSender<Transition>,
    ) -> anyhow::Result<()> {
        let mut dp = Dataplane::load(&self.pin_dir, cfg.daemon.conntrack_flows)?;
        write_plan(&mut dp, &self.plan, prev_plan)?;
        let (mode, name) = choose_mode(mode_choice);
        if mode == Attach::Xdp(XdpMode::Driver) {
            if let Some(outer) = &self.node.outer {
                dp.peer_program()
                    .attach(outer, XdpMode::Driver)
                    .with_context(|| format!("attaching lb_peer_pass to {outer}"))?;
            } else {
                warn!(port = %self.node.port, "native XDP on an adopted port: XDP_TX frames reach a veth peer only if it runs XDP or GRO");
            }
        }
        let port = self.node.port.clone();
        let attached = match mode {
            Attach::Xdp(m) => {
                let prog = dp.program();
                node::in_netns(&self.node.namespace, || {
                    prog.attach(&port, m)
                        .map(|_| ())
                        .map_err(anyhow::Error::from)
                })?
            }
            Attach::Tc => {
                if let Some(outer) = &self.node.outer {
                    node::set_tx_checksum(outer, true).with_context(|| {
                        format!("turning TX checksum offload back on on {outer}")
                    })?;
                    // Established flows are translated on the outer end already, in the node
                    // namespace, and never cross into the load balancer's namespace.
                    attach_tc(dp.tc_fast_program(), outer, TcAttachType::Egress)
                        .with_context(|| format!("attaching lb_tc_fast to {outer}"))?;
                }
                let prog = dp.tc_program();
                node::in_netns(&self.node.namespace, || {
                    attach_tc(prog, &port, TcAttachType::Ingress)
                })?
            }
        };
        attached.with_context(|| {
            format!(
                "attaching the data path ({name}) to {port} in {}",
                self.node.namespace
            )
        })?;
        self.mode = name;
        info!(loadbalancer = %self.lb.id, port = %port, mode = name, "data path attached");
        self.dataplane = Some(dp);
        self.start_health(tx)?;
        self.publish()
    }

    /// Writes the state file `lb stats` reads (and a restarted daemon plans from).
    fn publish(&self) -> anyhow::Result<()> {
        let state = State {
            loadbalancer: self.lb.id.clone(),
            namespace: self.node.namespace.clone(),
            port: self.node.port.clone(),
            vip_address: self.lb.vip_address,
            pin_dir: self.pin_dir.clone(),
            xdp_mode: self.mode.into(),
            pid: std::process::id(),
            plan: self.plan.clone(),
        };
        state.write(&self.state_dir).with_context(|| {
            format!(
                "writing {}",
                State::path(&self.state_dir, &self.lb.id).display()
            )
        })
    }

    /// Applies a changed definition of this load balancer in place. The namespace, port and
    /// VIP cannot change under running flows: such a change is refused.
    pub fn reload(
        &mut self,
        new: &LoadBalancer,
        tx: mpsc::UnboundedSender<Transition>,
    ) -> anyhow::Result<()> {
        let old = &self.lb;
        if old.vip_address != new.vip_address
            || old.vip_prefixlen != new.vip_prefixlen
            || old.port != new.port
        {
            bail!(
                "load balancer {}: its VIP or port changed; that needs a restart of lb (the running one is unchanged)",
                new.id
            );
        }
        if *old == *new {
            return Ok(());
        }
        let plan =
            plan(new, Some(&self.plan)).with_context(|| format!("load balancer {}", new.id))?;
        let dp = self.dataplane.as_mut().expect("running");
        write_plan(dp, &plan, Some(&self.plan))?;
        let old_plan = std::mem::replace(&mut self.plan, plan);
        self.lb = new.clone();
        self.stop_health();
        self.start_health(tx)?;
        self.publish()?;
        info!(
            loadbalancer = %new.id,
            listeners = self.plan.listeners.len(),
            members = self.plan.members.len(),
            retired = self.plan.retired.len().saturating_sub(old_plan.retired.len()),
            "configuration applied"
        );
        Ok(())
    }

    fn start_health(&mut self, tx: mpsc::UnboundedSender<Transition>) -> anyhow::Result<()> {
        let mut targets = Vec::new();
        let mut unmonitored = Vec::new();
        let dp = self.dataplane.as_ref().expect("running");
        for m in &self.plan.members {
            let pool = self.lb.pool(&m.pool_id).expect("planned").1;
            match (&pool.healthmonitor, m.monitor) {
                (Some(hm), Some((addr, port))) => {
                    let up = dp
                        .maps
                        .member(m.index)
                        .map(|c| c.flags & MEMBER_F_UP != 0)
                        .unwrap_or(true);
                    targets.push(MonitorTarget {
                        member_index: m.index,
                        member_id: m.id.clone(),
                        target: SocketAddrV4::new(addr, port),
                        monitor: hm.clone(),
                        up,
                    })
                }
                _ => unmonitored.push(m.address),
            }
        }
        let ns = self.node.namespace.clone();
        let lb = self.lb.id.clone();
        let vip = self.lb.vip_address;
        let (stop, mut stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("health-{}", &lb[..lb.len().min(8)]))
            .spawn(move || {
                if let Err(e) = node::enter(&ns) {
                    error!(error = %e, "health monitor thread cannot enter namespace");
                    return;
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    // Dropping the futures at stop aborts every check in flight.
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => {}
                        _ = async {
                            tokio::join!(prime_neighbours(vip, unmonitored), health::run(lb, vip, targets, tx))
                        } => {}
                    }
                });
            })
            .context("spawning health monitor thread")?;
        self.health = Some(Health { stop, thread });
        Ok(())
    }

    fn stop_health(&mut self) {
        if let Some(h) = self.health.take() {
            let _ = h.stop.send(true);
            let _ = h.thread.join();
        }
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        self.dataplane.as_mut().expect("running")
    }

    pub fn apply_transition(&mut self, t: &Transition) -> anyhow::Result<()> {
        // A verdict from a monitor of before the last reload may name a retired member.
        if !self
            .plan
            .members
            .iter()
            .any(|m| m.index == t.member_index && m.id == t.member_id)
        {
            return Ok(());
        }
        let dp = self.dataplane();
        let mut conf = dp.maps.member(t.member_index)?;
        if t.up {
            conf.flags |= MEMBER_F_UP;
        } else {
            conf.flags &= !MEMBER_F_UP;
        }
        dp.maps.set_member(t.member_index, conf)?;
        Ok(())
    }

    pub fn sweep(&mut self) {
        let members: Vec<u32> = self.plan.members.iter().map(|m| m.index).collect();
        let listeners: Vec<u32> = self.plan.listeners.iter().map(|l| l.index).collect();
        let retired = self.plan.retired.clone();
        let lb = self.lb.id.clone();
        match self.dataplane().sweep(&members, &listeners, &retired) {
            Ok(r) => {
                if r.expired > 0 || r.corrected > 0 || r.orphans > 0 {
                    info!(
                        loadbalancer = %lb, flows = r.flows, expired = r.expired, orphans = r.orphans,
                        corrected = r.corrected, "conntrack sweep"
                    );
                }
                if !r.freed.is_empty() {
                    // Retired slots whose last flow is gone can serve new members again.
                    self.plan.retired.retain(|i| !r.freed.contains(i));
                    if let Err(e) = self.publish() {
                        error!(loadbalancer = %lb, error = format!("{e:#}"), "cannot publish state");
                    }
                }
            }
            Err(e) => {
                error!(loadbalancer = %lb, error = format!("{e:#}"), "conntrack sweep failed")
            }
        }
    }

    /// Detaches, unpins and removes what this load balancer created.
    pub async fn stop(&mut self) {
        self.stop_health();
        // Dropping the programs closes their links: XDP and tcx programs are detached. A
        // clsact filter (TC before 6.6) is no link: it goes with the port's qdiscs when the
        // port is deleted or moved back to the node's namespace (teardown, below).
        self.dataplane = None;
        if let Ok(entries) = std::fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        let _ = std::fs::remove_file(State::path(&self.state_dir, &self.lb.id));
        self.node.teardown().await;
        info!(loadbalancer = %self.lb.id, "stopped and removed");
    }
}

/// Members without a monitor still need a neighbour entry for the data path's FIB lookup: a
/// datagram to their discard port (9) every 10 s makes the namespace's kernel resolve and keep
/// it, as a check would.
async fn prime_neighbours(vip: Ipv4Addr, members: Vec<Ipv4Addr>) {
    if members.is_empty() {
        return;
    }
    let Ok(sock) = tokio::net::UdpSocket::bind((vip, 0)).await else {
        return;
    };
    loop {
        for m in &members {
            let _ = sock.send_to(&[], (*m, 9)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Applies the config now in `path` to what runs: refused as a whole if it does not validate
/// or changes the daemon section; otherwise load balancers are stopped, started or reloaded
/// one by one, each failure logged and leaving that one as it was.
async fn reload(
    path: &Path,
    cfg: &mut Config,
    running: &mut Vec<Running>,
    mode: XdpModeChoice,
    tx: &mpsc::UnboundedSender<Transition>,
) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: {e}; the running configuration stays");
            return;
        }
    };
    if new.daemon != cfg.daemon {
        error!("SIGHUP: the [daemon] section changed; that needs a restart of lb (nothing was changed)");
        return;
    }
    let mut i = 0;
    while i < running.len() {
        if new.loadbalancer.iter().any(|lb| lb.id == running[i].lb.id) {
            i += 1;
        } else {
            let mut r = running.remove(i);
            info!(loadbalancer = %r.lb.id, "SIGHUP: removed from the config");
            r.stop().await;
        }
    }
    for lb in &new.loadbalancer {
        if let Some(r) = running.iter_mut().find(|r| r.lb.id == lb.id) {
            if let Err(e) = r.reload(lb, tx.clone()) {
                error!("SIGHUP: {e:#}");
            }
        } else {
            match Running::start(&new, lb, mode, tx.clone()).await {
                Ok(r) => {
                    info!(loadbalancer = %lb.id, "SIGHUP: load balancer up");
                    running.push(r);
                }
                Err(e) => error!("SIGHUP: {e:#}"),
            }
        }
    }
    *cfg = new;
}

/// Runs the daemon until SIGINT or SIGTERM; SIGHUP re-reads `path`.
pub async fn run(path: &Path, mode: Option<XdpModeChoice>) -> anyhow::Result<()> {
    let mut cfg = Config::load(path)?;
    let mode = mode.unwrap_or(cfg.daemon.xdp_mode);
    let (tx, mut rx) = mpsc::unbounded_channel::<Transition>();
    let mut running: Vec<Running> = Vec::new();
    for lb in &cfg.loadbalancer {
        match Running::start(&cfg, lb, mode, tx.clone()).await {
            Ok(r) => {
                info!(loadbalancer = %lb.id, namespace = %lb.namespace(), vip = %lb.vip_address, mode = r.mode, "load balancer up");
                running.push(r);
            }
            Err(e) => {
                for r in running.iter_mut().rev() {
                    r.stop().await;
                }
                return Err(e);
            }
        }
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: tearing down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: tearing down"); break; }
            _ = sighup.recv() => {
                info!(config = %path.display(), "SIGHUP: reloading");
                reload(path, &mut cfg, &mut running, mode, &tx).await;
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
            _ = tick.tick() => {
                for r in running.iter_mut() {
                    r.sweep();
                }
            }
        }
    }
    for r in running.iter_mut().rev() {
        r.stop().await;
    }
    Ok(())
}
