//! One load balancer's life in a daemon: brought up fresh, or taken over from what an earlier
//! run left (after a crash, a restart, or a daemon that handed over); updated in place by
//! reloads; and at the end either torn down (SIGINT/SIGTERM: everything lb owns goes) or left
//! running (SIGUSR1, handover: the data path stays, pinned, with every flow).
//!
//! Bring-up order, each step recorded in the state file before it is taken: lock (held by the
//! caller), namespace and port ([`Node::setup`], ownership), maps (checked against the object,
//! `pins`), plan (recorded, then written: pools, members, listeners last), attachments (a
//! program replaced under each recorded one, or attached and pinned), monitors, expiry. A
//! failure undoes what this run created if nothing was inherited; inherited state (a data
//! path that serves flows) is never torn down by a failed start.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context as _};
use lb_common::MEMBER_F_UP;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::{
    attach::{self, Done, Hook, Target},
    expiry::Expiry,
    lock::LbLock,
    monitors::{Monitors, Targets},
};
use crate::{
    config::{LoadBalancer, XdpModeChoice},
    connlog::{Logger, Reader},
    dataplane::{Dataplane, Sizing},
    expiry::{Census, Sweeper},
    health::{MonitorTarget, Transition},
    node::{self, Node, Owned},
    plan::{plan, Plan, MEMBER_TIME_WAIT},
    state::{Phase, State},
};

/// Where the data path runs on the port.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Tc,
    Native,
    Generic,
}

impl Mode {
    pub fn from_choice(choice: XdpModeChoice) -> Mode {
        match choice {
            XdpModeChoice::Native => Mode::Native,
            XdpModeChoice::Generic => Mode::Generic,
            // On the veth and tap ports of a network node, TC beats XDP: the stack hands the
            // port GSO super-packets with partial checksums, which TC rewrites whole and XDP
            // only sees cut into MTU-sized frames (BENCHMARKS.md: bulk 0.2x direct with XDP,
            // ~0.85x with TC). Native XDP is for NICs whose driver runs it.
            XdpModeChoice::Tc | XdpModeChoice::Auto => Mode::Tc,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Tc => "tc",
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    /// The programs of this mode and where they go: the port inside the namespace and, for a
    /// port lb made, the veth's outer end in the node's namespace.
    fn targets(self, port: &str, outer: Option<&str>) -> Vec<Target> {
        let at = |program, device: &str, inside, hook| Target {
            program,
            device: device.into(),
            inside,
            hook,
        };
        let mut t = Vec::new();
        match self {
            Mode::Tc => {
                // Established flows are translated on the outer end already, in the node's
                // namespace, and never cross into the load balancer's.
                if let Some(o) = outer {
                    t.push(at("lb_tc_fast", o, false, Hook::TcEgress));
                }
                t.push(at("lb_tc", port, true, Hook::TcIngress));
            }
            Mode::Native => {
                // A veth receives XDP_TX'd frames only if its peer runs NAPI: a trivial XDP
                // program on the outer end turns it on.
                if let Some(o) = outer {
                    t.push(at("lb_peer_pass", o, false, Hook::XdpNative));
                }
                t.push(at("lb", port, true, Hook::XdpNative));
            }
            Mode::Generic => t.push(at("lb", port, true, Hook::XdpGeneric)),
        }
        t
    }
}

/// What every load balancer of a daemon shares.
pub struct Ctx {
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub conntrack_flows: u32,
    pub mode: Mode,
    pub transitions: UnboundedSender<Transition>,
    pub expiry: Expiry,
    /// SNAT ports of new flows from the start (the haproxy drop-in replacing a HAProxy).
    pub snat_ports: Option<(u16, u16)>,
    /// Where connection log lines go (`[daemon] connection_log`); None: no connection log.
    pub connection_log: Option<Arc<crate::syslog::Sender>>,
}

impl Ctx {
    pub fn pin_dir(&self, lb: &str) -> PathBuf {
        self.bpffs.join(lb)
    }

    /// What `lb`'s maps are sized for, running `plan`.
    pub fn sizing(&self, lb: &LoadBalancer, plan: &Plan) -> Sizing {
        let mut base = Sizing::new(
            lb.conntrack_flows.unwrap_or(self.conntrack_flows),
            0,
            0,
            lb.vip_address.is_ipv6(),
        );
        base.connection_log = self.connection_log.is_some();
        Sizing::for_plan(&base, plan)
    }

    /// `lb`'s plan (from the one running, if any), with the SNAT ports this daemon gives
    /// new flows.
    pub fn plan(&self, lb: &LoadBalancer, prior: Option<&Plan>) -> anyhow::Result<Plan> {
        let mut plan = plan(lb, prior)?;
        if let Some((lo, hi)) = self.snat_ports {
            for l in &mut plan.listeners {
                (l.conf.snat_min, l.conf.snat_max) = (lo, hi);
            }
        }
        Ok(plan)
    }
}

/// A load balancer this daemon is entitled to bring up: its lock, and what an earlier run
/// left of it.
pub struct Claim {
    pub lb: LoadBalancer,
    pub lock: LbLock,
    pub prior: Option<State>,
    /// The programs, loaded against the pinned maps before a takeover (its preflight).
    pub preloaded: Option<Dataplane>,
}

/// lb's SNAT ports clear of the calling thread's namespace's ephemeral range
/// (`plan::snat_clear_of`): a fresh start's for `fresh_snat_period`, and the drop-in's while
/// the HAProxy it replaces lives. Another stack that served the VIP left the members' tuples
/// from that range in TIME_WAIT. For a fresh start the range is the daemon's own
/// namespace's: the load balancer's may be lb's already (lb moves its ephemeral range above
/// the SNAT ports), and a namespace's default, which HAProxy used in its own, is the same as
/// the clients'. None: too few ports outside it.
pub fn snat_clear_of_local_ports() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    crate::plan::snat_clear_of(&range)
}

/// How long a fresh start's SNAT ports last: the members' TIME_WAIT, or
/// `LB_FRESH_SNAT_SECS` seconds (0: a fresh start takes lb's whole range at once).
fn fresh_snat_period() -> std::time::Duration {
    std::env::var("LB_FRESH_SNAT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(MEMBER_TIME_WAIT)
}

/// Refuses to take over a load balancer whose running shape this run would change: its VIP,
/// port, or attach mode. Called before anything is touched.
pub fn check_takeover(ctx: &Ctx, lb: &LoadBalancer, prior: &State) -> anyhow::Result<()> {
    if prior.vip_address != lb.vip_address || prior.port != lb.port.name {
        bail!(
            "load balancer {}: the running one has VIP {} on port {}, this config {} on {}; \
             that change needs a restart of lb (SIGTERM, then lb run), which drops its flows",
            lb.id,
            prior.vip_address,
            prior.port,
            lb.vip_address,
            lb.port.name
        );
    }
    if !prior.xdp_mode.is_empty() && prior.xdp_mode != ctx.mode.name() {
        bail!(
            "load balancer {}: its data path runs in {} mode, this run asks for {}; the attach \
             mode cannot change under live flows: keep xdp_mode = \"{}\", or restart lb \
             (SIGTERM, then lb run), which drops its flows",
            lb.id,
            prior.xdp_mode,
            ctx.mode.name(),
            prior.xdp_mode
        );
    }
    Ok(())
}

/// One load balancer, up.
pub struct Instance {
    pub lb: LoadBalancer,
    pub plan: Plan,
    node: Node,
    dp: Dataplane,
    state: State,
    state_dir: PathBuf,
    monitors: Option<Monitors>,
    /// Every monitored member's check outcomes (the stats socket reads them).
    pub board: crate::health::Board,
    lock: LbLock,
    /// Brought up over what an earlier run left (its data path served flows before us).
    inherited: bool,
    /// The connection log and the thread draining its ring (dropping it drains the ring).
    connlog: Option<(Arc<Logger>, Reader)>,
    /// The member counters' mapping the monitors and the connection log use.
    live: crate::dataplane::SharedLive,
    /// The SNAT ports new flows take (None: lb's whole range), and when a fresh start's
    /// range is to end (`snat_restore_at`, see `fresh_snat_period`).
    snat_ports: Option<(u16, u16)>,
    pub snat_restore_at: Option<Instant>,
}

impl Instance {
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.state.pin_dir.clone()
    }

    pub fn inherited(&self) -> bool {
        self.inherited
    }

    pub async fn start(ctx: &Ctx, claim: Claim) -> anyhow::Result<Instance> {
        let Claim {
            lb,
            lock,
            prior,
            preloaded,
        } = claim;
        let t0 = Instant::now();
        let pin_dir = ctx.pin_dir(&lb.id);
        super::ensure_bpffs(&pin_dir)?;
        // An earlier run's data path, serving flows: maps it pinned, and the state file that
        // says what they mean. Its record of what lb owns counts either way (a run may have
        // crashed after making the namespace and before any map).
        let pinned = pin_dir.join("CONNTRACK").exists();
        let inherited = pinned && prior.is_some();
        match &prior {
            Some(p) if pinned => check_takeover(ctx, &lb, p)?,
            None if pinned => bail!(
                "load balancer {}: maps are pinned under {} but no state file {} says which \
                 member each flow names; restore the state file, or remove {} (drops those \
                 flows) and start again",
                lb.id,
                pin_dir.display(),
                State::path(&ctx.state_dir, &lb.id).display(),
                pin_dir.display()
            ),
            _ => {}
        }
        let prior_plan = prior.as_ref().filter(|_| inherited).map(|p| p.plan.clone());
        let planned = ctx.plan(&lb, prior_plan.as_ref());
        let planned = match planned {
            Ok(p) => p,
            Err(e) => {
                if !inherited {
                    lock.remove();
                }
                return Err(e.context(format!("load balancer {}", lb.id)));
            }
        };
        let mut state = State {
            loadbalancer: lb.id.clone(),
            namespace: lb.namespace(),
            port: lb.port.name.clone(),
            vip_address: lb.vip_address,
            pin_dir: pin_dir.clone(),
            xdp_mode: ctx.mode.name().into(),
            pid: std::process::id(),
            plan: prior_plan.clone().unwrap_or_default(),
            owned: prior.as_ref().map(|p| p.owned.clone()).unwrap_or_default(),
            attachments: prior
                .as_ref()
                .filter(|_| inherited)
                .map(|p| p.attachments.clone())
                .unwrap_or_default(),
            phase: Phase::Starting,
            program_set: String::new(),
            slot: 0,
            checks: prior
                .as_ref()
                .filter(|_| inherited)
                .map(|p| p.checks.clone())
                .unwrap_or_default(),
        };
        let state_dir = ctx.state_dir.clone();
        let write = |s: &State| {
            s.write(&state_dir).with_context(|| {
                format!(
                    "writing {}",
                    State::path(&state_dir, &s.loadbalancer).display()
                )
            })
        };
        write(&state)?;

        let mut record_state = state.clone();
        let inherited_owned = state.owned.clone();
        let node = Node::setup(&lb, &inherited_owned, &mut |owned: &Owned| {
            record_state.owned = owned.clone();
            record_state.write(&state_dir)
        })
        .await
        .with_context(|| format!("load balancer {}: setting up namespace and port", lb.id));
        let node = match node {
            Ok(n) => n,
            Err(e) => {
                if inherited {
                    state.phase = Phase::Left;
                    let _ = write(&state);
                } else {
                    State::remove(&state_dir, &lb.id);
                    lock.remove();
                }
                return Err(e);
            }
        };
        state.owned = node.owned.clone();
        let (snat_ports, snat_restore_at) = match ctx.snat_ports {
            Some(r) => (Some(r), None),
            None if !inherited && !fresh_snat_period().is_zero() => snat_clear_of_local_ports()
                .map(|r| (Some(r), Some(Instant::now() + fresh_snat_period())))
                .unwrap_or_default(),
            None => (None, None),
        };
        let mut planned = planned;
        crate::plan::set_snat_ports(&mut planned, snat_ports);

        let dp = match preloaded {
            Some(dp) => Ok(dp),
            None => open_dataplane(&pin_dir, ctx.sizing(&lb, &planned))
                .await
                .with_context(|| format!("load balancer {}", lb.id)),
        };
        let dp = match dp {
            Ok(dp) => dp,
            Err(e) => {
                return Err(Self::abandon(state, state_dir, lock, node, inherited, e).await);
            }
        };
        let live = match crate::dataplane::SharedLive::open(&pin_dir.join("MEMBER_LIVE")) {
            Ok(l) => l,
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("load balancer {}", lb.id));
                drop(dp);
                return Err(Self::abandon(state, state_dir, lock, node, inherited, e).await);
            }
        };
        let mut inst = Instance {
            live,
            lb,
            plan: Plan::default(),
            node,
            dp,
            state,
            state_dir,
            monitors: None,
            board: Default::default(),
            lock,
            inherited,
            connlog: None,
            snat_ports,
            snat_restore_at,
        };
        match inst.bring_up(ctx, planned, prior_plan.as_ref()).await {
            Ok(()) => {
                info!(
                    loadbalancer = %inst.lb.id,
                    namespace = %inst.node.namespace,
                    vip = %inst.lb.vip_address,
                    mode = ctx.mode.name(),
                    took_ms = t0.elapsed().as_millis() as u64,
                    "load balancer up"
                );
                if let (Some(ports), Some(_)) = (inst.snat_ports, inst.snat_restore_at) {
                    // The minute counts from now, when the listeners serve.
                    inst.snat_restore_at = Some(Instant::now() + fresh_snat_period());
                    info!(
                        loadbalancer = %inst.lb.id, ?ports,
                        "a fresh start: new flows keep off the namespace's ephemeral ports for {} s (the members' TIME_WAIT of whatever served the VIP before)",
                        fresh_snat_period().as_secs()
                    );
                }
                Ok(inst)
            }
            Err(e) => {
                let e = e.context(format!("load balancer {}", inst.lb.id));
                let Instance {
                    state,
                    state_dir,
                    lock,
                    node,
                    dp,
                    monitors,
                    ..
                } = inst;
                drop(monitors);
                ctx.expiry.remove(&state.loadbalancer);
                drop(dp);
                Err(Self::abandon(state, state_dir, lock, node, inherited, e).await)
            }
        }
    }

    /// Undoes a failed start: everything if this run made it all, nothing if it inherited a
    /// running data path (recorded as left without a daemon).
    async fn abandon(
        mut state: State,
        state_dir: PathBuf,
        lock: LbLock,
        mut node: Node,
        inherited: bool,
        e: anyhow::Error,
    ) -> anyhow::Error {
        if inherited {
            state.phase = Phase::Left;
            let _ = state.write(&state_dir);
            warn!(loadbalancer = %state.loadbalancer, "start failed; the data path it took over is left running as it was");
            return e;
        }
        for a in state.attachments.iter().rev() {
            if let Err(e) = attach::detach(a, &state.namespace) {
                warn!(error = %e, "cannot detach {} from {}", a.program, a.device);
            }
        }
        remove_pins(&state.pin_dir);
        node.teardown().await;
        State::remove(&state_dir, &state.loadbalancer);
        lock.remove();
        e
    }

    async fn bring_up(
        &mut self,
        ctx: &Ctx,
        plan: Plan,
        prior_plan: Option<&Plan>,
    ) -> anyhow::Result<()> {
        // Recorded before the maps: a flow never names an index the state file does not.
        self.state.plan = plan.clone();
        let (set, slot) = self.dp.slot();
        (self.state.program_set, self.state.slot) = (set.to_string(), slot);
        self.write_state()?;
        self.dp.write_plan(&plan, prior_plan)?;
        self.dp
            .maps
            .set_port(self.node.port_mac.unwrap_or_default())?;
        self.plan = plan;

        let ns = self.node.namespace.clone();
        let port = self.node.port.clone();
        if ctx.mode == Mode::Native && self.node.outer.is_none() {
            warn!(port = %port, "native XDP on an adopted port: XDP_TX frames reach a veth peer only if it runs XDP or GRO");
        }
        if let Some(outer) = &self.node.outer {
            // TC handles partial checksums and GSO whole; XDP needs complete checksums, which
            // the kernel makes before a frame crosses into the namespace once TX checksum
            // offload is off on the outer end (see docs/ARCHITECTURE.md).
            let on = ctx.mode == Mode::Tc;
            node::set_tx_checksum(outer, on).with_context(|| {
                format!(
                    "turning TX checksum offload {} on {outer}",
                    if on { "on" } else { "off" }
                )
            })?;
        }
        let pin_dir = ctx.pin_dir(&self.lb.id);
        // The ring's reader runs before the programs that fill it are attached.
        if let (Some(sender), Some(ring)) = (&ctx.connection_log, self.dp.take_conn_log()) {
            let logger = Logger::open(
                &self.lb.id,
                &pin_dir,
                self.live.clone(),
                sender.clone(),
                &self.plan,
            )?;
            let reader = Reader::start(ring, logger.clone())
                .context("starting the connection log's reader")?;
            self.connlog = Some((logger, reader));
        }
        for t in ctx.mode.targets(&port, self.node.outer.as_deref()) {
            let prev = self
                .state
                .attachments
                .iter()
                .find(|a| t.matches(a))
                .cloned();
            let started = Instant::now();
            let (a, done) = attach::attach(&mut self.dp, &t, &ns, &pin_dir, prev.as_ref())
                .with_context(|| {
                    format!(
                        "attaching the data path ({}) to {} in {}",
                        ctx.mode.name(),
                        t.device,
                        if t.inside {
                            ns.as_str()
                        } else {
                            "the node's namespace"
                        }
                    )
                })?;
            info!(
                loadbalancer = %self.lb.id, program = t.program, device = %t.device,
                how = if done == Done::Replaced { "replaced atomically" } else { "attached" },
                took_us = started.elapsed().as_micros() as u64,
                "data path"
            );
            self.state.attachments.retain(|x| !t.matches(x));
            self.state.attachments.push(a);
            self.write_state()?;
        }
        // Every attachment runs this build's stubs now: another build's set (a takeover by
        // another build) no longer serves this load balancer.
        self.dp.retire_others()?;

        // Carry on from the counters and progress the previous run left.
        self.board
            .lock()
            .unwrap()
            .extend(std::mem::take(&mut self.state.checks));
        self.monitors = Some(Monitors::start(
            &ns,
            &self.lb.id,
            self.lb.vip_address,
            self.monitor_targets(),
            ctx.transitions.clone(),
            self.board.clone(),
            self.live.clone(),
        )?);
        crate::metrics::register_board(&self.lb.id, self.board.clone());
        let log = self.connlog.as_ref().map(|(l, _)| l.clone());
        ctx.expiry.add(
            &self.lb.id,
            Sweeper::open(&pin_dir)?.with_log(log),
            self.census(),
        );
        self.state.phase = Phase::Running;
        let _ = std::fs::remove_file(super::handover_path(&self.state_dir, &self.lb.id));
        self.write_state()
    }

    fn write_state(&self) -> anyhow::Result<()> {
        self.state.write(&self.state_dir).with_context(|| {
            format!(
                "writing {}",
                State::path(&self.state_dir, &self.lb.id).display()
            )
        })
    }

    fn census(&self) -> Census {
        Census {
            members: self.plan.members.iter().map(|m| m.index).collect(),
            retired: self.plan.retired.clone(),
            listeners: self.plan.listeners.iter().map(|l| l.index).collect(),
        }
    }

    fn monitor_targets(&self) -> Targets {
        let mut t = Targets::default();
        for m in &self.plan.members {
            let pool = self.lb.pool(&m.pool_id).expect("planned").1;
            let member = pool.member.iter().find(|x| x.id == m.id).expect("planned");
            match (self.lb.member_monitor(pool, member), m.monitor) {
                (Some(hm), Some((addr, port))) => {
                    // Checked elsewhere (`monitor_address`): nothing else would make the
                    // kernel resolve the member's own address for the data path.
                    if addr != m.address {
                        t.warm.push(m.address);
                    }
                    let up = self
                        .dp
                        .maps
                        .member(m.index)
                        .map(|c| c.flags & MEMBER_F_UP != 0)
                        .unwrap_or(true);
                    t.monitored.push(MonitorTarget {
                        member_index: m.index,
                        member_id: m.id.clone(),
                        target: SocketAddr::new(addr, port),
                        monitor: hm.clone(),
                        up,
                    })
                }
                _ => {
                    t.warm.push(m.address);
                    t.unmonitored_slots.push(m.index);
                }
            }
        }
        t
    }

    /// Applies `lb` with `plan` (made from the running plan) in place. On error the maps may
    /// be half written: the reconciler rolls back by applying the previous definition.
    pub fn update(&mut self, ctx: &Ctx, lb: &LoadBalancer, plan: Plan) -> anyhow::Result<()> {
        let mut plan = plan;
        crate::plan::set_snat_ports(&mut plan, self.snat_ports);
        let old_plan = std::mem::replace(&mut self.state.plan, plan.clone());
        // Recorded first, with the previous plan's members folded into the retired slots, so
        // that a crash halfway leaves a plan that names every index a flow may hold.
        self.write_state()?;
        if self.dp.write_plan(&plan, Some(&old_plan))? {
            // Bigger member arrays replaced the old: whoever holds those opens the new ones.
            self.reopen_maps(ctx)?;
        }
        if let Some((l, _)) = &self.connlog {
            l.set_plan(&plan);
        }
        self.plan = plan;
        self.lb = lb.clone();
        if let Some(m) = &self.monitors {
            m.set(self.monitor_targets());
        }
        ctx.expiry.set_census(&self.lb.id, self.census());
        Ok(())
    }

    /// The monitors, the expiry and the connection log open the member arrays again (they
    /// were grown).
    fn reopen_maps(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        let pin_dir = self.pin_dir();
        self.live.replace(crate::dataplane::LiveArray::open(
            &pin_dir.join("MEMBER_LIVE"),
        )?);
        let log = self.connlog.as_ref().map(|(l, _)| l.clone());
        ctx.expiry.remove(&self.lb.id);
        ctx.expiry.add(
            &self.lb.id,
            Sweeper::open(&pin_dir)?.with_log(log),
            self.census(),
        );
        Ok(())
    }

    /// The SNAT ports every listener's new flows take; None: lb's whole range.
    pub fn set_snat_ports(&mut self, range: Option<(u16, u16)>) -> anyhow::Result<()> {
        let (lo, hi) = range.unwrap_or((0, 0));
        (self.snat_ports, self.snat_restore_at) = (range, None);
        crate::plan::set_snat_ports(&mut self.plan, range);
        for l in &self.plan.listeners {
            let mut conf = self.dp.maps.listener_conf(l).unwrap_or(l.conf);
            (conf.snat_min, conf.snat_max) = (lo, hi);
            self.dp.maps.set_listener_conf(l, conf)?;
        }
        info!(loadbalancer = %self.lb.id, ports = ?range, "SNAT ports of new flows");
        Ok(())
    }

    /// haproxy's soft stop: every listener drains (no new flow: SYNs go to the namespace's
    /// stack, where a haproxy taking over listens); established flows carry on.
    pub fn drain(&mut self) -> anyhow::Result<()> {
        for l in &self.plan.listeners {
            if let Some(mut conf) = self.dp.maps.listener_conf(l) {
                conf.flags |= lb_common::LISTENER_F_DRAIN;
                self.dp.maps.set_listener_conf(l, conf)?;
            }
        }
        Ok(())
    }

    /// Connections counted open on this load balancer's listeners.
    pub fn open_connections(&self) -> i64 {
        self.plan
            .listeners
            .iter()
            .map(|l| self.dp.maps.listener_live.get(l.index).active.max(0))
            .sum()
    }

    /// Records a health verdict in the data path.
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
        let mut conf = self.dp.maps.member(t.member_index)?;
        if t.up {
            conf.flags |= MEMBER_F_UP;
        } else {
            conf.flags &= !MEMBER_F_UP;
        }
        self.dp.maps.set_member(t.member_index, conf)?;
        if let Some(pool) = self.plan.pool_of(t.member_index) {
            self.dp.maps.refresh_source_table(pool)?;
        }
        Ok(())
    }

    /// A runtime change of one member (the stats socket's admin commands); as haproxy's, it
    /// lasts until the next configuration.
    pub fn change_member(
        &mut self,
        member: &str,
        change: super::MemberChange,
    ) -> Result<(), String> {
        let m = self
            .plan
            .members
            .iter()
            .find(|m| m.id == member)
            .ok_or_else(|| format!("no such server: {member}"))?;
        let mut conf = self.dp.maps.member(m.index).map_err(|e| e.to_string())?;
        let planned = m.conf;
        match change {
            super::MemberChange::Weight(w) => conf.weight = w,
            super::MemberChange::Ready => {
                conf.flags |= lb_common::MEMBER_F_ENABLED;
                if conf.weight == 0 {
                    conf.weight = planned.weight.max(1);
                }
            }
            super::MemberChange::Drain => {
                conf.flags |= lb_common::MEMBER_F_ENABLED;
                conf.weight = 0;
            }
            super::MemberChange::Maint => conf.flags &= !lb_common::MEMBER_F_ENABLED,
        }
        let pool = conf.pool;
        self.dp
            .maps
            .set_member(m.index, conf)
            .and_then(|()| self.dp.maps.refresh_source_table(pool))
            .map_err(|e| e.to_string())
    }

    /// Retired member slots no flow names any more can serve new members.
    pub fn free_slots(&mut self, slots: &[u32]) {
        self.plan.retired.retain(|i| !slots.contains(i));
        self.state.plan.retired.retain(|i| !slots.contains(i));
        if let Err(e) = self.write_state() {
            warn!(error = format!("{e:#}"), "cannot publish state");
        }
    }

    /// Detaches, unpins and removes everything lb owns of this load balancer.
    pub async fn teardown(mut self, ctx: &Ctx) {
        if let Some(mut m) = self.monitors.take() {
            m.stop();
        }
        ctx.expiry.remove(&self.lb.id);
        for a in self.state.attachments.iter().rev() {
            if let Err(e) = attach::detach(a, &self.node.namespace) {
                warn!(error = %e, "cannot detach {} from {}", a.program, a.device);
            }
        }
        drop(self.connlog.take());
        crate::metrics::unregister_board(&self.lb.id);
        drop(self.dp);
        remove_pins(&self.state.pin_dir);
        self.node.teardown().await;
        State::remove(&self.state_dir, &self.lb.id);
        for extra in ["stats-samples", "handover"] {
            let _ = std::fs::remove_file(self.state_dir.join(format!("{}.{extra}", self.lb.id)));
        }
        self.lock.remove();
        info!(loadbalancer = %self.lb.id, "stopped and removed");
    }

    /// Stops health checks and expiry and lets go of the load balancer, leaving its data
    /// path attached with every flow: for the next daemon to take over.
    pub fn leave(mut self, ctx: &Ctx) {
        if let Some(mut m) = self.monitors.take() {
            m.stop();
        }
        ctx.expiry.remove(&self.lb.id);
        // What the ring holds now is logged; connections that end before the next daemon's
        // programs replace these stay in a ring nobody reads.
        drop(self.connlog.take());
        crate::metrics::unregister_board(&self.lb.id);
        self.state.phase = Phase::Left;
        self.state.checks = self
            .board
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if let Err(e) = self.write_state() {
            warn!(
                error = format!("{e:#}"),
                "cannot record that the data path is left running"
            );
        }
        info!(loadbalancer = %self.lb.id, "left running without a daemon");
    }
}

/// `Dataplane::open` on a thread of its own: verifying the programs (the first load balancer
/// of a build on the node) takes seconds, during which the daemon still hears signals (a
/// SIGTERM stops the load, see `dataplane::cancel`).
pub async fn open_dataplane(pin_dir: &Path, sizing: Sizing) -> anyhow::Result<Dataplane> {
    let pin_dir = pin_dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || Dataplane::open(&pin_dir, &sizing)).await??)
}

/// Tears down a load balancer another daemon left (handed over) that this run's config no
/// longer has: as `Instance::teardown`, from its state file.
pub async fn teardown_left(state: State, state_dir: &Path, lock: LbLock) {
    for a in state.attachments.iter().rev() {
        if let Err(e) = attach::detach(a, &state.namespace) {
            warn!(error = %e, "cannot detach {} from {}", a.program, a.device);
        }
    }
    remove_pins(&state.pin_dir);
    let mut node = Node::from_record(&state.namespace, &state.port, &state.owned);
    node.teardown().await;
    State::remove(state_dir, &state.loadbalancer);
    lock.remove();
    info!(loadbalancer = %state.loadbalancer, "not in the config any more: stopped and removed");
}

/// Gives up the load balancer's slot in the program sets (which go if it was their last),
/// then unpins everything under `dir` (maps, stubs, and links not unpinned already) and
/// removes it.
pub(crate) fn remove_pins(dir: &Path) {
    if let Err(e) = crate::dataplane::release(dir) {
        warn!(error = %e, pin_dir = %dir.display(), "cannot release the load balancer's slot");
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
