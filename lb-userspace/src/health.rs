//! Health monitors, run from inside the load balancer's namespace with the VIP as source (as
//! HAProxy's checks were): `delay` between checks, `timeout` per check, `max_retries`
//! consecutive successes to rise, `max_retries_down` consecutive failures to fall. A check is
//! a TCP connect, an HTTP request whose status must match, or a TLS ClientHello that must be
//! answered by a ServerHello; its outcome is told in haproxy's `check_status` words (L4OK,
//! L4CON, L7STS, ...), which the stats socket reports.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc::UnboundedSender,
};

use crate::config::{HealthMonitor, HttpExpect, MonitorType};

/// A check's outcome in haproxy's words (its `check_status`).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckStatus {
    /// The socket could not be made (a local error).
    SOCKERR,
    /// TCP: connected.
    L4OK,
    /// TCP: no answer in time.
    L4TOUT,
    /// TCP: refused, reset, unreachable.
    L4CON,
    /// TLS: a ServerHello came back.
    L6OK,
    L6TOUT,
    /// TLS: something else came back.
    L6RSP,
    /// HTTP: a status the monitor expects.
    L7OK,
    L7TOUT,
    /// HTTP: not an HTTP answer.
    L7RSP,
    /// HTTP: a status the monitor does not expect.
    L7STS,
}

impl CheckStatus {
    pub fn ok(self) -> bool {
        matches!(
            self,
            CheckStatus::L4OK | CheckStatus::L6OK | CheckStatus::L7OK
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::SOCKERR => "SOCKERR",
            CheckStatus::L4OK => "L4OK",
            CheckStatus::L4TOUT => "L4TOUT",
            CheckStatus::L4CON => "L4CON",
            CheckStatus::L6OK => "L6OK",
            CheckStatus::L6TOUT => "L6TOUT",
            CheckStatus::L6RSP => "L6RSP",
            CheckStatus::L7OK => "L7OK",
            CheckStatus::L7TOUT => "L7TOUT",
            CheckStatus::L7RSP => "L7RSP",
            CheckStatus::L7STS => "L7STS",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub status: CheckStatus,
    /// The HTTP status code, for HTTP checks that got one.
    pub code: Option<u16>,
    pub duration: Duration,
    /// What happened, for logs and the stats socket's `check_desc`.
    pub desc: String,
}

/// What the stats socket shows of a member's checks (haproxy's `check_*`, `chkfail`,
/// `chkdown`, `lastchg`, `downtime` and the `UP 1/3` / `DOWN 1/2` progress).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInfo {
    pub status: Option<CheckStatus>,
    pub code: Option<u16>,
    pub duration_ms: u64,
    pub desc: String,
    /// Failed checks since the member was configured.
    pub chkfail: u64,
    /// UP -> DOWN transitions.
    pub chkdown: u64,
    /// Unix time of the last transition (or of the start of monitoring).
    pub last_change: u64,
    /// Seconds spent down before the current state.
    pub downtime_secs: u64,
    pub up: bool,
    /// Consecutive successes while down, failures while up (the progress to a transition).
    pub progress: u32,
    pub rise: u32,
    pub fall: u32,
}

/// Every monitored member's check info, by member index (shared with the stats socket).
pub type Board = Arc<Mutex<HashMap<u32, CheckInfo>>>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A member's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub loadbalancer: String,
    pub member_index: u32,
    pub member_id: String,
    pub up: bool,
    pub reason: String,
}

/// One member's check state: consecutive counts and the current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checker {
    pub up: bool,
    pub successes: u32,
    pub failures: u32,
    rise: u32,
    fall: u32,
}

impl Checker {
    /// `up`: the verdict to start from: up for a new member (HAProxy's default, so traffic
    /// flows before the first check), the data path's current one after a reload or restart.
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Checker {
            up,
            successes: 0,
            failures: 0,
            rise,
            fall,
        }
    }

    /// Records one check; returns the new state if it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// Connects from `vip:ephemeral` to `target` within `timeout`.
///
/// Checks never use up the namespace's ports (60000-65535, 5536 of them): the port is
/// chosen at connect time, per destination (`IP_BIND_ADDRESS_NO_PORT`, so a port busy
/// towards one member is free towards another), and the connection ends with a RST
/// (`SO_LINGER` 0, as haproxy's checks do), leaving no TIME_WAIT behind.
async fn connect(
    vip: IpAddr,
    target: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, (CheckStatus, String)> {
    let sock = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| (CheckStatus::SOCKERR, format!("socket: {e}")))?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
        .map_err(|e| {
            (
                CheckStatus::SOCKERR,
                format!("IP_BIND_ADDRESS_NO_PORT: {e}"),
            )
        })?;
    // A zero linger does not block on close: it sends the RST at once.
    let rst_on_close = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Linger, &rst_on_close)
        .map_err(|e| (CheckStatus::SOCKERR, format!("SO_LINGER: {e}")))?;
    sock.bind(SocketAddr::new(vip, 0))
        .map_err(|e| (CheckStatus::SOCKERR, format!("bind {vip}: {e}")))?;
    match tokio::time::timeout(timeout, sock.connect(target)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((CheckStatus::L4CON, format!("connect {target}: {e}"))),
        Err(_) => Err((
            CheckStatus::L4TOUT,
            format!("connect {target}: no answer within {timeout:?}"),
        )),
    }
}

/// The checks' source: the VIP while this namespace holds it; else (keepalived holds it on
/// another node: `port.assign_vip = false`) the node's own address, the kernel's choice, so
/// that members' answers come back here and not to the VIP's holder.
fn source(vip: IpAddr) -> IpAddr {
    let here = nix::ifaddrs::getifaddrs().is_ok_and(|mut it| {
        it.any(|a| {
            a.address.is_some_and(|s| {
                s.as_sockaddr_in().map(|v| IpAddr::V4(v.ip())) == Some(vip)
                    || s.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())) == Some(vip)
            })
        })
    });
    match (here, vip) {
        (true, _) => vip,
        (false, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (false, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// One TCP check: connect from `vip:ephemeral` to `target` within `timeout`.
pub async fn check_tcp(vip: IpAddr, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    connect(vip, target, timeout)
        .await
        .map(drop)
        .map_err(|(_, e)| e)
}

/// One check of `target` as `monitor` says, within its timeout.
pub async fn check(vip: IpAddr, target: SocketAddr, monitor: &HealthMonitor) -> CheckResult {
    let start = Instant::now();
    let vip = source(vip);
    let timeout = monitor.timeout();
    if matches!(monitor.kind, MonitorType::PING | MonitorType::UDP_CONNECT) {
        let (status, desc) = if monitor.kind == MonitorType::PING {
            ping(vip, target.ip(), timeout).await
        } else {
            udp_connect(vip, target, timeout).await
        };
        return CheckResult {
            status,
            code: None,
            duration: start.elapsed(),
            desc,
        };
    }
    let (status, code, desc) = match connect(vip, target, timeout).await {
        Err((status, desc)) => (status, None, desc),
        Ok(stream) => {
            let left = match monitor.read_timeout {
                Some(t) => Duration::from_secs_f64(t),
                None => timeout.saturating_sub(start.elapsed()),
            };
            match monitor.kind {
                MonitorType::HTTP => http(stream, target, monitor, left).await,
                MonitorType::TLS_HELLO => tls_hello(stream, left).await,
                MonitorType::TCP | MonitorType::PING | MonitorType::UDP_CONNECT => {
                    (CheckStatus::L4OK, None, "Layer4 check passed".into())
                }
            }
        }
    };
    CheckResult {
        status,
        code,
        duration: start.elapsed(),
        desc,
    }
}

/// Octavia's UDP-CONNECT monitor (its amphora runs `nc -uz`): a datagram from the VIP to the
/// member's port. An ICMP port unreachable (or another error the kernel reports on the
/// connected socket) within `timeout` means down (L4CON); an answer, or silence for the
/// whole timeout, means up (L4OK): a UDP service owes no reply.
async fn udp_connect(vip: IpAddr, target: SocketAddr, timeout: Duration) -> (CheckStatus, String) {
    let sock = match tokio::net::UdpSocket::bind(SocketAddr::new(vip, 0)).await {
        Ok(s) => s,
        Err(e) => return (CheckStatus::SOCKERR, format!("bind {vip}: {e}")),
    };
    if let Err(e) = sock.connect(target).await {
        return (CheckStatus::SOCKERR, format!("connect {target}: {e}"));
    }
    if let Err(e) = sock.send(b"lb health check\n").await {
        return (CheckStatus::L4CON, format!("send to {target}: {e}"));
    }
    let mut buf = [0u8; 512];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => (
            CheckStatus::L4OK,
            format!("UDP answer of {n} bytes from {target}"),
        ),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            CheckStatus::L4CON,
            format!("{target}: ICMP port unreachable"),
        ),
        Ok(Err(e)) => (CheckStatus::L4CON, format!("{target}: {e}")),
        Err(_) => (
            CheckStatus::L4OK,
            format!("no ICMP error from {target} within {timeout:?}"),
        ),
    }
}

/// The destination and header length of the IP packet an ICMP error embeds.
type EmbeddedDst = fn(&[u8]) -> Option<(IpAddr, usize)>;

/// Octavia's PING monitor: an ICMP (ICMPv6) echo request from the VIP to the member's
/// address, the matching echo reply within `timeout` (L4OK); none (L4TOUT), or an ICMP error
/// about it (L4CON: unreachable). A raw socket (the daemon runs as root in the namespace);
/// each check has its own, and takes only the reply with its identifier and sequence number.
async fn ping(vip: IpAddr, target: IpAddr, timeout: Duration) -> (CheckStatus, String) {
    use std::sync::atomic::{AtomicU16, Ordering};
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let fail = |e: std::io::Error, what: &str| (CheckStatus::SOCKERR, format!("{what}: {e}"));
    let v6 = target.is_ipv6();
    let sock = match if v6 {
        socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV6),
        )
    } else {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
    } {
        Ok(s) => s,
        Err(e) => return fail(e, "raw ICMP socket"),
    };
    if let Err(e) = sock.set_nonblocking(true) {
        return fail(e, "nonblocking");
    }
    if let Err(e) = sock.bind(&SocketAddr::new(vip, 0).into()) {
        return fail(e, &format!("bind {vip}"));
    }
    let id = (std::process::id() as u16) ^ 0x1b;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut echo = [0u8; 24];
    // Echo request: ICMP type 8, ICMPv6 type 128 (whose checksum the kernel computes).
    echo[0] = if v6 { 128 } else { 8 };
    echo[4..6].copy_from_slice(&id.to_be_bytes());
    echo[6..8].copy_from_slice(&seq.to_be_bytes());
    echo[8..].copy_from_slice(b"lb health check!");
    if !v6 {
        let sum = lb_common::checksum::ipv4_header(&echo);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    // SAFETY: the socket is owned by the AsyncFd, which deregisters it before closing it.
    let fd = match unsafe { tokio::io::unix::AsyncFd::register(sock) } {
        Ok(f) => f,
        Err(e) => return fail(e.into(), "registering the socket"),
    };
    let dest: socket2::SockAddr = SocketAddr::new(target, 0).into();
    if let Err(e) = fd.get_ref().send_to(&echo, &dest) {
        return (CheckStatus::L4CON, format!("echo request to {target}: {e}"));
    }
    let ours = |icmp: &[u8]| icmp[4..6] == id.to_be_bytes() && icmp[6..8] == seq.to_be_bytes();
    let wait = async {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => return fail(e, "waiting for the reply"),
            };
            let got = guard.try_io(|s| s.get_ref().recv_from(&mut buf));
            let Ok(Ok((n, from))) = got else {
                continue;
            };
            // SAFETY: recv_from initialised the first n bytes.
            let p: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
            let src = from.as_socket().map(|a| a.ip());
            // An IPv4 raw socket hands over the IP header too; an ICMPv6 one does not.
            let (icmp, inner_dst): (&[u8], EmbeddedDst) = if v6 {
                (p, |inner| {
                    let dst: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
                    Some((IpAddr::V6(Ipv6Addr::from(dst)), 40))
                })
            } else {
                let ihl = (p.first().copied().unwrap_or(0) & 0x0f) as usize * 4;
                if ihl < 20 || n < ihl {
                    continue;
                }
                (&p[ihl..], |inner| {
                    let ihl2 = (inner.first()? & 0x0f) as usize * 4;
                    let d = inner.get(16..20)?;
                    Some((IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3])), ihl2))
                })
            };
            if icmp.len() < 8 {
                continue;
            }
            let (reply, unreachable, exceeded) = if v6 { (129, 1, 3) } else { (0, 3, 11) };
            let kind = icmp[0];
            if kind == reply && src == Some(target) && ours(icmp) {
                return (CheckStatus::L4OK, "ICMP echo reply".to_string());
            }
            // An error about our request: the embedded header and the echo's id and seq.
            if kind == unreachable || kind == exceeded {
                let inner = &icmp[8..];
                if let Some((dst, hlen)) = inner_dst(inner) {
                    if dst == target && inner.len() >= hlen + 8 && ours(&inner[hlen..]) {
                        let from = src.map_or_else(|| "?".into(), |a| a.to_string());
                        return (
                            CheckStatus::L4CON,
                            format!("ICMP type {} code {} from {from}", icmp[0], icmp[1]),
                        );
                    }
                }
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => (
            CheckStatus::L4TOUT,
            format!("no ICMP echo reply from {target} within {timeout:?}"),
        ),
    }
}

/// Reads from `stream` until `enough` says so, the peer closes, or `left` runs out.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    left: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, bool> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + left;
    let mut chunk = [0u8; 2048];
    while !enough(&buf) && buf.len() < 16384 {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break,
            Err(_) => return Err(true),
        }
    }
    Ok(buf)
}

async fn http(
    mut stream: tokio::net::TcpStream,
    target: SocketAddr,
    m: &HealthMonitor,
    left: Duration,
) -> (CheckStatus, Option<u16>, String) {
    let host = if let Some(name) = &m.domain_name {
        format!("Host: {name}\r\n")
    } else if m.http_version == "HTTP/1.1" {
        match target.ip() {
            IpAddr::V4(a) => format!("Host: {a}\r\n"),
            IpAddr::V6(a) => format!("Host: [{a}]\r\n"),
        }
    } else {
        String::new()
    };
    let request = format!(
        "{} {} {}\r\n{host}Connection: close\r\n\r\n",
        m.http_method, m.url_path, m.http_version
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return (
            CheckStatus::L7RSP,
            None,
            format!("sending the request: {e}"),
        );
    }
    let line = match read_until(&mut stream, left, |b| b.contains(&b'\n')).await {
        Err(_) => return (CheckStatus::L7TOUT, None, "no HTTP answer in time".into()),
        Ok(b) => b,
    };
    let first = String::from_utf8_lossy(line.split(|&c| c == b'\n').next().unwrap_or(&[]))
        .trim()
        .to_string();
    let mut words = first.split_whitespace();
    let code = match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(c)) if v.starts_with("HTTP/") && (100..=599).contains(&c) => c,
        _ => {
            return (
                CheckStatus::L7RSP,
                None,
                format!("not an HTTP status line: {first:?}"),
            )
        }
    };
    if expect_matches(&m.expectation(), code) {
        (CheckStatus::L7OK, Some(code), first)
    } else {
        (CheckStatus::L7STS, Some(code), first)
    }
}

/// Whether HTTP status `code` is what `e` expects.
pub fn expect_matches(e: &HttpExpect, code: u16) -> bool {
    let s = code.to_string();
    match e {
        HttpExpect::Codes(ranges) => ranges.iter().any(|&(a, b)| (a..=b).contains(&code)),
        HttpExpect::Status { negate, code: want } => (s == *want) != *negate,
        HttpExpect::Regex { negate, pattern } => {
            let hit = regex::Regex::new(pattern).is_ok_and(|r| r.is_match(&s));
            hit != *negate
        }
        HttpExpect::Success => (200..400).contains(&code),
    }
}

/// A TLS 1.2 ClientHello offering the common ECDHE, RSA and TLS 1.3 suites: what
/// `option ssl-hello-chk` checks a server answers with a ServerHello.
fn client_hello() -> Vec<u8> {
    let suites: &[u16] = &[
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x009e, 0x009f,
        0xc013, 0xc014, 0x002f, 0x0035,
    ];
    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(73).wrapping_add(11)));
    body.push(0); // no session id
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut ext = Vec::new();
    // supported_groups: x25519, secp256r1, secp384r1
    ext.extend([
        0x00, 0x0a, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18,
    ]);
    // ec_point_formats: uncompressed
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256,
    // ecdsa_secp384r1_sha384, rsa_pss_rsae_sha384, rsa_pkcs1_sha384, rsa_pkcs1_sha1
    ext.extend([
        0x00, 0x0d, 0x00, 0x10, 0x00, 0x0e, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08,
        0x05, 0x05, 0x01, 0x02, 0x01,
    ]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

async fn tls_hello(
    mut stream: tokio::net::TcpStream,
    left: Duration,
) -> (CheckStatus, Option<u16>, String) {
    if let Err(e) = stream.write_all(&client_hello()).await {
        return (
            CheckStatus::L6RSP,
            None,
            format!("sending a ClientHello: {e}"),
        );
    }
    match read_until(&mut stream, left, |b| b.len() >= 6).await {
        Err(_) => (CheckStatus::L6TOUT, None, "no TLS answer in time".into()),
        Ok(b) if b.len() >= 6 && b[0] == 0x16 && b[1] == 0x03 && b[5] == 0x02 => (
            CheckStatus::L6OK,
            None,
            "Layer6 check passed (ServerHello)".into(),
        ),
        Ok(b) if b.first() == Some(&0x15) => (CheckStatus::L6RSP, None, "TLS alert".into()),
        Ok(b) => (
            CheckStatus::L6RSP,
            None,
            format!("not a ServerHello ({} bytes)", b.len()),
        ),
    }
}

/// One member to monitor.
#[derive(Debug, Clone)]
pub struct MonitorTarget {
    pub member_index: u32,
    pub member_id: String,
    pub target: SocketAddr,
    pub monitor: HealthMonitor,
    /// The member's verdict in the data path when the monitor starts.
    pub up: bool,
}

impl MonitorTarget {
    /// Two targets with the same identity are the same monitor: a reload keeps it running.
    pub fn same_monitor(&self, other: &MonitorTarget) -> bool {
        self.member_index == other.member_index
            && self.member_id == other.member_id
            && self.target == other.target
            && self.monitor == other.monitor
    }
}

/// Checks one member every `delay` until the future is dropped, sending its transitions and
/// recording every outcome on `board`. `info` is where a previous run left it (a restart or a
/// takeover keeps the counters and the rise/fall progress).
pub async fn monitor(
    lb: String,
    vip: IpAddr,
    t: MonitorTarget,
    tx: UnboundedSender<Transition>,
    board: Board,
    live: crate::dataplane::SharedLive,
) {
    let (rise, fall) = (t.monitor.max_retries, t.monitor.max_retries_down);
    let mut checker = Checker::new(rise, fall, t.up);
    let mut info = {
        let b = board.lock().unwrap();
        b.get(&t.member_index).cloned()
    }
    .filter(|i| i.up == t.up && (i.rise, i.fall) == (rise, fall))
    .unwrap_or(CheckInfo {
        last_change: unix_now(),
        up: t.up,
        rise,
        fall,
        ..Default::default()
    });
    if info.up {
        checker.failures = info.progress;
    } else {
        checker.successes = info.progress;
    }
    board.lock().unwrap().insert(t.member_index, info.clone());
    let mut tick = tokio::time::interval(t.monitor.delay());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = check(vip, t.target, &t.monitor).await;
        if r.status.ok() {
            // Passive health: a passing check forgives the member's failed connections.
            live.get().clear_failures(t.member_index);
        }
        let changed = checker.record(r.status.ok());
        info.status = Some(r.status);
        info.code = r.code;
        info.duration_ms = r.duration.as_millis() as u64;
        info.desc = r.desc.clone();
        if !r.status.ok() {
            info.chkfail += 1;
        }
        if let Some(up) = changed {
            let now = unix_now();
            if !up {
                info.chkdown += 1;
            } else {
                info.downtime_secs += now.saturating_sub(info.last_change);
            }
            info.last_change = now;
            info.up = up;
        }
        info.progress = if checker.up {
            checker.failures
        } else {
            checker.successes
        };
        board.lock().unwrap().insert(t.member_index, info.clone());
        if let Some(up) = changed {
            let tr = Transition {
                loadbalancer: lb.clone(),
                member_index: t.member_index,
                member_id: t.member_id.clone(),
                up,
                reason: format!("{}: {}", r.status.name(), r.desc),
            };
            if tx.send(tr).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drop-in's `timeout check` bounds the wait for the answer once connected, whatever
    /// is left of `timeout`: a server answering after 300 ms fails a 100 ms read timeout
    /// and passes a 1 s one, with the same 1 s `timeout`.
    #[test]
    fn the_read_timeout_bounds_the_answer_after_the_connect() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut c, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut b = [0u8; 512];
                        let _ = c.read(&mut b).await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
                    });
                }
            });
            let monitor = |read: f64| HealthMonitor {
                kind: MonitorType::HTTP,
                delay: 2.0,
                timeout: 1.0,
                max_retries: 1,
                max_retries_down: 1,
                http_method: "GET".into(),
                url_path: "/".into(),
                http_version: "HTTP/1.0".into(),
                domain_name: None,
                expected_codes: "200".into(),
                http_expect: None,
                read_timeout: Some(read),
            };
            let vip: IpAddr = "127.0.0.1".parse().unwrap();
            let r = check(vip, target, &monitor(0.1)).await;
            assert_eq!(r.status.name(), "L7TOUT", "{r:?}");
            let r = check(vip, target, &monitor(1.0)).await;
            assert_eq!(r.status.name(), "L7OK", "{r:?}");
        });
    }

    #[test]
    fn falls_after_consecutive_failures_only() {
        let mut c = Checker::new(2, 3, true);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None); // resets the failure run
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(false));
        assert!(!c.up);
        assert_eq!(c.record(false), None);
    }

    #[test]
    fn rises_after_consecutive_successes() {
        let mut c = Checker::new(2, 1, true);
        assert_eq!(c.record(false), Some(false));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
        assert!(c.up);
    }

    #[test]
    fn expectations_as_haproxy_and_octavia_write_them() {
        let codes = HttpExpect::Codes(crate::config::parse_expected_codes("200,202-204").unwrap());
        assert!(expect_matches(&codes, 203) && !expect_matches(&codes, 201));
        let re = HttpExpect::Regex {
            negate: false,
            pattern: "^(200|202)$".into(),
        };
        assert!(expect_matches(&re, 202) && !expect_matches(&re, 500));
        let not500 = HttpExpect::Status {
            negate: true,
            code: "500".into(),
        };
        assert!(expect_matches(&not500, 200) && !expect_matches(&not500, 500));
        assert!(
            expect_matches(&HttpExpect::Success, 302) && !expect_matches(&HttpExpect::Success, 404)
        );
    }

    #[test]
    fn the_client_hello_is_one_well_formed_record() {
        let h = client_hello();
        assert_eq!(&h[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(u16::from_be_bytes([h[3], h[4]]) as usize, h.len() - 5);
        assert_eq!(h[5], 0x01, "ClientHello");
        assert_eq!(
            u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize,
            h.len() - 9
        );
    }

    #[test]
    fn a_member_that_is_down_when_monitoring_restarts_can_rise() {
        let mut c = Checker::new(2, 2, false);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
    }
}
