//! The LBaaS agent's haproxy namespace driver, as its code drives haproxy (the v1 driver of
//! the seed and its v2 successor do the same): plug a port into `qlbaas-<id>`, spawn
//! `ip netns exec qlbaas-<id> haproxy -f <dir>/haproxy.conf -p <dir>/haproxy.pid`, decide
//! "exists" by the namespace and a `connect()` to the stats socket, update with the same
//! command plus `-sf <pids from the pid file>`, poll `show stat -1 6 -1` reading 1024-byte
//! chunks until a short one, and undeploy with `kill -9`, unplug, `rm -rf`, namespace delete.
//! `haproxy` is found through PATH, where a link to `lb` comes first.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU16, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{topology::SeedTopology, unique, Netns};

/// One load balancer as the agent deploys it, on the seed topology's `br-int`.
pub struct Agent {
    pub id: String,
    pub namespace: String,
    /// `<state path>/<id>`: the config, pid file and stats socket.
    pub dir: PathBuf,
    /// Where the `haproxy` link to lb is (first on PATH).
    pub bin_dir: PathBuf,
    /// lb's own state and pins, per test (`LB_STATE_DIR`, `LB_BPFFS`); None: lb's defaults.
    pub state_dir: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    port: String,
    outer: String,
    node_ns: String,
    plugged: bool,
    /// `state_dir` and `bpffs` are the node's, shared with other load balancers: left in
    /// place on drop (only this load balancer's remains go).
    node_dirs: bool,
}

impl Agent {
    /// A load balancer with a fresh id, `lb_bin` linked as `haproxy` (lb; or the real
    /// haproxy, `/usr/sbin/haproxy`, to drive it with the same commands), and lb's state in
    /// private directories unless `defaults`.
    pub fn new(topo: &SeedTopology, lb_bin: &Path, defaults: bool) -> Agent {
        let tag = unique("");
        let n: u32 = tag
            .bytes()
            .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let id = format!("{n:08x}-aaaa-4bbb-8ccc-{:012x}", std::process::id());
        let base = std::env::temp_dir().join(format!("{tag}-agent"));
        let dir = base.join("lbaas").join(&id);
        let bin_dir = base.join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::os::unix::fs::symlink(lb_bin, bin_dir.join("haproxy")).unwrap();
        Agent {
            namespace: format!("qlbaas-{id}"),
            id,
            dir,
            bin_dir,
            state_dir: (!defaults).then(|| base.join("lb-state")),
            bpffs: (!defaults).then(|| PathBuf::from("/sys/fs/bpf").join(format!("{tag}-agent"))),
            port: format!("tap{n:08x}"),
            outer: format!("ag{:08x}", n),
            node_ns: topo.node.name.clone(),
            plugged: false,
            node_dirs: false,
        }
    }

    /// One of several load balancers on a node, as the agent runs them: `bin` linked as
    /// `haproxy`, lb's state and pins in the node's `state_dir` and `bpffs` root (shared by
    /// every load balancer there, so node-wide pins are shared too; the caller removes them).
    pub fn on_node(topo: &SeedTopology, bin: &Path, state_dir: &Path, bpffs: &Path) -> Agent {
        let mut a = Agent::new(topo, bin, true);
        a.state_dir = Some(state_dir.to_path_buf());
        a.bpffs = Some(bpffs.to_path_buf());
        a.node_dirs = true;
        a
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.join("haproxy.conf")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }
    pub fn sock(&self) -> PathBuf {
        self.dir.join("haproxy_stats.sock")
    }

    /// Adds `cidr` (e.g. `fd00::250/64`) to the load balancer's port (`nodad`: usable at once).
    pub fn add_address(&self, cidr: &str) {
        let family = if cidr.contains(':') { "-6 " } else { "" };
        crate::sh(&format!(
            "ip -n {} {family}addr add {cidr} dev {}{}",
            self.namespace,
            self.port,
            if family.is_empty() { "" } else { " nodad" }
        ));
    }

    /// The port, as the agent plugs it: a device in `qlbaas-<id>` holding `vip`/24, its other
    /// end on br-int.
    pub fn plug(&mut self, vip: Ipv4Addr) {
        crate::sh(&format!("ip netns add {}", self.namespace));
        crate::sh(&format!("ip -n {} link set lo up", self.namespace));
        crate::sh(&format!(
            "ip -n {} link add {} type veth peer name {} netns {}",
            self.node_ns, self.outer, self.port, self.namespace
        ));
        crate::sh(&format!(
            "ip -n {} link set {} master br-int up",
            self.node_ns, self.outer
        ));
        crate::sh(&format!(
            "ip -n {} link set {} up",
            self.namespace, self.port
        ));
        crate::sh(&format!(
            "ip -n {} addr add {vip}/24 dev {}",
            self.namespace, self.port
        ));
        self.plugged = true;
    }

    /// `ip netns exec qlbaas-<id> haproxy <args>`, with `haproxy` found through PATH.
    pub fn haproxy(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.haproxy_command(args, env)
            .output()
            .expect("ip netns exec haproxy")
    }

    /// The command `haproxy` runs, not yet run (to time it, or take its rusage).
    pub fn haproxy_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace, "haproxy"])
            .args(args)
            .env("PATH", path)
            .env("RUST_LOG", "info");
        if let Some(d) = &self.state_dir {
            c.env("LB_STATE_DIR", d);
        }
        if let Some(d) = &self.bpffs {
            c.env("LB_BPFFS", d);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// The driver's `_spawn`: writes the config and runs haproxy; `-sf <pids>` when the
    /// load balancer exists already (its `update`).
    pub fn spawn(&self, conf: &str) -> Output {
        self.spawn_with(conf, &[])
    }

    /// `spawn` with more environment for the process (what an operator sets in the agent's).
    pub fn spawn_with(&self, conf: &str, env: &[(&str, &str)]) -> Output {
        self.spawn_command(conf, env)
            .output()
            .expect("ip netns exec haproxy")
    }

    /// `spawn_with`'s command, not yet run: the config is written, and `-sf <pids>` added
    /// when the load balancer exists.
    pub fn spawn_command(&self, conf: &str, env: &[(&str, &str)]) -> Command {
        std::fs::write(self.conf(), conf).unwrap();
        let conf = self.conf().display().to_string();
        let pid = self.pidfile().display().to_string();
        let mut args = vec!["-f".to_string(), conf, "-p".to_string(), pid];
        if self.exists() {
            args.push("-sf".into());
            args.extend(self.pids().iter().map(|p| p.to_string()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.haproxy_command(&args, env)
    }

    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.pidfile())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The driver's `exists`: the namespace is there and the stats socket accepts connect().
    pub fn exists(&self) -> bool {
        crate::sh("ip netns list")
            .split_whitespace()
            .any(|n| n == self.namespace)
            && UnixStream::connect(self.sock()).is_ok()
    }

    /// The driver's "active": the pid file's process has the load balancer's id in its
    /// command line.
    pub fn active(&self) -> bool {
        self.pids().iter().any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&self.id))
        })
    }

    /// One command on the stats socket (as `socat` or `echo ... | nc -U` sends it): the
    /// whole answer.
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(self.sock()).expect("connect to the stats socket");
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// The driver's `_get_stats_from_socket` + `_parse_stats`: `show stat -1 6 -1`, 1024-byte
    /// reads until a short one, one map per row keyed by the header's names.
    pub fn raw_stats(&self) -> Vec<HashMap<String, String>> {
        show_stat(&self.sock())
    }

    /// The driver's `_get_backend_stats` and `_get_servers_stats`: the pool row (`type` 1)
    /// and, per member id, ACTIVE or INACTIVE (`status` DOWN), `check_status`, `chkfail`.
    pub fn stats(
        &self,
    ) -> (
        HashMap<String, String>,
        HashMap<String, HashMap<String, String>>,
    ) {
        let rows = self.raw_stats();
        let backend = rows
            .iter()
            .find(|r| r.get("type").map(String::as_str) == Some("1"))
            .cloned()
            .unwrap_or_default();
        let servers = rows
            .iter()
            .filter(|r| r.get("type").map(String::as_str) == Some("2"))
            .map(|r| {
                let status = if r["status"] == "DOWN" {
                    "INACTIVE"
                } else {
                    "ACTIVE"
                };
                let mut m = HashMap::new();
                m.insert("status".to_string(), status.to_string());
                m.insert("health".to_string(), r["check_status"].clone());
                m.insert("failed_checks".to_string(), r["chkfail"].clone());
                (r["svname"].clone(), m)
            })
            .collect();
        (backend, servers)
    }

    /// The driver's `undeploy_instance`: kill -9 every pid, unplug the port, remove the
    /// directory, delete the namespace.
    pub fn undeploy(&mut self) {
        for p in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.unplug();
        let _ = std::fs::remove_dir_all(&self.dir);
        if lb::node::netns_exists(&self.namespace) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace])
                .status();
        }
    }

    fn unplug(&mut self) {
        if self.plugged {
            let _ = Command::new("ip")
                .args(["-n", &self.node_ns, "link", "del", &self.outer])
                .status();
            self.plugged = false;
        }
    }

    /// Whether lb still holds anything of this load balancer: its state, lock, pins.
    pub fn remains(&self) -> Vec<PathBuf> {
        let state = self.state_dir.clone().unwrap_or_else(|| "/run/lb".into());
        let bpffs = self
            .bpffs
            .clone()
            .unwrap_or_else(|| "/sys/fs/bpf/lb".into());
        [
            state.join(format!("{}.json", self.id)),
            state.join(format!("{}.lock", self.id)),
            state.join(format!("{}.stats-samples", self.id)),
            bpffs.join(&self.id),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.undeploy();
        // What the next lb command does after an undeploy, then whatever is still there.
        let state = self.state_dir.clone().unwrap_or_else(|| "/run/lb".into());
        let bpffs = self
            .bpffs
            .clone()
            .unwrap_or_else(|| "/sys/fs/bpf/lb".into());
        let dead = |p: &u32| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
                s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
            })
        };
        let pids = self.pids();
        let _ = crate::wait_for_quietly(std::time::Duration::from_secs(5), || {
            pids.iter().all(dead).then_some(())
        });
        lb::daemon::gc::collect(&state);
        for p in self.remains() {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
        }
        let _ = lb::dataplane::programs::collect(&bpffs);
        if let Some(d) = self.bpffs.as_ref().filter(|_| !self.node_dirs) {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Some(base) = self.bin_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// A minimal HTTP/1.0 server in a member's namespace whose status can change under it (for
/// HTTP monitors): answers every request with `status`, the member's address as the body,
/// then closes.
pub struct HttpServer {
    pub status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(ns: &Netns, addr: Ipv4Addr, port: u16) -> HttpServer {
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, name) = (status.clone(), stop.clone(), ns.name.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            lb::node::enter(&name).unwrap();
            let l = TcpListener::bind((addr, port)).unwrap();
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !sp.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let body = addr.to_string();
                let s = st.load(Ordering::Relaxed);
                let _ = write!(
                    c,
                    "HTTP/1.0 {s} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        HttpServer {
            status,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `show stat -1 6 -1` on the stats socket at `sock`, read as the LBaaS driver reads it
/// (1024-byte reads until a short one): one map per row keyed by the header's names.
pub fn show_stat(sock: &Path) -> Vec<HashMap<String, String>> {
    let mut s = UnixStream::connect(sock).expect("connect to the stats socket");
    s.write_all(b"show stat -1 6 -1\n").unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        raw.extend_from_slice(&chunk[..n]);
        if n < 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<String> = head
        .split(',')
        .map(|n| n.trim_matches(|c| c == '#' || c == ' ').to_string())
        .collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            names
                .iter()
                .cloned()
                .zip(l.split(',').map(|v| v.trim().to_string()))
                .collect()
        })
        .collect()
}

/// `GET /` over HTTP/1.0 from `client` to the VIP's `port`: (status, body).
pub fn http_get(client: &str, port: u16) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    crate::in_netns(client, || -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((crate::topology::VIP, port)),
            std::time::Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((code, body))
    })
    .map_err(std::io::Error::other)?
}
