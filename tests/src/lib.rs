//! Shared pieces of lb's integration tests: unique namespaces that always go away, a packet
//! builder with real checksums, and waiting on conditions instead of sleeping.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod agent;
pub mod fault;
pub mod fixture;
pub mod notify;
pub mod skip;
pub mod sshd;
pub mod stream;
pub mod tls;
pub mod topology;

/// The IPv6 VIP of the tests' IPv6 load balancers, and the client's IPv6 address (members:
/// `topology::v6_of`).
pub const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfa);
pub const CLIENT6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

pub use lb::node::in_netns;
use lb_common::checksum;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Configuration text `t` (examples/seed.toml, or a test's copy of it) with the listener's
/// `half_open_limit` set (0: SYN cookies always; -1: never). Panics if the line it goes
/// after is gone, so that no test runs with the default unawares.
pub fn with_half_open_limit(t: &str, limit: impl std::fmt::Display) -> String {
    assert!(
        t.contains("retries = 3 "),
        "no 'retries = 3' line to put half_open_limit after"
    );
    t.replacen(
        "retries = 3 ",
        &format!("retries = 3\nhalf_open_limit = {limit} "),
        1,
    )
}

/// Configuration text `t` (the seed's) with a DNS listener beside its ssh one: UDP port 53
/// on the same VIP, listener keys `extra` (lines, each ending in a newline), and a UDP pool
/// of the same two member addresses (least connections, no monitor).
pub fn with_udp_listener(t: &str, extra: &str) -> String {
    format!(
        "{t}
[[loadbalancer.listener]]
id = \"dns\"
protocol = \"UDP\"
protocol_port = 53
default_pool_id = \"dns-pool\"
{extra}
[[loadbalancer.pool]]
id = \"dns-pool\"
protocol = \"UDP\"
lb_algorithm = \"LEAST_CONNECTIONS\"

[[loadbalancer.pool.member]]
id = \"dns1\"
address = \"10.0.0.2\"
protocol_port = 53

[[loadbalancer.pool.member]]
id = \"dns2\"
address = \"10.0.0.4\"
protocol_port = 53
"
    )
}

/// A name unique to this process and call: `lbt<pid>-<tag><n>` (fits IFNAMSIZ when short).
pub fn unique(tag: &str) -> String {
    format!(
        "lbt{}{}{}",
        std::process::id() % 100_000,
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its stderr if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace removed on drop, even when the test panics.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    /// `ip -n <ns> <args>`
    pub fn ip(&self, args: &str) -> String {
        sh(&format!("ip -n {} {args}", self.name))
    }

    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `wait_for` without the panic (clean-ups in `Drop`): None if `f` never answered.
pub fn wait_for_quietly<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the kernel lets us do BPF at all: as root. Otherwise the test is a skip
/// (`skip::skip`: a failure in CI and in the VM).
pub fn require_root() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        skip::skip(
            "needs root (BPF, namespaces); run `cargo xtask test` as root or `cargo xtask vm-test`",
        );
        return false;
    }
    true
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The IPv4 header fields the builders set; the rest are zero.
struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    df: bool,
    ttl: u8,
}

impl Ipv4 {
    /// An Ethernet frame carrying this header (with `options`, a multiple of 4 bytes, and a
    /// correct checksum) and `payload`.
    fn frame(&self, src_mac: [u8; 6], dst_mac: [u8; 6], options: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let ihl = 20 + options.len();
        let mut ip = vec![0u8; 20];
        ip.extend_from_slice(options);
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        if self.df {
            ip[6] = 0x40;
        }
        ip[8] = self.ttl;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::with_capacity(14 + ip.len() + payload.len());
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(payload);
        f
    }
}

/// One Ethernet/IPv4/TCP frame, built with correct checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub win: u16,
    pub payload: Vec<u8>,
    pub ip_id: u16,
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// TCP options (a multiple of 4 bytes).
    pub tcp_options: Vec<u8>,
}

impl Tcp {
    pub fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Tcp {
        Tcp {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src,
            dst,
            sport,
            dport,
            seq: 1000,
            ack: 0,
            flags,
            win: 64240,
            payload: vec![],
            ip_id: 0x1c46,
            ttl: 64,
            ip_options: vec![],
            tcp_options: vec![],
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Tcp {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// TCP options, padded with NOPs to a multiple of 4 bytes.
    pub fn options(mut self, o: &[u8]) -> Tcp {
        self.tcp_options = o.to_vec();
        while !self.tcp_options.len().is_multiple_of(4) {
            self.tcp_options.push(1);
        }
        self
    }

    /// The timestamp option's (TSval, TSecr), if the segment carries one.
    pub fn timestamps(&self) -> Option<(u32, u32)> {
        let o = &self.tcp_options;
        let mut i = 0;
        while i + 1 < o.len() {
            match o[i] {
                0 => return None,
                1 => i += 1,
                8 if o[i + 1] == 10 && i + 10 <= o.len() => {
                    let v = |a: usize| u32::from_be_bytes(o[a..a + 4].try_into().unwrap());
                    return Some((v(i + 2), v(i + 6)));
                }
                _ => i += (o[i + 1] as usize).max(2),
            }
        }
        None
    }

    pub fn payload(mut self, p: &[u8]) -> Tcp {
        self.payload = p.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp.extend_from_slice(&self.tcp_options);
        tcp[0..2].copy_from_slice(&self.sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = ((20 + self.tcp_options.len()) as u8 / 4) << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&self.win.to_be_bytes());
        tcp.extend_from_slice(&self.payload);
        let c = checksum::l4_ipv4(self.src.octets(), self.dst.octets(), 6, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let ip = Ipv4 {
            src: self.src,
            dst: self.dst,
            proto: 6,
            id: self.ip_id,
            df: true,
            ttl: self.ttl,
        };
        ip.frame(self.src_mac, self.dst_mac, &self.ip_options, &tcp)
    }

    /// Parses a frame this builder could have produced (for reading what the program emitted).
    pub fn parse(f: &[u8]) -> Option<Tcp> {
        if f.len() < 54 || f[12..14] != [8, 0] || f[14] >> 4 != 4 || f[23] != 6 {
            return None;
        }
        let ihl = ((f[14] & 0x0f) as usize) * 4;
        if ihl < 20 || f.len() < 14 + ihl {
            return None;
        }
        let ip = &f[14..14 + ihl];
        let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        if tot < ihl + 20 || f.len() < 14 + tot {
            return None;
        }
        let tcp = &f[14 + ihl..14 + tot];
        let doff = ((tcp[12] >> 4) as usize) * 4;
        if doff < 20 || doff > tcp.len() {
            return None;
        }
        Some(Tcp {
            dst_mac: f[0..6].try_into().unwrap(),
            src_mac: f[6..12].try_into().unwrap(),
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
            ack: u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
            flags: tcp[13],
            win: u16::from_be_bytes([tcp[14], tcp[15]]),
            payload: tcp[doff..].to_vec(),
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
            ttl: ip[8],
            ip_options: ip[20..].to_vec(),
            tcp_options: tcp[20..doff].to_vec(),
        })
    }
}

/// One Ethernet/IPv4/UDP frame, built with correct checksums (or none: `no_checksum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub ip_id: u16,
    pub ttl: u8,
    /// A 0 checksum field: "none", as IPv4 allows.
    pub no_checksum: bool,
}

impl Udp {
    pub fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Udp {
        Udp {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src,
            dst,
            sport,
            dport,
            payload: vec![],
            ip_id: 0x2b57,
            ttl: 64,
            no_checksum: false,
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Udp {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn payload(mut self, p: &[u8]) -> Udp {
        self.payload = p.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&self.sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&self.payload);
        if !self.no_checksum {
            let mut c = checksum::l4_ipv4(self.src.octets(), self.dst.octets(), 17, &udp);
            if c == 0 {
                c = 0xffff;
            }
            udp[6..8].copy_from_slice(&c.to_be_bytes());
        }
        let ip = Ipv4 {
            src: self.src,
            dst: self.dst,
            proto: 17,
            id: self.ip_id,
            df: false,
            ttl: self.ttl,
        };
        ip.frame(self.src_mac, self.dst_mac, &[], &udp)
    }

    /// Parses a frame this builder could have produced.
    pub fn parse(f: &[u8]) -> Option<Udp> {
        if f.len() < 42 || f[12..14] != [8, 0] || f[14] != 0x45 || f[23] != 17 {
            return None;
        }
        let ip = &f[14..34];
        let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        let udp = f.get(34..14 + tot)?;
        let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
        if len != udp.len() {
            return None;
        }
        Some(Udp {
            dst_mac: f[0..6].try_into().unwrap(),
            src_mac: f[6..12].try_into().unwrap(),
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            sport: u16::from_be_bytes([udp[0], udp[1]]),
            dport: u16::from_be_bytes([udp[2], udp[3]]),
            payload: udp[8..].to_vec(),
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
            ttl: ip[8],
            no_checksum: udp[6..8] == [0, 0],
        })
    }
}

/// The IPv4 header checksum and the UDP checksum (when it has one) of a frame verify.
pub fn udp_checksums_ok(f: &[u8]) -> bool {
    let ip = &f[14..34];
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let udp = &f[34..14 + tot];
    checksum::ipv4_header(ip) == 0
        && (udp[6..8] == [0, 0] || checksum::l4_ipv4(src, dst, 17, udp) == 0)
}

/// An Ethernet/IPv6 frame: `src` -> `dst`, extension headers `ext` (each a whole header,
/// its first byte rewritten to chain to the next), then `proto` with `payload`.
pub fn ipv6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    ext: &[(u8, Vec<u8>)],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    let ext_len: usize = ext.iter().map(|(_, h)| h.len()).sum();
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&((ext_len + payload.len()) as u16).to_be_bytes());
    ip.push(ext.first().map_or(proto, |(kind, _)| *kind));
    ip.push(64);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    f.extend_from_slice(&ip);
    for (i, (_, h)) in ext.iter().enumerate() {
        let mut h = h.clone();
        h[0] = ext.get(i + 1).map_or(proto, |(kind, _)| *kind);
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(payload);
    f
}

/// A TCP segment or UDP datagram over IPv6, built with a correct checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4v6 {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: std::net::Ipv6Addr,
    pub dst: std::net::Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (ignored for UDP).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// TCP window (ignored for UDP).
    pub win: u16,
    /// TCP options, a multiple of 4 bytes (ignored for UDP).
    pub options: Vec<u8>,
    pub udp: bool,
    pub payload: Vec<u8>,
    /// Extension headers, as `ipv6_frame` takes them.
    pub ext: Vec<(u8, Vec<u8>)>,
}

impl L4v6 {
    pub fn tcp(
        src: std::net::Ipv6Addr,
        sport: u16,
        dst: std::net::Ipv6Addr,
        dport: u16,
        flags: u8,
    ) -> L4v6 {
        L4v6 {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src,
            dst,
            sport,
            dport,
            flags,
            seq: 1000,
            ack: 0,
            win: 64240,
            options: vec![],
            udp: false,
            payload: vec![],
            ext: vec![],
        }
    }

    pub fn options(mut self, o: &[u8]) -> L4v6 {
        assert_eq!(o.len() % 4, 0, "TCP options come in words");
        self.options = o.to_vec();
        self
    }

    pub fn udp(src: std::net::Ipv6Addr, sport: u16, dst: std::net::Ipv6Addr, dport: u16) -> L4v6 {
        L4v6 {
            udp: true,
            ..L4v6::tcp(src, sport, dst, dport, 0)
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> L4v6 {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn payload(mut self, p: &[u8]) -> L4v6 {
        self.payload = p.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = if self.udp {
            let mut u = vec![0u8; 8];
            u[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            u
        } else {
            let mut t = vec![0u8; 20];
            t[4..8].copy_from_slice(&self.seq.to_be_bytes());
            t[8..12].copy_from_slice(&self.ack.to_be_bytes());
            t[12] = ((5 + self.options.len() / 4) as u8) << 4;
            t[13] = self.flags;
            t[14..16].copy_from_slice(&self.win.to_be_bytes());
            t.extend_from_slice(&self.options);
            t
        };
        l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        l4.extend_from_slice(&self.payload);
        let proto = if self.udp { 17 } else { 6 };
        let mut c = checksum::l4_ipv6(self.src.octets(), self.dst.octets(), proto, &l4);
        if self.udp && c == 0 {
            c = 0xffff;
        }
        let at = if self.udp { 6 } else { 16 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        ipv6_frame(
            self.src_mac,
            self.dst_mac,
            self.src,
            self.dst,
            &self.ext,
            proto,
            &l4,
        )
    }

    /// Parses a frame `build` could have produced (without extension headers).
    pub fn parse(f: &[u8]) -> Option<L4v6> {
        if f.len() < 54 || f[12..14] != [0x86, 0xdd] || f[20] != 6 && f[20] != 17 {
            return None;
        }
        let udp = f[20] == 17;
        let a = |i: usize| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&f[i..i + 16]).unwrap());
        let l4 = &f[54..];
        let hl = if udp { 8 } else { (l4[12] >> 4) as usize * 4 };
        Some(L4v6 {
            dst_mac: f[0..6].try_into().unwrap(),
            src_mac: f[6..12].try_into().unwrap(),
            src: a(22),
            dst: a(38),
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
            flags: if udp { 0 } else { l4[13] },
            seq: if udp {
                0
            } else {
                u32::from_be_bytes(l4[4..8].try_into().unwrap())
            },
            ack: if udp {
                0
            } else {
                u32::from_be_bytes(l4[8..12].try_into().unwrap())
            },
            win: if udp {
                64240
            } else {
                u16::from_be_bytes([l4[14], l4[15]])
            },
            options: if udp {
                vec![]
            } else {
                l4.get(20..hl)?.to_vec()
            },
            udp,
            payload: l4.get(hl..)?.to_vec(),
            ext: vec![],
        })
    }
}

/// An Ethernet/IPv6 ICMPv6 error (`kind`, `code`, 4 bytes of rest-of-header: Packet Too
/// Big's MTU) carrying `embedded` (the start of the offending IPv6 packet), its checksum
/// over the pseudo-header.
#[allow(clippy::too_many_arguments)]
pub fn icmp6_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    embedded: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(embedded);
    let c = checksum::l4_ipv6(src.octets(), dst.octets(), 58, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6_frame(src_mac, dst_mac, src, dst, &[], 58, &icmp)
}

/// The transport checksum of an Ethernet/IPv6 frame (no extension headers) verifies.
pub fn checksum6_ok(f: &[u8]) -> bool {
    let src: [u8; 16] = f[22..38].try_into().unwrap();
    let dst: [u8; 16] = f[38..54].try_into().unwrap();
    checksum::l4_ipv6(src, dst, f[20], &f[54..]) == 0
}

/// Both checksums of an Ethernet/IPv4/TCP frame verify.
pub fn checksums_ok(f: &[u8]) -> bool {
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    let ip = &f[14..14 + ihl];
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    checksum::ipv4_header(ip) == 0 && checksum::l4_ipv4(src, dst, 6, &f[14 + ihl..14 + tot]) == 0
}

/// An Ethernet/IPv4 ICMP error (`kind`, `code`, 4 bytes of rest-of-header) carrying
/// `embedded` (the start of the offending IPv4 packet), with correct checksums.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    embedded: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(embedded);
    let c = !checksum::fold(checksum::sum_be(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let ip = Ipv4 {
        src,
        dst,
        proto: 1,
        id: 0,
        df: false,
        ttl: 64,
    };
    ip.frame(src_mac, dst_mac, &[], &icmp)
}
