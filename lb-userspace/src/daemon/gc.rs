//! What a load balancer leaves when its daemon is killed and its home removed under it: the
//! LBaaS agent undeploys with `kill -9 <pids>`, unplugs the port and deletes the namespace,
//! leaving lb's pins (maps and links, now defunct), state file and lock behind. Every `lb`
//! command that reads or starts load balancers first removes such remains: a load balancer
//! whose daemon is gone (its lock free) and whose namespace, or whose port in it, no longer
//! exists can never serve again. `lb stats` therefore never lists it.

use std::path::Path;

use tracing::info;

use super::lock::{Acquire, LbLock};
use crate::{node, state::State};

/// Whether `state`'s load balancer lost its namespace or its port.
fn home_is_gone(state: &State) -> bool {
    if !node::netns_exists(&state.namespace) {
        return true;
    }
    let port = state.port.clone();
    let present = node::in_netns(&state.namespace, move || {
        nix::net::if_::if_nametoindex(port.as_str()).is_ok()
    });
    matches!(present, Ok(false))
}

/// Removes the remains of load balancers whose daemon and home are both gone; returns their
/// ids.
pub fn collect(state_dir: &Path) -> Vec<String> {
    let Ok(states) = State::read_all(state_dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    let mut roots: Vec<std::path::PathBuf> = Vec::new();
    for s in states {
        if let Some(r) = s.pin_dir.parent().filter(|r| !roots.iter().any(|x| x == r)) {
            roots.push(r.to_path_buf());
        }
        if s.live_owner().is_some() || !home_is_gone(&s) {
            continue;
        }
        // Only while no daemon holds it (one may be starting this very moment).
        let Ok(Acquire::Acquired(lock)) = LbLock::try_acquire(state_dir, &s.loadbalancer) else {
            continue;
        };
        super::instance::remove_pins(&s.pin_dir);
        State::remove(state_dir, &s.loadbalancer);
        for extra in ["stats-samples", "handover"] {
            let _ = std::fs::remove_file(state_dir.join(format!("{}.{extra}", s.loadbalancer)));
        }
        lock.remove();
        info!(loadbalancer = %s.loadbalancer, namespace = %s.namespace, "removed what a killed lb left: its namespace or port is gone");
        removed.push(s.loadbalancer);
    }
    for r in roots {
        let _ = crate::dataplane::programs::collect(&r);
    }
    removed
}
