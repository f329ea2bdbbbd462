//! A changed configuration, applied as a transaction (SIGHUP).
//!
//! 1. *Validate and plan* the whole file before anything is touched ([`diff`]): a file that
//!    does not parse, changes the `[daemon]` section, moves a running load balancer's VIP or
//!    port, or cannot be planned is refused, and nothing changes.
//! 2. *Apply* in an order that can be undone ([`apply`]): new load balancers first, then the
//!    changed ones in place, removals last (a removal cannot be undone, so it happens only
//!    once everything else succeeded).
//! 3. *Roll back* if a step fails: the load balancers already changed get their running
//!    definition back (members the failed change added are retired, so the flows they may
//!    have taken drain), the new ones are stopped, and nothing is removed.
//!
//! The reconciler only decides the order; a [`Backend`] does the work (the daemon's drives
//! real load balancers, the unit tests a fake that fails on command).

use crate::{
    config::{Config, Daemon, LoadBalancer},
    plan::{plan, NoSlotLeft, Plan},
};

/// A running load balancer, as the reconciler sees it.
pub trait Running {
    fn lb(&self) -> &LoadBalancer;
    fn plan(&self) -> &Plan;
}

/// What applies changes to running load balancers.
#[allow(async_fn_in_trait)]
pub trait Backend {
    type Lb: Running;
    async fn start(&mut self, lb: &LoadBalancer) -> anyhow::Result<Self::Lb>;
    /// Applies `lb` with `plan` in place. On error the backend may have applied part of it:
    /// the reconciler then applies the previous definition again.
    fn update(&mut self, r: &mut Self::Lb, lb: &LoadBalancer, plan: Plan) -> anyhow::Result<()>;
    async fn stop(&mut self, r: Self::Lb);
}

/// What a new configuration changes, planned.
#[derive(Debug, Default)]
pub struct Changes {
    pub start: Vec<LoadBalancer>,
    /// Index into the running load balancers, new definition, plan made from the running one.
    pub update: Vec<(usize, LoadBalancer, Plan)>,
    /// Indexes into the running load balancers.
    pub stop: Vec<usize>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.update.is_empty() && self.stop.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the [daemon] section changed; that needs a restart of lb")]
    DaemonSection,
    #[error(
        "load balancer {id}: its VIP or port changed; that needs a restart of lb (SIGTERM, \
         then lb run), which drops its flows"
    )]
    VipOrPort { id: String },
    #[error("load balancer {id}")]
    Plan {
        id: String,
        #[source]
        source: NoSlotLeft,
    },
}

/// Compares `new` with what runs and plans every change; refuses the whole file, touching
/// nothing, if any part of it cannot be applied in place.
pub fn diff<R: Running>(running: &[R], daemon: &Daemon, new: &Config) -> Result<Changes, Refused> {
    if new.daemon != *daemon {
        return Err(Refused::DaemonSection);
    }
    let mut c = Changes::default();
    for (i, r) in running.iter().enumerate() {
        if !new.loadbalancer.iter().any(|lb| lb.id == r.lb().id) {
            c.stop.push(i);
        }
    }
    for lb in &new.loadbalancer {
        let Some(i) = running.iter().position(|r| r.lb().id == lb.id) else {
            c.start.push(lb.clone());
            continue;
        };
        let old = running[i].lb();
        if old.vip_address != lb.vip_address
            || old.vip_prefixlen != lb.vip_prefixlen
            || old.port != lb.port
        {
            return Err(Refused::VipOrPort { id: lb.id.clone() });
        }
        if old == lb {
            continue;
        }
        let p = plan(lb, Some(running[i].plan())).map_err(|source| Refused::Plan {
            id: lb.id.clone(),
            source,
        })?;
        c.update.push((i, lb.clone(), p));
    }
    Ok(c)
}

/// What a successful `apply` did, by load balancer id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub started: Vec<String>,
    pub updated: Vec<String>,
    pub stopped: Vec<String>,
}

/// The plan that puts `old` back after `failed` was (perhaps partly) written: the running
/// plan, with the slots `failed` gave to new members retired (flows may have reached them in
/// the meantime; they drain) and no counter restarted.
pub fn rollback_plan(old: &Plan, failed: &Plan) -> Plan {
    let mut p = old.clone();
    for m in &failed.members {
        if !old.members.iter().any(|o| o.index == m.index) && !p.retired.contains(&m.index) {
            p.retired.push(m.index);
        }
    }
    p.retired.sort_unstable();
    p.fresh_members.clear();
    p.fresh_listeners.clear();
    p
}

/// Applies `changes` to `running` as one transaction (see the module's doc). On error, what
/// runs is what ran before, and the error says what failed.
pub async fn apply<B: Backend>(
    b: &mut B,
    running: &mut Vec<B::Lb>,
    changes: Changes,
) -> anyhow::Result<Applied> {
    let mut applied = Applied::default();
    let mut started: Vec<B::Lb> = Vec::new();
    for lb in &changes.start {
        match b.start(lb).await {
            Ok(r) => {
                applied.started.push(lb.id.clone());
                started.push(r);
            }
            Err(e) => {
                for r in started.into_iter().rev() {
                    b.stop(r).await;
                }
                return Err(e.context("rolled back: the running configuration stays"));
            }
        }
    }
    // (index, definition and plan before, plan tried)
    let mut done: Vec<(usize, LoadBalancer, Plan, Plan)> = Vec::new();
    for (i, lb, p) in changes.update {
        let (old_lb, old_plan) = (running[i].lb().clone(), running[i].plan().clone());
        if let Err(e) = b.update(&mut running[i], &lb, p.clone()) {
            done.push((i, old_lb, old_plan, p));
            for (j, lb, old, tried) in done.into_iter().rev() {
                if let Err(e) = b.update(&mut running[j], &lb, rollback_plan(&old, &tried)) {
                    tracing::error!(loadbalancer = %lb.id, error = format!("{e:#}"), "cannot roll back");
                }
            }
            for r in started.into_iter().rev() {
                b.stop(r).await;
            }
            return Err(e.context("rolled back: the running configuration stays"));
        }
        applied.updated.push(lb.id.clone());
        done.push((i, old_lb, old_plan, p));
    }
    let mut stop = changes.stop;
    stop.sort_unstable();
    for i in stop.into_iter().rev() {
        let r = running.remove(i);
        applied.stopped.push(r.lb().id.clone());
        b.stop(r).await;
    }
    running.extend(started);
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeLb {
        lb: LoadBalancer,
        plan: Plan,
    }

    impl Running for FakeLb {
        fn lb(&self) -> &LoadBalancer {
            &self.lb
        }
        fn plan(&self) -> &Plan {
            &self.plan
        }
    }

    #[derive(Default)]
    struct Fake {
        log: Vec<String>,
        fail_start: Option<String>,
        fail_update: Option<String>,
    }

    impl Backend for Fake {
        type Lb = FakeLb;
        async fn start(&mut self, lb: &LoadBalancer) -> anyhow::Result<FakeLb> {
            self.log.push(format!("start {}", lb.id));
            if self.fail_start.as_deref() == Some(&lb.id) {
                anyhow::bail!("cannot start {}", lb.id);
            }
            Ok(FakeLb {
                lb: lb.clone(),
                plan: plan(lb, None).unwrap(),
            })
        }
        fn update(&mut self, r: &mut FakeLb, lb: &LoadBalancer, p: Plan) -> anyhow::Result<()> {
            self.log
                .push(format!("update {} to {} members", lb.id, p.members.len()));
            // A failing update has written part of its plan already.
            r.lb = lb.clone();
            r.plan = p;
            if self.fail_update.as_deref() == Some(&lb.id) && r.plan.members.len() == 3 {
                anyhow::bail!("cannot write the maps of {}", lb.id);
            }
            Ok(())
        }
        async fn stop(&mut self, r: FakeLb) {
            self.log.push(format!("stop {}", r.lb.id));
        }
    }

    /// The seed's load balancer as `id` on VIP 10.0.`n`.250, with `members` members.
    fn lb_text(id: &str, n: u8, members: usize) -> String {
        let seed = include_str!("../../../examples/seed.toml");
        let first = seed.find("[[loadbalancer.pool.member]]").unwrap();
        let mut t = seed[..first]
            .replace("574a31da-a28a-449f-8c9d-3d3687c3c02a", id)
            .replace(
                "df25900f-53b1-4aab-8436-8411ec710445",
                &format!("{id}-listener"),
            )
            .replace("tapfb358342-59", &format!("tap{n}"))
            .replace("10.0.0.", &format!("10.0.{n}."));
        for m in 0..members {
            t.push_str(&format!(
                "[[loadbalancer.pool.member]]\nid = \"{id}-m{m}\"\naddress = \"10.0.{n}.{}\"\nprotocol_port = 22\n\n",
                m + 2
            ));
        }
        t
    }

    fn config(lbs: &[(&str, u8, usize)]) -> Config {
        let text: String = lbs.iter().map(|(id, n, m)| lb_text(id, *n, *m)).collect();
        Config::parse(&text, "test").unwrap()
    }

    async fn running(b: &mut Fake, c: &Config) -> Vec<FakeLb> {
        let mut r = Vec::new();
        for lb in &c.loadbalancer {
            r.push(b.start(lb).await.unwrap());
        }
        b.log.clear();
        r
    }

    fn members(r: &[FakeLb]) -> Vec<(String, usize)> {
        r.iter()
            .map(|x| (x.lb.id.clone(), x.plan.members.len()))
            .collect()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn removals_come_last_and_unchanged_ones_are_left_alone() {
        block_on(async {
            let mut b = Fake::default();
            let old = config(&[("a", 1, 2), ("b", 2, 2), ("c", 3, 2)]);
            let mut r = running(&mut b, &old).await;
            let new = config(&[("b", 2, 3), ("c", 3, 2), ("d", 4, 1)]);
            let changes = diff(&r, &old.daemon, &new).unwrap();
            let applied = apply(&mut b, &mut r, changes).await.unwrap();
            assert_eq!(b.log, ["start d", "update b to 3 members", "stop a"]);
            assert_eq!(applied.started, ["d"]);
            assert_eq!(
                members(&r),
                [("b".into(), 3), ("c".into(), 2), ("d".into(), 1)]
            );
        });
    }

    #[test]
    fn a_failed_start_changes_nothing() {
        block_on(async {
            let mut b = Fake::default();
            let old = config(&[("a", 1, 2), ("b", 2, 2)]);
            let mut r = running(&mut b, &old).await;
            let new = config(&[("b", 2, 3), ("d", 4, 1), ("e", 5, 1)]);
            b.fail_start = Some("e".into());
            let changes = diff(&r, &old.daemon, &new).unwrap();
            let e = apply(&mut b, &mut r, changes).await.unwrap_err();
            assert!(format!("{e:#}").contains("cannot start e"), "{e:#}");
            assert_eq!(
                b.log,
                ["start d", "start e", "stop d"],
                "a is not removed, b untouched"
            );
            assert_eq!(members(&r), [("a".into(), 2), ("b".into(), 2)]);
        });
    }

    #[test]
    fn a_failed_update_rolls_back_to_the_running_definitions() {
        block_on(async {
            let mut b = Fake::default();
            let old = config(&[("a", 1, 2), ("b", 2, 2), ("c", 3, 2)]);
            let mut r = running(&mut b, &old).await;
            let before = plan(&r[1].lb, None).unwrap();
            let new = config(&[("b", 2, 1), ("c", 3, 3), ("d", 4, 1)]);
            b.fail_update = Some("c".into());
            let changes = diff(&r, &old.daemon, &new).unwrap();
            assert!(apply(&mut b, &mut r, changes).await.is_err());
            assert_eq!(
                b.log,
                [
                    "start d",
                    "update b to 1 members",
                    "update c to 3 members",
                    "update c to 2 members",
                    "update b to 2 members",
                    "stop d"
                ]
            );
            assert_eq!(
                members(&r),
                [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]
            );
            assert_eq!(r[1].lb, old.loadbalancer[1]);
            let restored: Vec<_> = r[1].plan.members.iter().map(|m| (&m.id, m.index)).collect();
            let was: Vec<_> = before.members.iter().map(|m| (&m.id, m.index)).collect();
            assert_eq!(restored, was, "members are back in their own slots");
            assert_eq!(r[2].plan.retired, vec![2], "c's added member drains");
            assert!(r[2].plan.fresh_members.is_empty(), "no counter restarts");
        });
    }

    #[test]
    fn refusals_name_the_reason_and_plan_nothing() {
        let b_lbs = config(&[("a", 1, 2)]);
        let r = vec![FakeLb {
            lb: b_lbs.loadbalancer[0].clone(),
            plan: plan(&b_lbs.loadbalancer[0], None).unwrap(),
        }];
        let mut moved = config(&[("a", 9, 2)]);
        moved.daemon = b_lbs.daemon.clone();
        assert!(matches!(
            diff(&r, &b_lbs.daemon, &moved),
            Err(Refused::VipOrPort { id }) if id == "a"
        ));
        let mut daemon = b_lbs.daemon.clone();
        daemon.conntrack_flows += 1;
        assert!(matches!(
            diff(&r, &daemon, &b_lbs),
            Err(Refused::DaemonSection)
        ));
        assert!(diff(&r, &b_lbs.daemon, &b_lbs).unwrap().is_empty());
    }
}
