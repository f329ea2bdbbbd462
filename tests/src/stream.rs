//! Streaming connections through the VIP, for the lifecycle tests (crash, restart, upgrade,
//! reloads): every client and its member send each other a numbered record every 100 ms, and
//! both ends check that every record arrived, in order. A connection that breaks, or loses
//! records, fails the test; TCP retransmissions in the client's and members' namespaces
//! count the packets the data path lost on the way (TCP hides them from the records).
//! Beside them, [`Watch`] samples `lb stats` and checks that no `total_connections` ever goes
//! backwards.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::topology::VIP;

/// One record each way per period.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Splits complete lines off the front of `buf`.
fn lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=i).collect();
        out.push(String::from_utf8_lossy(&line).trim().to_string());
    }
    out
}

/// Reads what has arrived into `buf`: Ok(false) once the peer closed. A read timeout is no
/// error (nothing arrived yet).
fn read_into(c: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    match c.read(&mut chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// The member's side of a connection that opened with `STREAM\n` (`rest`: what followed it
/// in the same read): sends `m <n>` every period, checks the client's `c <n>` records, and
/// on `END` answers `RESULT <records received> <in order: 1|0>`.
pub fn serve(mut c: TcpStream, rest: &[u8], stop: &AtomicBool) {
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut w = match c.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                if writeln!(w, "m {n}").is_err() {
                    return;
                }
                n += 1;
                std::thread::sleep(PERIOD);
            }
        })
    };
    let _ = c.set_read_timeout(Some(PERIOD));
    let mut buf = rest.to_vec();
    let (mut got, mut in_order) = (0u64, true);
    'conn: while !stop.load(Ordering::Relaxed) {
        for line in lines(&mut buf) {
            if line == "END" {
                done.store(true, Ordering::Relaxed);
                let _ = writer.join();
                let _ = writeln!(c, "RESULT {got} {}", in_order as u8);
                return;
            }
            match line.strip_prefix("c ").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if n == got => got += 1,
                _ => in_order = false,
            }
        }
        if !matches!(read_into(&mut c, &mut buf), Ok(true)) {
            break 'conn;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = writer.join();
}

/// What one streaming connection saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub client: usize,
    pub member: Option<Ipv4Addr>,
    /// Records the client sent, and how many of them the member got (in order or not).
    pub sent: u64,
    pub member_got: u64,
    pub member_in_order: bool,
    /// Records the member sent that the client got, and whether in order from 0.
    pub got: u64,
    pub in_order: bool,
    /// The longest wait between two of the member's records (100 ms when nothing stalls;
    /// a lost packet shows as a retransmission timeout, 200 ms or more on top).
    pub longest_gap: Duration,
    pub error: Option<String>,
}

impl Report {
    pub fn complete(&self) -> bool {
        self.error.is_none()
            && self.in_order
            && self.member_in_order
            && self.member_got == self.sent
            && self.sent > 0
            && self.got > 0
    }
}

/// Streaming clients, each on its own connection through the VIP.
pub struct Streams {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Report>>,
    pub members: Vec<Option<Ipv4Addr>>,
}

impl Streams {
    /// Opens `n` streaming connections from `client_ns` to the VIP, port 22; returns once
    /// every one is connected (or failed to).
    pub fn start(client_ns: &str, n: usize) -> Streams {
        Self::start_on(client_ns, 22, n)
    }

    /// `start` to the VIP's `port`.
    pub fn start_on(client_ns: &str, port: u16, n: usize) -> Streams {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handles = (0..n)
            .map(|i| {
                let (ns, stop, ready) = (client_ns.to_string(), stop.clone(), ready_tx.clone());
                std::thread::spawn(move || client(i, &ns, port, &stop, ready))
            })
            .collect();
        let mut members = vec![None; n];
        for _ in 0..n {
            let (i, m) = ready_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("streaming clients connect");
            members[i] = m;
        }
        Streams {
            stop,
            handles,
            members,
        }
    }

    /// Ends every stream (each asks its member for its count) and returns what they saw.
    pub fn finish(self) -> Vec<Report> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("streaming client"))
            .collect()
    }
}

fn client(
    i: usize,
    ns: &str,
    port: u16,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<(usize, Option<Ipv4Addr>)>,
) -> Report {
    let mut r = Report {
        client: i,
        member: None,
        sent: 0,
        member_got: 0,
        member_in_order: false,
        got: 0,
        in_order: true,
        longest_gap: Duration::ZERO,
        error: None,
    };
    let fail = |mut r: Report, what: String| {
        r.error = Some(what);
        r
    };
    if let Err(e) = lb::node::enter(ns) {
        let _ = ready.send((i, None));
        return fail(r, format!("enter {ns}: {e}"));
    }
    let mut c = match TcpStream::connect_timeout(
        &SocketAddr::V4(SocketAddrV4::new(VIP, port)),
        Duration::from_secs(5),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send((i, None));
            return fail(r, format!("connect: {e}"));
        }
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = Vec::new();
    // The member's greeting names it.
    let start = Instant::now();
    while !buf.contains(&b'\n') && start.elapsed() < Duration::from_secs(5) {
        if !matches!(read_into(&mut c, &mut buf), Ok(true)) {
            break;
        }
    }
    let greeting = lines(&mut buf).into_iter().next().unwrap_or_default();
    r.member = greeting.rsplit(' ').next().and_then(|a| a.parse().ok());
    let _ = ready.send((i, r.member));
    if let Err(e) = c.write_all(b"STREAM\n") {
        return fail(r, format!("write: {e}"));
    }
    let mut next_send = Instant::now();
    let mut last_record = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_send {
            if let Err(e) = writeln!(c, "c {}", r.sent) {
                let what = format!("write record {}: {e}", r.sent);
                return fail(r, what);
            }
            r.sent += 1;
            next_send += PERIOD;
        }
        match read_into(&mut c, &mut buf) {
            Ok(true) => {}
            Ok(false) => return fail(r, "the connection closed".into()),
            Err(e) => return fail(r, format!("read: {e}")),
        }
        for line in lines(&mut buf) {
            match line.strip_prefix("m ").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => {
                    if n != r.got {
                        r.in_order = false;
                    }
                    r.got += 1;
                    r.longest_gap = r.longest_gap.max(last_record.elapsed());
                    last_record = Instant::now();
                }
                None => r.in_order = false,
            }
        }
    }
    if let Err(e) = c.write_all(b"END\n") {
        return fail(r, format!("write END: {e}"));
    }
    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let open = read_into(&mut c, &mut buf);
        for line in lines(&mut buf) {
            if let Some(rest) = line.strip_prefix("RESULT ") {
                let mut f = rest.split(' ');
                r.member_got = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                r.member_in_order = f.next() == Some("1");
                return r;
            }
        }
        if !matches!(open, Ok(true)) {
            break;
        }
    }
    fail(r, "no RESULT from the member".into())
}

/// TCP counts of a set of namespaces, to tell a lost segment from a spurious retransmission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retransmits {
    /// Segments retransmitted (`RetransSegs`).
    pub sent: u64,
    /// Segments received that the receiver already had (the DSACKs it sent:
    /// `TCPDSACKOldSent` + `TCPDSACKOfoSent`): a retransmission whose original arrived.
    pub duplicates: u64,
}

impl Retransmits {
    /// The counts of namespaces `ns` (the client's and the members': every sender and
    /// receiver of the traffic), summed.
    pub fn of(ns: &[&str]) -> Retransmits {
        ns.iter().fold(Retransmits::default(), |a, n| {
            let r = one(n);
            Retransmits {
                sent: a.sent + r.sent,
                duplicates: a.duplicates + r.duplicates,
            }
        })
    }

    /// Since `before`: segments retransmitted whose original never arrived (lost), and
    /// retransmissions in all.
    pub fn lost_since(&self, before: &Retransmits) -> (u64, u64) {
        let sent = self.sent - before.sent;
        let duplicates = self.duplicates - before.duplicates;
        (sent.saturating_sub(duplicates), sent)
    }
}

fn one(ns: &str) -> Retransmits {
    crate::in_netns(ns, || {
        let field = |file: &str, proto: &str, names: &[&str]| -> u64 {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let mut lines = text.lines().filter(|l| l.starts_with(proto));
            let (keys, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            keys.split_whitespace()
                .zip(values.split_whitespace())
                .filter(|(k, _)| names.contains(k))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        };
        Retransmits {
            sent: field("/proc/thread-self/net/snmp", "Tcp:", &["RetransSegs"]),
            duplicates: field(
                "/proc/thread-self/net/netstat",
                "TcpExt:",
                &["TCPDSACKOldSent", "TCPDSACKOfoSent"],
            ),
        }
    })
    .unwrap_or_default()
}

/// `lb stats --json`, sampled every 200 ms while a scenario runs.
pub struct Watch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<WatchReport>>,
}

/// What the samples showed.
#[derive(Debug, Default)]
pub struct WatchReport {
    pub samples: usize,
    /// Every `lb stats` call that failed, printed no JSON or listed no load balancer.
    pub failures: Vec<String>,
    /// Every time a `total_connections` went down: what, from, to.
    pub backwards: Vec<String>,
}

impl Watch {
    pub fn start(bin: &Path, state_dir: &Path) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, bin, dir): (_, PathBuf, PathBuf) = (stop.clone(), bin.into(), state_dir.into());
        let handle = std::thread::spawn(move || {
            let mut r = WatchReport::default();
            let mut last: HashMap<String, u64> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let out = std::process::Command::new(&bin)
                    .args(["stats", "--json", "--state-dir"])
                    .arg(&dir)
                    .output();
                let v = match out {
                    Err(e) => Err(format!("cannot run lb stats: {e}")),
                    Ok(o) if !o.status.success() => Err(format!(
                        "lb stats: {}: {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Ok(o) => match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                        Err(e) => Err(format!("lb stats printed no JSON ({e})")),
                        Ok(v) if v.as_array().is_none_or(|a| a.is_empty()) => {
                            Err(format!("lb stats listed no load balancer: {v}"))
                        }
                        Ok(v) => Ok(v),
                    },
                };
                if let Err(e) = &v {
                    r.failures.push(e.clone());
                }
                if let Ok(v) = v {
                    r.samples += 1;
                    for lb in v.as_array().into_iter().flatten() {
                        let mut totals = Vec::new();
                        for l in lb["listeners"].as_array().into_iter().flatten() {
                            totals.push((format!("listener {}", l["id"]), &l["total_connections"]));
                        }
                        for m in lb["members"].as_array().into_iter().flatten() {
                            totals.push((format!("member {}", m["id"]), &m["total_connections"]));
                        }
                        for (what, t) in totals {
                            let t = t.as_u64().unwrap_or(0);
                            if let Some(&before) = last.get(&what) {
                                if t < before {
                                    r.backwards.push(format!("{what}: {before} -> {t}"));
                                }
                            }
                            last.insert(what, t);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            r
        });
        Watch {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("stats watcher"))
            .unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
