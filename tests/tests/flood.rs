//! TCP admission end to end: real clients through SYN cookies, and a spoofed SYN flood
//! (hping3 from the client namespace, random sources) while a real client keeps connecting
//! and an established session keeps talking. `cargo xtask test` runs the flood for 10 s;
//! `cargo xtask flood` for 60 s (LB_FLOOD_SECONDS).

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{topology::*, wait_for, with_half_open_limit};
use serde_json::Value;

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

fn listener(s: &Value, field: &str) -> i64 {
    s[0]["listeners"][0][field].as_i64().unwrap()
}

fn verdict(s: &Value, name: &str) -> u64 {
    s[0]["verdicts"][name].as_u64().unwrap_or(0)
}

/// Real TCP stacks on both sides of a cookie connection: with `half_open_limit = 0` every
/// SYN is answered by lb itself; connections open, carry data both ways (more than one
/// window's worth), spread over both members, and are counted once established.
fn every_connection_by_cookie(mode: &str) {
    let Some(setup) = Setup::new(|t| with_half_open_limit(&t, 0), &[M1, M2]) else {
        return;
    };
    let mut daemon = setup.start(&["--xdp-mode", mode]);
    let Setup { cfg, topo, bin, .. } = &setup;
    // The monitors' first checks resolve the members' MACs; a cookie ACK that comes before
    // gets a RST (no SYN of the client's would come again to retry), which is for
    // tx_cookie_reset's own test, not this one.
    wait_for(
        "members' neighbours resolved",
        Duration::from_secs(10),
        || {
            let out = std::process::Command::new("ip")
                .args(["-n", &cfg.namespace(), "neigh", "show"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            [M1, M2]
                .iter()
                .all(|m| {
                    text.lines()
                        .any(|l| l.starts_with(&format!("{m} ")) && l.contains("lladdr"))
                })
                .then_some(())
        },
    );
    let mut conns = Vec::new();
    for i in 0..6 {
        let c = connect(&topo.client.name, VIP, 22).unwrap_or_else(|e| {
            panic!(
                "{mode}: connection {i} through a cookie: {e}\n{}",
                daemon.log_text()
            )
        });
        conns.push(c);
    }
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for c in &mut conns {
        c.echo(b"hello through a cookie\n").expect("echo");
        c.echo(&big).expect("200 kB each way");
    }
    let on_m1 = conns.iter().filter(|c| c.member() == M1).count();
    assert_eq!(
        on_m1, 3,
        "{mode}: least connections over cookie connections"
    );
    let s = stats(bin, &cfg.state_dir);
    assert_eq!(listener(&s, "active_connections"), 6);
    assert_eq!(listener(&s, "half_open_connections"), 0);
    assert!(verdict(&s, "tx_syncookie") >= 6, "{s}");
    assert!(verdict(&s, "tx_cookie_to_member") >= 12, "{s}");
    drop(conns);
    wait_for("cookie connections closed", Duration::from_secs(10), || {
        (listener(&stats(bin, &cfg.state_dir), "active_connections") == 0).then_some(())
    });
    daemon.stop();
}

#[test]
fn every_connection_by_cookie_tc() {
    every_connection_by_cookie("auto");
}

#[test]
fn every_connection_by_cookie_native_xdp() {
    every_connection_by_cookie("native");
}

/// hping3 in the client namespace, killed when dropped.
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Summed (run time ns, runs) of the loaded programs named `name` (kernel.bpf_stats_enabled).
fn prog_stats(name: &str) -> (u64, u64) {
    let mut t = (0, 0);
    // The load balancers' stubs (`lb_tc.<slot>`): the kernel counts a program's run, tail
    // calls into the shared programs included, under the program attached.
    let stub = format!("{name}.");
    for p in aya::programs::loaded_programs().flatten() {
        if p.name_as_str().is_some_and(|n| n.starts_with(&stub)) {
            t.0 += p.run_time().as_nanos() as u64;
            t.1 += p.run_count();
        }
    }
    t
}

/// Puts kernel.bpf_stats_enabled back as it was.
struct BpfStats(String);

impl BpfStats {
    fn on() -> BpfStats {
        let p = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(p).unwrap_or_else(|_| "0".into());
        let _ = std::fs::write(p, "1");
        BpfStats(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// One flood at a time: the IPv4 test's SYN rate is the run count of every program named
/// `lb_tc`, which the IPv6 load balancer's (entered by every IPv6 frame) would add to.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn spoofed_syn_flood_leaves_real_clients_and_counts_alone() {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    if Command::new("hping3").arg("--version").output().is_err() {
        integration_tests::skip::skip("no hping3 (Debian package hping3)");
        return;
    }
    // LB_FLOOD_RATE: hping3's interval option (e.g. u100 for 10k/s); default "flood"
    // (hping3 --flood: as fast as the client namespace can send).
    let interval = std::env::var("LB_FLOOD_RATE").unwrap_or_else(|_| "flood".into());
    let Some(setup) = Setup::new(knob_half_open_limit(|t| t), &[M1, M2]) else {
        return;
    };
    let mut daemon = setup.start(&[]);
    let Setup { cfg, topo, bin, .. } = &setup;
    let client = topo.client.name.clone();

    // An established session from before the flood.
    let mut session = connect(&client, VIP, 22).expect("session before the flood");
    let _bpf_stats = BpfStats::on();
    let before = stats(bin, &cfg.state_dir);
    let prog_before = prog_stats("lb_tc");

    let flood = Flood(
        Command::new("ip")
            .args(["netns", "exec", &client, "hping3", "-S", "-p", "22"])
            .args(if interval == "flood" {
                vec!["--flood".to_string()]
            } else {
                vec!["-i".to_string(), interval.clone()]
            })
            .args(["--rand-source", "-q", "10.0.0.250"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("hping3"),
    );
    let client_be = u32::from(CLIENT).to_be();
    let real = real_clients_under_flood(&setup, VIP.into(), &mut session, |maps| {
        maps.flows()
            .iter()
            .filter(|(k, f)| k.dir == lb_common::FLOW_DIR_FORWARD && f.client_be != client_be)
            .count()
    });
    let prog_after = prog_stats("lb_tc");
    drop(flood);
    let after = stats(bin, &cfg.state_dir);
    let took = real.took;
    let cookies = verdict(&after, "tx_syncookie") - verdict(&before, "tx_syncookie");
    // Packets lb's program ran on, nearly all of them the flood's SYNs.
    let syn_rate = (prog_after.1 - prog_before.1) as f64 / took;
    let (ns, runs) = (prog_after.0 - prog_before.0, prog_after.1 - prog_before.1);
    let ns_per_packet = ns as f64 / runs.max(1) as f64;
    println!(
        "FLOOD seconds={took:.1} syn_per_s={syn_rate:.0} cookies={cookies} {} \
         lb_tc_runs={runs} lb_tc_ns_per_packet={ns_per_packet:.0} lb_tc_cpu_share={:.3}",
        real.summary(),
        ns as f64 / 1e9 / took,
    );
    assert!(
        syn_rate >= 3000.0,
        "the flood reached {syn_rate:.0} SYN/s, below the 3000/s it must be tested at"
    );
    // With cookies (every run but the comparison without them), the flood's SYNs are
    // answered with cookies: at least half of what lb's program ran on.
    if std::env::var("LB_FLOOD_HALF_OPEN_LIMIT").as_deref() != Ok("-1") {
        assert!(
            cookies as f64 >= runs as f64 / 2.0,
            "{cookies} cookies for {runs} packets lb_tc ran on, nearly all of them the \
             flood's SYNs"
        );
    }
    real.assert_unharmed(&daemon);
    session.echo(b"after\n").expect("session after the flood");
    drop(session);
    daemon.stop();
}

/// `LB_FLOOD_HALF_OPEN_LIMIT` (-1: the same flood without cookies, to compare) over the
/// test's own config edit `edit`.
fn knob_half_open_limit(edit: fn(String) -> String) -> impl Fn(String) -> String {
    let limit = std::env::var("LB_FLOOD_HALF_OPEN_LIMIT").ok();
    move |t: String| match &limit {
        Some(l) => with_half_open_limit(&edit(t), l),
        None => edit(t),
    }
}

/// What the real clients saw while a flood ran.
struct RealClients {
    took: f64,
    ok: u64,
    failed: u64,
    failures: Vec<String>,
    session_echoes: u64,
    max_active: i64,
    spoofed_late: usize,
    /// The most flows the daemon's sweeps counted in the table.
    max_flows: u64,
}

/// For `LB_FLOOD_SECONDS` (10 by default): real connections to `vip`:22 one after another,
/// each echoing; every 500 ms the established `session` echoes, the listener's active count
/// is sampled, and after 7 s the forward flows of spoofed sources are counted (`spoofed`):
/// the handshakes the flood made before cookie mode began end with their connect timeout
/// (5 s); past it, no spoofed source may hold a flow or a SNAT port.
fn real_clients_under_flood(
    setup: &Setup,
    vip: std::net::IpAddr,
    session: &mut Conn,
    spoofed: impl Fn(&lb::dataplane::Maps) -> usize,
) -> RealClients {
    let seconds: u64 = std::env::var("LB_FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let Setup { cfg, topo, bin, .. } = setup;
    let pin = cfg.bpffs.join(&cfg.lb_id);
    let start = Instant::now();
    let mut r = RealClients {
        took: 0.0,
        ok: 0,
        failed: 0,
        failures: Vec::new(),
        session_echoes: 0,
        max_active: 0,
        spoofed_late: 0,
        max_flows: 0,
    };
    let mut last_sample = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        match connect(&topo.client.name, vip, 22).and_then(|mut c| c.echo(b"real\n")) {
            Ok(()) => r.ok += 1,
            Err(e) => {
                r.failed += 1;
                r.failures.push(format!("{:?}: {e}", start.elapsed()));
            }
        }
        if last_sample.elapsed() >= Duration::from_millis(500) {
            last_sample = Instant::now();
            session
                .echo(b"still here\n")
                .unwrap_or_else(|e| panic!("the established session broke: {e}"));
            r.session_echoes += 1;
            let s = stats(bin, &cfg.state_dir);
            r.max_active = r.max_active.max(listener(&s, "active_connections"));
            if let Ok(maps) = lb::dataplane::Maps::open(&pin) {
                r.max_flows = r.max_flows.max(maps.last_sweep().map_or(0, |w| w.flows));
            }
            if start.elapsed() > Duration::from_secs(7) {
                let maps = lb::dataplane::Maps::open(&pin).expect("pinned maps");
                r.spoofed_late = r.spoofed_late.max(spoofed(&maps));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    r.took = start.elapsed().as_secs_f64();
    r
}

impl RealClients {
    fn success(&self) -> f64 {
        self.ok as f64 / (self.ok + self.failed).max(1) as f64
    }

    /// The FLOOD line's fields about the real clients.
    fn summary(&self) -> String {
        format!(
            "real_ok={} real_failed={} success={:.4} session_echoes={} \
             max_listener_active={} spoofed_flows_after_7s={} table_peak_flows={}",
            self.ok,
            self.failed,
            self.success(),
            self.session_echoes,
            self.max_active,
            self.spoofed_late,
            self.max_flows
        )
    }

    /// 99% of the real connections succeeded (in the VM, where software emulation makes
    /// about 85 in 10 s, all but one: 99% of 85 would allow none), at most the session and
    /// one real connection were open at once, and no spoofed source held a flow late.
    fn assert_unharmed(&self, daemon: &Daemon) {
        let vm = std::env::var_os("LB_VM_TEST").is_some();
        assert!(
            self.success() >= 0.99 || (vm && self.failed <= 1),
            "{} of {} real connections succeeded: {:?}\n{}",
            self.ok,
            self.ok + self.failed,
            self.failures,
            daemon.log_text()
        );
        assert!(
            self.max_active <= 2,
            "active_connections reached {} under the flood",
            self.max_active
        );
        assert_eq!(
            self.spoofed_late, 0,
            "spoofed sources held flows (SNAT ports)"
        );
    }
}

/// Frames written to an AF_PACKET socket on eth0 of namespace `ns` until `stop`, or until
/// `next` has no more: `next` gets a xorshift state, new for every call, and returns the
/// frames to send (a spoofed source per call). Returns how many frames were sent.
fn raw_flood(
    ns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut next: impl FnMut(u64) -> Option<Vec<Vec<u8>>> + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        lb::node::enter(&ns).expect("enter the client's namespace");
        let ifindex = nix::net::if_::if_nametoindex("eth0").expect("eth0") as i32;
        // SAFETY: a raw packet socket bound to eth0 (protocol 0: it receives nothing);
        // frames are whole Ethernet frames.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex;
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let Some(frames) = next(x) else { break };
            for f in frames {
                let n = unsafe { libc::send(fd, f.as_ptr() as *const _, f.len(), 0) };
                if n == f.len() as isize {
                    sent += 1;
                }
            }
        }
        unsafe { libc::close(fd) };
        sent
    })
}

/// Spoofed IPv6 SYNs from the client namespace (hping3 has no IPv6): a new source in
/// 2001:db8:ffff::/64 and port for every SYN, each with the extension headers `ext`.
fn ipv6_flood(
    ns: String,
    macs: ([u8; 6], [u8; 6]),
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ext: Vec<(u8, Vec<u8>)>,
) -> std::thread::JoinHandle<u64> {
    use integration_tests::{L4v6, TCP_SYN, VIP6};
    raw_flood(ns, stop, move |x| {
        let mut a = [0u8; 16];
        a[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff]);
        a[8..].copy_from_slice(&x.to_be_bytes());
        let port = 1024 + (x >> 48) as u16 % 60000;
        let mut f = L4v6::tcp(a.into(), port, VIP6, 22, TCP_SYN).macs(macs.0, macs.1);
        f.ext = ext.clone();
        Some(vec![f.build()])
    })
}

/// The MAC of `dev` in namespace `ns`, or of its neighbour `addr` (`ip -j`).
fn mac_of_link(ns: &str, args: &[&str]) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-j"])
        .args(args)
        .output()
        .expect("ip");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let s = v[0]["address"]
        .as_str()
        .or_else(|| v[0]["lladdr"].as_str())
        .unwrap_or_else(|| panic!("no MAC in {v}"));
    let b: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// The same promise for an IPv6 listener: under a spoofed IPv6 SYN flood (random sources, so
/// every SYN is a new tuple) real clients keep connecting through the IPv6 VIP, an
/// established session keeps talking, the flood's SYNs are answered with cookies by
/// `lb6_cookie`, and once the handshakes it made before cookie mode began have expired no
/// spoofed source holds a flow.
#[test]
fn spoofed_ipv6_syn_flood_leaves_real_clients_alone() {
    ipv6_syn_flood(
        knob_half_open_limit(as_ipv6),
        Vec::new(),
        "tx_syncookie",
        "FLOOD6",
    );
}

/// A spoofed IPv6 SYN flood (random sources, each SYN with the extension headers `ext`) while
/// real clients connect through the IPv6 VIP and an established session talks: at least
/// half the spoofed SYNs are counted under `counter` (answered with cookies by `lb6_cookie`,
/// or dropped), the real clients are unharmed (`RealClients::assert_unharmed`), the session
/// carries on, and nothing is left open once it closes. Prints a `label` line.
fn ipv6_syn_flood(
    edit: impl Fn(String) -> String,
    ext: Vec<(u8, Vec<u8>)>,
    counter: &str,
    label: &str,
) {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    use integration_tests::{CLIENT6, VIP6};
    let Some(setup) = Setup::new(edit, &[M1, M2]) else {
        return;
    };
    let _servers = setup.serve_ipv6();
    let mut daemon = setup.start(&[]);
    setup.wait_online();
    let Setup { cfg, topo, bin, .. } = &setup;
    let client = topo.client.name.clone();
    let mut session = connect(&client, VIP6, 22).expect("session before the flood");
    let macs = (
        mac_of_link(&client, &["link", "show", "eth0"]),
        mac_of_link(&client, &["-6", "neigh", "show", &VIP6.to_string()]),
    );
    let before = stats(bin, &cfg.state_dir);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = ipv6_flood(client.clone(), macs, stop.clone(), ext);
    let client6 = lb_common::ip6(CLIENT6.octets());
    let real = real_clients_under_flood(&setup, VIP6.into(), &mut session, |maps| {
        maps.flows6()
            .iter()
            .filter(|(k, f)| k.dir == lb_common::FLOW_DIR_FORWARD && f.client_be != client6)
            .count()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().expect("the flood's thread");
    let after = stats(bin, &cfg.state_dir);
    let counted = verdict(&after, counter) - verdict(&before, counter);
    let rate = sent as f64 / real.took;
    println!(
        "{label} seconds={:.1} syn_per_s={rate:.0} {counter}={counted} {}",
        real.took,
        real.summary()
    );
    assert!(
        rate >= 3000.0,
        "the flood reached {rate:.0} SYN/s, below the 3000/s it must be tested at"
    );
    assert!(
        counted as f64 >= sent as f64 / 2.0,
        "{counted} {counter} for {sent} spoofed SYNs"
    );
    real.assert_unharmed(&daemon);
    session.echo(b"after\n").expect("session after the flood");
    drop(session);
    wait_for("nothing open", Duration::from_secs(10), || {
        (listener(&stats(bin, &cfg.state_dir), "active_connections") == 0).then_some(())
    });
    daemon.stop();
}

/// The floods that walked around the cookies, end to end (spoofed frames written from the
/// client namespace), each while a real client keeps connecting and an established session
/// keeps talking.
#[derive(Clone, Copy, Debug)]
enum Variant {
    /// A SYN from a random source with its own ISN, then a RST at ISN+1.
    SynRstPairs,
    /// SYNs from random sources, each with one IPv4 option word (NOPs).
    IpOptions,
    /// A blind RST sweep of the established session's tuple: a RST every 16381 sequence
    /// numbers over the whole space, so several land in its window.
    RstSweep,
    /// Datagrams from random sources and ports at a UDP listener (port 53) of the same load
    /// balancer, whose TCP listener the real client uses.
    Udp,
}

/// Whether a flood variant runs here: on the host, not in the VM, whose software emulation
/// sends a few thousand spoofed frames a second (a declared skip there, see xtask's vm.rs).
fn host_flood() -> bool {
    if std::env::var_os("LB_VM_TEST").is_some() {
        integration_tests::skip::skip(
            "host only: the VM's emulation sends too few spoofed frames (the fixtures cover \
             both kernels)",
        );
        return false;
    }
    true
}

/// `flows`: the load balancer's `conntrack_flows` (None: the tests' 4096).
fn flood_variant(variant: Variant, flows: Option<u32>) {
    use integration_tests::{Tcp, TCP_RST, TCP_SYN};
    if !host_flood() {
        return;
    }
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let table = move |t: String| {
        let t = match variant {
            // (Nothing answers there: every spoofed datagram is a flow nobody answers.)
            Variant::Udp => integration_tests::with_udp_listener(&t, ""),
            _ => t,
        };
        match flows {
            Some(n) => t.replacen(
                "\nvip_prefixlen = 24",
                &format!("\nvip_prefixlen = 24\nconntrack_flows = {n}"),
                1,
            ),
            None => t,
        }
    };
    let Some(setup) = Setup::new(table, &[M1, M2]) else {
        return;
    };
    let mut daemon = setup.start(&[]);
    if !matches!(variant, Variant::Udp) {
        // (The UDP pool has no monitor: its members are never ONLINE.)
        setup.wait_online();
    }
    let Setup { cfg, topo, bin, .. } = &setup;
    let client = topo.client.name.clone();
    let mut session = connect(&client, VIP, 22).expect("session before the flood");
    let session_port = session.stream.local_addr().unwrap().port();
    let macs = (
        mac_of_link(&client, &["link", "show", "eth0"]),
        mac_of_link(&client, &["neigh", "show", &VIP.to_string()]),
    );
    let before = stats(bin, &cfg.state_dir);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Spoofed sources in 198.18.0.0/15 (RFC 2544's benchmarking range).
    let spoofed = |x: u64| Ipv4Addr::from(0xc612_0000 | (x as u32 & 0x1_ffff));
    let mut swept = 0u64;
    let flood = raw_flood(client.clone(), stop.clone(), move |x| {
        let port = 1024 + (x >> 48) as u16 % 60000;
        let isn = (x >> 16) as u32;
        let frames = match variant {
            Variant::SynRstPairs => {
                let mut syn = Tcp::new(spoofed(x), port, VIP, 22, TCP_SYN).macs(macs.0, macs.1);
                syn.seq = isn;
                let mut rst = Tcp::new(spoofed(x), port, VIP, 22, TCP_RST).macs(macs.0, macs.1);
                rst.seq = isn.wrapping_add(1);
                vec![syn.build(), rst.build()]
            }
            Variant::IpOptions => {
                let mut syn = Tcp::new(spoofed(x), port, VIP, 22, TCP_SYN).macs(macs.0, macs.1);
                syn.ip_options = vec![1, 1, 1, 0];
                vec![syn.build()]
            }
            Variant::RstSweep => {
                if swept > u32::MAX as u64 {
                    return None;
                }
                let mut rst = Tcp::new(CLIENT, session_port, VIP, 22, TCP_RST).macs(macs.0, macs.1);
                rst.seq = swept as u32;
                swept += 16381;
                vec![rst.build()]
            }
            Variant::Udp => vec![integration_tests::Udp::new(spoofed(x), port, VIP, 53)
                .macs(macs.0, macs.1)
                .payload(b"spoofed query")
                .build()],
        };
        Some(frames)
    });
    let client_be = u32::from(CLIENT).to_be();
    let real = real_clients_under_flood(&setup, VIP.into(), &mut session, |maps| {
        // (TCP's: the UDP listener's unanswered flows are bounded below, not gone.)
        maps.flows()
            .iter()
            .filter(|(k, f)| {
                k.dir == lb_common::FLOW_DIR_FORWARD
                    && k.proto == lb_common::IPPROTO_TCP
                    && f.client_be != client_be
            })
            .count()
    });
    let udp_flows = stats(bin, &cfg.state_dir)[0]["listeners"][1]["active_connections"]
        .as_i64()
        .unwrap_or(0);
    if !matches!(variant, Variant::RstSweep) {
        // (The sweep ends by itself, once over the whole space: slower in the VM.)
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let sent = flood.join().expect("the flood's thread");
    let after = stats(bin, &cfg.state_dir);
    let delta = |name: &str| verdict(&after, name) - verdict(&before, name);
    println!(
        "FLOOD_VARIANT {variant:?} table={} seconds={:.1} frames={sent} frames_per_s={:.0} \
         cookies={} drop_syn_options={} drop_udp_rate={} drop_udp_limit={} udp_flows_at_end={udp_flows} \
         drop_ct_full={} {}",
        flows.map_or("default".to_string(), |n| n.to_string()),
        real.took,
        sent as f64 / real.took,
        delta("tx_syncookie"),
        delta("drop_syn_options"),
        delta("drop_udp_rate"),
        delta("drop_udp_limit"),
        delta("drop_ct_full"),
        real.summary()
    );
    let floor = match variant {
        Variant::RstSweep => 250_000, // every RST of the sweep
        _ => 3000 * real.took as u64,
    };
    assert!(sent >= floor, "{variant:?}: only {sent} frames sent");
    assert_eq!(delta("drop_ct_full"), 0, "{variant:?}: the table filled up");
    match variant {
        Variant::SynRstPairs => assert!(delta("tx_syncookie") > 0, "cookies turned on"),
        Variant::IpOptions => assert!(delta("drop_syn_options") > 0, "option SYNs dropped"),
        Variant::RstSweep => {}
        Variant::Udp => {
            // Its share: half the table (one UDP listener), reached at once in a small
            // table; in a big one the rate (20000 new flows a second) holds first.
            let share = flows.unwrap_or(4096) as i64 / 2;
            assert!(udp_flows <= share, "{udp_flows} UDP flows, share {share}");
            assert!(delta("drop_udp_limit") > 0, "the UDP listener's share held");
            if share > lb_common::DEFAULT_UDP_FLOW_RATE as i64 {
                assert!(delta("drop_udp_rate") > 0, "the UDP listener's rate held");
            }
        }
    }
    real.assert_unharmed(&daemon);
    session.echo(b"after\n").expect("session after the flood");
    // The counts are exact afterwards: the session, and nothing else once the real clients'
    // connections have closed.
    wait_for("only the session open", Duration::from_secs(10), || {
        (listener(&stats(bin, &cfg.state_dir), "active_connections") == 1).then_some(())
    });
    drop(session);
    wait_for("nothing open", Duration::from_secs(10), || {
        (listener(&stats(bin, &cfg.state_dir), "active_connections") == 0).then_some(())
    });
    daemon.stop();
}

#[test]
fn syn_rst_pairs_leave_real_clients_alone() {
    flood_variant(
        Variant::SynRstPairs,
        Some(lb_common::DEFAULT_CONNTRACK_FLOWS),
    );
}

#[test]
fn syn_rst_pairs_leave_real_clients_alone_in_a_small_table() {
    flood_variant(Variant::SynRstPairs, Some(16384));
}

#[test]
fn syns_with_ip_options_leave_real_clients_alone_in_a_small_table() {
    flood_variant(Variant::IpOptions, Some(16384));
}

#[test]
fn a_udp_flood_leaves_the_tcp_listener_alone() {
    flood_variant(Variant::Udp, None);
}

#[test]
fn a_udp_flood_leaves_the_tcp_listener_alone_in_the_default_table() {
    flood_variant(Variant::Udp, Some(lb_common::DEFAULT_CONNTRACK_FLOWS));
}

#[test]
fn a_blind_rst_sweep_closes_no_session() {
    flood_variant(Variant::RstSweep, None);
}

/// IPv6 SYNs with a destination-options header from random sources: in cookie mode they
/// are dropped (no cookie for them, no flow), so they do not cancel the defence.
#[test]
fn ipv6_syns_with_extension_headers_leave_real_clients_alone() {
    if !host_flood() {
        return;
    }
    let dest_options = vec![(60, vec![0, 0, 1, 4, 0, 0, 0, 0])];
    ipv6_syn_flood(
        as_ipv6,
        dest_options,
        "drop_syn_options",
        "FLOOD_VARIANT Ipv6DestOptions",
    );
}
