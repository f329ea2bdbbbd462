//! The drop-in daemon's own log lines (start, takeover, member UP/DOWN), sent where the
//! configuration's first `log` line says, as haproxy sends its logs: RFC 3164 datagrams to a
//! unix socket (`/dev/log`) or to `[udp@]host[:port]`, with its facility. Without a `log`
//! line, nothing is logged (as haproxy).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::unix::net::UnixDatagram,
    sync::OnceLock,
};

use tracing_subscriber::fmt::MakeWriter;

use super::config::Log;

#[derive(Debug, Clone)]
enum Dest {
    Unix(String),
    Udp(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct Target {
    dest: Dest,
    facility: u8,
}

static TARGET: OnceLock<Option<Target>> = OnceLock::new();

/// haproxy's facility names and numbers.
pub fn facility(name: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2",
        "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
        "local5", "local6", "local7",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

impl Target {
    /// The target of a `log` line; None for targets lb does not send to.
    pub fn of(log: &Log) -> Option<Target> {
        let facility = facility(&log.facility)?;
        let t = log.target.as_str();
        let dest = if t.starts_with('/') {
            Dest::Unix(t.into())
        } else {
            let t = t
                .strip_prefix("udp@")
                .or_else(|| t.strip_prefix("ipv4@"))
                .unwrap_or(t);
            let with_port = if t.contains(':') {
                t.to_string()
            } else {
                format!("{t}:514")
            };
            Dest::Udp(with_port.parse().ok()?)
        };
        Some(Target { dest, facility })
    }
}

/// Sets where the daemon's log lines go (the first usable `log` line of `global`).
pub fn init(logs: &[Log]) {
    let _ = TARGET.set(logs.iter().find_map(Target::of));
}

/// One log line, sent when dropped.
pub struct Line {
    buf: Vec<u8>,
    severity: u8,
}

impl io::Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let Some(Some(t)) = TARGET.get() else { return };
        let msg = String::from_utf8_lossy(&self.buf);
        let now = chrono_like_now();
        let datagram = format!(
            "<{}>{now} lb[{}]: {}",
            t.facility as u32 * 8 + self.severity as u32,
            std::process::id(),
            msg.trim_end()
        );
        let _ = match &t.dest {
            Dest::Unix(p) => {
                UnixDatagram::unbound().and_then(|s| s.send_to(datagram.as_bytes(), p))
            }
            Dest::Udp(a) => {
                UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(datagram.as_bytes(), a))
            }
        };
    }
}

/// RFC 3164's timestamp, `Mmm dd hh:mm:ss`, in UTC.
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {d:>2} {h:02}:{m:02}:{s:02}",
        MONTHS[(month - 1) as usize]
    )
}

/// The `MakeWriter` of the daemon's tracing output.
pub struct Writer;

impl Writer {
    pub fn from_env() -> Line {
        Line {
            buf: Vec::new(),
            severity: 6,
        }
    }
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Writer::from_env()
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        let severity = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        Line {
            buf: Vec::new(),
            severity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_facilities_as_haproxy_writes_them() {
        let log = |t: &str, f: &str| Log {
            target: t.into(),
            facility: f.into(),
            level: None,
            min_level: None,
        };
        assert!(matches!(
            Target::of(&log("/dev/log", "local0")),
            Some(Target {
                dest: Dest::Unix(_),
                facility: 16
            })
        ));
        assert!(
            matches!(Target::of(&log("127.0.0.1", "local1")), Some(Target { dest: Dest::Udp(a), facility: 17 }) if a.port() == 514)
        );
        assert!(
            matches!(Target::of(&log("udp@10.0.0.9:5140", "daemon")), Some(Target { dest: Dest::Udp(a), .. }) if a.port() == 5140)
        );
        assert!(Target::of(&log("/dev/log", "nope")).is_none());
        assert_eq!(chrono_like_now().len(), 15);
    }
}
