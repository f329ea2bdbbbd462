//! One program set for every load balancer of a node (lb-userspace/src/dataplane/programs.rs):
//! the programs are verified once, each load balancer is a slot with maps of its own, and no
//! key of one can ever match in another's maps, even for the same VIP and port. Fixtures
//! under BPF_PROG_TEST_RUN (through each load balancer's stub, as its port runs it).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::Agent,
    fixture::*,
    topology::{as_ipv6, connect, lb_bin, stats, Daemon, Leftovers, SeedTopology, Server, Setup},
    unique, wait_for, Netns, Tcp, TCP_ACK, TCP_SYN,
};
use lb_common::reason;

/// The seed's load balancer with only its second member (10.0.0.4).
fn seed_with_m2_only() -> String {
    let seed = include_str!("../../examples/seed.toml");
    let first = seed
        .find("[[loadbalancer.pool.member]]")
        .expect("the seed has members");
    let second = first
        + 1
        + seed[first + 1..]
            .find("[[loadbalancer.pool.member]]")
            .expect("two members");
    format!("{}{}", &seed[..first], &seed[second..])
}

/// Two load balancers with the same VIP and listener in one program set: the same client
/// tuple through each opens a flow in that one's table only, to its own members; replies
/// and counters stay with their own load balancer; taking one away leaves the other
/// serving, and the set goes with the last.
#[test]
fn two_load_balancers_with_one_vip_share_programs_not_state() {
    let Some(mut a) = Env::seed() else { return };
    let Some(mut b) = Env::new(&seed_with_m2_only()) else {
        return;
    };
    let (set_a, slot_a) = (a.dp.slot().0.to_string(), a.dp.slot().1);
    let (set_b, slot_b) = (b.dp.slot().0.to_string(), b.dp.slot().1);
    assert_eq!(set_a, set_b, "one program set for both");
    assert_ne!(slot_a, slot_b, "each its own slot");

    // The same tuple, SYN by SYN: B has only M2.
    let mut b_members = Vec::new();
    let mut a_members = Vec::new();
    for port in 41000..41006 {
        a_members.push(a.open(port).0);
        b_members.push(b.open(port).0);
    }
    assert!(b_members.iter().all(|m| *m == M2), "{b_members:?}");
    assert!(
        a_members.contains(&M1) && a_members.contains(&M2),
        "{a_members:?}"
    );
    assert_eq!(
        a.dp.maps.flows().len(),
        12,
        "A's six flows, two entries each"
    );
    assert_eq!(b.dp.maps.flows().len(), 12, "B's, in B's table");
    for port in 41000..41006 {
        let (fa, fb) = (a.flow(port).unwrap(), b.flow(port).unwrap());
        assert_eq!(fb.member_be, u32::from(M2).to_be());
        assert!(fa.listener == a.plan.listeners[0].index);
        assert!(fb.listener == b.plan.listeners[0].index);
    }
    // Counters: each its own six handshakes and six SYN verdicts.
    let half = |e: &Env| {
        e.dp.maps
            .listener_live
            .get(e.plan.listeners[0].index)
            .half_open
    };
    assert_eq!((half(&a), half(&b)), (6, 6));
    assert_eq!(a.verdicts()[reason::TX_TO_MEMBER as usize], 6);
    assert_eq!(b.verdicts()[reason::TX_TO_MEMBER as usize], 6);

    // A member's reply goes back only through the load balancer that holds its flow: B's
    // SNAT port for the tuple is B's; A has no such reverse entry unless it picked the same
    // member and port, which its own table decides.
    let fb = b.flow(41000).unwrap();
    let snat_b = u16::from_be(fb.snat_port_be);
    let mut synack = Tcp::new(M2, 22, VIP, snat_b, TCP_SYN | TCP_ACK).macs(M2_MAC, PORT_MAC);
    (synack.seq, synack.ack) = (7000, 1001);
    b.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
    assert!(b.flow(41000).unwrap().state & lb_common::CT_SYNACK != 0);
    let fa = a.flow(41000).unwrap();
    assert_eq!(
        fa.state & lb_common::CT_SYNACK,
        0,
        "B's member's answer is not A's flow's"
    );

    // A goes (its slot released, its pins removed): B serves on, in the same set.
    let pin_a = a.pin_dir().to_path_buf();
    drop(a);
    assert!(!pin_a.exists());
    let sets = pin_a.parent().unwrap().join("@programs").join(&set_b);
    assert!(sets.exists(), "the set stays while B is there");
    let syn = Tcp::new(CLIENT, 41100, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
    b.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
    drop(b);
    assert!(!sets.exists(), "the set goes with its last load balancer");
}

// End to end: real daemons, real TCP through the VIPs.

/// The program sets under a bpffs directory, and the load balancers (slots) of each.
fn program_sets(bpffs: &Path) -> Vec<(String, Vec<u32>)> {
    let Ok(entries) = std::fs::read_dir(bpffs.join("@programs")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| {
            let hash = e.file_name().to_string_lossy().into_owned();
            let set = lb::dataplane::programs::ProgramSet::open(&e.path(), &hash)
                .expect("a complete program set");
            let mut slots: Vec<u32> = set.owners().unwrap().into_keys().collect();
            slots.sort_unstable();
            (hash, slots)
        })
        .collect()
}

/// A host on `bridge` in the node namespace `node` at `addr`/24 (its own namespace).
fn host_on(node: &Netns, bridge: &str, tag: &str, addr: Ipv4Addr) -> Netns {
    let ns = Netns::new(tag);
    let side = format!("{tag}{}", addr.octets()[3]);
    node.ip(&format!(
        "link add {side} type veth peer name eth0 netns {}",
        ns.name
    ));
    node.ip(&format!("link set {side} master {bridge} up"));
    ns.ip("link set eth0 up");
    ns.ip(&format!("addr add {addr}/24 dev eth0"));
    ns
}

/// The config without its pools' health monitors.
fn without_monitor(config: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in config.lines() {
        if line.starts_with('[') {
            skipping = line.trim() == "[loadbalancer.pool.healthmonitor]";
        }
        if !skipping {
            out.push(line);
        }
    }
    out.join("\n") + "\n"
}

/// Two load balancers of one daemon, both VIP 10.0.0.250:22, on two bridges (two tenants'
/// networks with the same addresses): every connection from a network reaches that
/// network's members only, the members see the VIP, and both run in one program set.
#[test]
fn two_load_balancers_with_one_vip_on_two_bridges_serve_their_own_members() {
    let Some(s) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    // Network B: a bridge beside br-int, a client and two members at the same addresses.
    let node = &s.topo.node;
    node.ip("link add br-b type bridge");
    node.ip("link set br-b up");
    let client_b = host_on(node, "br-b", "cb", CLIENT);
    let members_b: Vec<(Netns, Server)> = [M1, M2]
        .into_iter()
        .map(|a| {
            let ns = host_on(node, "br-b", "mb", a);
            let server = Server::start(&ns.name, a, 22);
            (ns, server)
        })
        .collect();
    let lb_b = format!("{}-b", &s.cfg.lb_id[..30]);
    let port_b = format!("{}b", &s.cfg.port[..14]);
    // No monitors: their checks would connect to the members too (from the VIP), and each
    // member's server counts only the clients' connections here.
    let text = without_monitor(&std::fs::read_to_string(&s.cfg.path).unwrap());
    let seed = without_monitor(include_str!("../../examples/seed.toml"));
    let second = seed
        .replace("574a31da-a28a-449f-8c9d-3d3687c3c02a", &lb_b)
        .replace("tapfb358342-59", &port_b)
        .replace("bridge = \"br-int\"", "bridge = \"br-b\"")
        .replace("df25900f-53b1-4aab-8436-8411ec710445", "listener-b")
        .replace("45481748-3104-462c-ae4b-fae0f4b08c20", "member-b1")
        .replace("227b69fe-8685-4df6-b2a5-2f964c74886c", "member-b2");
    std::fs::write(&s.cfg.path, format!("{text}\n{second}")).unwrap();
    let _left_b = Leftovers {
        namespaces: vec![format!("qlbaas-{lb_b}")],
        dirs: vec![],
    };
    let mut d = s.start(&[]);
    wait_for("load balancer B up", Duration::from_secs(60), || {
        lb::state::State::read(&s.cfg.state_dir, &lb_b)
            .filter(|st| st.phase == lb::state::Phase::Running)
            .map(|_| ())
    });

    let count = |servers: &[&Server]| -> usize {
        servers.iter().map(|s| s.peers.lock().unwrap().len()).sum()
    };
    let a_servers: Vec<&Server> = s.topo.members.iter().map(|m| &m.server).collect();
    let b_servers: Vec<&Server> = members_b.iter().map(|(_, s)| s).collect();
    for i in 0..6 {
        let c = connect(&s.topo.client.name, VIP, 22).expect("connect from network A");
        drop(c);
        assert_eq!((count(&a_servers), count(&b_servers)), (i + 1, 0));
    }
    for i in 0..6 {
        let c = connect(&client_b.name, VIP, 22).expect("connect from network B");
        drop(c);
        assert_eq!((count(&a_servers), count(&b_servers)), (6, i + 1));
    }
    for srv in a_servers.iter().chain(&b_servers) {
        let peers = srv.peers.lock().unwrap();
        assert!(!peers.is_empty(), "least connections used both members");
        assert!(peers.iter().all(|p| p.ip() == std::net::IpAddr::from(VIP)));
    }
    // One program set, two slots; each load balancer its own maps.
    let sets = program_sets(&s.cfg.bpffs);
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].1.len(), 2, "{sets:?}");
    let st_a = lb::state::State::read(&s.cfg.state_dir, &s.cfg.lb_id).unwrap();
    let st_b = lb::state::State::read(&s.cfg.state_dir, &lb_b).unwrap();
    assert_eq!(st_a.program_set, st_b.program_set);
    assert_ne!(st_a.slot, st_b.slot);
    let stats = stats(&s.bin, &s.cfg.state_dir);
    for r in stats.as_array().unwrap() {
        let total: u64 = r["listeners"][0]["total_connections"].as_u64().unwrap();
        assert_eq!(total, 6, "{}", r["id"]);
    }

    d.stop();
    assert!(
        !s.cfg.bpffs.join("@programs").exists(),
        "the program set goes with the daemon's last load balancer"
    );
}

/// SIGTERM while `lb run` loads the programs of a node's first load balancer (an IPv6 one:
/// both families' programs are verified): the load stops, the process exits within a
/// second, and nothing is left: no namespace, pins, program set, state or lock.
#[test]
fn sigterm_during_a_start_ends_it_and_leaves_nothing() {
    let Some(s) = Setup::new(as_ipv6, &[M1, M2]) else {
        return;
    };
    let _v6 = s.serve_ipv6();
    let mut d = Daemon::start(&s.bin, &s.topo.node.name, &s.cfg.path, &[]);
    wait_for(
        "the programs' load to start",
        Duration::from_secs(30),
        || {
            d.log_text()
                .contains("loading and verifying the data path")
                .then_some(())
        },
    );
    let sent = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = wait_for("lb run to exit", Duration::from_secs(30), || d.exited());
    let took = sent.elapsed();
    let log = d.log_text();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("SIGTERM during the start: stopped"),
        "the SIGTERM came during the load:\n{log}"
    );
    eprintln!("SIGTERM during the start: exited {took:?} after the signal");
    // That the signal stopped the verification, not its end, is the log line above; how
    // soon is printed (the wait bounds only a takeover that ignored the signal).
    assert!(
        !lb::node::netns_exists(&s.cfg.namespace()),
        "namespace left"
    );
    let pins: Vec<PathBuf> = std::fs::read_dir(&s.cfg.bpffs)
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "pins left: {pins:?}");
    let state: Vec<PathBuf> = std::fs::read_dir(&s.cfg.state_dir)
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(state.is_empty(), "state left: {state:?}");
    // The next command finds nothing of it either.
    let out = std::process::Command::new(&s.bin)
        .args(["stats", "--json", "--state-dir"])
        .arg(&s.cfg.state_dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// The seed's config as the v1 driver writes it, for the load balancer of `agent` at
/// `vip`, members weighted `weights`.
fn seed_conf(agent: &Agent, vip: Ipv4Addr, weights: (u16, u16)) -> String {
    format!(
        "global
        daemon
        user nobody
        group nogroup
        log /dev/log local0
        log /dev/log local1 notice
        stats socket {sock} mode 0666 level user
defaults
        log global
        retries 3
        option redispatch
        timeout connect 5000
        timeout client 50000
        timeout server 50000
frontend listener-{id}
        option tcplog
        bind {vip}:22
        mode tcp
        default_backend {id}
backend {id}
        mode tcp
        balance leastconn
        server m1-{id} 10.0.0.2:22 weight {w1}
        server m2-{id} 10.0.0.4:22 weight {w2}
",
        sock = agent.sock().display(),
        id = agent.id,
        w1 = weights.0,
        w2 = weights.1,
    )
}

/// The agent's undeploy (`kill -9`, unplug, namespace deleted), and the moment its process
/// is gone.
fn undeploy(a: &mut Agent) {
    let pids = a.pids();
    a.undeploy();
    wait_for("the killed lb to be gone", Duration::from_secs(10), || {
        pids.iter()
            .all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
                    s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
                })
            })
            .then_some(())
    });
}

/// Twenty load balancers on one node through the drop-in, as the agent drives haproxy:
/// deployed one after another (the node's first verifies the programs, the others only
/// make their maps), each serving through its own VIP, each updated with `-sf`, one
/// undeployed (`kill -9`, its namespace deleted) while the others serve on, then the rest;
/// one program set for all, gone with the last.
#[test]
fn twenty_load_balancers_through_the_drop_in_start_serve_update_and_stop_alone() {
    if !integration_tests::require_root() {
        return;
    }
    // In the VM (software emulation, two kernels in CI's budget) 8: what is the kernel's own,
    // a stub per port tail-calling into one set from many slots, is the same for each.
    let n: u8 = if std::env::var_os("LB_VM_TEST").is_some() {
        eprintln!("VM: 8 load balancers (the host runs 20)");
        8
    } else {
        20
    };
    const GONE: usize = 5;
    let topo = SeedTopology::new(&[M1, M2]);
    let tag = unique("twenty");
    let state_dir = std::env::temp_dir().join(format!("{tag}-state"));
    let bpffs = PathBuf::from("/sys/fs/bpf").join(&tag);
    let _left = Leftovers {
        namespaces: vec![],
        dirs: vec![state_dir.clone(), bpffs.clone()],
    };
    let vip = |i: u8| Ipv4Addr::new(10, 0, 0, 100 + i);
    let mut agents: Vec<Agent> = (0..n)
        .map(|_| Agent::on_node(&topo, &lb_bin(), &state_dir, &bpffs))
        .collect();
    let started = Instant::now();
    for (i, a) in agents.iter_mut().enumerate() {
        a.plug(vip(i as u8));
        let out = a.spawn(&seed_conf(a, vip(i as u8), (1, 1)));
        assert!(
            out.status.success(),
            "deploy {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "SCALE {n} load balancers deployed in {:?}",
        started.elapsed()
    );
    let serves = |i: u8| {
        let c = connect(&topo.client.name, vip(i), 22)
            .unwrap_or_else(|e| panic!("load balancer {i} ({}): {e}", vip(i)));
        let m = c.member();
        drop(c);
        let peers = topo.members.iter().find(|x| x.addr == m).unwrap();
        let seen = peers.server.peers.lock().unwrap().last().unwrap().ip();
        assert_eq!(
            seen,
            std::net::IpAddr::from(vip(i)),
            "its member sees its VIP"
        );
    };
    for i in 0..n {
        serves(i);
    }
    let sets = program_sets(&bpffs);
    assert_eq!(sets.len(), 1, "one program set: {sets:?}");
    assert_eq!(sets[0].1.len(), n as usize, "a slot each: {sets:?}");

    // Each updated with -sf: a new process takes over, the old exits, it serves on.
    let started = Instant::now();
    for (i, a) in agents.iter_mut().enumerate() {
        let old = a.pids();
        let out = a.spawn(&seed_conf(a, vip(i as u8), (2, 1)));
        assert!(
            out.status.success(),
            "update {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(a.pids(), old);
    }
    eprintln!(
        "SCALE {n} load balancers updated in {:?}",
        started.elapsed()
    );
    wait_for("every old process to exit", Duration::from_secs(30), || {
        agents.iter().all(|a| a.active()).then_some(())
    });
    for i in 0..n {
        serves(i);
    }
    assert_eq!(program_sets(&bpffs)[0].1.len(), n as usize);

    // One goes as the agent removes it; the others serve on, and its slot is given back by
    // the next lb command.
    let mut gone = agents.remove(GONE);
    undeploy(&mut gone);
    let _ = lb::daemon::gc::collect(&state_dir);
    assert!(gone.remains().is_empty(), "{:?}", gone.remains());
    assert_eq!(program_sets(&bpffs)[0].1.len(), n as usize - 1);
    for i in (0..n).filter(|&i| i as usize != GONE) {
        serves(i);
    }
    drop(gone);
    for a in agents.iter_mut() {
        undeploy(a);
    }
    let removed = lb::daemon::gc::collect(&state_dir);
    assert_eq!(removed.len(), n as usize - 1);
    let listing = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        program_sets(&bpffs).is_empty(),
        "the set goes with the last: {:?}; removed {removed:?}; bpffs {:?}; state {:?}",
        program_sets(&bpffs),
        listing(&bpffs),
        listing(&state_dir)
    );
}
