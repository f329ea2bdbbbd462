//! The seed's topology, entirely in namespaces this process creates (and always removes):
//!
//! ```text
//!   client ns (10.0.0.1) --veth-- node ns [br-int] --veth-- member ns (10.0.0.2, 10.0.0.4, ...)
//!                                    |
//!                                    +--veth (created by lb) -- qlbaas-<id> ns: tap..., VIP 10.0.0.250
//! ```
//!
//! Members run real TCP servers on port 22 that greet with who they are and record the peer
//! address they saw; clients are real sockets in the client namespace.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{in_netns, unique, Netns};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 250);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// A host's IPv6 address in the tests: 2001:db8::<the last byte of its IPv4 address>.
pub fn v6_of(a: Ipv4Addr) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, a.octets()[3] as u16)
}

/// The seed's config (as `TestConfig::seed` edits it) with the IPv6 VIP `VIP6`/64.
pub fn with_ipv6_vip(t: String) -> String {
    t.replace(
        "vip_address = \"10.0.0.250\"",
        &format!("vip_address = \"{}\"", crate::VIP6),
    )
    .replace("vip_prefixlen = 24", "vip_prefixlen = 64")
}

/// `with_ipv6_vip`, and the seed's two members at their IPv6 addresses (`v6_of`).
pub fn as_ipv6(t: String) -> String {
    with_ipv6_vip(t)
        .replace(
            "\"10.0.0.2\"",
            &format!("\"{}\"", v6_of([10, 0, 0, 2].into())),
        )
        .replace(
            "\"10.0.0.4\"",
            &format!("\"{}\"", v6_of([10, 0, 0, 4].into())),
        )
}

/// Checksum and segmentation offloads off on a host's interface.
fn offloads_off(ns: &Netns, dev: &str) {
    ns.exec(&format!("ethtool -K {dev} tx off tso off gso off gro off"));
}

/// A TCP server in a member namespace.
pub struct Server {
    stop: Arc<AtomicBool>,
    /// Peer addresses of every accepted connection, as the member saw them.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections currently open.
    pub open: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// A server that greets and echoes.
    pub fn start(ns: &str, addr: impl Into<IpAddr>, port: u16) -> Server {
        Self::start_with(ns, addr, port, true)
    }

    /// `echo = false`: greets, then discards what it reads (a bulk-transfer sink).
    pub fn start_with(ns: &str, addr: impl Into<IpAddr>, port: u16, echo: bool) -> Server {
        let addr: IpAddr = addr.into();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, p, o) = (stop.clone(), peers.clone(), open.clone());
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            lb::node::enter(&ns).expect("enter member namespace");
            let l = TcpListener::bind((addr, port)).expect("bind member server");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        p.lock().unwrap().push(peer);
                        let _ = c.set_nonblocking(false);
                        let _ = write!(c, "SSH-2.0-lb-demo member {addr}\r\n");
                        o.fetch_add(1, Ordering::Relaxed);
                        let (s2, o2) = (s.clone(), o.clone());
                        conns.push(std::thread::spawn(move || {
                            let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                            let mut buf = vec![0u8; 256 * 1024];
                            let mut first = true;
                            loop {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) if first && buf[..n].starts_with(b"STREAM\n") => {
                                        crate::stream::serve(c, &buf[7..n], &s2);
                                        break;
                                    }
                                    Ok(n) => {
                                        first = false;
                                        if echo {
                                            let _ = c.write_all(&buf[..n]);
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) =>
                                    {
                                        if s2.load(Ordering::Relaxed) {
                                            break;
                                        }
                                    }
                                    Err(_) => break,
                                }
                            }
                            o2.fetch_sub(1, Ordering::Relaxed);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(l);
            for c in conns {
                let _ = c.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("member server ready");
        Server {
            stop,
            peers,
            open,
            handle: Some(handle),
        }
    }

    /// Kills the server: the listener closes (new SYNs get RST), open connections close.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Member {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub server: Server,
}

pub struct SeedTopology {
    pub node: Netns,
    pub client: Netns,
    pub members: Vec<Member>,
}

impl SeedTopology {
    /// Node namespace with br-int, a client at 10.0.0.1, members at `addrs` serving port 22.
    /// Hosts keep the kernel's default offloads (checksum, TSO, GSO), as real hosts and VMs
    /// with virtio offload do: they send CHECKSUM_PARTIAL and GSO frames.
    pub fn new(addrs: &[Ipv4Addr]) -> SeedTopology {
        Self::build(addrs, true, true)
    }

    /// `echo = false` makes the members bulk-transfer sinks; `offloads = false` turns the
    /// hosts' checksum and segmentation offloads off (every frame a complete, MTU-sized
    /// segment).
    pub fn build(addrs: &[Ipv4Addr], echo: bool, offloads: bool) -> SeedTopology {
        let node = Netns::new("n");
        node.ip("link add br-int type bridge");
        node.ip("link set br-int up");
        let client = Netns::new("c");
        Self::plug(&node, &client, "cl0", CLIENT, offloads);
        let mut members = Vec::new();
        for (i, &a) in addrs.iter().enumerate() {
            let ns = Netns::new("m");
            Self::plug(&node, &ns, &format!("mb{i}"), a, offloads);
            let server = Server::start_with(&ns.name, a, 22, echo);
            members.push(Member {
                ns,
                addr: a,
                server,
            });
        }
        SeedTopology {
            node,
            client,
            members,
        }
    }

    fn plug(node: &Netns, host: &Netns, node_side: &str, addr: Ipv4Addr, offloads: bool) {
        node.ip(&format!(
            "link add {node_side} type veth peer name eth0 netns {}",
            host.name
        ));
        node.ip(&format!("link set {node_side} master br-int up"));
        host.ip("link set eth0 up");
        host.ip(&format!("addr add {addr}/24 dev eth0"));
        if !offloads {
            offloads_off(host, "eth0");
        }
    }

    /// IPv6 beside IPv4: the client and every member get `v6_of` their address on eth0
    /// (`nodad`: usable at once).
    pub fn add_ipv6(&self) {
        for (ns, a) in std::iter::once((&self.client, CLIENT))
            .chain(self.members.iter().map(|m| (&m.ns, m.addr)))
        {
            ns.ip(&format!("-6 addr add {}/64 dev eth0 nodad", v6_of(a)));
        }
    }

    pub fn member(&mut self, addr: Ipv4Addr) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.addr == addr)
            .expect("member")
    }
}

/// One client connection through the VIP: the stream and the member's greeting.
pub struct Conn {
    pub stream: TcpStream,
    pub greeting: String,
}

impl Conn {
    /// Sends `msg` and reads it back from the (echoing) member.
    pub fn echo(&mut self, msg: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        self.stream.read_exact(&mut back)?;
        if back != msg {
            return Err(std::io::Error::other("echo differs"));
        }
        Ok(())
    }

    /// The member address the greeting names.
    pub fn member(&self) -> Ipv4Addr {
        match self.member_ip() {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => panic!("an IPv6 member: {a}"),
        }
    }

    /// The member's address, either family, as its greeting names it.
    pub fn member_ip(&self) -> IpAddr {
        self.greeting
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("greeting names a member")
    }
}

/// Connects from the client namespace to `vip:port` and reads the member's greeting.
pub fn connect(client_ns: &str, vip: impl Into<IpAddr>, port: u16) -> std::io::Result<Conn> {
    let vip: IpAddr = vip.into();
    in_netns(client_ns, || -> std::io::Result<Conn> {
        let stream =
            TcpStream::connect_timeout(&SocketAddr::new(vip, port), Duration::from_secs(4))?;
        stream.set_read_timeout(Some(Duration::from_secs(4)))?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no greeting",
            ));
        }
        Ok(Conn {
            stream,
            greeting: line,
        })
    })
    .map_err(std::io::Error::other)?
}

/// `lb run` in the node namespace (through nsenter: the daemon's own namespace is the node's,
/// while the bpffs and /run stay the host's, so `lb stats` can read them from anywhere).
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(bin: &Path, node_ns: &str, config: &Path, extra: &[&str]) -> Daemon {
        Self::start_with_env(bin, node_ns, config, extra, &[])
    }

    /// As `start`, with environment variables (e.g. `LB_BPF_OBJECT`).
    pub fn start_with_env(
        bin: &Path,
        node_ns: &str,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let log = std::env::temp_dir().join(format!("{}.log", unique("lbd")));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{node_ns}"))
            .arg(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn lb run");
        Daemon {
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` (e.g. SIGHUP to reload).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
    }

    /// SIGKILL: the daemon gets no chance to clean up (a crash, an OOM kill).
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (SIGKILL after 15 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a namespace the daemon should have removed, and a bpffs directory, whatever
/// happened in the test.
pub struct Leftovers {
    pub namespaces: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            if lb::node::netns_exists(ns) {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Member `addr` of the first load balancer in an `lb stats --json` report.
pub fn member(stats: &serde_json::Value, addr: impl std::fmt::Display) -> &serde_json::Value {
    let addr = addr.to_string();
    stats[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == addr)
        .expect("member in stats")
}

/// `lb stats --json`.
pub fn stats(bin: &Path, state_dir: &Path) -> serde_json::Value {
    let out = Command::new(bin)
        .args(["stats", "--json", "--state-dir"])
        .arg(state_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("lb stats");
    assert!(out.status.success(), "lb stats failed");
    serde_json::from_slice(&out.stdout).expect("lb stats --json output")
}

/// The seed's config with a unique id, port name, pin and state directories.
pub struct TestConfig {
    pub lb_id: String,
    pub port: String,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub path: PathBuf,
}

impl TestConfig {
    pub fn seed(edit: impl Fn(String) -> String) -> TestConfig {
        let tag = unique("");
        let n: u32 = tag
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let lb_id = format!("{:08x}-0000-4000-8000-{:012x}", n, std::process::id());
        let port = format!("tap{:08x}-{:02x}", n, n % 251);
        let bpffs = PathBuf::from("/sys/fs/bpf").join(&tag);
        let state_dir = std::env::temp_dir().join(format!("{tag}-state"));
        let text = include_str!("../../examples/seed.toml")
            .replace("574a31da-a28a-449f-8c9d-3d3687c3c02a", &lb_id)
            .replace("tapfb358342-59", &port);
        let text = format!(
            "[daemon]\nbpffs = \"{}\"\nstate_dir = \"{}\"\nconntrack_flows = 4096\n\n{}",
            bpffs.display(),
            state_dir.display(),
            edit(text)
        );
        let path = std::env::temp_dir().join(format!("{tag}.toml"));
        std::fs::write(&path, text).unwrap();
        TestConfig {
            lb_id,
            port,
            bpffs,
            state_dir,
            path,
        }
    }

    pub fn namespace(&self) -> String {
        format!("qlbaas-{}", self.lb_id)
    }

    pub fn leftovers(&self) -> Leftovers {
        Leftovers {
            namespaces: vec![self.namespace()],
            dirs: vec![self.bpffs.clone(), self.state_dir.clone()],
        }
    }
}

/// Path of the `lb` binary: `cargo xtask test` builds it and sets LB_BIN.
pub fn lb_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LB_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lb");
    assert!(
        p.exists(),
        "no lb binary: run the tests through `cargo xtask test` (or set LB_BIN)"
    );
    p
}

/// Waits until this daemon has published its state file as running (it is up and attached).
pub fn wait_running(daemon: &mut Daemon, cfg: &TestConfig) {
    let start = Instant::now();
    let pid = daemon.pid();
    let running = lb::state::Phase::Running;
    while lb::state::State::read(&cfg.state_dir, &cfg.lb_id).map(|s| (s.pid, s.phase))
        != pid.map(|p| (p, running))
    {
        if let Some(s) = daemon.exited() {
            panic!(
                "lb run exited ({s}) before it was up:\n{}",
                daemon.log_text()
            );
        }
        // (Loading and verifying the programs takes a second here, 10-20 s under the VM
        // test's software emulation with another test loading beside it.)
        if start.elapsed() > Duration::from_secs(60) {
            panic!("lb run not up after 60 s:\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One end-to-end test's world: its config, its topology, the `lb` binary, and the clean-up of
/// whatever `lb` may leave (dropped last).
pub struct Setup {
    pub cfg: TestConfig,
    pub topo: SeedTopology,
    pub bin: PathBuf,
    _left: Leftovers,
}

impl Setup {
    /// The seed's config edited by `edit`, and a topology with `members`. None (reported as
    /// a skip, `skip::skip`) when not root.
    pub fn new(edit: impl Fn(String) -> String, members: &[Ipv4Addr]) -> Option<Setup> {
        if !crate::require_root() {
            return None;
        }
        let cfg = TestConfig::seed(edit);
        let _left = cfg.leftovers();
        let topo = SeedTopology::new(members);
        Some(Setup {
            cfg,
            topo,
            bin: lb_bin(),
            _left,
        })
    }

    /// IPv6 on the client and the members (`SeedTopology::add_ipv6`), and a greeting
    /// server on each member's IPv6 address, port 22 (the config of `as_ipv6`).
    pub fn serve_ipv6(&self) -> Vec<Server> {
        self.topo.add_ipv6();
        self.topo
            .members
            .iter()
            .map(|m| Server::start(&m.ns.name, v6_of(m.addr), 22))
            .collect()
    }

    /// Waits (15 s at most) until every member of the (one) load balancer is ONLINE: its
    /// monitor reached it, so its neighbour entry is resolved.
    pub fn wait_online(&self) {
        crate::wait_for("members ONLINE", Duration::from_secs(15), || {
            let s = stats(&self.bin, &self.cfg.state_dir);
            s[0]["members"]
                .as_array()?
                .iter()
                .all(|m| m["operating_status"] == "ONLINE")
                .then_some(())
        });
    }

    /// `lb run` in the node namespace with `args`, up and attached.
    pub fn start(&self, args: &[&str]) -> Daemon {
        let mut d = Daemon::start(&self.bin, &self.topo.node.name, &self.cfg.path, args);
        wait_running(&mut d, &self.cfg);
        d
    }
}
