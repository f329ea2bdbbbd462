//! Log targets as haproxy's `log` line names them, and RFC 3164 datagrams as haproxy sends
//! them: `<PRI>Mmm dd hh:mm:ss tag[pid]: message` to a unix datagram socket (`/dev/log` or
//! any path) or to `[udp@|ipv4@]host[:port]` (514 by default); `stdout`/`stderr` get the
//! message alone, one per line (for a journal, which adds its own stamp).
//!
//! Used by the connection log (`crate::connlog`, `[daemon] connection_log`) and by the haproxy
//! drop-in's own lines (`crate::haproxy::syslog`).

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    os::unix::net::UnixDatagram,
    sync::Mutex,
};

/// Where a target sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Unix(String),
    Udp(SocketAddr),
    Stdout,
    Stderr,
}

/// One `log` line: where, which facility, and the most verbose level it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dest: Dest,
    pub facility: u8,
    /// Messages above this severity (numerically) are not sent: `log /dev/log local1 notice`
    /// takes notice and worse, not info.
    pub max_level: u8,
}

/// haproxy's facility names and numbers.
pub fn facility(name: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2",
        "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
        "local5", "local6", "local7",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

/// Syslog severities by name.
pub fn level(name: &str) -> Option<u8> {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

/// Severity of a connection's log line (haproxy logs traffic at `info`).
pub const INFO: u8 = 6;

impl Target {
    /// A target from its parts: the target word, the facility, the optional level.
    pub fn new(
        target: &str,
        facility_name: &str,
        level_name: Option<&str>,
    ) -> Result<Target, String> {
        let facility = facility(facility_name)
            .ok_or_else(|| format!("unknown syslog facility {facility_name:?}"))?;
        let max_level = match level_name {
            Some(l) => level(l).ok_or_else(|| format!("unknown syslog level {l:?}"))?,
            None => 7,
        };
        let dest = match target {
            "stdout" => Dest::Stdout,
            "stderr" => Dest::Stderr,
            t if t.starts_with('/') => Dest::Unix(t.into()),
            t => {
                let t = t
                    .strip_prefix("udp@")
                    .or_else(|| t.strip_prefix("ipv4@"))
                    .or_else(|| t.strip_prefix("udp4@"))
                    .unwrap_or(t);
                let with_port = if t.contains(':') {
                    t.to_string()
                } else {
                    format!("{t}:514")
                };
                Dest::Udp(with_port.parse().map_err(|_| {
                    format!(
                        "{target:?} is not a target lb sends to (a unix socket path, \
                         [udp@]address[:port], stdout or stderr)"
                    )
                })?)
            }
        };
        Ok(Target {
            dest,
            facility,
            max_level,
        })
    }

    /// A target in haproxy's `log` syntax: `<target> [len <n>] [format <f>] <facility>
    /// [<level> [<minlevel>]]`, e.g. `/dev/log local0`, `udp@10.0.0.9:514 local1 info`,
    /// `stderr daemon`.
    pub fn parse(line: &str) -> Result<Target, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((target, rest)) = words.split_first() else {
            return Err("expects a target and a facility, e.g. \"/dev/log local0\"".into());
        };
        let mut rest = rest;
        while let [w, _, tail @ ..] = rest {
            if matches!(*w, "len" | "format" | "sample") {
                rest = tail;
            } else {
                break;
            }
        }
        let Some((fac, levels)) = rest.split_first() else {
            return Err(format!(
                "{line:?} names no facility (e.g. \"{target} local0\")"
            ));
        };
        Target::new(target, fac, levels.first().copied())
    }

    /// Whether a message of `severity` goes to this target.
    pub fn takes(&self, severity: u8) -> bool {
        severity <= self.max_level
    }
}

/// Sends lines to a set of targets, keeping one connected socket per target.
pub struct Sender {
    tag: String,
    targets: Vec<(Target, Mutex<Option<Socket>>)>,
}

/// A datagram socket connected to its target (a syslog daemon that restarts makes the next
/// send fail; the socket is made again for the send after).
enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

impl Socket {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Socket::Unix(s) => s.as_raw_fd(),
            Socket::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// How long a send may wait for a syslog daemon that does not read (its socket's queue
/// full): then the lines left are counted as not sent, and the sender goes on.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

fn connect(dest: &Dest) -> Option<Socket> {
    match dest {
        Dest::Unix(p) => {
            let s = UnixDatagram::unbound().ok()?;
            s.set_write_timeout(Some(SEND_TIMEOUT)).ok()?;
            s.connect(p).ok()?;
            Some(Socket::Unix(s))
        }
        Dest::Udp(a) => {
            let any = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = UdpSocket::bind(any).ok()?;
            s.set_write_timeout(Some(SEND_TIMEOUT)).ok()?;
            s.connect(a).ok()?;
            Some(Socket::Udp(s))
        }
        _ => None,
    }
}

/// Sends one datagram per line, `header` + line, with as few `sendmmsg` calls as the socket
/// takes; returns how many were sent.
fn send_lines(sock: &Socket, header: &[u8], lines: &[&str]) -> usize {
    const BATCH: usize = 64;
    let mut sent = 0;
    while sent < lines.len() {
        let chunk = &lines[sent..lines.len().min(sent + BATCH)];
        let mut iov: Vec<[libc::iovec; 2]> = chunk
            .iter()
            .map(|l| {
                [
                    libc::iovec {
                        iov_base: header.as_ptr() as *mut libc::c_void,
                        iov_len: header.len(),
                    },
                    libc::iovec {
                        iov_base: l.as_ptr() as *mut libc::c_void,
                        iov_len: l.len(),
                    },
                ]
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: a zeroed msghdr is a valid empty one; the iovecs outlive the call.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = v.as_mut_ptr();
                h.msg_iovlen = 2;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: msgs and the buffers they point to are valid for the call.
        let n = unsafe { libc::sendmmsg(sock.fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n <= 0 {
            break;
        }
        sent += n as usize;
    }
    sent
}

impl Sender {
    pub fn new(tag: &str, targets: Vec<Target>) -> Sender {
        Sender {
            tag: tag.into(),
            targets: targets.into_iter().map(|t| (t, Mutex::new(None))).collect(),
        }
    }

    /// Sends `msg` at `severity` to every target that takes it; the number of targets it
    /// could not be sent to (no listener on the socket, a full socket buffer).
    pub fn send(&self, severity: u8, msg: &str) -> usize {
        self.send_all(severity, &[msg])
    }

    /// Sends each of `lines` at `severity` to every target that takes it, one datagram per
    /// line; the number of (line, target) pairs not sent.
    pub fn send_all(&self, severity: u8, lines: &[&str]) -> usize {
        let mut failed = 0;
        let mut stamp = None;
        for (t, sock) in &self.targets {
            if !t.takes(severity) || lines.is_empty() {
                continue;
            }
            let sent = match &t.dest {
                Dest::Stdout | Dest::Stderr => {
                    let mut text = String::new();
                    for l in lines {
                        text.push_str(l);
                        text.push('\n');
                    }
                    let ok = if t.dest == Dest::Stdout {
                        std::io::stdout().lock().write_all(text.as_bytes()).is_ok()
                    } else {
                        std::io::stderr().lock().write_all(text.as_bytes()).is_ok()
                    };
                    if ok {
                        lines.len()
                    } else {
                        0
                    }
                }
                dest => {
                    let stamp = stamp.get_or_insert_with(rfc3164_now);
                    let header = format!(
                        "<{}>{stamp} {}[{}]: ",
                        t.facility as u32 * 8 + severity as u32,
                        self.tag,
                        std::process::id(),
                    );
                    let mut sock = sock.lock().unwrap();
                    if sock.is_none() {
                        *sock = connect(dest);
                    }
                    match sock.as_ref() {
                        Some(s) => {
                            let n = send_lines(s, header.as_bytes(), lines);
                            if n < lines.len() {
                                // Made again for the next send (a restarted syslog daemon).
                                *sock = None;
                            }
                            n
                        }
                        None => 0,
                    }
                }
            };
            failed += lines.len() - sent;
        }
        failed
    }
}

/// Local civil time of `secs` since the epoch (`tm_mon` counts months from 0).
pub fn local_time(secs: i64) -> libc::tm {
    let t: libc::time_t = secs as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm
}

pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// RFC 3164's timestamp, `Mmm dd hh:mm:ss`, in local time (as haproxy writes it).
pub fn rfc3164_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let tm = local_time(secs);
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_facilities_and_levels_as_haproxy_writes_them() {
        let t = Target::parse("/dev/log local0").unwrap();
        assert_eq!(t.dest, Dest::Unix("/dev/log".into()));
        assert_eq!((t.facility, t.max_level), (16, 7));
        let t = Target::parse("/dev/log local1 notice").unwrap();
        assert!(!t.takes(INFO) && t.takes(5));
        let t = Target::parse("127.0.0.1 local1").unwrap();
        assert!(matches!(t.dest, Dest::Udp(a) if a.port() == 514));
        let t = Target::parse("udp@10.0.0.9:5140 len 1024 daemon info").unwrap();
        assert!(matches!(t.dest, Dest::Udp(a) if a.port() == 5140));
        assert_eq!(t.facility, 3);
        assert_eq!(
            Target::parse("stderr format raw daemon").unwrap().dest,
            Dest::Stderr
        );
        assert!(Target::parse("/dev/log nope")
            .unwrap_err()
            .contains("\"nope\""));
        assert!(Target::parse("/dev/log local0 loud")
            .unwrap_err()
            .contains("\"loud\""));
        assert!(Target::parse("/dev/log").unwrap_err().contains("facility"));
        assert!(Target::parse("not-an-address local0").is_err());
        assert_eq!(rfc3164_now().len(), 15);
    }

    #[test]
    fn datagrams_carry_priority_stamp_tag_and_pid() {
        let dir = std::env::temp_dir().join(format!("lb-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let s = Sender::new(
            "haproxy",
            vec![
                Target::parse(&format!("{} local0", path.display())).unwrap(),
                Target::parse(&format!("{} local1 notice", path.display())).unwrap(),
            ],
        );
        assert_eq!(s.send(INFO, "hello"), 0);
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        // local0 (16) * 8 + info (6) = 134; local1 notice does not take info.
        assert!(got.starts_with("<134>"), "{got}");
        assert!(
            got.ends_with(&format!(" haproxy[{}]: hello", std::process::id())),
            "{got}"
        );
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut buf).is_err(), "one datagram only");
        // The syslog daemon goes away: its socket closed and removed.
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.send(INFO, "nobody listens"), 1);
        assert_eq!(s.send(INFO, "still nobody"), 1);
        let _ = std::fs::remove_dir(&dir);
    }
}
