//! What a daemon records of each load balancer, one JSON file per load balancer in
//! `<state_dir>/<id>.json`: for `lb stats` the map indexes (the maps hold only numbers); for
//! the next daemon (after a crash, a restart, a takeover) the plan those indexes follow, what
//! lb owns on the node, and where the data path is attached.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{daemon::attach::Attachment, node::Owned, plan::Plan};

/// Where a load balancer's daemon stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Being brought up (or taken over): not everything is in place yet.
    Starting,
    /// Up, served by the daemon `pid` while it lives.
    #[default]
    Running,
    /// Its daemon exited leaving the data path in place (SIGUSR1, or handing over to
    /// `lb run --takeover`): flows are translated, nothing expires or is checked.
    Left,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub loadbalancer: String,
    pub namespace: String,
    pub port: String,
    pub vip_address: std::net::IpAddr,
    pub pin_dir: PathBuf,
    pub xdp_mode: String,
    pub pid: u32,
    /// Listener and member ids with their map indexes (the maps hold only numbers); a daemon
    /// that takes over plans from it.
    pub plan: Plan,
    /// What lb created on the node for this load balancer, across runs.
    #[serde(default)]
    pub owned: Owned,
    /// Where the data path is attached; a daemon taking over replaces the programs there.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub phase: Phase,
    /// The program set (object hash) whose programs serve it, and its slot there.
    #[serde(default)]
    pub program_set: String,
    #[serde(default)]
    pub slot: u32,
    /// Health check counters and progress per member index, as the daemon left them (the next
    /// one carries on from them).
    #[serde(default)]
    pub checks: std::collections::BTreeMap<u32, crate::health::CheckInfo>,
}

impl State {
    pub fn path(state_dir: &Path, lb: &str) -> PathBuf {
        state_dir.join(format!("{lb}.json"))
    }

    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let path = Self::path(state_dir, &self.loadbalancer);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serializable"))?;
        std::fs::rename(tmp, path)
    }

    pub fn read(state_dir: &Path, lb: &str) -> Option<State> {
        let text = std::fs::read(Self::path(state_dir, lb)).ok()?;
        Self::parse(&text).ok()
    }

    /// A state file's text. The plan's listener keys are not in the file (they follow from
    /// the VIP): they are computed again here, so a reader can look its listeners up.
    fn parse(text: &[u8]) -> serde_json::Result<State> {
        let mut s: State = serde_json::from_slice(text)?;
        for l in &mut s.plan.listeners {
            (l.key, l.key6) =
                crate::plan::listener_keys(s.vip_address, l.protocol_port, l.protocol);
        }
        Ok(s)
    }

    pub fn remove(state_dir: &Path, lb: &str) {
        let _ = std::fs::remove_file(Self::path(state_dir, lb));
    }

    /// The pid of the `lb` process that published this state, if it is still running.
    pub fn live_owner(&self) -> Option<u32> {
        if self.phase == Phase::Left {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).ok()?;
        // A killed daemon no parent has reaped yet (a zombie) serves nothing.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        if matches!(state, Some("Z" | "X" | "x")) {
            return None;
        }
        // `haproxy`: the drop-in, run through a link of that name.
        (matches!(comm.trim(), "lb" | "haproxy") && self.pid != std::process::id())
            .then_some(self.pid)
    }

    /// Every published load balancer, sorted by id.
    pub fn read_all(state_dir: &Path) -> std::io::Result<Vec<State>> {
        let mut out = Vec::new();
        let dir = match std::fs::read_dir(state_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in dir {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read(&path)?;
                match Self::parse(&text) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.loadbalancer.cmp(&b.loadbalancer));
        Ok(out)
    }
}
