//! A load balancer's health monitors: one thread inside its namespace (checks bind the VIP
//! there, as HAProxy's did) running a task per monitored member. Each reload hands it the
//! whole new set: a member whose monitor is unchanged (same slot, id, target and settings)
//! keeps its task and with it its rise/fall progress; the others stop or start.
//!
//! Members without a monitor, and members whose monitor checks another address
//! (`monitor_address`), still need a neighbour entry for the data path's FIB lookup: a
//! datagram to their discard port (9) every 10 s makes the namespace's kernel resolve and keep
//! it, as a check of the member's own address would.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::Context as _;
use tokio::{
    sync::mpsc::{self, UnboundedSender},
    task::{AbortHandle, JoinSet},
};
use tracing::{error, info};

use crate::{
    dataplane::SharedLive,
    health::{self, MonitorTarget, Transition},
    node,
};

/// What the neighbour-priming task runs for (`Targets::warm`, `Targets::unmonitored_slots`)
/// and its handle.
type Priming = ((Vec<IpAddr>, Vec<u32>), AbortHandle);

/// How long a start waits at most for the members' neighbour entries (a member that does
/// not answer ARP or NDP costs a start this much).
const RESOLVE_BOUND: Duration = Duration::from_millis(500);

/// The set of members to check.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub monitored: Vec<MonitorTarget>,
    /// Member addresses no check reaches (no monitor, or one at `monitor_address`): their
    /// neighbour entries are kept warm.
    pub warm: Vec<IpAddr>,
    /// The slots of members without a monitor (passive health: their runs of failures are
    /// forgiven every 10 s).
    pub unmonitored_slots: Vec<u32>,
}

/// The monitor thread of one load balancer.
pub struct Monitors {
    set: Option<mpsc::UnboundedSender<Targets>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitors {
    /// Starts the thread in namespace `ns`, checking `targets` from the VIP.
    pub fn start(
        ns: &str,
        lb: &str,
        vip: IpAddr,
        targets: Targets,
        transitions: UnboundedSender<Transition>,
        board: health::Board,
        live: SharedLive,
    ) -> anyhow::Result<Monitors> {
        let members = targets.addresses();
        let (set, mut sets) = mpsc::unbounded_channel::<Targets>();
        set.send(targets).expect("receiver alive");
        let (ns, lb_id) = (ns.to_string(), lb.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("health-{}", &lb[..lb.len().min(8)]))
            .spawn(move || {
                if let Err(e) = node::enter(&ns) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "health monitor runtime");
                        return;
                    }
                };
                rt.block_on(resolve_neighbours(vip, &members, RESOLVE_BOUND));
                let _ = ready_tx.send(Ok(()));
                rt.block_on(async move {
                    let mut tasks = JoinSet::new();
                    let mut running: HashMap<u32, (MonitorTarget, AbortHandle)> = HashMap::new();
                    let mut prime: Option<Priming> = None;
                    // Ends when the daemon drops the sender; dropping `tasks` aborts them all.
                    while let Some(t) = sets.recv().await {
                        running.retain(|i, (cur, handle)| {
                            let keep = t.monitored.iter().any(|n| n.same_monitor(cur));
                            if !keep {
                                handle.abort();
                                board.lock().unwrap().remove(i);
                            }
                            keep
                        });
                        for m in t.monitored {
                            if running.values().any(|(cur, _)| cur.same_monitor(&m)) {
                                continue;
                            }
                            info!(loadbalancer = %lb_id, member = %m.member_id, target = %m.target, "monitor started");
                            let handle = tasks.spawn(health::monitor(
                                lb_id.clone(),
                                vip,
                                m.clone(),
                                transitions.clone(),
                                board.clone(),
                                live.clone(),
                            ));
                            running.insert(m.member_index, (m, handle));
                        }
                        let primed = (&t.warm, &t.unmonitored_slots);
                        if prime.as_ref().map(|(p, _)| (&p.0, &p.1)) != Some(primed) {
                            if let Some((_, h)) = prime.take() {
                                h.abort();
                            }
                            let members = t.warm.clone();
                            let slots = t.unmonitored_slots.clone();
                            let h = tasks.spawn(prime_neighbours(vip, members, slots, live.clone()));
                            prime = Some(((t.warm, t.unmonitored_slots), h));
                        }
                        // Reap finished or aborted tasks without waiting.
                        while tasks.try_join_next().is_some() {}
                    }
                });
            })
            .context("spawning the health monitor thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e).context("health monitor thread");
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the health monitor thread ended at start");
            }
        }
        Ok(Monitors {
            set: Some(set),
            thread: Some(thread),
        })
    }

    /// Replaces the set of members to check; unchanged monitors keep running.
    pub fn set(&self, targets: Targets) {
        if let Some(s) = &self.set {
            let _ = s.send(targets);
        }
    }

    /// Stops every check and waits for the thread.
    pub fn stop(&mut self) {
        self.set = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Targets {
    /// Every address the data path sends to (and the checks' own targets).
    fn addresses(&self) -> Vec<IpAddr> {
        let mut a: Vec<IpAddr> = self.warm.clone();
        a.extend(self.monitored.iter().map(|m| m.target.ip()));
        a.sort();
        a.dedup();
        a
    }
}

/// Makes the namespace's kernel resolve the neighbour entry of every address in `members`
/// (one datagram to its discard port) and waits, `bound` at most, while any is still being
/// resolved. Without an entry the data path's FIB lookup fails and a SYN to that member is
/// dropped (the client sends it again a second later): a start is not ready until the
/// members it sends to can be reached. Routed members resolve their gateway, which is not
/// waited for.
async fn resolve_neighbours(vip: IpAddr, members: &[IpAddr], bound: Duration) {
    if members.is_empty() {
        return;
    }
    if let Ok(sock) = tokio::net::UdpSocket::bind((vip, 0)).await {
        for m in members {
            let _ = sock.send_to(&[], (*m, 9)).await;
        }
    }
    let Ok(nl) = node::Netlink::here() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match nl.resolving(members).await {
            Ok(left) if left.is_empty() => return,
            Ok(left) if tokio::time::Instant::now() >= deadline => {
                info!(members = ?left, waited_ms = bound.as_millis() as u64, "neighbours still unresolved at start");
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                error!(error = %e, "reading the neighbour table");
                return;
            }
        }
    }
}

/// Members no check reaches: their neighbour entries kept warm; and (passive health) a
/// member without a monitor taken out for its failures is given another chance every 10 s,
/// since no check will ever pass for it.
async fn prime_neighbours(vip: IpAddr, members: Vec<IpAddr>, slots: Vec<u32>, live: SharedLive) {
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
        for &s in &slots {
            live.get().clear_failures(s);
        }
    }
}
