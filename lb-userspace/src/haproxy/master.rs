//! `-W` / `-Ws`: haproxy's master-worker mode, as Octavia's amphora runs it under systemd:
//!
//! ```text
//! ExecStart=/sbin/ip netns exec amphora-haproxy haproxy -Ws -f $CONFIG -f $USERCONFIG -p $PIDFILE -L <peer>
//! Type=notify   ExecReload=... /bin/kill -USR2 $MAINPID   KillMode=mixed
//! ```
//!
//! The master stays in the foreground, writes its own pid to the pid file and runs the
//! worker, `lb haproxy` on the same files with `-db` (foreground whatever `daemon` says). It
//! tells systemd `READY=1` (`$NOTIFY_SOCKET`, `-Ws` only) once the worker serves, which the
//! worker reports on a pipe as a `-D` start reports to its parent. Then:
//! - `SIGUSR2`: re-reads the files by starting a new worker with `-sf <worker>`: the same
//!   hitless takeover as the agent's reload (maps, flows and stats sockets carry over; the old
//!   worker leaves when the new one serves). A new worker that fails leaves the old one
//!   serving, and the master says why.
//! - `SIGTERM` / `SIGINT`: the worker tears down, then the master exits.
//! - `SIGUSR1`: soft stop: the worker stops taking new connections and ends with its last
//!   one (haproxy's soft stop), then the master exits.
//! - the worker ending on its own: the master exits with an error (haproxy's default
//!   `exit-on-failure`), so that `Restart=always` restarts the service.

use std::{
    io::Read as _,
    os::fd::{AsRawFd as _, OwnedFd},
    process::{Child, Command},
};

use nix::{
    sys::{
        signal::{kill, SigSet, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};
use sd_notify::NotifyState;

use super::args::Args;

/// The environment variable naming the descriptor a worker reports its start on.
pub const READY_FD: &str = "LB_HAPROXY_READY_FD";

fn notify(systemd: bool, states: &[NotifyState]) {
    if systemd {
        if let Err(e) = sd_notify::notify(states) {
            eprintln!("lb haproxy: cannot notify systemd: {e}");
        }
    }
}

/// Starts a worker and waits until it serves (Ok) or gives up (Err with its reason).
fn start_worker(args: &Args, old: Option<u32>) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find lb's executable: {e}"))?;
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // The read end stays here only.
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("pipe: {e}"))?;
    let child = Command::new(exe)
        .arg("haproxy")
        .args(args.worker(old))
        .env(READY_FD, w.as_raw_fd().to_string())
        // Only the master speaks to systemd (NotifyAccess=main).
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))?;
    drop(w);
    let mut msg = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut msg);
    if msg.starts_with("OK") {
        Ok(child)
    } else {
        let mut child = child;
        let status = child.wait().ok();
        Err(if msg.is_empty() {
            format!("the worker ended before it served ({status:?})")
        } else {
            msg.trim_end().to_string()
        })
    }
}

/// The master; returns the exit code.
pub fn run(args: Args) -> i32 {
    let signals = {
        let mut s = SigSet::empty();
        for sig in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            s.add(sig);
        }
        s
    };
    // Blocked here and waited for below; a worker starts with an empty mask (std clears it).
    if let Err(e) = signals.thread_block() {
        eprintln!("lb haproxy: cannot block signals: {e}");
        return 1;
    }
    if let Some(p) = &args.pidfile {
        if let Err(e) = super::run::write_pidfile(p, &[std::process::id()]) {
            eprintln!("lb haproxy: {e:#}");
            return 1;
        }
    }
    let mut worker = match start_worker(&args, None) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("lb haproxy: {why}");
            return 1;
        }
    };
    eprintln!(
        "lb haproxy: master {} serving with worker {}",
        std::process::id(),
        worker.id()
    );
    notify(args.systemd, &[NotifyState::Ready]);
    let mut stopping = false;
    loop {
        let sig = match signals.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lb haproxy: waiting for signals: {e}");
                continue;
            }
        };
        match sig {
            Signal::SIGUSR2 if !stopping => {
                let old = worker.id();
                notify(
                    args.systemd,
                    &[
                        NotifyState::Reloading,
                        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Reloading),
                    ],
                );
                match start_worker(&args, Some(old)) {
                    Ok(new) => {
                        eprintln!(
                            "lb haproxy: reloaded: worker {} took over from {old}",
                            new.id()
                        );
                        worker = new;
                    }
                    Err(why) => {
                        eprintln!("lb haproxy: reload failed, worker {old} keeps serving: {why}")
                    }
                }
                notify(args.systemd, &[NotifyState::Ready]);
            }
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGUSR1 if !stopping => {
                stopping = true;
                notify(args.systemd, &[NotifyState::Stopping]);
                let _ = kill(Pid::from_raw(worker.id() as i32), sig);
            }
            Signal::SIGCHLD => {
                // Old workers that left after a reload, and the current one.
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(st) => {
                            if st.pid() == Some(Pid::from_raw(worker.id() as i32)) {
                                let code = match st {
                                    WaitStatus::Exited(_, c) => c,
                                    _ => 1,
                                };
                                if stopping {
                                    return code;
                                }
                                eprintln!(
                                    "lb haproxy: worker {} ended ({st:?}): exiting",
                                    worker.id()
                                );
                                return if code == 0 { 1 } else { code };
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
