//! Types shared by the XDP program (`lb-ebpf`) and the userspace daemon (`lb-userspace`).
//!
//! Every map key and value is defined here once: `#[repr(C)]`, `Copy`, explicit padding, a
//! compile-time size check, integers only (no `bool`, enums or `Option`). Byte order is part of
//! the field name: `_be` fields hold network byte order exactly as on the wire.
#![no_std]

// The daemon's table builders (`select::fill_table`) allocate.
#[cfg(any(feature = "user", test))]
extern crate std;

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

pub mod checksum;
pub mod schema;
pub mod select;

/// Listeners per load balancer.
pub const MAX_LISTENERS: u32 = 64;
/// Pools per load balancer.
pub const MAX_POOLS: u32 = 64;
/// Members per pool: a pool's slots `0..count` (`POOL_MEMBERS`) name members by index.
pub const MAX_POOL_MEMBERS: u32 = 256;
/// Member indexes a load balancer may use: every pool full, as many retired (a reload's
/// removed members keep their index while flows name them). The member arrays are sized
/// from the configuration, far below this (`schema::member_capacity`).
pub const MAX_MEMBERS: u32 = 2 * MAX_POOLS * MAX_POOL_MEMBERS;
/// Load balancers one program set serves: the outer maps' size (`schema`). A load balancer
/// is a slot in it; the programs find its maps there.
pub const MAX_SLOTS: u32 = 1024;
/// Default conntrack capacity of a load balancer (flows; each flow takes two entries:
/// forward and reverse). The hash table's buckets cost 32 bytes per flow whether used or
/// not: 1 MiB at this size.
pub const DEFAULT_CONNTRACK_FLOWS: u32 = 32_768;
/// Default `half_open_limit` of a listener: handshakes in progress past which SYNs are
/// answered with cookies.
pub const DEFAULT_HALF_OPEN_LIMIT: u32 = 2048;
/// A UDP listener's new flows per second unless configured (`flow_rate`).
pub const DEFAULT_UDP_FLOW_RATE: u32 = 20_000;

/// SNAT source ports the data path allocates from (inclusive). The daemon moves the
/// namespace's `ip_local_port_range` above this range so the two never collide.
pub const SNAT_PORT_MIN: u16 = 10_000;
pub const SNAT_PORT_MAX: u16 = 59_999;
/// Random ports tried per new flow before giving up with `DROP_SNAT_EXHAUSTED`. With a member
/// holding a fraction f of its 50,000 ports, a SYN fails with probability f^32: 1e-15 at a
/// third, 1e-7 at 60 %. (With 8 tries, f^8 = 2e-4 at a third: `cargo xtask perf` saw a SYN
/// dropped with members at ~17k flows each.)
pub const SNAT_TRIES: u32 = 32;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An address as map keys and values hold it: IPv4 as a `u32` whose bytes are the wire's
/// (network byte order), IPv6 as `Ip6`. The types that carry addresses are generic
/// over it (`FlowG`, `FlowKeyG`, `ListenerKeyG`, `AllowedDataG`); the IPv4 ones keep their
/// names (`Flow`, `FlowKey`, ...), the IPv6 ones end in 6, in maps of their own.
pub trait Address:
    Copy + Default + PartialEq + Eq + core::hash::Hash + core::fmt::Debug + 'static
{
    /// The address in 32 bits (itself for IPv4; IPv6's words mixed): fingerprints, hashes.
    fn fold(&self) -> u32;
    /// `*dst = *self`, word by word: LLVM turns a copy of an IPv6 address between two
    /// pointers into a call to `memmove`, which the BPF program then makes as a function
    /// call, and 6.1's verifier counts its frame on the stack.
    fn copy_to(&self, dst: &mut Self);
    /// 4 or 6.
    const FAMILY: u8;
    /// `copy_to` into an IPv6-sized field (IPv4: the first word, the others 0).
    fn widen_to(&self, dst: &mut Ip6);
}
impl Address for u32 {
    #[inline(always)]
    fn fold(&self) -> u32 {
        *self
    }
    #[inline(always)]
    fn copy_to(&self, dst: &mut u32) {
        *dst = *self;
    }
    const FAMILY: u8 = 4;
    #[inline(always)]
    fn widen_to(&self, dst: &mut Ip6) {
        dst[0] = *self;
        dst[1] = 0;
        dst[2] = 0;
        dst[3] = 0;
    }
}
impl Address for Ip6 {
    #[inline(always)]
    fn fold(&self) -> u32 {
        self[0] ^ self[1].rotate_left(7) ^ self[2].rotate_left(14) ^ self[3].rotate_left(21)
    }
    #[inline(always)]
    fn copy_to(&self, dst: &mut Ip6) {
        let (a, b, c, d) = (self[0], self[1], self[2], self[3]);
        dst[0] = a;
        dst[1] = b;
        dst[2] = c;
        dst[3] = d;
    }
    const FAMILY: u8 = 6;
    #[inline(always)]
    fn widen_to(&self, dst: &mut Ip6) {
        self.copy_to(dst)
    }
}

/// An IPv6 address as four 32-bit words whose bytes are the wire's (in memory, exactly the
/// address's 16 bytes). Words, not bytes: the data path keeps an address in four registers
/// or stack slots, not sixteen (LLVM splits arrays into their elements).
pub type Ip6 = [u32; 4];

/// `Ip6` from an address's 16 bytes.
pub const fn ip6(b: [u8; 16]) -> Ip6 {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// The 16 bytes of an `Ip6`.
pub fn ip6_octets(a: &Ip6) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// `MemberConf::flags` bits.
pub const MEMBER_F_CONFIGURED: u32 = 1 << 0;
/// admin_state_up
pub const MEMBER_F_ENABLED: u32 = 1 << 1;
/// health monitor says up (or the pool has no monitor)
pub const MEMBER_F_UP: u32 = 1 << 2;
/// backup member: only chosen when no primary member is available
pub const MEMBER_F_BACKUP: u32 = 1 << 3;

/// `PoolConf::algorithm`.
pub const ALG_LEAST_CONNECTIONS: u32 = 0;
pub const ALG_ROUND_ROBIN: u32 = 1;
pub const ALG_SOURCE_IP: u32 = 2;
/// A hash of the client's address and port (OVN's SOURCE_IP_PORT), on the same consistent
/// table as `ALG_SOURCE_IP`.
pub const ALG_SOURCE_IP_PORT: u32 = 3;

/// `Flow::state` bits. The data path sets them with atomic ORs and clears `CT_COUNTED` with
/// an atomic fetch-and, so that two CPUs handling the same flow (a client's FIN and the
/// member's FIN at once) lose no bit and stop counting the flow exactly once.
pub const CT_SYN: u64 = 1 << 0;
pub const CT_SYNACK: u64 = 1 << 1;
pub const CT_FIN_CLIENT: u64 = 1 << 2;
pub const CT_FIN_MEMBER: u64 = 1 << 3;
/// A RST within the receiving side's window.
pub const CT_RST: u64 = 1 << 4;
/// The client acknowledged the member's SYN-ACK: a connection from here on (before, a
/// handshake, which a spoofed SYN never gets past).
pub const CT_ESTABLISHED: u64 = 1 << 5;
/// The member refused this handshake (a RST to the SYN, kept from the client): the client's
/// next SYN goes to another member.
pub const CT_REFUSED: u64 = 1 << 6;
/// Opened by a valid SYN cookie in the client's ACK: lb made the member's handshake itself
/// and translates sequence numbers (`Flow::seq_delta`) for the flow's life.
pub const CT_COOKIE: u64 = 1 << 7;
/// Included in its member's and listener's `active` (established connections).
pub const CT_COUNTED: u64 = 1 << 8;
/// Included in its member's and listener's `half_open` (handshakes in progress).
pub const CT_HALF_OPEN: u64 = 1 << 9;
/// Set with `CT_RST` when the RST that closed the flow came from the member.
pub const CT_RST_MEMBER: u64 = 1 << 10;
/// Its listener logs connections (`LISTENER_F_LOG` when the flow opened): the flow's end is
/// an event in the `CONN_LOG` ring buffer, its expiry a line the daemon writes.
pub const CT_LOG: u64 = 1 << 11;
/// A UDP flow (set when it opens, never changed): keyed with `IPPROTO_UDP`, counted in
/// `active` from its first datagram (there is no handshake), and ended by its listener's
/// idle timeout alone.
pub const CT_UDP: u64 = 1 << 12;
/// A UDP flow its member answered (a datagram back): it ends after the listener's data
/// timeout idle; one never answered (a spoofed source, a member that does not serve) after
/// its connect timeout. The bit TCP uses for the member's SYN-ACK.
pub const CT_ANSWERED: u64 = CT_SYNACK;

/// Both FINs or one RST in `CT_*` bits `state`.
#[inline(always)]
pub const fn closed(state: u64) -> bool {
    state & CT_RST != 0 || (state & CT_FIN_CLIENT != 0 && state & CT_FIN_MEMBER != 0)
}

/// The port's L2 address: the `PORT` map's one value, written by the daemon before it
/// attaches. Only frames addressed to it are balanced; all zeros: not known (every frame).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortConf {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
assert_size!(PortConf, 8);

/// How long an entry lingers after the connection closed (FIN both ways or RST), so that the
/// last ACK and retransmitted FINs still get translated.
pub const CLOSED_LINGER_NS: u64 = 10_000_000_000;

/// Verdict reasons, counted per CPU in the `VERDICTS` array. Each packet is counted exactly
/// once, under the reason that decided its fate.
pub mod reason {
    /// Balanced: a client packet translated and sent to a member (XDP_TX).
    pub const TX_TO_MEMBER: u32 = 0;
    /// Balanced: a member's reply translated and sent to the client (XDP_TX).
    pub const TX_TO_CLIENT: u32 = 1;
    /// Not IP this load balancer balances (ARP, ...; IPv6 at an IPv4 load balancer, which
    /// loads no IPv6 programs): passed to the kernel untouched.
    pub const PASS_NOT_IP: u32 = 2;
    /// IP but not for a listener nor a reply of a balanced flow (ICMP to the VIP, the
    /// namespace's own connections, health checks): passed untouched.
    pub const PASS_NOT_BALANCED: u32 = 3;
    /// To a listener, but no flow of lb's: not a SYN (the kernel answers RST as a host
    /// would, or serves a connection a haproxy before lb still holds), or a SYN while the
    /// listener drains (a haproxy taking over from lb serves it).
    pub const PASS_NO_FLOW: u32 = 4;
    /// Frame shorter than the Ethernet header.
    pub const DROP_TRUNCATED_ETH: u32 = 5;
    /// IPv4 header truncated, IHL < 5, or total length inconsistent with the frame.
    pub const DROP_BAD_IPV4: u32 = 6;
    /// TCP header truncated or data offset < 5, or a UDP header truncated or its length
    /// inconsistent with the IPv4 packet's.
    pub const DROP_BAD_L4: u32 = 7;
    /// IPv4 fragment addressed to a listener or of a flow (later fragments carry no ports to
    /// balance or translate on; lb does not reassemble).
    pub const DROP_FRAGMENT: u32 = 8;
    /// New flow, but no member is up, enabled and with weight > 0.
    pub const DROP_NO_MEMBER: u32 = 9;
    /// New flow, but the member's MAC is unknown (no neighbour entry). The SYN is dropped; the
    /// client retransmits and the daemon's checks resolve the neighbour meanwhile.
    pub const DROP_NO_NEIGH: u32 = 10;
    /// New flow, but no free SNAT port towards the chosen member after `SNAT_TRIES` attempts.
    pub const DROP_SNAT_EXHAUSTED: u32 = 11;
    /// New flow, but the conntrack table is full.
    pub const DROP_CT_FULL: u32 = 12;
    /// New flow, but the listener is at its connection_limit.
    pub const DROP_CONN_LIMIT: u32 = 13;
    /// FIB lookup failed for another reason (no route, blackhole, ...).
    pub const DROP_NO_ROUTE: u32 = 14;
    /// An ICMP error about a flow, from the member's side, translated and sent to the client.
    pub const TX_ICMP_TO_CLIENT: u32 = 15;
    /// An ICMP error about a flow, from the client's side, translated and sent to the member.
    pub const TX_ICMP_TO_MEMBER: u32 = 16;
    /// Not addressed to the port's MAC (a bridge flooding unknown unicast): passed to the
    /// kernel, which drops what is not for the host, untouched.
    pub const PASS_NOT_FOR_PORT: u32 = 17;
    /// A member refused a new connection (RST to the SYN): the RST is kept from the client,
    /// whose next SYN goes to another member (haproxy's `retries` + `option redispatch`).
    /// Past the listener's retries the RST reaches the client.
    pub const DROP_REFUSED: u32 = 18;
    /// Past the listener's half-open budget: lb answered the SYN itself with a SYN cookie
    /// (a SYN-ACK to the client); no flow, no SNAT port, nothing sent to a member.
    pub const TX_SYNCOOKIE: u32 = 19;
    /// A segment lb made for a member on a cookie connection: the SYN when the client's
    /// ACK carried a valid cookie (or again when the client repeats that ACK), and the ACK of
    /// the member's SYN-ACK.
    pub const TX_COOKIE_TO_MEMBER: u32 = 20;
    /// A client's SYN on a cookie connection before its member has answered lb's SYN
    /// (its other segments then become that SYN again: their data is not acknowledged, so
    /// the client sends it again).
    pub const DROP_COOKIE_WAIT: u32 = 21;
    /// A client's ACK with a valid cookie whose flow could not open (no member, neighbour or
    /// port; a limit; the reason is counted in the listener's drops): the client gets a RST
    /// rather than a connection nobody serves.
    pub const TX_COOKIE_RESET: u32 = 22;
    /// A client outside its listener's `allowed_cidrs`, without a flow: dropped, no reply.
    pub const DROP_NOT_ALLOWED: u32 = 23;
    /// IPv6 header truncated, or its payload length inconsistent with the frame, or an
    /// extension header truncated.
    pub const DROP_BAD_IPV6: u32 = 24;
    /// A SYN with IPv4 options or IPv6 extension headers while its listener answers SYNs
    /// with cookies: dropped (a cookie is made only for a plain header, and such a SYN must
    /// not open a flow in cookie mode).
    pub const DROP_SYN_OPTIONS: u32 = 25;
    /// A UDP datagram that would open a new flow past its listener's `flow_rate` (new flows
    /// in the current second): dropped.
    pub const DROP_UDP_RATE: u32 = 26;
    /// A UDP datagram that would open a new flow while its listener holds `flow_limit`
    /// flows (its share of the table): dropped.
    pub const DROP_UDP_LIMIT: u32 = 27;
    /// A member's SYN-ACK that does not acknowledge the SYN of the flow: a half-open
    /// connection of an earlier flow on the same SNAT port (a spoofed handshake that expired
    /// at lb while the member still retransmits its SYN-ACK). lb answers it with a RST, as
    /// a host would, so that the member drops that connection; the flow waits for its own.
    pub const TX_STALE_RESET: u32 = 28;
    /// A member's segment before it answered the flow's SYN that is not that answer (nor a
    /// RST): the same earlier connection's (or, for IPv6 flows that are not cookie flows,
    /// that SYN-ACK itself, which lb does not answer there). Dropped.
    pub const DROP_STALE: u32 = 29;
    /// A "fragmentation needed" (IPv4) or Packet Too Big (IPv6) that would go to a member
    /// about a segment lb sent a client, but is not about data the client has not
    /// acknowledged yet, or asks for less than 1280 bytes: dropped (a member caches one path
    /// MTU towards the VIP for every client).
    pub const DROP_ICMP_UNVERIFIED: u32 = 30;
    pub const COUNT: u32 = 31;

    pub const NAMES: [&str; COUNT as usize] = [
        "tx_to_member",
        "tx_to_client",
        "pass_not_ip",
        "pass_not_balanced",
        "pass_no_flow",
        "drop_truncated_eth",
        "drop_bad_ipv4",
        "drop_bad_l4",
        "drop_fragment",
        "drop_no_member",
        "drop_no_neigh",
        "drop_snat_exhausted",
        "drop_ct_full",
        "drop_conn_limit",
        "drop_no_route",
        "tx_icmp_to_client",
        "tx_icmp_to_member",
        "pass_not_for_port",
        "drop_refused",
        "tx_syncookie",
        "tx_cookie_to_member",
        "drop_cookie_wait",
        "tx_cookie_reset",
        "drop_not_allowed",
        "drop_bad_ipv6",
        "drop_syn_options",
        "drop_udp_rate",
        "drop_udp_limit",
        "tx_stale_reset",
        "drop_stale",
        "drop_icmp_unverified",
    ];
}

/// `LISTENERS` (`LISTENERS6`) key: a VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKeyG<A> {
    pub vip_be: A,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
pub type ListenerKey = ListenerKeyG<u32>;
pub type ListenerKey6 = ListenerKeyG<Ip6>;
assert_size!(ListenerKey, 8);
assert_size!(ListenerKey6, 20);

impl<A: Address> ListenerKeyG<A> {
    /// The TCP listener at `vip_be`:`port_be` (network byte order).
    #[inline(always)]
    pub const fn tcp(vip_be: A, port_be: u16) -> Self {
        Self::new(vip_be, port_be, IPPROTO_TCP)
    }

    /// The listener of protocol `proto` (`IPPROTO_TCP` or `IPPROTO_UDP`) at
    /// `vip_be`:`port_be`.
    #[inline(always)]
    pub const fn new(vip_be: A, port_be: u16, proto: u8) -> Self {
        ListenerKeyG {
            vip_be,
            port_be,
            proto,
            _pad: 0,
        }
    }
}

/// `LISTENERS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerConf {
    /// Index into `LISTENER_STATS` / `LISTENER_LIVE`.
    pub index: u32,
    /// Index into `POOLS`.
    pub pool: u32,
    /// 0 = unlimited.
    pub connection_limit: u32,
    /// Retransmitted SYNs tolerated before a flow is redispatched to another member.
    pub retries: u32,
    pub timeout_member_connect_ns: u64,
    pub timeout_data_ns: u64,
    /// `LISTENER_F_*` bits.
    pub flags: u32,
    /// The SNAT ports this listener's new flows take (inclusive); 0 = `SNAT_PORT_MIN` /
    /// `SNAT_PORT_MAX`. The haproxy drop-in narrows them while a HAProxy it replaced may
    /// still hold (or members keep in TIME_WAIT) tuples from the namespace's old ephemeral
    /// range.
    pub snat_min: u16,
    pub snat_max: u16,
    /// Connections open on all listeners of the load balancer together (haproxy's global
    /// `maxconn`); 0 = unlimited. Every listener carries the same value.
    pub total_limit: u32,
    /// Handshakes in progress on this listener past which new SYNs are answered with SYN
    /// cookies (the data path's own SYN-ACK: no flow until the client's ACK); 0 = always,
    /// `u32::MAX` = never.
    pub half_open_limit: u32,
    /// UDP listeners: flows this listener may hold at once (its share of the table: a flood
    /// of new source ports at one listener leaves the rest to the others); past it a new
    /// datagram is dropped (`DROP_UDP_LIMIT`). 0 = unlimited (TCP: handshakes have cookies,
    /// connections `connection_limit`).
    pub flow_limit: u32,
    /// UDP listeners: new flows per second (a one-second window); past it a new datagram is
    /// dropped (`DROP_UDP_RATE`). 0 = unlimited.
    pub flow_rate: u32,
}
assert_size!(ListenerConf, 56);

impl ListenerConf {
    /// The SNAT port range of this listener's new flows.
    #[inline(always)]
    pub fn snat_ports(&self) -> (u16, u16) {
        if self.snat_min >= SNAT_PORT_MIN
            && self.snat_max >= self.snat_min
            && self.snat_max <= SNAT_PORT_MAX
        {
            (self.snat_min, self.snat_max)
        } else {
            (SNAT_PORT_MIN, SNAT_PORT_MAX)
        }
    }
}

/// `ListenerConf::flags`: draining. No new flow is opened (a SYN without a flow goes to the
/// namespace's stack, where a haproxy taking over listens); established flows carry on.
pub const LISTENER_F_DRAIN: u32 = 1 << 0;
/// `ListenerConf::flags`: log each connection when it ends (the connection log).
pub const LISTENER_F_LOG: u32 = 1 << 1;
/// `ListenerConf::flags`: only clients in one of the listener's `ALLOWED` prefixes are
/// balanced (Octavia's `allowed_cidrs`).
pub const LISTENER_F_ALLOWED_CIDRS: u32 = 1 << 2;

/// `ALLOWED` key data (an LPM trie: the kernel's key is this with a prefix length in front):
/// a listener's index then a client address, both in network byte order, so that a prefix
/// of `32 + n` bits is "listener `listener`, addresses in `addr`/n".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllowedDataG<A> {
    pub listener_be: u32,
    pub addr_be: A,
}
pub type AllowedData = AllowedDataG<u32>;
/// `ALLOWED6` key data: the same with an IPv6 address (prefix `32 + n` of 160 bits).
pub type AllowedData6 = AllowedDataG<Ip6>;
assert_size!(AllowedData, 8);
assert_size!(AllowedData6, 20);

/// Prefixes of `allowed_cidrs` per load balancer, all listeners together.
pub const MAX_ALLOWED_CIDRS: u32 = 4096;

/// `POOLS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolConf {
    /// Member slots in use: 0..count.
    pub count: u32,
    pub algorithm: u32,
    /// `POOL_F_*` bits.
    pub flags: u32,
    /// Source-address persistence: seconds a client's entry lives after its last new
    /// connection; 0 = until the table evicts it (haproxy's stick-table without `expire`).
    pub persist_timeout_s: u32,
    /// Passive health: a member whose last this many new connections in a row were refused
    /// or went unanswered is out of selection until its monitor passes a check (haproxy's
    /// `observe layer4` with `error-limit`); 0 = off.
    pub error_limit: u32,
    /// Entries of the pool's `SOURCE_TABLE` in use (round robin walks `0..table_len`; the
    /// daemon sets it with the table): 0 = no table yet.
    pub table_len: u32,
}
assert_size!(PoolConf, 24);

/// Whether a member with `failures` refused or unanswered connections in a row is out of
/// selection under a pool's `error_limit`.
#[inline(always)]
pub fn member_failed(failures: u64, error_limit: u32) -> bool {
    error_limit != 0 && failures >= error_limit as u64
}

/// `PoolConf::flags`: a client address keeps its member across connections (haproxy's
/// `stick on src`, Octavia's SOURCE_IP session persistence).
pub const POOL_F_PERSIST_SOURCE: u32 = 1 << 0;

/// Client addresses the `STICKY` table remembers per load balancer (least recently used
/// ones are evicted beyond it). An LRU table is allocated whole: about 1.3 MiB at this size
/// (haproxy's LBaaS driver asks for `size 10k`).
pub const STICKY_ENTRIES: u32 = 16_384;

/// `STICKY` key: a client address in a pool.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StickyKey {
    pub client_be: u32,
    pub pool: u32,
}
assert_size!(StickyKey, 8);

/// `STICKY` value: the member a client address sticks to, and when it last opened a flow
/// (the entry holds while that member index is a member of the same pool).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sticky {
    pub member: u32,
    pub _pad: u32,
    pub last_ns: u64,
}
assert_size!(Sticky, 16);

/// One slot of a pool: the member index in it (`NO_MEMBER`: none) and a copy of that
/// member's weight and flags (`MemberConf`'s), which the daemon writes with them: selection
/// walks a pool's slots reading one map value, and looks up only each member's live counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSlot {
    pub member: u16,
    pub weight: u16,
    pub flags: u32,
}
assert_size!(PoolSlot, 8);

impl Default for PoolSlot {
    fn default() -> Self {
        PoolSlot {
            member: NO_MEMBER,
            weight: 0,
            flags: 0,
        }
    }
}

/// `PoolSlot::member` of a slot without a member.
pub const NO_MEMBER: u16 = u16::MAX;

/// `POOL_MEMBERS` value: a pool's slots (`0..PoolConf::count`). Flows, counters and
/// persistence name members by index, which stays put for a member's life whatever happens
/// to the pool's other slots.
pub type PoolMembers = [PoolSlot; MAX_POOL_MEMBERS as usize];

/// `MEMBERS` value, by member index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberConf {
    pub addr_be: u32,
    pub port_be: u16,
    /// 0..=256; 0 = drain (no new connections).
    pub weight: u16,
    pub flags: u32,
    /// The pool's index (a persistence entry names a member of its own pool).
    pub pool: u32,
}
assert_size!(MemberConf, 16);

/// `MEMBER_LIVE` / `LISTENER_LIVE` value: shared (not per-CPU) counters, updated with atomic
/// adds by the data path and, through an mmap of the array, by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Connections counted as open (signed: a transient race may dip below zero; the daemon
    /// corrects drift from the conntrack table).
    pub active: i64,
    /// Every change to `active` made by a packet also bumps this, so the daemon can tell a
    /// quiet moment.
    pub events: u64,
    /// Rotation counter for tie-breaking (pools use their listener's).
    pub rr: u64,
    /// Open connections the last sweep counted in the conntrack table (the daemon zeroes it
    /// before each sweep).
    pub table: i64,
    /// Forward entries of any state (open, closing, lingering) that named this member at the
    /// last sweep: a retired member slot is free again once this is 0.
    pub refs: u64,
    /// Handshakes in progress (a SYN seen, the client's ACK of the SYN-ACK not yet): not
    /// connections, so not in `active` or least connections; counted in the limits.
    pub half_open: i64,
    /// Handshakes the last sweep counted in the conntrack table.
    pub half_table: i64,
    /// Members: new connections in a row the member refused (RST to the SYN) or left
    /// unanswered (the client's SYN retransmitted past `retries`, or the connect timeout):
    /// at the pool's `error_limit` the member is out of selection until its monitor
    /// passes a check again (haproxy's `observe layer4`). Reset by an answered SYN.
    /// Listeners: nonzero once the listener opened a UDP flow (the data path marks it; a
    /// slot given to another listener is zeroed): its flows are not the load balancer's
    /// connections (haproxy's `maxconn` is about TCP).
    pub failures: u64,
}
assert_size!(Live, 64);

/// `SWEEP` value: what the last run of the `lb_sweep` program did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Forward entries seen (flows).
    pub flows: u64,
    /// Flows expired (idle past their state's timeout), both entries removed.
    pub expired: u64,
    /// Reverse entries removed whose forward entry was gone.
    pub orphans: u64,
    /// How long the sweep's last full pass over the table took, pauses between chunks
    /// included (microseconds).
    pub cycle_us: u64,
}
assert_size!(SweepReport, 32);

/// `CONN_LOG` record: one connection of a logging listener that ended in the data path
/// (both FINs or a RST; flows that time out are logged by the daemon's expiry instead).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    /// The client's first SYN (CLOCK_MONOTONIC ns).
    pub accepted_ns: u64,
    /// The segment that closed it.
    pub ended_ns: u64,
    /// See `Flow::member_bytes`.
    pub member_bytes: u64,
    /// `CT_*` bits as the closing segment left them.
    pub state: u64,
    /// The client's address: an IPv6 one, or an IPv4 one in the first word (`family`).
    pub client_be: Ip6,
    /// Index into `MEMBERS`.
    pub member: u32,
    pub listener: u32,
    /// See `Flow::connect_ms`.
    pub connect_ms: u32,
    /// Connections open on its listener and on its member when it ended (this one no longer
    /// counted): haproxy's feconn and srv_conn.
    pub feconn: u32,
    pub srv_conn: u32,
    pub client_port_be: u16,
    /// See `Flow::syn_retries`.
    pub syn_retries: u8,
    /// 4 or 6: the family of `client_be`.
    pub family: u8,
}
assert_size!(ConnEvent, 72);

/// Bytes of the `CONN_LOG` ring buffer of a load balancer whose daemon logs connections:
/// about 3,270 events (72 bytes and an 8-byte header each). The daemon drains it every
/// 100 ms, and is woken as soon as a quarter of it is used: it keeps up with about 30,000
/// closes a second per load balancer before events are lost (counted).
pub const CONN_LOG_BYTES: u32 = 256 * 1024;

/// `ADMISSION` value: a listener's cookie mode (lb-ebpf's cookie.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Cookie mode lasts until then (0: off).
    pub until_ns: u64,
    /// ACKs are checked for cookies until then.
    pub accept_until_ns: u64,
    /// Cookies sent and ACKs with a valid cookie in the current hold.
    pub sent: u64,
    pub valid: u64,
    /// Counted over windows of `ADMISSION_WINDOW_NS` from `window_since_ns`. TCP: handshakes
    /// that ended without becoming a connection (a RST or FIN before the client's ACK),
    /// counted with those in progress against `half_open_limit`. UDP: new flows, against
    /// `ListenerConf::flow_rate`.
    pub window_count: u64,
    pub window_since_ns: u64,
}
assert_size!(Admission, 48);

/// The window over which failed handshakes count against a listener's half-open budget,
/// and new UDP flows against its rate.
pub const ADMISSION_WINDOW_NS: u64 = 1_000_000_000;

/// Per-CPU traffic counters, per listener and per member.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// client -> member direction
    pub packets_in: u64,
    pub bytes_in: u64,
    /// member -> client direction
    pub packets_out: u64,
    pub bytes_out: u64,
    pub total_connections: u64,
    /// SYNs redispatched away from this member / listener (`retries` + `option redispatch`).
    pub redispatches: u64,
    /// Members only: new flows for this member that could not be sent, by reason
    /// (`MEMBER_DROP_REASONS`).
    pub drops: [u64; 4],
}
assert_size!(Stats, 80);

/// The verdict reasons that `Stats::drops` counts per member, in slot order.
pub const MEMBER_DROP_REASONS: [u32; 4] = [
    reason::DROP_NO_NEIGH,
    reason::DROP_NO_ROUTE,
    reason::DROP_SNAT_EXHAUSTED,
    reason::DROP_CT_FULL,
];

/// Conntrack key, a 5-tuple as seen on the wire.
///
/// Forward entries: client -> VIP:listener port. Reverse entries: member -> VIP:snat port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyG<A> {
    pub src_be: A,
    pub dst_be: A,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// `FLOW_DIR_FORWARD` or `FLOW_DIR_REVERSE`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
pub type FlowKey = FlowKeyG<u32>;
pub type FlowKey6 = FlowKeyG<Ip6>;
assert_size!(FlowKey, 16);
assert_size!(FlowKey6, 40);

pub const FLOW_DIR_FORWARD: u8 = 0;
pub const FLOW_DIR_REVERSE: u8 = 1;

/// Conntrack value. Both entries of a flow hold the same translation; the forward entry is the
/// authority for state, timestamps, windows and counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowG<A> {
    /// The flow's first SYN (CLOCK_MONOTONIC ns, as `bpf_ktime_get_ns`).
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// `CT_*` bits (see there: changed atomically).
    pub state: u64,
    pub client_be: A,
    pub member_be: A,
    pub client_port_be: u16,
    pub listener_port_be: u16,
    pub member_port_be: u16,
    pub snat_port_be: u16,
    pub vip_be: A,
    /// Index into `MEMBERS`.
    pub member: u32,
    pub listener: u32,
    /// Added to the client's TCP timestamps (TSval) towards the member, taken off the member's
    /// echoes (TSecr) towards the client: chosen at the SYN so that the member sees lb's own
    /// millisecond clock. Every connection a member sees from one VIP address then carries
    /// rising timestamps, whichever client it came from, so a member's TIME_WAIT on a reused
    /// SNAT port accepts the new SYN (PAWS) instead of dropping it.
    pub ts_delta: u32,
    /// Added to the member's sequence numbers towards the client, taken off the client's
    /// acknowledgments towards the member: 0 unless lb answered the client's SYN itself (a
    /// SYN cookie) and opened the member's side later with the member's own ISN.
    pub seq_delta: u32,
    /// The last acknowledgment number and receive window (scaled) each side sent, in the
    /// client's sequence space: a RST is honoured only when its sequence number falls in the
    /// window of the side it goes to. Before a side has acknowledged anything, its window is
    /// the one sequence number the other side's SYN makes next.
    pub client_ack: u32,
    pub client_win: u32,
    pub member_ack: u32,
    pub member_win: u32,
    /// The sequence number after the last byte (SYN or FIN included) each side sent, in the
    /// client's sequence space: with the other side's last acknowledgment, the two numbers a
    /// RST closing the flow may carry (RFC 5961: a sender's RST carries its next sequence
    /// number; any other in-window RST is not honoured).
    pub client_next: u32,
    pub member_next: u32,
    /// L2 source of the client side's SYN: the reply's destination MAC.
    pub client_mac: [u8; 6],
    /// Member MAC from the FIB lookup at SYN time.
    pub member_mac: [u8; 6],
    /// Our port's MAC (L2 destination of the client's SYN).
    pub port_mac: [u8; 6],
    /// While the handshake lasts: the client's SYN retransmissions to the current member in
    /// the low nibble, redispatches to another member in the high one (both saturating).
    pub syn_retries: u8,
    /// Window scale shifts in effect: the client's (applied to its windows) in the low
    /// nibble, the member's in the high one; 0 when either side did not offer scaling.
    pub wscale: u8,
    /// TCP payload bytes the member sent the client (haproxy's `%B`), counted for flows
    /// that log (`CT_LOG`) only.
    pub member_bytes: u64,
    /// Milliseconds from the client's first SYN to the member's SYN-ACK, plus one (0: the
    /// member never answered): haproxy's `Tc`.
    pub connect_ms: u32,
    /// Milliseconds from the client's first SYN to `created_ns` (a redispatch restarts the
    /// connect timeout by moving `created_ns`; the accept time stays).
    pub accept_ms: u32,
}
pub type Flow = FlowG<u32>;
pub type Flow6 = FlowG<Ip6>;
assert_size!(Flow, 120);
assert_size!(Flow6, 160);

impl<A: Address> FlowG<A> {
    /// Whether this forward entry is past its state's time at `now`: a closed flow lingers
    /// `CLOSED_LINGER_NS` after its last packet; a handshake gets `connect_ns` from its SYN
    /// (a member retransmitting its SYN-ACK to a spoofed source keeps it no longer); a
    /// connection ends after `data_ns` idle.
    pub fn expired(&self, now: u64, connect_ns: u64, data_ns: u64) -> bool {
        let (since, limit) = if self.is_closed() {
            (self.last_seen_ns, CLOSED_LINGER_NS)
        } else if self.state & CT_ESTABLISHED == 0 {
            (self.created_ns, connect_ns)
        } else if self.state & (CT_UDP | CT_ANSWERED) == CT_UDP {
            (self.last_seen_ns, connect_ns.min(data_ns))
        } else {
            (self.last_seen_ns, data_ns)
        };
        now.saturating_sub(since) > limit
    }

    /// A handshake in progress, counted in `half_open`.
    pub fn half_open(&self) -> bool {
        self.state & CT_HALF_OPEN != 0
    }

    /// Both FINs or one RST seen: the connection no longer counts as active.
    pub fn is_closed(&self) -> bool {
        closed(self.state)
    }

    /// Included in its member's and listener's `active`.
    pub fn counted(&self) -> bool {
        self.state & CT_COUNTED != 0
    }

    /// When the client's first SYN came (CLOCK_MONOTONIC ns): haproxy's accept date.
    pub fn accepted_ns(&self) -> u64 {
        self.created_ns
            .saturating_sub(self.accept_ms as u64 * 1_000_000)
    }

    /// `IPPROTO_UDP` for a UDP flow (`CT_UDP`), else `IPPROTO_TCP`.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        if self.state & CT_UDP != 0 {
            IPPROTO_UDP
        } else {
            IPPROTO_TCP
        }
    }

    /// The forward key of this flow.
    pub fn forward_key(&self) -> FlowKeyG<A> {
        FlowKeyG {
            src_be: self.client_be,
            dst_be: self.vip_be,
            sport_be: self.client_port_be,
            dport_be: self.listener_port_be,
            proto: self.proto(),
            dir: FLOW_DIR_FORWARD,
            _pad: [0; 2],
        }
    }

    /// Writes the forward key into `out` (the data path keeps IPv6 keys off its stack).
    #[inline(always)]
    pub fn forward_key_into(&self, out: &mut FlowKeyG<A>) {
        self.client_be.copy_to(&mut out.src_be);
        self.vip_be.copy_to(&mut out.dst_be);
        out.sport_be = self.client_port_be;
        out.dport_be = self.listener_port_be;
        out.proto = self.proto();
        out.dir = FLOW_DIR_FORWARD;
        out._pad = [0; 2];
    }

    /// Writes the reverse key into `out`.
    #[inline(always)]
    pub fn reverse_key_into(&self, out: &mut FlowKeyG<A>) {
        self.member_be.copy_to(&mut out.src_be);
        self.vip_be.copy_to(&mut out.dst_be);
        out.sport_be = self.member_port_be;
        out.dport_be = self.snat_port_be;
        out.proto = self.proto();
        out.dir = FLOW_DIR_REVERSE;
        out._pad = [0; 2];
    }

    /// Whether `k` is this flow's reverse key.
    #[inline(always)]
    pub fn has_reverse_key(&self, k: &FlowKeyG<A>) -> bool {
        k.src_be == self.member_be
            && k.dst_be == self.vip_be
            && k.sport_be == self.member_port_be
            && k.dport_be == self.snat_port_be
            && k.proto == self.proto()
            && k.dir == FLOW_DIR_REVERSE
    }

    /// `listener_key`, written into `out`.
    #[inline(always)]
    pub fn listener_key_into(&self, out: &mut ListenerKeyG<A>) {
        self.vip_be.copy_to(&mut out.vip_be);
        out.port_be = self.listener_port_be;
        out.proto = self.proto();
        out._pad = 0;
    }

    /// The listener a forward entry's flow came in on.
    pub fn listener_key(&self) -> ListenerKeyG<A> {
        ListenerKeyG::new(self.vip_be, self.listener_port_be, self.proto())
    }

    /// The reverse key of this flow (what the member's replies carry).
    pub fn reverse_key(&self) -> FlowKeyG<A> {
        FlowKeyG {
            src_be: self.member_be,
            dst_be: self.vip_be,
            sport_be: self.member_port_be,
            dport_be: self.snat_port_be,
            proto: self.proto(),
            dir: FLOW_DIR_REVERSE,
            _pad: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerKey6 {}
    unsafe impl aya::Pod for ListenerConf {}
    unsafe impl aya::Pod for PoolConf {}
    unsafe impl aya::Pod for MemberConf {}
    unsafe impl aya::Pod for Live {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for Flow6 {}
    unsafe impl aya::Pod for ConnEvent {}
    unsafe impl aya::Pod for AllowedData {}
    unsafe impl aya::Pod for AllowedData6 {}
    unsafe impl aya::Pod for SweepReport {}
    unsafe impl aya::Pod for PortConf {}
    unsafe impl aya::Pod for StickyKey {}
    unsafe impl aya::Pod for Sticky {}
    unsafe impl aya::Pod for crate::schema::SchemaEntry {}
    unsafe impl aya::Pod for Admission {}
    unsafe impl aya::Pod for PoolSlot {}
}
