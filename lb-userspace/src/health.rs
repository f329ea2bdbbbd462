//! TCP health monitors, run from inside the load balancer's namespace with the VIP as source
//! (as HAProxy's checks were): `delay` between checks, `timeout` per check, `max_retries`
//! consecutive successes to rise, `max_retries_down` consecutive failures to fall.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use tokio::sync::mpsc::UnboundedSender;

use crate::config::HealthMonitor;

/// A member's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub loadbalancer: String,
    pub member_index: u32,
    pub member_id: String,
    pub up: bool,
    pub reason: String,
}

/// One member's check state: consecutive counts and the current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checker {
    pub up: bool,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl Checker {
    /// `up`: the verdict to start from: up for a new member (HAProxy's default, so traffic
    /// flows before the first check), the data path's current one after a reload or restart.
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Checker {
            up,
            successes: 0,
            failures: 0,
            rise,
            fall,
        }
    }

    /// Records one check; returns the new state if it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// One TCP check: connect from `vip:ephemeral` to `target` within `timeout`.
pub async fn check_tcp(
    vip: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> Result<(), String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(vip, 0)))
        .map_err(|e| format!("bind {vip}: {e}"))?;
    match tokio::time::timeout(timeout, sock.connect(SocketAddr::V4(target))).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect {target}: {e}")),
        Err(_) => Err(format!("connect {target}: no answer within {timeout:?}")),
    }
}

/// One member to monitor.
#[derive(Debug, Clone)]
pub struct MonitorTarget {
    pub member_index: u32,
    pub member_id: String,
    pub target: SocketAddrV4,
    pub monitor: HealthMonitor,
    /// The member's verdict in the data path when the monitor starts.
    pub up: bool,
}

impl MonitorTarget {
    /// Two targets with the same identity are the same monitor: a reload keeps it running.
    pub fn same_monitor(&self, other: &MonitorTarget) -> bool {
        self.member_index == other.member_index
            && self.member_id == other.member_id
            && self.target == other.target
            && self.monitor == other.monitor
    }
}

/// Checks one member every `delay` until the future is dropped, sending its transitions.
/// Call on a runtime whose thread is inside the load balancer's namespace: the sockets are
/// created there.
pub async fn monitor(lb: String, vip: Ipv4Addr, t: MonitorTarget, tx: UnboundedSender<Transition>) {
    let mut checker = Checker::new(t.monitor.max_retries, t.monitor.max_retries_down, t.up);
    let mut tick = tokio::time::interval(t.monitor.delay());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check_tcp(vip, t.target, t.monitor.timeout()).await;
        let reason = match &result {
            Ok(()) => "check passed".to_string(),
            Err(e) => e.clone(),
        };
        if let Some(up) = checker.record(result.is_ok()) {
            let tr = Transition {
                loadbalancer: lb.clone(),
                member_index: t.member_index,
                member_id: t.member_id.clone(),
                up,
                reason,
            };
            if tx.send(tr).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_consecutive_failures_only() {
        let mut c = Checker::new(2, 3, true);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None); // resets the failure run
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(false));
        assert!(!c.up);
        assert_eq!(c.record(false), None);
    }

    #[test]
    fn rises_after_consecutive_successes() {
        let mut c = Checker::new(2, 1, true);
        assert_eq!(c.record(false), Some(false));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
        assert!(c.up);
    }

    #[test]
    fn a_member_that_is_down_when_monitoring_restarts_can_rise() {
        let mut c = Checker::new(2, 2, false);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
    }
}
