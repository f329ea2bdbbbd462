//! One connection as haproxy's `option tcplog` line:
//!
//! ```text
//! %ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq
//! 10.0.0.5:41234 [30/Nov/2026:07:31:02.114] df25900f 574a31da/45481748 0/1/5007 2182 -- 1/1/1/1/0 0/0
//! ```
//!
//! client address and port, accept date, frontend (listener id), backend/server (pool id /
//! member id), times in ms (queue: always 0, lb has no queue; connect: to the member's
//! SYN-ACK, -1 if it never answered; total), bytes from the member to the client, the
//! termination state, and the connection counts at the end (process, frontend, backend,
//! server; each including the connection logged, as haproxy's) and retries ("+" when the
//! connection was redispatched to another member), then the queues (0/0).

use std::{fmt::Write as _, net::IpAddr};

use lb_common::{
    ConnEvent, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_RST, CT_RST_MEMBER, CT_SYNACK,
};

/// How a connection ended, as lb saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Closed by the data path: its `CT_*` bits then.
    Closed(u64),
    /// Removed by the expiry, idle past its state's timeout: its `CT_*` bits then.
    Expired(u64),
}

/// haproxy's two-letter termination state for an end:
/// - `--` both sides closed (FIN both ways);
/// - `CD` / `SD` the client / the member reset an established connection;
/// - `SC` the member refused the connection (a RST to the SYN, retries used up);
/// - `CC` the client gave up (RST or FIN) before the member answered;
/// - `sC` the member never answered within `timeout_member_connect` (haproxy's `timeout
///   connect`);
/// - `cD` the connection went idle past its data timeout (haproxy's `timeout client`).
pub fn termination(end: End) -> &'static str {
    match end {
        End::Closed(s) => {
            let answered = s & CT_SYNACK != 0;
            if s & CT_RST != 0 {
                match (s & CT_RST_MEMBER != 0, answered) {
                    (true, true) => "SD",
                    (true, false) => "SC",
                    (false, true) => "CD",
                    (false, false) => "CC",
                }
            } else if s & (CT_FIN_CLIENT | CT_FIN_MEMBER) == CT_FIN_CLIENT | CT_FIN_MEMBER {
                if answered {
                    "--"
                } else {
                    "CC"
                }
            } else {
                "--"
            }
        }
        End::Expired(s) => {
            if s & CT_SYNACK == 0 {
                "sC"
            } else {
                "cD"
            }
        }
    }
}

/// Whether a flow's end is a connection haproxy would have logged: a handshake the member
/// answered but the client never completed (a spoofed SYN, a client gone) is one the
/// kernel in front of haproxy would have kept to itself, never `accept()`ed: not logged.
/// Established connections are, and so are handshakes the member refused or never
/// answered (haproxy's `SC` and `sC`).
pub fn loggable(end: End) -> bool {
    let (End::Closed(s) | End::Expired(s)) = end;
    s & CT_ESTABLISHED != 0 || s & CT_SYNACK == 0
}

/// Everything one line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    /// IPv6 without brackets, as haproxy's `%ci:%cp` (`2001:db8::1:41234`).
    pub client: IpAddr,
    pub client_port: u16,
    /// Accept date: seconds and milliseconds since the epoch.
    pub accepted_unix_ms: i64,
    pub frontend: &'a str,
    pub backend: &'a str,
    pub server: &'a str,
    /// -1: the member never answered.
    pub connect_ms: i64,
    pub total_ms: u64,
    pub bytes: u64,
    pub end: End,
    pub actconn: i64,
    pub feconn: i64,
    pub beconn: i64,
    pub srv_conn: i64,
    pub retries: u32,
    pub redispatched: bool,
}

/// The times of a data path event, in ms: (accept date since the epoch, connect (-1: the
/// member never answered), total). `now_mono_ns` and `now_unix_ms`: the same instant on both
/// clocks.
pub fn times(ev: &ConnEvent, now_mono_ns: u64, now_unix_ms: i64) -> (i64, i64, u64) {
    let accepted_unix_ms =
        now_unix_ms - (now_mono_ns.saturating_sub(ev.accepted_ns) / 1_000_000) as i64;
    let connect_ms = ev.connect_ms as i64 - 1;
    let total_ms = ev.ended_ns.saturating_sub(ev.accepted_ns) / 1_000_000;
    (accepted_unix_ms, connect_ms, total_ms)
}

/// `dd/Mmm/yyyy:HH:MM:SS` of the last second asked for: lines come in bursts within the
/// same second, and the local time conversion is the costly part of the date.
#[derive(Default)]
pub struct Dates {
    second: Option<i64>,
    text: String,
}

impl Dates {
    /// `dd/Mmm/yyyy:HH:MM:SS.mmm` in local time, haproxy's `%t`, appended to `out`.
    pub fn write(&mut self, out: &mut String, unix_ms: i64) {
        let sec = unix_ms.div_euclid(1000);
        if self.second != Some(sec) {
            let tm = crate::syslog::local_time(sec);
            self.text.clear();
            let _ = write!(
                self.text,
                "{:02}/{}/{:04}:{:02}:{:02}:{:02}",
                tm.tm_mday,
                crate::syslog::MONTHS[tm.tm_mon.clamp(0, 11) as usize],
                tm.tm_year + 1900,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec,
            );
            self.second = Some(sec);
        }
        out.push_str(&self.text);
        let _ = write!(out, ".{:03}", unix_ms.rem_euclid(1000));
    }
}

/// Appends the line to `out`.
pub fn write(out: &mut String, dates: &mut Dates, r: &Record) {
    let _ = write!(out, "{}:{} [", r.client, r.client_port);
    dates.write(out, r.accepted_unix_ms);
    let _ = write!(
        out,
        "] {} {}/{} 0/{}/{} {} {} {}/{}/{}/{}/{}{} 0/0",
        r.frontend,
        r.backend,
        r.server,
        r.connect_ms,
        r.total_ms,
        r.bytes,
        termination(r.end),
        r.actconn,
        r.feconn,
        r.beconn,
        r.srv_conn,
        if r.redispatched { "+" } else { "" },
        r.retries,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_date(unix_ms: i64) -> String {
        let mut s = String::new();
        Dates::default().write(&mut s, unix_ms);
        s
    }

    fn format(r: &Record) -> String {
        let mut s = String::new();
        write(&mut s, &mut Dates::default(), r);
        s
    }
    use lb_common::{CT_COUNTED, CT_SYN};

    const EST: u64 = CT_SYN | CT_SYNACK | CT_ESTABLISHED;

    #[test]
    fn termination_states_follow_haproxys_names() {
        let fins = CT_FIN_CLIENT | CT_FIN_MEMBER;
        assert_eq!(termination(End::Closed(EST | fins)), "--");
        assert_eq!(termination(End::Closed(EST | CT_COUNTED | CT_RST)), "CD");
        assert_eq!(termination(End::Closed(EST | CT_RST | CT_RST_MEMBER)), "SD");
        assert_eq!(
            termination(End::Closed(CT_SYN | CT_RST | CT_RST_MEMBER)),
            "SC"
        );
        assert_eq!(termination(End::Closed(CT_SYN | CT_RST)), "CC");
        assert_eq!(termination(End::Expired(CT_SYN)), "sC");
        assert_eq!(termination(End::Expired(EST)), "cD");
        assert!(loggable(End::Expired(CT_SYN)));
        assert!(loggable(End::Expired(EST)));
        assert!(
            !loggable(End::Expired(CT_SYN | CT_SYNACK)),
            "a spoofed SYN's flow"
        );
        assert!(!loggable(End::Closed(CT_SYN | CT_SYNACK | CT_RST)));
        assert!(loggable(End::Closed(CT_SYN | CT_RST | CT_RST_MEMBER)));
    }

    #[test]
    fn a_line_has_haproxys_fields_in_haproxys_order() {
        let r = Record {
            client: std::net::Ipv4Addr::new(10, 0, 0, 5).into(),
            client_port: 41234,
            accepted_unix_ms: 1_796_023_862_114,
            frontend: "df25900f",
            backend: "574a31da",
            server: "45481748",
            connect_ms: 1,
            total_ms: 5007,
            bytes: 2182,
            end: End::Closed(EST | CT_FIN_CLIENT | CT_FIN_MEMBER),
            actconn: 3,
            feconn: 2,
            beconn: 2,
            srv_conn: 1,
            retries: 1,
            redispatched: true,
        };
        let line = format(&r);
        let re = regex::Regex::new(
            r"^10\.0\.0\.5:41234 \[[0-9]{2}/[A-Z][a-z]{2}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2}\.114\] df25900f 574a31da/45481748 0/1/5007 2182 -- 3/2/2/1/\+1 0/0$",
        )
        .unwrap();
        assert!(re.is_match(&line), "{line}");
        let never = Record {
            connect_ms: -1,
            redispatched: false,
            retries: 0,
            end: End::Expired(CT_SYN),
            ..r
        };
        assert!(format(&never).contains(" 0/-1/5007 2182 sC 3/2/2/1/0 0/0"));
        let v6 = Record {
            client: "2001:db8::1".parse().unwrap(),
            ..r
        };
        assert!(
            format(&v6).starts_with("2001:db8::1:41234 ["),
            "{}",
            format(&v6)
        );
        // The cached date of a second is the date of that second.
        let mut dates = Dates::default();
        let (mut a, mut b) = (String::new(), String::new());
        dates.write(&mut a, 1_796_023_862_114);
        dates.write(&mut b, 1_796_023_862_999);
        assert_eq!(a[..20], b[..20]);
        assert_eq!(a, accept_date(1_796_023_862_114));
        assert_eq!(b, accept_date(1_796_023_862_999));
    }

    #[test]
    fn times_come_from_the_monotonic_clock() {
        let ev = ConnEvent {
            accepted_ns: 10_000_000_000,
            ended_ns: 15_007_000_000,
            connect_ms: 2,
            ..Default::default()
        };
        // Now is 20 s monotonic, i.e. 1_000_000 ms on the wall clock.
        let (accepted, connect, total) = times(&ev, 20_000_000_000, 1_000_000);
        assert_eq!((accepted, connect, total), (990_000, 1, 5007));
    }
}
