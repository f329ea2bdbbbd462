//! Tier 3, the daemon's lifecycle: a crash and a restart, an upgrade to a different program
//! object (and one stopped by SIGTERM while it verifies), 20 reloads, refused reloads, a
//! refused takeover, two concurrent `lb run`. Each runs under streaming connections from
//! several clients (a record every 100 ms both ways; every record must arrive, in order),
//! while `lb stats` is sampled (no `total_connections` may go backwards); `active` must be
//! exact while they stream and 0 once they close. Each prints one `LIFECYCLE` line with the
//! packets lost (TCP segments retransmitted in the client's and members' namespaces whose
//! originals never arrived: no DSACK for them) and, where it applies, how long the handover
//! took.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use integration_tests::{
    stream::{self, Streams, Watch},
    topology::*,
    wait_for,
};
use lb::{
    daemon::attach::Holder,
    state::{Phase, State},
};

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const M3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const CLIENTS: usize = 3;

/// Streams and a stats watcher running through one scenario.
struct Run {
    streams: Streams,
    watch: Watch,
    retrans: stream::Retransmits,
}

/// The TCP counts of the client and the members.
fn retransmissions(setup: &Setup) -> stream::Retransmits {
    let ns: Vec<&str> = std::iter::once(setup.topo.client.name.as_str())
        .chain(setup.topo.members.iter().map(|m| m.ns.name.as_str()))
        .collect();
    stream::Retransmits::of(&ns)
}

/// Where segments were lost: each namespace's nonzero TCP retransmission counters (which
/// side sent again, and for what: a SYN, a timeout, a fast retransmit) and lb's drops.
fn explain_loss(setup: &Setup) {
    for n in std::iter::once(setup.topo.client.name.as_str())
        .chain(setup.topo.members.iter().map(|m| m.ns.name.as_str()))
    {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", n, "nstat", "-asz"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("Retrans") || l.contains("Timeout") || l.contains("Loss"))
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|v| v != "0"))
            .collect();
        eprintln!("LOSS {n}: {}", lines.join("; "));
    }
    let s = stats(&setup.bin, &setup.cfg.state_dir);
    eprintln!(
        "LOSS lb drops: listener {}, members {:?}",
        s[0]["listeners"][0]["drops"],
        s[0]["members"].as_array().map(|ms| ms
            .iter()
            .map(|m| (m["address"].to_string(), m["drops"].to_string()))
            .collect::<Vec<_>>())
    );
}

fn listener_active(setup: &Setup) -> i64 {
    stats(&setup.bin, &setup.cfg.state_dir)[0]["listeners"][0]["active_connections"]
        .as_i64()
        .unwrap_or(-1)
}

/// Starts the streams and lets them run a second before the scenario's event.
fn begin(setup: &Setup) -> Run {
    let retrans = retransmissions(setup);
    let streams = Streams::start(&setup.topo.client.name, CLIENTS);
    let watch = Watch::start(&setup.bin, &setup.cfg.state_dir);
    std::thread::sleep(Duration::from_secs(1));
    Run {
        streams,
        watch,
        retrans,
    }
}

/// Lets the streams run a second more after the scenario's event, ends them and checks
/// everything the scenario promises; `extra` goes on the LIFECYCLE line.
fn end(setup: &Setup, run: Run, name: &str, extra: &str) {
    std::thread::sleep(Duration::from_secs(1));
    // Exact while they stream (the connections are the only ones).
    wait_for(
        "the listener's active count to equal the streams",
        Duration::from_secs(5),
        || (listener_active(setup) == CLIENTS as i64).then_some(()),
    );
    let reports = run.streams.finish();
    let watch = run.watch.finish();
    let (lost, retransmitted) = retransmissions(setup).lost_since(&run.retrans);
    let records = reports.iter().map(|r| r.sent).min().unwrap_or(0);
    let gap = reports
        .iter()
        .map(|r| r.longest_gap)
        .max()
        .unwrap_or_default();
    eprintln!(
        "LIFECYCLE {name}: {} streams, >= {records} records each way each, {} broken, \
         packets lost {lost} (TCP retransmissions {retransmitted}, the rest spurious: \
         their originals arrived), longest gap between records {} ms, {} stats samples{extra}",
        reports.len(),
        reports.iter().filter(|r| !r.complete()).count(),
        gap.as_millis(),
        watch.samples,
    );
    for r in &reports {
        assert!(r.complete(), "{name}: stream incomplete: {r:?}");
    }
    assert!(
        watch.backwards.is_empty(),
        "{name}: total_connections went backwards: {:?}",
        watch.backwards
    );
    assert!(
        watch.failures.is_empty(),
        "{name}: lb stats failed {} times (of {}): {:?}",
        watch.failures.len(),
        watch.samples + watch.failures.len(),
        watch.failures
    );
    assert!(
        watch.samples >= 2,
        "{name}: {} stats samples",
        watch.samples
    );
    // README: no segment lost in any of them, on the host. A retransmission whose original
    // arrived (the receiver's DSACK says so) is a timer that fired early on a loaded machine
    // (seen on the host once in a native XDP restart), not a loss. Under the VM's emulation
    // the refused takeover has lost one segment per stream, without DSACKs, in three of eight
    // kernel runs (6.1 twice, 6.12 once; every record still arrived, in order): the records
    // are the check there.
    if lost != 0 {
        explain_loss(setup);
    }
    if std::env::var_os("LB_VM_TEST").is_none() {
        assert_eq!(
            lost, 0,
            "{name}: TCP segments lost ({retransmitted} retransmitted)"
        );
    }
    wait_for(
        "every active count back to 0",
        Duration::from_secs(10),
        || {
            let s = stats(&setup.bin, &setup.cfg.state_dir);
            let members = s[0]["members"].as_array().cloned().unwrap_or_default();
            (members.iter().all(|m| m["active_connections"] == 0)
                && s[0]["listeners"][0]["active_connections"] == 0)
                .then_some(())
        },
    );
}

/// The program running at `program`'s recorded attachment: (link id if a link, program id,
/// tag).
/// What holds `program` on its device (a TCX link's id, or where a clsact filter sits: its
/// preference and handle), the program's id and its tag.
fn attached(cfg: &TestConfig, program: &str) -> (String, u32, u64) {
    let s = State::read(&cfg.state_dir, &cfg.lb_id).expect("state file");
    let a = s
        .attachments
        .iter()
        .find(|a| a.program == program)
        .unwrap_or_else(|| panic!("{program} attached: {:?}", s.attachments));
    let (link, prog) = match &a.holder {
        Holder::Link { pin } => {
            let l = aya::programs::links::PinnedLink::from_pin(pin).expect("pinned link");
            let info = aya::programs::links::FdLink::from(l)
                .info()
                .expect("link info");
            (format!("link {}", info.id()), info.program_id())
        }
        Holder::Clsact { .. } => {
            let out = integration_tests::sh(&format!(
                "nsenter --net=/var/run/netns/{} tc filter show dev {} ingress",
                s.namespace, a.device
            ));
            let word = |key: &str| {
                out.split_whitespace()
                    .skip_while(|w| *w != key)
                    .nth(1)
                    .unwrap_or_else(|| panic!("'{key}' in: {out}"))
                    .to_string()
            };
            let id = word("id")
                .parse()
                .unwrap_or_else(|_| panic!("a filter id in: {out}"));
            (
                format!("filter pref {} handle {}", word("pref"), word("handle")),
                id,
            )
        }
    };
    let tag = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog)
        .map(|p| p.tag())
        .unwrap_or_else(|| panic!("program {prog} loaded"));
    (link, prog, tag)
}

/// The BPF object built with the `upgrade-variant` feature (`cargo xtask test` builds it).
fn variant_object() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("LB_TEST_VARIANT_OBJECT")
            .expect("LB_TEST_VARIANT_OBJECT: run the tests through `cargo xtask test`"),
    );
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

fn crash_and_restart(mode: &str) {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let mut first = setup.start(&["--xdp-mode", mode]);
    let run = begin(&setup);
    first.kill_hard();
    // No daemon for 3 s: the pinned data path keeps translating.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let mut second = setup.start(&["--xdp-mode", mode]);
    let up = started.elapsed();
    let log = second.log_text();
    assert!(log.contains("replaced atomically"), "{log}");
    end(
        &setup,
        run,
        &format!("sigkill-restart-{mode}"),
        &format!(", restarted daemon up in {} ms", up.as_millis()),
    );
    assert!(second.stop().unwrap().success(), "{}", second.log_text());
    assert!(!lb::node::netns_exists(&setup.cfg.namespace()));
    assert!(
        !setup.cfg.bpffs.join(&setup.cfg.lb_id).exists(),
        "pins removed"
    );
}

#[test]
fn sigkill_then_restart_3s_later_loses_nothing_tc() {
    crash_and_restart("tc");
}

#[test]
fn sigkill_then_restart_3s_later_loses_nothing_native_xdp() {
    crash_and_restart("native");
}

#[test]
fn upgrade_through_takeover_to_a_different_program_loses_nothing() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let variant = variant_object();
    let mut old = setup.start(&[]);
    let before = attached(&setup.cfg, "lb_tc");
    let run = begin(&setup);
    let started = Instant::now();
    let mut new = Daemon::start_with_env(
        &setup.bin,
        &setup.topo.node.name,
        &setup.cfg.path,
        &["--takeover"],
        &[("LB_BPF_OBJECT", variant.as_os_str())],
    );
    wait_running(&mut new, &setup.cfg);
    let took = started.elapsed();
    let status = wait_for("the old daemon to exit", Duration::from_secs(10), || {
        old.exited()
    });
    assert!(status.success(), "{}", old.log_text());
    assert!(
        old.log_text().contains("left running without a daemon"),
        "{}",
        old.log_text()
    );
    let after = attached(&setup.cfg, "lb_tc");
    assert_ne!(
        before.1, after.1,
        "another program runs under the attachment"
    );
    // It enters the new object's program set; the old one's went with its last load
    // balancer.
    let state = State::read(&setup.cfg.state_dir, &setup.cfg.lb_id).unwrap();
    let sets: Vec<String> = std::fs::read_dir(setup.cfg.bpffs.join("@programs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sets, vec![state.program_set.clone()]);
    let variant_hash = lb::dataplane::programs::object_hash(&std::fs::read(&variant).unwrap());
    assert_eq!(state.program_set, variant_hash, "the variant's set");
    // A TCX link (6.6 and later) or a clsact filter (6.1): the same one, its program
    // replaced, not a new one made beside it.
    assert_eq!(
        before.0, after.0,
        "under the same attachment: replaced, not re-created"
    );
    // From the new daemon's log: SIGUSR1 sent to every lock taken, and each swap.
    let log = new.log_text();
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or("?")
            .to_string()
    };
    let handover = log
        .lines()
        .find(|l| l.contains("handed over"))
        .map(|l| field(l, "took_ms="))
        .unwrap_or_default();
    let swaps: Vec<String> = log
        .lines()
        .filter(|l| l.contains("replaced atomically"))
        .map(|l| format!("{} {} us", field(l, "program="), field(l, "took_us=")))
        .collect();
    assert!(!swaps.is_empty(), "{log}");
    end(
        &setup,
        run,
        "upgrade-takeover",
        &format!(
            ", takeover (start of the new lb to up) {} ms, of which handover (SIGUSR1 to \
             locks taken) {handover} ms, swaps: {}",
            took.as_millis(),
            swaps.join(", ")
        ),
    );
    assert!(new.stop().unwrap().success(), "{}", new.log_text());
    assert!(!lb::node::netns_exists(&setup.cfg.namespace()));
    assert!(
        !setup.cfg.bpffs.join(&setup.cfg.lb_id).exists(),
        "pins removed"
    );
}

/// SIGTERM while an upgrade's takeover verifies the new build's programs (its preflight,
/// before the running daemon is disturbed): the new process stops within a second (10 s
/// under the VM's emulation) and leaves nothing of its own, no half-made program set; the
/// running daemon never hears of it and goes on serving, no connection lost.
#[test]
fn sigterm_during_an_upgrade_takeover_stops_it_and_loses_nothing() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let variant = variant_object();
    let mut old = setup.start(&[]);
    let before = attached(&setup.cfg, "lb_tc");
    let set = State::read(&setup.cfg.state_dir, &setup.cfg.lb_id)
        .unwrap()
        .program_set;
    let run = begin(&setup);
    let mut new = Daemon::start_with_env(
        &setup.bin,
        &setup.topo.node.name,
        &setup.cfg.path,
        &["--takeover"],
        &[("LB_BPF_OBJECT", variant.as_os_str())],
    );
    wait_for(
        "the new build's programs to be loaded",
        Duration::from_secs(60),
        || {
            new.log_text()
                .contains("loading and verifying the data path")
                .then_some(())
        },
    );
    let sent = Instant::now();
    new.signal(nix::sys::signal::Signal::SIGTERM);
    let status = wait_for("the takeover to exit", Duration::from_secs(30), || {
        new.exited()
    });
    let took = sent.elapsed();
    let log = new.log_text();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("SIGTERM during the start: stopped"),
        "the SIGTERM came during the load:\n{log}"
    );
    assert!(
        !log.contains("asking the running lb to hand over"),
        "the running daemon was not disturbed:\n{log}"
    );
    // That the signal stopped the verification, not its end, is the log line above; how
    // soon is printed (the wait bounds only a takeover that ignored the signal).
    assert!(old.exited().is_none(), "{}", old.log_text());
    assert_eq!(
        attached(&setup.cfg, "lb_tc"),
        before,
        "the same program under the same attachment"
    );
    let sets: Vec<String> = std::fs::read_dir(setup.cfg.bpffs.join("@programs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sets, vec![set], "only the running build's program set");
    end(
        &setup,
        run,
        "sigterm-during-upgrade-takeover",
        &format!(
            ", the takeover exited {} ms after SIGTERM",
            took.as_millis()
        ),
    );
    assert!(old.stop().unwrap().success(), "{}", old.log_text());
    assert!(!lb::node::netns_exists(&setup.cfg.namespace()));
    assert!(!setup.cfg.bpffs.join("@programs").exists(), "pins removed");
}

/// The config with member 10.0.0.6 in the pool (`with`) or not, and the first member's
/// weight `w`.
fn edited(original: &str, with: bool, w: u32) -> String {
    // The first member's weight only: its monitor is the same one.
    let mut t = original.replacen("weight = 1", &format!("weight = {w}"), 1);
    if with {
        t.push_str(
            "\n[[loadbalancer.pool.member]]\nid = \"m6\"\naddress = \"10.0.0.6\"\nprotocol_port = 22\n",
        );
    }
    t
}

#[test]
fn twenty_reloads_lose_nothing() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2, M3]) else {
        return;
    };
    let mut daemon = setup.start(&[]);
    let original = std::fs::read_to_string(&setup.cfg.path).unwrap();
    let run = begin(&setup);
    let started = Instant::now();
    for i in 0..20 {
        std::fs::write(&setup.cfg.path, edited(&original, i % 2 == 0, 1 + i % 3)).unwrap();
        daemon.signal(nix::sys::signal::Signal::SIGHUP);
        wait_for("the reload to be applied", Duration::from_secs(10), || {
            (daemon
                .log_text()
                .matches("SIGHUP: configuration applied")
                .count()
                > i as usize)
                .then_some(())
        });
    }
    let took = started.elapsed();
    // Monitors of members no reload changed kept running (and their rise/fall counts) all
    // along; the member added and removed ten times got a new one each time.
    let log = daemon.log_text();
    let started_for = |id: &str| {
        log.lines()
            .filter(|l| l.contains("monitor started") && l.contains(id))
            .count()
    };
    assert_eq!(
        started_for("45481748-3104-462c-ae4b-fae0f4b08c20"),
        1,
        "{log}"
    );
    assert_eq!(
        started_for("227b69fe-8685-4df6-b2a5-2f964c74886c"),
        1,
        "{log}"
    );
    assert_eq!(started_for("m6"), 10, "{log}");
    end(
        &setup,
        run,
        "twenty-reloads",
        &format!(", 20 reloads in {} ms", took.as_millis()),
    );
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log_text());
}

/// A reload that adds more members than the member arrays hold (sized from the config:
/// room for 16 at the seed's two): bigger arrays are made, filled and switched in under
/// the streams, whose connections and counts carry on exactly.
#[test]
fn a_reload_that_outgrows_the_member_arrays_loses_nothing() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let mut daemon = setup.start(&[]);
    let members = setup.cfg.bpffs.join(&setup.cfg.lb_id).join("MEMBERS");
    let capacity = || {
        aya::maps::MapInfo::from_pin(&members)
            .unwrap()
            .max_entries()
    };
    assert_eq!(capacity(), 16, "sized for the seed's two members");
    let run = begin(&setup);
    let mut more = std::fs::read_to_string(&setup.cfg.path).unwrap();
    for i in 10..30 {
        more.push_str(&format!(
            "\n[[loadbalancer.pool.member]]\nid = \"m{i}\"\naddress = \"10.0.0.{i}\"\nprotocol_port = 22\n"
        ));
    }
    std::fs::write(&setup.cfg.path, more).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the reload to be applied", Duration::from_secs(10), || {
        daemon
            .log_text()
            .contains("SIGHUP: configuration applied")
            .then_some(())
    });
    assert!(
        daemon.log_text().contains("member and pool arrays grown"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(capacity(), 64, "room for 22 members, twice over");
    let s = stats(&setup.bin, &setup.cfg.state_dir);
    assert_eq!(s[0]["members"].as_array().unwrap().len(), 22);
    end(&setup, run, "outgrow-member-arrays", "");
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log_text());
}

#[test]
fn refused_reloads_change_nothing() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2, M3]) else {
        return;
    };
    let mut daemon = setup.start(&[]);
    let original = std::fs::read_to_string(&setup.cfg.path).unwrap();
    let members = |s: &serde_json::Value| s[0]["members"].as_array().map(|m| m.len());
    let before = stats(&setup.bin, &setup.cfg.state_dir);
    let run = begin(&setup);

    // A file that does not validate.
    std::fs::write(
        &setup.cfg.path,
        original.replace("timeout = 3 ", "timeout = 9 "),
    )
    .unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the refusal", Duration::from_secs(10), || {
        daemon.log_text().contains("must be < delay").then_some(())
    });

    // A file that validates but fails halfway: a member added to the running load balancer,
    // and a second load balancer whose adopted port does not exist. The first change is
    // rolled back; the second's namespace, made on the way, is removed again.
    let second = "0badc0de-0000-4000-8000-000000000001";
    let _gone = Leftovers {
        namespaces: vec![format!("qlbaas-{second}")],
        dirs: vec![setup.cfg.bpffs.join(second)],
    };
    let lb2 = include_str!("../../examples/seed.toml")
        .replace("574a31da-a28a-449f-8c9d-3d3687c3c02a", second)
        .replace("df25900f-53b1-4aab-8436-8411ec710445", "0badc0de-listener")
        .replace("45481748-3104-462c-ae4b-fae0f4b08c20", "0badc0de-m1")
        .replace("227b69fe-8685-4df6-b2a5-2f964c74886c", "0badc0de-m2")
        .replace("tapfb358342-59", "tapnotthere-00")
        .replace("bridge = \"br-int\"", "bridge = \"br-int\"\nadopt = true")
        .replace("10.0.0.", "10.9.0.");
    std::fs::write(
        &setup.cfg.path,
        format!("{}\n{lb2}", edited(&original, true, 1)),
    )
    .unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the roll back", Duration::from_secs(10), || {
        daemon.log_text().contains("rolled back").then_some(())
    });
    let log = daemon.log_text();
    assert!(
        log.contains("tapnotthere-00"),
        "the error names the port: {log}"
    );
    let after = stats(&setup.bin, &setup.cfg.state_dir);
    assert_eq!(
        after.as_array().unwrap().len(),
        1,
        "no second load balancer"
    );
    assert_eq!(
        members(&after),
        members(&before),
        "the added member is rolled back"
    );
    assert!(!lb::node::netns_exists(&format!("qlbaas-{second}")));
    end(&setup, run, "refused-reloads", "");

    // The refusals left a working daemon: a valid change still applies.
    std::fs::write(&setup.cfg.path, edited(&original, true, 1)).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("a valid reload afterwards", Duration::from_secs(10), || {
        (members(&stats(&setup.bin, &setup.cfg.state_dir)) == Some(3)).then_some(())
    });
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log_text());
}

#[test]
fn takeover_refused_for_a_layout_mismatch_leaves_the_old_daemon_serving() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let mut old = setup.start(&[]);
    let run = begin(&setup);
    let bigger = setup.cfg.path.with_extension("bigger.toml");
    std::fs::write(
        &bigger,
        std::fs::read_to_string(&setup.cfg.path)
            .unwrap()
            .replace("conntrack_flows = 4096", "conntrack_flows = 8192"),
    )
    .unwrap();
    let mut new = Daemon::start(&setup.bin, &setup.topo.node.name, &bigger, &["--takeover"]);
    let status = wait_for(
        "the takeover to be refused",
        Duration::from_secs(20),
        || new.exited(),
    );
    let _ = std::fs::remove_file(&bigger);
    assert!(!status.success());
    let log = new.log_text();
    assert!(
        log.contains("CONNTRACK: max_entries is 8192, this lb needs 16384 (conntrack_flows)")
            && log.contains("keep conntrack_flows = 4096")
            && log.contains("it keeps running unchanged"),
        "{log}"
    );
    assert!(old.exited().is_none(), "the old daemon still runs");
    let s = State::read(&setup.cfg.state_dir, &setup.cfg.lb_id).unwrap();
    assert_eq!((s.pid, s.phase), (old.pid().unwrap(), Phase::Running));
    // And keeps serving new connections.
    let mut c = connect(&setup.topo.client.name, VIP, 22).expect("connect after the refusal");
    c.echo(b"still served\n").unwrap();
    drop(c);
    end(&setup, run, "takeover-refused", "");
    assert!(old.stop().unwrap().success(), "{}", old.log_text());
}

#[test]
fn two_concurrent_runs_one_serves_the_other_is_refused() {
    let Some(setup) = Setup::new(|t| t, &[M1, M2]) else {
        return;
    };
    let start = |_: usize| {
        Daemon::start(
            &setup.bin,
            &setup.topo.node.name,
            &setup.cfg.path,
            &[] as &[&str],
        )
    };
    let mut d = [start(0), start(1)];
    // A SIGHUP during start-up is held until the daemon is up; it never kills it. (Sent as
    // soon as `lb` runs and holds it: blocked or caught, not before its first instruction.)
    for x in &d {
        let pid = x.pid().unwrap();
        wait_for("lb to start", Duration::from_secs(10), || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let mask = |field: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .unwrap_or(0)
            };
            let hup = 1u64 << (nix::sys::signal::Signal::SIGHUP as u64 - 1);
            ((mask("SigBlk:") | mask("SigCgt:")) & hup != 0).then_some(())
        });
        x.signal(nix::sys::signal::Signal::SIGHUP);
    }
    let (winner, loser) = wait_for(
        "one daemon up, the other refused",
        Duration::from_secs(60),
        || {
            let up = State::read(&setup.cfg.state_dir, &setup.cfg.lb_id)
                .filter(|s| s.phase == Phase::Running)
                .map(|s| s.pid)?;
            let w = d.iter().position(|x| x.pid() == Some(up))?;
            let l = 1 - w;
            d[l].exited().map(|st| (w, (l, st)))
        },
    );
    let (l, status) = loser;
    assert_eq!(
        status.code(),
        Some(1),
        "refused, not killed: {}",
        d[l].log_text()
    );
    let want = format!("is already run by lb (pid {})", d[winner].pid().unwrap());
    assert!(d[l].log_text().contains(&want), "{}", d[l].log_text());
    assert!(d[winner].exited().is_none(), "{}", d[winner].log_text());
    let run = begin(&setup);
    end(&setup, run, "two-concurrent-runs", "");
    assert!(d[winner].stop().unwrap().success());
}

/// What lb owns survives a crash and a takeover: a namespace Neutron made and a port it
/// handed over (adopted) are used, and at the end the port goes back to the node's namespace
/// and the namespace stays, whichever daemon tears down.
#[test]
fn ownership_survives_a_crash_and_a_takeover() {
    let Some(setup) = Setup::new(
        |t| t.replace("bridge = \"br-int\"", "bridge = \"br-int\"\nadopt = true"),
        &[M1, M2],
    ) else {
        return;
    };
    let (cfg, node) = (&setup.cfg, &setup.topo.node);
    // What Neutron's agent makes before it spawns the load balancer: the namespace, and a
    // port plugged into br-int.
    integration_tests::sh(&format!("ip netns add {}", cfg.namespace()));
    let outer = format!("ad{}", &cfg.port[3..11]);
    node.ip(&format!(
        "link add {} type veth peer name {outer}",
        cfg.port
    ));
    node.ip(&format!("link set {outer} master br-int up"));

    let mut a = setup.start(&[]);
    let run = begin(&setup);
    a.kill_hard();
    let mut b = setup.start(&[]);
    let mut c = Daemon::start(&setup.bin, &node.name, &cfg.path, &["--takeover"]);
    wait_running(&mut c, cfg);
    assert!(wait_for("b to hand over", Duration::from_secs(10), || b.exited()).success());
    let owned = State::read(&cfg.state_dir, &cfg.lb_id).unwrap().owned;
    assert!(
        owned.moved_port && !owned.namespace && owned.veth.is_none(),
        "{owned:?}"
    );
    end(&setup, run, "ownership", "");

    assert!(c.stop().unwrap().success(), "{}", c.log_text());
    assert!(
        lb::node::netns_exists(&cfg.namespace()),
        "the namespace Neutron made stays"
    );
    let link = node.ip(&format!("link show dev {}", cfg.port));
    assert!(
        link.contains(&cfg.port),
        "the adopted port is back in the node namespace"
    );
    let qdiscs = node.ip(&format!("-d link show dev {}", cfg.port));
    let tc = integration_tests::sh(&format!(
        "nsenter --net=/var/run/netns/{} tc qdisc show dev {}",
        node.name, cfg.port
    ));
    assert!(!tc.contains("clsact"), "no clsact left: {tc} {qdiscs}");
    if lb::daemon::attach::tcx_supported() {
        let progs = integration_tests::in_netns(&node.name, || {
            aya::programs::SchedClassifier::query_tcx(
                &cfg.port,
                aya::programs::TcAttachType::Ingress,
            )
            .map(|(_, p)| p.len())
        })
        .unwrap()
        .expect("tcx query");
        assert_eq!(progs, 0, "no tcx program left on the port");
    }
    assert!(!cfg.bpffs.join(&cfg.lb_id).exists(), "pins removed");
    assert!(
        State::read(&cfg.state_dir, &cfg.lb_id).is_none(),
        "state removed"
    );
}
