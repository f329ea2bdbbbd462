//! The drop-in daemon's own log lines (start, takeover, member UP/DOWN), sent where the
//! configuration's `log` lines say, as haproxy sends its logs (`crate::syslog`: RFC 3164
//! datagrams to a unix socket such as `/dev/log` or to `[udp@]host[:port]`, with its
//! facility; a line's level bounds what it takes). Without a `log` line, nothing is logged
//! (as haproxy). The connection log (`option tcplog`) goes to the same targets.

use std::{io, sync::OnceLock};

use tracing_subscriber::fmt::MakeWriter;

use super::config::Log;
use crate::syslog::{Sender, Target};

static SENDER: OnceLock<Sender> = OnceLock::new();

/// The tag haproxy's lines carry (syslog's program name): log routing set up for haproxy
/// keeps working.
pub const TAG: &str = "haproxy";

/// The targets of `log` lines; lines lb cannot send to (`log global` in `global`, a ring)
/// are left out.
pub fn targets(logs: &[Log]) -> Vec<Target> {
    logs.iter().filter_map(target).collect()
}

/// The target of one `log` line, if lb can send to it.
pub fn target(l: &Log) -> Option<Target> {
    Target::new(&l.target, &l.facility, l.level.as_deref()).ok()
}

/// Sets where the daemon's log lines go (the usable `log` lines of `global`).
pub fn init(logs: &[Log]) {
    let _ = SENDER.set(Sender::new(TAG, targets(logs)));
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
        let Some(s) = SENDER.get() else { return };
        let msg = String::from_utf8_lossy(&self.buf);
        s.send(self.severity, msg.trim_end());
    }
}

/// The `MakeWriter` of the daemon's tracing output.
pub struct Writer;

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::new(),
            severity: 6,
        }
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
    fn log_lines_lb_cannot_send_to_are_left_out() {
        let log = |t: &str, f: &str, l: Option<&str>| Log {
            target: t.into(),
            facility: f.into(),
            level: l.map(Into::into),
            min_level: None,
        };
        let t = targets(&[
            log("/dev/log", "local0", None),
            log("/dev/log", "local1", Some("notice")),
            log("global", "", None),
            log("ring@buf", "local0", None),
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].facility, 16);
        assert_eq!(t[1].max_level, 5);
    }
}
