//! `lb run`: bring every load balancer of the config up, keep it healthy, tear it down.
//!
//! Order of bring-up per load balancer: namespace and port, maps (pools, members, then
//! listeners, so traffic starts only once it can be served), XDP attach, health monitors, and
//! last the state file that tells `lb stats` (and tests) it is running. Any failure undoes
//! everything created so far, for every load balancer: nothing is left half-built.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::programs::XdpMode;
use lb_common::MEMBER_F_UP;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
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
    state_path: PathBuf,
    mode: &'static str,
    health_thread: Option<std::thread::JoinHandle<()>>,
}

fn choose_mode(choice: XdpModeChoice, created_veth: bool) -> (XdpMode, &'static str) {
    match choice {
        XdpModeChoice::Native => (XdpMode::Driver, "native"),
        XdpModeChoice::Generic => (XdpMode::Skb, "generic"),
        // Native XDP_TX on a veth only reaches the peer when the peer runs NAPI; lb can ensure
        // that only on a veth it created (by attaching lb_peer_pass to the outer end).
        XdpModeChoice::Auto if created_veth => (XdpMode::Driver, "native"),
        XdpModeChoice::Auto => (XdpMode::Skb, "generic"),
    }
}

impl Running {
    pub async fn start(
        cfg: &Config,
        lb: &LoadBalancer,
        mode_choice: XdpModeChoice,
        tx: mpsc::UnboundedSender<Transition>,
    ) -> anyhow::Result<Running> {
        if let Some(pid) =
            State::read(Path::new(&cfg.daemon.state_dir), &lb.id).and_then(|s| s.live_owner())
        {
            bail!(
                "load balancer {} is already run by lb (pid {pid}); stop that one first",
                lb.id
            );
        }
        let pin_dir = Path::new(&cfg.daemon.bpffs).join(&lb.id);
        ensure_bpffs(&pin_dir)?;
        let node = Node::setup(lb)
            .await
            .with_context(|| format!("load balancer {}: setting up namespace and port", lb.id))?;
        let mut r = Running {
            lb: lb.clone(),
            plan: plan(lb),
            node,
            dataplane: None,
            pin_dir: pin_dir.clone(),
            state_path: State::path(Path::new(&cfg.daemon.state_dir), &lb.id),
            mode: "",
            health_thread: None,
        };
        if let Err(e) = r.bring_up(cfg, mode_choice, tx) {
            r.stop().await;
            return Err(e.context(format!("load balancer {}", lb.id)));
        }
        Ok(r)
    }

    fn bring_up(
        &mut self,
        cfg: &Config,
        mode_choice: XdpModeChoice,
        tx: mpsc::UnboundedSender<Transition>,
    ) -> anyhow::Result<()> {
        let mut dp = Dataplane::load(&self.pin_dir, cfg.daemon.conntrack_flows)?;
        // Pools and members first, listeners last: a listener is live as soon as it is written.
        for (i, p) in &self.plan.pools {
            dp.maps.set_pool(*i, *p)?;
        }
        for m in &self.plan.members {
            // A restarted daemon keeps the health verdict the data path already has.
            let mut conf = m.conf;
            if let Ok(old) = dp.maps.member(m.index) {
                if old.addr_be == conf.addr_be
                    && old.port_be == conf.port_be
                    && old.flags & MEMBER_F_UP == 0
                {
                    conf.flags &= !MEMBER_F_UP;
                }
            }
            dp.maps.set_member(m.index, conf)?;
        }
        let wanted: Vec<_> = self.plan.listeners.iter().map(|l| l.key).collect();
        for (key, _) in dp.maps.listeners() {
            if !wanted.contains(&key) {
                dp.maps.remove_listener(&key)?;
            }
        }
        for l in &self.plan.listeners {
            dp.maps.set_listener(l.key, l.conf)?;
        }

        let created_veth = self.node.outer.is_some();
        let (mode, name) = choose_mode(mode_choice, created_veth);
        if mode == XdpMode::Driver {
            if let Some(outer) = &self.node.outer {
                dp.peer_program()
                    .attach(outer, XdpMode::Driver)
                    .with_context(|| format!("attaching lb_peer_pass to {outer}"))?;
            } else {
                warn!(port = %self.node.port, "native XDP on an adopted port: XDP_TX frames reach a veth peer only if it runs XDP or GRO");
            }
        }
        let port = self.node.port.clone();
        let prog = dp.program();
        node::in_netns(&self.node.namespace, || prog.attach(&port, mode))?.with_context(|| {
            format!(
                "attaching XDP ({name}) to {port} in {}",
                self.node.namespace
            )
        })?;
        self.mode = name;
        info!(loadbalancer = %self.lb.id, port = %port, mode = name, "XDP attached");
        self.dataplane = Some(dp);

        self.start_health(tx)?;
        let state = State {
            loadbalancer: self.lb.id.clone(),
            namespace: self.node.namespace.clone(),
            port: self.node.port.clone(),
            vip_address: self.lb.vip_address,
            pin_dir: self.pin_dir.clone(),
            xdp_mode: name.into(),
            pid: std::process::id(),
            listeners: self.plan.listeners.clone(),
            members: self.plan.members.clone(),
            monitored: self
                .plan
                .members
                .iter()
                .filter(|m| m.monitor.is_some())
                .map(|m| m.id.clone())
                .collect(),
        };
        state
            .write(Path::new(&cfg.daemon.state_dir))
            .with_context(|| format!("writing {}", self.state_path.display()))?;
        Ok(())
    }

    fn start_health(&mut self, tx: mpsc::UnboundedSender<Transition>) -> anyhow::Result<()> {
        let mut targets = Vec::new();
        let mut unmonitored = Vec::new();
        for m in &self.plan.members {
            let pool = self.lb.pool(&m.pool_id).expect("planned").1;
            match (&pool.healthmonitor, m.monitor) {
                (Some(hm), Some((addr, port))) => targets.push(MonitorTarget {
                    member_index: m.index,
                    member_id: m.id.clone(),
                    target: SocketAddrV4::new(addr, port),
                    monitor: hm.clone(),
                }),
                _ => unmonitored.push(m.address),
            }
        }
        let ns = self.node.namespace.clone();
        let lb = self.lb.id.clone();
        let vip = self.lb.vip_address;
        let handle = std::thread::Builder::new()
            .name(format!("health-{}", &lb[..lb.len().min(8)]))
            .spawn(move || {
                if let Err(e) = node::enter(&ns) {
                    error!(error = %e, "health monitor thread cannot enter namespace");
                    return;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let primer = tokio::spawn(prime_neighbours(vip, unmonitored, tx.clone()));
                    health::run(lb, vip, targets, tx).await;
                    let _ = primer.await;
                });
            })
            .context("spawning health monitor thread")?;
        self.health_thread = Some(handle);
        Ok(())
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        self.dataplane.as_mut().expect("running")
    }

    pub fn apply_transition(&mut self, t: &Transition) -> anyhow::Result<()> {
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
        let lb = self.lb.id.clone();
        match self.dataplane().sweep(&members, &listeners) {
            Ok(r) if r.expired > 0 || r.corrected > 0 || r.orphans > 0 => info!(
                loadbalancer = %lb, flows = r.flows, expired = r.expired, orphans = r.orphans,
                corrected = r.corrected, "conntrack sweep"
            ),
            Ok(_) => {}
            Err(e) => {
                error!(loadbalancer = %lb, error = format!("{e:#}"), "conntrack sweep failed")
            }
        }
    }

    /// Detaches, unpins and removes what this load balancer created.
    pub async fn stop(&mut self) {
        // Dropping the programs closes their links: XDP is detached.
        self.dataplane = None;
        if let Ok(entries) = std::fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        let _ = std::fs::remove_file(&self.state_path);
        self.node.teardown().await;
        info!(loadbalancer = %self.lb.id, "stopped and removed");
    }
}

/// Members without a monitor still need a neighbour entry for the data path's FIB lookup: a
/// datagram to their discard port (9) every 10 s makes the namespace's kernel resolve and keep
/// it, as a check would.
async fn prime_neighbours(
    vip: Ipv4Addr,
    members: Vec<Ipv4Addr>,
    tx: mpsc::UnboundedSender<Transition>,
) {
    if members.is_empty() {
        return;
    }
    let Ok(sock) = tokio::net::UdpSocket::bind((vip, 0)).await else {
        return;
    };
    while !tx.is_closed() {
        for m in &members {
            let _ = sock.send_to(&[], (*m, 9)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(cfg: Config, mode: XdpModeChoice) -> anyhow::Result<()> {
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
    drop(tx);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: tearing down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: tearing down"); break; }
            _ = sighup.recv() => warn!("SIGHUP: live reconfiguration is not implemented yet; restart lb to apply a new config"),
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
    drop(rx);
    for r in running.iter_mut().rev() {
        r.stop().await;
    }
    Ok(())
}
