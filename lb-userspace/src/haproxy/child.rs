//! The real haproxy serving the L7 part of a split configuration (`split.rs`): a child of lb
//! in the same network namespace, started before lb gives up root (it binds its own ports and
//! changes user as haproxy does).
//!
//! - Its configuration and stats socket are lb's state: `<state_dir>/<id>.haproxy.cfg`, and a
//!   socket per lb process `<state_dir>/<id>.haproxy-<lb pid>.sock` (a new child is told
//!   from the one it replaces by its own socket).
//! - A reload (the agent's `-sf`, the amphora's USR2) starts a new child beside the old one
//!   (both bind with SO_REUSEPORT, as haproxy's reloads do); once lb serves, the old child
//!   (named in `<state_dir>/<id>.haproxy.pid`) gets haproxy's `-sf` signal, SIGUSR1, and
//!   finishes its connections. A start that fails stops the new child and leaves the old one
//!   serving.
//! - lb's stop (SIGTERM, SIGINT) stops the child; lb's soft stop (SIGUSR1) soft-stops it. The
//!   pid file lb writes names both, so that whoever kills lb by its pid file kills both.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::split::Split;

pub struct Child {
    pub process: std::process::Child,
    /// Its stats socket (level admin).
    pub socket: PathBuf,
    /// The haproxies it replaces, told to finish once lb serves.
    pub replaces: Vec<u32>,
    pidfile: PathBuf,
}

fn is_real_haproxy(pid: u32, bin: &Path) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let bin = bin.canonicalize().ok();
    exe.is_some() && exe.and_then(|e| e.canonicalize().ok()) == bin
}

/// Starts haproxy on `split`'s L7 part and waits until its stats socket answers.
/// `replacing`: real haproxies among the old pids (`-sf`), told to finish once lb serves.
pub fn start(
    split: &Split,
    state_dir: &Path,
    id: &str,
    local_peer: Option<&str>,
    replacing: &[u32],
) -> anyhow::Result<Child> {
    let bin = super::run::real_haproxy().map_err(|why| {
        anyhow::anyhow!(
            "{}: {} needs an L7 proxy for {}, and the real haproxy cannot be run: {why}",
            split.why.at,
            split.why.what,
            split.haproxy_proxies.join(", ")
        )
    })?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let me = std::process::id();
    // Sockets of lb processes gone (their children ended with them or were replaced).
    if let Ok(dir) = std::fs::read_dir(state_dir) {
        let prefix = format!("{id}.haproxy-");
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".sock"))
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let socket = state_dir.join(format!("{id}.haproxy-{me}.sock"));
    let _ = std::fs::remove_file(&socket);
    let cfg = state_dir.join(format!("{id}.haproxy.cfg"));
    let tmp = cfg.with_extension(format!("cfg.{me}.tmp"));
    std::fs::write(&tmp, split.haproxy_config(&socket))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &cfg).with_context(|| format!("writing {}", cfg.display()))?;
    let pidfile = state_dir.join(format!("{id}.haproxy.pid"));
    let mut replaces: Vec<u32> = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|p| is_real_haproxy(*p, &bin))
        .into_iter()
        .chain(replacing.iter().copied())
        .collect();
    replaces.sort_unstable();
    replaces.dedup();
    let mut c = Command::new(&bin);
    c.arg("-f").arg(&cfg).arg("-db");
    if let Some(p) = local_peer {
        c.args(["-L", p]);
    }
    // What it says on stderr (its alerts and warnings; its logs go where its `log` lines say).
    let said = state_dir.join(format!("{id}.haproxy.stderr"));
    let out =
        std::fs::File::create(&said).with_context(|| format!("creating {}", said.display()))?;
    let mut process = c
        .env_remove("NOTIFY_SOCKET")
        .env_remove(super::master::READY_FD)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let pid = process.id();
    let start = Instant::now();
    loop {
        if let Some(status) = process.try_wait()? {
            let text = std::fs::read_to_string(&said).unwrap_or_default();
            anyhow::bail!(
                "the real haproxy ({}) for the L7 part ({}) exited at its start ({status}): {}",
                bin.display(),
                split.haproxy_proxies.join(", "),
                text.trim()
            );
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = process.kill();
            let _ = process.wait();
            anyhow::bail!(
                "the real haproxy for the L7 part did not open its stats socket {} within 15 s",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&pidfile, format!("{pid}\n"))
        .with_context(|| format!("writing {}", pidfile.display()))?;
    tracing::info!(pid, proxies = ?split.haproxy_proxies, replaces = ?replaces, "the real haproxy serves the L7 part");
    Ok(Child {
        process,
        socket,
        replaces,
        pidfile,
    })
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Sends the child `sig`.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), sig);
    }

    /// lb serves: the haproxies this child replaces finish their connections and end.
    pub fn replaced(&self) {
        for &p in &self.replaces {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGUSR1);
        }
    }

    /// lb's start failed: this child goes, the old ones keep serving.
    pub fn abandon(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_file(&self.socket);
        // The pid file names the old child again, if there was one.
        match self.replaces.first() {
            Some(p) => {
                let _ = std::fs::write(&self.pidfile, format!("{p}\n"));
            }
            None => {
                let _ = std::fs::remove_file(&self.pidfile);
            }
        }
    }
}
