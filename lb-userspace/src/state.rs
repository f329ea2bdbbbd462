//! What a running daemon publishes for `lb stats`: one JSON file per load balancer naming the
//! map indexes (the maps themselves hold only numbers).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub loadbalancer: String,
    pub namespace: String,
    pub port: String,
    pub vip_address: std::net::Ipv4Addr,
    pub pin_dir: PathBuf,
    pub xdp_mode: String,
    pub pid: u32,
    /// Listener and member ids with their map indexes (the maps hold only numbers); a daemon
    /// that takes over plans from it.
    pub plan: Plan,
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
        serde_json::from_slice(&text).ok()
    }

    /// The pid of the `lb` process that published this state, if it is still running.
    pub fn live_owner(&self) -> Option<u32> {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).ok()?;
        (comm.trim() == "lb" && self.pid != std::process::id()).then_some(self.pid)
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
                match serde_json::from_slice::<State>(&text) {
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
