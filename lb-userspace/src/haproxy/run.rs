//! The drop-in's process: what `haproxy -f <conf> -p <pid> [-sf <pids>]` does when lb is the
//! `haproxy` the agent finds on PATH.
//!
//! 1. Parse the command line and the configuration; `-v`, `-c` answer at once.
//! 2. A configuration that needs an L7 proxy: exec the real haproxy with the same arguments.
//! 3. Join the host's mount namespace (bpffs, /run/lb), name the network namespace it runs
//!    in, find the device holding the VIP, map the configuration onto a load balancer.
//! 4. `daemon` (or `-D`): fork; the parent waits on a pipe and exits 0 only once the child
//!    serves, with the pid file written, or exits 1 with the child's reason. A failed start
//!    leaves nothing behind.
//! 5. The child runs lb's daemon on the load balancer, taking over from an lb among the old
//!    pids without losing a flow; once up it writes the pid file, opens the stats sockets,
//!    and sends the old pids haproxy's signals (SIGUSR1 for `-sf`, SIGTERM for `-st`).

use std::{
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use nix::{
    sys::signal::{kill, Signal},
    unistd::{fork, ForkResult, Pid},
};

use super::{
    args::Args,
    child,
    convert::{self, DropIn},
    namespace::{self, Anywhere, Here},
    privileges,
    split::{self, Serving, Split},
    stats_socket,
};
use crate::daemon::{self, Embedding, Source};

/// The real haproxy, for configurations that need L7: `$LB_HAPROXY_BIN`, else
/// `/usr/sbin/haproxy` unless that is lb itself.
pub fn real_haproxy() -> Result<PathBuf, String> {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let (p, what) = match std::env::var_os("LB_HAPROXY_BIN") {
        Some(p) => (PathBuf::from(p), "$LB_HAPROXY_BIN"),
        None => (PathBuf::from("/usr/sbin/haproxy"), "/usr/sbin/haproxy"),
    };
    let canon = p.canonicalize().ok();
    if canon.is_none() {
        return Err(format!("{what} ({}) does not exist", p.display()));
    }
    if canon == me {
        return Err(format!(
            "{what} ({}) is lb itself; set LB_HAPROXY_BIN to the real haproxy",
            p.display()
        ));
    }
    Ok(p)
}

/// Replaces this process with the real haproxy and the same arguments.
fn hand_off(why: &super::config::L7, argv: &[String]) -> i32 {
    let bin = match real_haproxy() {
        Ok(b) => b,
        Err(reason) => {
            eprintln!(
                "lb haproxy: {}: {} needs an L7 proxy, and the real haproxy cannot be run: {reason}",
                why.at, why.what
            );
            return 1;
        }
    };
    eprintln!(
        "lb haproxy: {}: {} needs an L7 proxy: running {} with the same arguments",
        why.at,
        why.what,
        bin.display()
    );
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(&bin).args(argv));
    eprintln!("lb haproxy: cannot run {}: {err}", bin.display());
    1
}

/// `lb haproxy <args>`; returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let args = match Args::parse(argv.clone()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lb haproxy: {e}");
            return 1;
        }
    };
    if args.version > 0 {
        print!("{}", super::version(args.version > 1));
        return 0;
    }
    let files = match args.config_files() {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("lb haproxy: no configuration file in {:?}", args.files);
            return 1;
        }
        Err(e) => {
            eprintln!("lb haproxy: cannot list {:?}: {e}", args.files);
            return 1;
        }
    };
    let parsed = super::read(&files).and_then(|lines| {
        let cfg = super::config::parse(&lines)?;
        Ok((cfg, lines))
    });
    let (cfg, lines) = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb haproxy: {e}");
            return 1;
        }
    };
    let (cfg, split) = match split::decide(&cfg, &lines) {
        Serving::Lb => (cfg, None),
        Serving::Haproxy(l7) => return hand_off(&l7, &argv),
        Serving::Split(s) => {
            let lb: Vec<&str> =
                s.lb.proxies
                    .iter()
                    .filter(|p| p.kind.has_frontend())
                    .map(|p| p.name.as_str())
                    .collect();
            eprintln!(
                "lb haproxy: split: lb serves {}; the real haproxy serves {} ({}: {} needs an L7 proxy)",
                lb.join(", "),
                s.haproxy_proxies.join(", "),
                s.why.at,
                s.why.what
            );
            (s.lb.clone(), Some(*s))
        }
    };
    if !cfg.peers.is_empty() && !args.quiet {
        let names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "lb haproxy: peers {names:?}{}: accepted; lb keeps no stick table to sync with them (its persistence entries are its own)",
            args.local_peer.as_deref().map(|l| format!(" (this peer: {l})")).unwrap_or_default()
        );
    }
    if args.check {
        let checked = convert::convert(&cfg, "check", "check", &Anywhere)
            .map_err(|e| e.to_string())
            .and_then(|d| privileges::resolve(d.user.as_deref(), d.group.as_deref()))
            .and_then(|_| match &split {
                // haproxy's part, as haproxy checks it: the whole configuration.
                Some(_) => check_with_real_haproxy(&argv),
                None => Ok(()),
            });
        return match checked {
            Ok(_) => {
                if !args.quiet {
                    println!("Configuration file is valid");
                }
                0
            }
            Err(e) => {
                eprintln!("lb haproxy: {e}");
                1
            }
        };
    }
    if args.master_worker {
        return super::master::run(args);
    }
    match prepare(&cfg, &files) {
        Ok(drop_in) => serve(args, drop_in, split),
        Err(e) => {
            eprintln!("lb haproxy: {e:#}");
            1
        }
    }
}

/// `haproxy <argv>` (a `-c`) with the real haproxy, quietly: Err with what it said.
fn check_with_real_haproxy(argv: &[String]) -> Result<(), String> {
    let bin = real_haproxy()
        .map_err(|why| format!("the L7 part needs the real haproxy, which cannot be run: {why}"))?;
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    if !args.contains(&"-q") {
        args.push("-q");
    }
    let out = std::process::Command::new(&bin)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the real haproxy refuses the L7 part: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Old pids that are a real haproxy (not lb): the first lb deploy on a node that ran HAProxy.
fn real_haproxies(pids: &[u32]) -> Vec<u32> {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    pids.iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .ok()
                .and_then(|e| e.canonicalize().ok())
                != me
        })
        .collect()
}

/// Where a start is reported: the pipe a waiting parent (`-D`) or master (`-W`) reads.
type Ready = std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>;

/// Step 3: still single-threaded.
fn prepare(cfg: &super::HaConfig, files: &[PathBuf]) -> anyhow::Result<DropIn> {
    namespace::join_host_mounts().context("joining the host's mount namespace (PID 1's)")?;
    let netns = namespace::current_netns_name().context(
        "lb haproxy runs in a named network namespace (ip netns exec qlbaas-<id> ...); this one has no name under /var/run/netns",
    )?;
    let id = namespace::loadbalancer_id(&netns, &files[0]);
    let here = Here::read().context("listing this namespace's addresses")?;
    let mut d = convert::convert(cfg, &id, &netns, &here)?;
    let lb = &d.config.loadbalancer[0];
    if !lb.port.assign_vip {
        eprintln!(
            "lb haproxy: {} is not in {netns} yet (ip_nonlocal_bind is set: a backup, keepalived moves the VIP): serving it on {} once it is assigned; monitors check from this node's own address meanwhile",
            lb.vip_address, lb.port.name
        );
    }
    // haproxy configs have no place for these: lb-specific environment variables.
    if let Some(v) = std::env::var_os("LB_STATE_DIR") {
        d.config.daemon.state_dir = v.to_string_lossy().into_owned();
    }
    if let Some(v) = std::env::var_os("LB_BPFFS") {
        d.config.daemon.bpffs = v.to_string_lossy().into_owned();
    }
    Ok(d)
}

/// Steps 4 and 5.
fn serve(args: Args, drop_in: DropIn, split: Option<Split>) -> i32 {
    let daemon = (args.daemon || drop_in.daemon) && !args.foreground;
    let mut ready: Option<OwnedFd> = None;
    // A master's worker reports its start on the descriptor the master gave it.
    if let Some(fd) = std::env::var(super::master::READY_FD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        std::env::remove_var(super::master::READY_FD);
        // SAFETY: the master made this descriptor for this process only (the write end of
        // its pipe, inherited); nothing else in this process owns it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // Not for what this process runs (a split configuration's haproxy): the master reads
        // it to its end.
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        ready = Some(fd);
    }
    if daemon {
        // Close-on-exec: the parent reads to the end, which a program this process runs
        // (a split configuration's haproxy) must not hold off.
        let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("lb haproxy: pipe: {e}");
                return 1;
            }
        };
        // SAFETY: no thread has been started yet; the child continues with this single thread.
        match unsafe { fork() } {
            Err(e) => {
                eprintln!("lb haproxy: fork: {e}");
                return 1;
            }
            Ok(ForkResult::Parent { .. }) => {
                drop(w);
                let mut msg = String::new();
                let _ = std::fs::File::from(r).read_to_string(&mut msg);
                return match msg.strip_prefix("OK") {
                    Some(_) => 0,
                    None => {
                        eprint!(
                            "lb haproxy: {}",
                            if msg.is_empty() {
                                "the daemon ended before it served\n".to_string()
                            } else {
                                msg
                            }
                        );
                        1
                    }
                };
            }
            Ok(ForkResult::Child) => {
                drop(r);
                let _ = nix::unistd::setsid();
                detach_stdio();
                ready = Some(w);
            }
        }
    }
    super::syslog::init(&drop_in.logs);
    init_logging(daemon);
    // Whoever reports first takes it: the start (OK) or its failure (the reason).
    let ready = std::sync::Arc::new(std::sync::Mutex::new(ready.map(std::fs::File::from)));
    let result = run(args, drop_in, ready.clone(), split);
    match result {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}\n");
            tracing::error!("{}", msg.trim_end());
            if let Some(mut f) = ready.lock().unwrap().take() {
                let _ = f.write_all(msg.as_bytes());
            } else {
                eprint!("lb haproxy: {msg}");
            }
            1
        }
    }
}

/// A daemon's stdio goes to /dev/null (its logs go to syslog, as haproxy's).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn init_logging(daemon: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = if daemon {
        b.with_writer(super::syslog::Writer).try_init()
    } else {
        b.with_writer(std::io::stderr).try_init()
    };
}

fn run(args: Args, drop_in: DropIn, ready: Ready, split: Option<Split>) -> anyhow::Result<()> {
    // Replacing a real HAProxy: keep new flows' SNAT ports clear of its ports until it has
    // ended and members' TIME_WAIT (60 s) with it. (Read as root: another user's
    // /proc/<pid>/exe is not readable without CAP_SYS_PTRACE.)
    let haproxies = real_haproxies(&args.old_pids());
    // What needs more than the daemon keeps, while this is the only thread.
    crate::daemon::ensure_bpffs(Path::new(&drop_in.config.daemon.bpffs))?;
    let creds = privileges::resolve(drop_in.user.as_deref(), drop_in.group.as_deref())
        .map_err(anyhow::Error::msg)?;
    // The stats sockets are bound as root, as haproxy binds them before it changes user.
    let bound = drop_in
        .sockets
        .iter()
        .map(|s| {
            stats_socket::bind(s).with_context(|| format!("stats socket {}", s.path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The real haproxy for the L7 part, started as root as haproxy is (it binds its ports and
    // changes user itself); it goes again if lb's start fails.
    let child = match &split {
        Some(s) => Some(child::start(
            s,
            Path::new(&drop_in.config.daemon.state_dir),
            &drop_in.config.loadbalancer[0].id,
            args.local_peer.as_deref(),
            &haproxies,
        )?),
        None => None,
    };
    let child = Guard(child);
    privileges::drop_to(&creds).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let _guard = rt.enter();
    let (requests_tx, requests) = tokio::sync::mpsc::unbounded_channel();
    let pidfile = args.pidfile.clone();
    let sockets = drop_in.sockets.clone();
    let bound = std::sync::Mutex::new(bound);
    let (finish, terminate) = (args.finish.clone(), args.terminate.clone());
    let maxconn = drop_in.global_maxconn;
    let ha = drop_in.haproxy.clone();
    let snat_ports = if haproxies.is_empty() {
        None
    } else {
        // This namespace's ephemeral range as it is now (before lb moves it): the HAProxy
        // being replaced made its connections to members from it.
        crate::daemon::instance::snat_clear_of_local_ports()
    };
    let lb_id = drop_in.config.loadbalancer[0].id.clone();
    let restore_tx = requests_tx.clone();
    let handle = rt.handle().clone();
    let l7 = child
        .0
        .as_ref()
        .map(|c| (c.pid(), c.socket.clone(), c.replaces.clone()));
    if let Some((pid, _, _)) = &l7 {
        rt.spawn(child_follows(*pid));
    }
    let up = move |running: &[crate::daemon::instance::Instance]| -> anyhow::Result<()> {
        let me = std::process::id();
        if let Some(p) = &pidfile {
            let mut pids = vec![me];
            pids.extend(l7.as_ref().map(|(pid, _, _)| *pid));
            write_pidfile(p, &pids)?;
        }
        let _enter = handle.enter();
        let child_socket = l7.as_ref().map(|(_, s, _)| s.clone());
        for (s, b) in sockets.iter().zip(bound.lock().unwrap().drain(..)) {
            stats_socket::serve(
                b,
                &ha,
                running,
                requests_tx.clone(),
                maxconn,
                child_socket.clone(),
            )
            .with_context(|| format!("stats socket {}", s.path.display()))?;
        }
        // haproxy's -sf for the haproxies the new child replaces.
        for &pid in l7.iter().flat_map(|(_, _, r)| r) {
            if kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).is_ok() {
                tracing::info!(
                    pid,
                    "the real haproxy replaced for the L7 part told to finish (SIGUSR1)"
                );
            }
        }
        if let Some(range) = snat_ports {
            tracing::info!(ports = ?range, haproxy = ?haproxies, "new flows avoid the replaced HAProxy's ephemeral ports until it ends, and 60 s more");
            let (pids, lb) = (haproxies.clone(), lb_id.clone());
            handle.spawn(async move {
                while pids
                    .iter()
                    .any(|p| Path::new(&format!("/proc/{p}")).exists())
                {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                tokio::time::sleep(crate::plan::MEMBER_TIME_WAIT).await;
                let (reply, _) = tokio::sync::oneshot::channel();
                let _ = restore_tx.send(daemon::Request {
                    loadbalancer: lb,
                    kind: daemon::RequestKind::SnatPorts(None),
                    reply,
                });
            });
        }
        if let Some(mut f) = ready.lock().unwrap().take() {
            let _ = f.write_all(b"OK\n");
        }
        for (pids, sig) in [(&finish, Signal::SIGUSR1), (&terminate, Signal::SIGTERM)] {
            for &pid in pids.iter().filter(|&&p| p != me && p > 1) {
                match kill(Pid::from_raw(pid as i32), sig) {
                    Ok(()) => tracing::info!(pid, signal = %sig, "old process told to stop"),
                    Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => tracing::warn!(pid, error = %e, "cannot signal the old process"),
                }
            }
        }
        Ok(())
    };
    // haproxy's configuration has no line for a metrics endpoint: the environment names it.
    let metrics_address = match std::env::var(crate::metrics::ENV_ADDRESS) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{}={v:?}: not an ADDR:PORT to serve Prometheus metrics on",
                crate::metrics::ENV_ADDRESS
            )
        })?),
        _ => None,
    };
    let embedding = Embedding {
        up: Box::new(up),
        requests,
        takeover_from: args.old_pids(),
        snat_ports,
    };
    let result = rt.block_on(daemon::run(daemon::Options {
        source: Source::Fixed(drop_in.config),
        mode: None,
        takeover: true,
        embedding: Some(embedding),
        metrics_address,
    }));
    if result.is_ok() {
        // It serves on, or was told to stop or finish with lb; it is no longer lb's to end.
        child.disarm();
    }
    result
}

/// The real haproxy of a split configuration while lb runs: lb's stop (SIGTERM, SIGINT)
/// stops it, lb's soft stop or handover (SIGUSR1) makes it finish (a new child has replaced
/// it by then), and its end is reaped and logged.
async fn child_follows(pid: u32) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
    ) else {
        tracing::error!(pid, "cannot watch signals for the real haproxy's sake");
        return;
    };
    let target = Pid::from_raw(pid as i32);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => { let _ = kill(target, Signal::SIGTERM); }
            _ = int.recv() => { let _ = kill(target, Signal::SIGTERM); }
            _ = usr1.recv() => { let _ = kill(target, Signal::SIGUSR1); }
            _ = tick.tick() => {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(st) => {
                        tracing::warn!(pid, status = ?st, "the real haproxy serving the L7 part ended");
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    }
}

/// The child of a split configuration, stopped if lb's start fails.
struct Guard(Option<child::Child>);

impl Guard {
    fn disarm(mut self) {
        self.0.take();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.abandon();
        }
    }
}

/// The pid file: one line per process, as haproxy writes it (lb's, and its real haproxy's
/// when it has one).
pub(super) fn write_pidfile(path: &Path, pids: &[u32]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("lb{}.tmp", std::process::id()));
    let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
