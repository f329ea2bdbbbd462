//! Bounds-checked parsing of Ethernet / IPv4 / TCP or UDP and the NAT rewrite.
//!
//! Policy: IHL honoured (options allowed); a first fragment is parsed and flagged (the caller
//! drops it if it is balanced traffic); later fragments carry no ports and pass to the kernel.

use aya_ebpf::{
    bindings::xdp_action,
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{checksum, reason, Address, FlowKeyG, Ip6, ListenerKeyG, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// What the data path needs of the context it runs in: XDP (a frame) or TC (an skb, which may
/// be a GSO super-packet with a partial checksum and headers-only linear data).
pub trait Frame: EbpfContext {
    /// For an skb, TCP checksum updates go through `bpf_l4_csum_replace`, which knows whether
    /// the checksum field is complete or only the pseudo-header seed of an offloaded one.
    const SKB: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length (for an skb, beyond its linear part).
    fn len(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Updates the TCP or UDP checksum at packet offset `off` for a `size`-byte field changed
    /// from `from` to `to` (`pseudo`: the field is in the pseudo-header, i.e. an address;
    /// `udp`: a 0 checksum means none and stays 0, a computed 0 is sent as 0xffff).
    fn l4_csum_replace(&self, off: usize, from: u32, to: u32, size: u64, pseudo: bool, udp: bool);
    /// Copies `len` bytes (1..=64) of the packet from `off` to `dst`.
    fn load(&self, off: usize, dst: *mut u8, len: u32) -> bool;
    /// Cuts or extends the packet to `len` bytes (packet pointers are invalid afterwards).
    fn resize(&self, len: usize) -> bool;
}

impl Frame for XdpContext {
    const SKB: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn l4_csum_replace(&self, _: usize, _: u32, _: u32, _: u64, _: bool, _: bool) {}
    #[inline(always)]
    fn load(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        unsafe {
            aya_ebpf::helpers::bpf_xdp_load_bytes(self.ctx, off as u32, dst as *mut _, len) == 0
        }
    }
    #[inline(always)]
    fn resize(&self, len: usize) -> bool {
        let delta = len as i64 - Frame::len(self) as i64;
        unsafe { aya_ebpf::helpers::bpf_xdp_adjust_tail(self.ctx, delta as i32) == 0 }
    }
}

const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

impl Frame for TcContext {
    const SKB: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u32, to: u32, size: u64, pseudo: bool, udp: bool) {
        let flags = size
            | if pseudo { BPF_F_PSEUDO_HDR } else { 0 }
            | if udp { BPF_F_MARK_MANGLED_0 } else { 0 };
        let _ = self.skb.l4_csum_replace(off, from as u64, to as u64, flags);
    }
    #[inline(always)]
    fn load(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        unsafe {
            aya_ebpf::helpers::bpf_skb_load_bytes(
                self.skb.skb as *const _,
                off as u32,
                dst as *mut _,
                len,
            ) == 0
        }
    }
    #[inline(always)]
    fn resize(&self, len: usize) -> bool {
        unsafe { aya_ebpf::helpers::bpf_skb_change_tail(self.skb.skb, len as u32, 0) == 0 }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const TCP_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;

/// A TCP segment or UDP datagram over IPv4 (`A = u32`) or IPv6 (`A = Ip6`), as
/// `parse` found it; addresses as on the wire.
pub struct Packet<A = u32> {
    pub eth: *mut EthHdr,
    /// The IPv4 or IPv6 header.
    pub ip: *mut u8,
    /// Start of the TCP header (at least 20 bytes are in bounds), or of the UDP header (8).
    pub tcp: *mut u8,
    /// A UDP datagram: no flags, sequence numbers or options (all 0), `doff` is 8.
    pub udp: bool,
    pub src_be: A,
    pub dst_be: A,
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
    /// Sequence and acknowledgment numbers, window (host order).
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// IPv4 total length, or the IPv6 header's 40 plus its payload length (host order).
    pub ip_len: u16,
    /// The transport header and its payload (host order).
    pub l4_len: u16,
    /// TCP header length, options included (20..=60); 8 for UDP.
    pub doff: usize,
    pub fragment: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl<A: Address> Packet<A> {
    /// The conntrack key of this packet's tuple as it is, in direction `dir` (forward for a
    /// client's segment, reverse for a member's).
    #[inline(always)]
    pub fn flow_key(&self, dir: u8) -> FlowKeyG<A> {
        FlowKeyG {
            src_be: self.src_be,
            dst_be: self.dst_be,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto(),
            dir,
            _pad: [0; 2],
        }
    }

    /// `flow_key`, written into `out`.
    #[inline(always)]
    pub fn flow_key_into(&self, dir: u8, out: &mut FlowKeyG<A>) {
        self.src_be.copy_to(&mut out.src_be);
        self.dst_be.copy_to(&mut out.dst_be);
        out.sport_be = self.sport_be;
        out.dport_be = self.dport_be;
        out.proto = self.proto();
        out.dir = dir;
        out._pad = [0; 2];
    }

    /// `listener_key`, written into `out`.
    #[inline(always)]
    pub fn listener_key_into(&self, out: &mut ListenerKeyG<A>) {
        self.dst_be.copy_to(&mut out.vip_be);
        out.port_be = self.dport_be;
        out.proto = self.proto();
        out._pad = 0;
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        if self.udp {
            IPPROTO_UDP
        } else {
            IPPROTO_TCP
        }
    }

    /// The listener this packet would be addressed to (VIP, port, protocol).
    #[inline(always)]
    pub fn listener_key(&self) -> ListenerKeyG<A> {
        ListenerKeyG::new(self.dst_be, self.dport_be, self.proto())
    }
}

#[inline(always)]
pub(crate) fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// (action, reason) for packets that are not TCP or UDP over IPv4 or are malformed.
pub struct Early(pub u32, pub u32);

const IPPROTO_ICMP: u8 = 1;

/// What the data path acts on: a TCP segment or UDP datagram, or an ICMP error that may
/// concern a flow.
pub enum Parsed {
    L4(Packet),
    IcmpError(crate::icmp::IcmpError),
    /// An IPv6 frame: the IPv4 programs hand it to the IPv6 ones.
    Ipv6,
}

/// What the IPv6 programs act on: a TCP segment or UDP datagram, or an ICMPv6 message at
/// this frame offset (`icmp6::to_end` looks at it).
pub enum Parsed6 {
    L4(Packet<Ip6>),
    Icmp(usize),
}

#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Parsed, Early> {
    let eth: *mut EthHdr =
        ptr_at(ctx, 0).ok_or(Early(xdp_action::XDP_DROP, reason::DROP_TRUNCATED_ETH))?;
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_IPV6_BE {
        return Ok(Parsed::Ipv6);
    }
    if ether_type != ETH_P_IP_BE {
        return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_IP));
    }
    let bad_ip = Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV4);
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(bad_ip)?;
    let (vihl, proto, tot_len, frags) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let frame_len = ctx.len();
    if vihl >> 4 != 4
        || ihl < Ipv4Hdr::LEN
        || (tot_len as usize) < ihl
        || EthHdr::LEN + tot_len as usize > frame_len
    {
        return Err(Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV4));
    }
    let offset = frags & 0x1fff;
    if offset != 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP) {
        return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED));
    }
    if proto == IPPROTO_ICMP {
        if frags & 0x2000 != 0 {
            return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED));
        }
        return crate::icmp::parse(ctx, eth, ip, ihl, tot_len as usize).map(Parsed::IcmpError);
    }
    let more_fragments = frags & 0x2000 != 0;
    let (src, dst) = unsafe {
        (
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let l4 = Transport {
        off: EthHdr::LEN + ihl,
        len: tot_len - ihl as u16,
        proto,
        ip_len: tot_len,
        fragment: more_fragments,
    };
    transport(ctx, eth, ip as *mut u8, src, dst, &l4).map(Parsed::L4)
}

/// Where a packet's transport header is and what the IP header says of it.
struct Transport {
    /// Offset from the frame's start.
    off: usize,
    /// Its length with its payload (IPv4: total length less the header; IPv6: payload
    /// length less the extension headers).
    len: u16,
    proto: u8,
    /// The IP packet's length.
    ip_len: u16,
    /// A first fragment (more follow): the transport header is there, its payload is not all.
    fragment: bool,
}

/// The TCP or UDP header at `l4`: a TCP data offset of at least 5 within the packet, a UDP
/// length that covers its header and fits (a first fragment's covers the whole datagram, so
/// only the header is checked then).
#[inline(always)]
fn transport<C: Frame, A>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut u8,
    src_be: A,
    dst_be: A,
    l4: &Transport,
) -> Result<Packet<A>, Early> {
    let bad_l4 = Early(xdp_action::XDP_DROP, reason::DROP_BAD_L4);
    let udp = l4.proto == IPPROTO_UDP;
    let (tcp, doff, t) = if udp {
        let p: *mut [u8; UDP_HDR_LEN] = ptr_at(ctx, l4.off).ok_or(bad_l4)?;
        let u = unsafe { *p };
        let len = u16::from_be_bytes([u[4], u[5]]) as usize;
        if len < UDP_HDR_LEN || (!l4.fragment && len > l4.len as usize) {
            return Err(Early(xdp_action::XDP_DROP, reason::DROP_BAD_L4));
        }
        let mut t = [0u8; TCP_HDR_LEN];
        t[..4].copy_from_slice(&u[..4]);
        (p as *mut u8, UDP_HDR_LEN, t)
    } else {
        let p: *mut [u8; TCP_HDR_LEN] = ptr_at(ctx, l4.off).ok_or(bad_l4)?;
        let t = unsafe { *p };
        let doff = ((t[12] >> 4) as usize) * 4;
        if doff < TCP_HDR_LEN || (!l4.fragment && doff > l4.len as usize) {
            return Err(Early(xdp_action::XDP_DROP, reason::DROP_BAD_L4));
        }
        (p as *mut u8, doff, t)
    };
    unsafe {
        Ok(Packet {
            eth,
            ip,
            tcp,
            udp,
            src_be,
            dst_be,
            sport_be: u16::from_ne_bytes([t[0], t[1]]),
            dport_be: u16::from_ne_bytes([t[2], t[3]]),
            tcp_flags: t[13],
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            win: u16::from_be_bytes([t[14], t[15]]),
            ip_len: l4.ip_len,
            l4_len: l4.len,
            doff,
            fragment: l4.fragment,
            src_mac: (*eth).src_addr,
            dst_mac: (*eth).dst_addr,
        })
    }
}

const IPV6_HDR_LEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
pub const IPPROTO_ICMPV6: u8 = 58;
/// Extension headers walked before the transport header (RFC 8200's order has at most hop-by-
/// hop, destination options, routing, fragment, destination options).
const EXT_HEADERS_MAX: usize = 5;

/// How far into the frame the IPv6 parser looks for the transport header (below 1024: see
/// `launder`).
const MAX_L4_OFFSET: usize = 512;

/// `v` as the verifier sees a value read from a map: unknown (see `parse6`).
#[inline(always)]
fn launder(v: usize) -> Option<usize> {
    let s = crate::maps::SCRATCH.get_ptr_mut(0)?;
    unsafe {
        core::ptr::write_volatile(&raw mut (*s).off, v as u64);
        // The value is at most MAX_L4_OFFSET: the mask changes nothing but gives every
        // kernel's verifier the bound (6.1's lost the caller's comparison, and a pointer
        // whose offset may reach 0xffff gets no range from a comparison with the end).
        Some((core::ptr::read_volatile(&raw const (*s).off) & 0x3ff) as usize)
    }
}

/// An IPv6 packet: its extension headers walked (hop-by-hop, routing, destination options,
/// fragment), then TCP or UDP as for IPv4. A later fragment, ICMPv6 (neighbour discovery,
/// echo, errors) and anything else pass to the kernel.
#[inline(always)]
pub fn parse6<C: Frame>(ctx: &C) -> Result<Parsed6, Early> {
    let eth: *mut EthHdr =
        ptr_at(ctx, 0).ok_or(Early(xdp_action::XDP_DROP, reason::DROP_TRUNCATED_ETH))?;
    if unsafe { (*eth).ether_type } != ETH_P_IPV6_BE {
        return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_IP));
    }
    let bad = Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV6);
    let ip: *mut [u8; IPV6_HDR_LEN] = ptr_at(ctx, EthHdr::LEN).ok_or(bad)?;
    let h = unsafe { &*ip };
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    if h[0] >> 4 != 6 || EthHdr::LEN + IPV6_HDR_LEN + payload > ctx.len() {
        return Err(Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV6));
    }
    let mut next = h[6];
    let mut off = EthHdr::LEN + IPV6_HDR_LEN;
    let mut fragment = false;
    for _ in 0..EXT_HEADERS_MAX {
        if next != NEXTHDR_HOP
            && next != NEXTHDR_ROUTING
            && next != NEXTHDR_DEST
            && next != NEXTHDR_FRAGMENT
        {
            break;
        }
        let e: *mut [u8; 8] =
            ptr_at(ctx, off).ok_or(Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV6))?;
        let e = unsafe { *e };
        if next == NEXTHDR_FRAGMENT {
            let frag = u16::from_be_bytes([e[2], e[3]]);
            if frag & 0xfff8 != 0 {
                // A later fragment: no transport header to balance on.
                return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED));
            }
            fragment = frag & 1 != 0;
            off += 8;
        } else {
            off += (e[1] as usize + 1) * 8;
        }
        next = e[0];
    }
    let end = EthHdr::LEN + IPV6_HDR_LEN + payload;
    if off > end {
        return Err(Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV6));
    }
    if off > MAX_L4_OFFSET {
        return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED));
    }
    // Each way through the walk leaves a different constant offset, and the verifier would
    // check the rest of the program once per way (past its million instructions): the
    // offset goes through memory, and comes back as one bounded unknown.
    let off = launder(off).ok_or(Early(xdp_action::XDP_DROP, reason::DROP_BAD_IPV6))?;
    if next == IPPROTO_ICMPV6 && !fragment {
        return Ok(Parsed6::Icmp(off));
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return Err(Early(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED));
    }
    // Word loads (the header is 2-byte aligned in the frame; BPF on x86 and arm64 loads
    // unaligned words, and the verifier only refuses them under strict alignment).
    let (src, dst) = unsafe {
        (
            core::ptr::read((ip as *const u8).add(8) as *const Ip6),
            core::ptr::read((ip as *const u8).add(24) as *const Ip6),
        )
    };
    let l4 = Transport {
        off,
        len: (end - off) as u16,
        proto: next,
        ip_len: (IPV6_HDR_LEN + payload) as u16,
        fragment,
    };
    transport(ctx, eth, ip as *mut u8, src, dst, &l4).map(Parsed6::L4)
}

const TCPOPT_NOP: u8 = 1;
const TCPOPT_WSCALE: u8 = 3;
const TCPOLEN_WSCALE: u8 = 3;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOLEN_TIMESTAMP: u8 = 10;

/// Offset from the TCP header of the timestamp option's TSval (TSecr follows at +4), if the
/// segment carries one.
#[inline(always)]
pub fn find_timestamp<C: Frame, A>(ctx: &C, pkt: &Packet<A>) -> Option<usize> {
    find_option(ctx, pkt, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP)
}

/// The window scale shift a SYN or SYN-ACK offers (capped at 14, as RFC 7323 says).
#[inline(always)]
pub fn find_wscale<C: Frame, A>(ctx: &C, pkt: &Packet<A>) -> Option<u8> {
    let off = find_option(ctx, pkt, TCPOPT_WSCALE, TCPOLEN_WSCALE)?;
    if off > 59 {
        return None;
    }
    let p = pkt.tcp as usize + off;
    if p + 1 > ctx.data_end() {
        return None;
    }
    let shift = unsafe { *(p as *const u8) };
    Some(if shift > 14 { 14 } else { shift })
}

/// Offset from the TCP header of the data of option `kind` (of total length `len`), if the
/// segment carries it. Options are walked kind by kind, at most 12 steps (NOPs are single
/// bytes; real stacks put timestamps at option offset 0, 2, 6 or 10). The step is computed
/// without a branch, so the verifier follows one path through the walk, not one per
/// combination of option kinds.
#[inline(always)]
fn find_option<C: Frame, A>(ctx: &C, pkt: &Packet<A>, want: u8, want_len: u8) -> Option<usize> {
    let base = pkt.tcp as usize;
    let doff = pkt.doff;
    let mut i = TCP_HDR_LEN;
    for _ in 0..12 {
        if i + 2 > doff || i > 60 {
            return None;
        }
        let p = base + i;
        if p + 2 > ctx.data_end() {
            return None;
        }
        let (kind, len) = unsafe { (*(p as *const u8), *((p + 1) as *const u8)) };
        if kind == want && len == want_len {
            return (i + want_len as usize <= doff).then_some(i + 2);
        }
        // NOP: one byte; anything else: its length (0 for EOL and padding, which ends the
        // walk by standing still).
        let x = (kind ^ TCPOPT_NOP) as u64;
        let not_nop = (x | x.wrapping_neg()) >> 63;
        i += (not_nop * len as u64 + (1 - not_nop)) as usize;
    }
    None
}

/// Source and destination ports as the one 32-bit word they make in the header.
#[inline(always)]
fn ports(sport_be: u16, dport_be: u16) -> u32 {
    let (a, b) = (sport_be.to_ne_bytes(), dport_be.to_ne_bytes());
    u32::from_ne_bytes([a[0], a[1], b[0], b[1]])
}

/// What the rewrite does with addresses, per family: the IP header's (IPv4: and its
/// checksum), and the transport checksum's pseudo-header words.
pub trait L3: Address {
    /// Writes the new addresses into the IP header at `ip` (parse proved its bounds).
    ///
    /// # Safety
    /// `ip` must be the header `parse` found in the packet currently in the context.
    unsafe fn set_addrs(ip: *mut u8, old: Pair<Self>, new: Pair<Self>);
    /// A frame's transport checksum `c` after the addresses changed from `old` to `new`.
    fn csum(c: u16, old: Pair<Self>, new: Pair<Self>) -> u16;
    /// The same for an skb, through `bpf_l4_csum_replace` at packet offset `off`.
    fn skb_csum<C: Frame>(ctx: &C, off: usize, old: Pair<Self>, new: Pair<Self>, udp: bool);
}

/// Source and destination addresses, by reference (an IPv6 pair is 32 bytes: copies of it
/// are what the 512-byte stack cannot afford).
pub type Pair<'a, A> = (&'a A, &'a A);

impl L3 for u32 {
    #[inline(always)]
    unsafe fn set_addrs(ip: *mut u8, old: Pair<u32>, new: Pair<u32>) {
        let ip = ip as *mut Ipv4Hdr;
        unsafe {
            let mut ipc = u16::from_ne_bytes((*ip).check);
            ipc = checksum::replace4(ipc, *old.0, *new.0);
            ipc = checksum::replace4(ipc, *old.1, *new.1);
            (*ip).check = ipc.to_ne_bytes();
            (*ip).src_addr = new.0.to_ne_bytes();
            (*ip).dst_addr = new.1.to_ne_bytes();
        }
    }
    #[inline(always)]
    fn csum(c: u16, old: Pair<u32>, new: Pair<u32>) -> u16 {
        checksum::replace4(checksum::replace4(c, *old.0, *new.0), *old.1, *new.1)
    }
    #[inline(always)]
    fn skb_csum<C: Frame>(ctx: &C, off: usize, old: Pair<u32>, new: Pair<u32>, udp: bool) {
        ctx.l4_csum_replace(off, *old.0, *new.0, 4, true, udp);
        ctx.l4_csum_replace(off, *old.1, *new.1, 4, true, udp);
    }
}

/// Word `i` (0..4) of an IPv6 address, as the checksum adds it.
#[inline(always)]
fn word(a: &Ip6, i: usize) -> u32 {
    a[i]
}

impl L3 for Ip6 {
    #[inline(always)]
    unsafe fn set_addrs(ip: *mut u8, _old: Pair<Ip6>, new: Pair<Ip6>) {
        // No header checksum in IPv6: source at 8, destination at 24.
        unsafe {
            *(ip.add(8) as *mut Ip6) = *new.0;
            *(ip.add(24) as *mut Ip6) = *new.1;
        }
    }
    #[inline(always)]
    fn csum(c: u16, old: Pair<Ip6>, new: Pair<Ip6>) -> u16 {
        let mut c = c;
        for i in 0..4 {
            c = checksum::replace4(c, word(old.0, i), word(new.0, i));
            c = checksum::replace4(c, word(old.1, i), word(new.1, i));
        }
        c
    }
    #[inline(always)]
    fn skb_csum<C: Frame>(ctx: &C, off: usize, old: Pair<Ip6>, new: Pair<Ip6>, udp: bool) {
        for i in 0..4 {
            let (o, n) = (word(old.0, i), word(new.0, i));
            if o != n {
                ctx.l4_csum_replace(off, o, n, 4, true, udp);
            }
            let (o, n) = (word(old.1, i), word(new.1, i));
            if o != n {
                ctx.l4_csum_replace(off, o, n, 4, true, udp);
            }
        }
    }
}

/// An skb's transport checksum (at `field` in the TCP or UDP header) after the addresses
/// and ports changed, through the kernel (see `Frame::SKB`); the checksum's packet offset.
/// Packet pointers are invalid afterwards.
#[inline(always)]
fn skb_csum<C: Frame, A: L3>(
    ctx: &C,
    pkt: &Packet<A>,
    field: usize,
    (old_a, new_a): (Pair<A>, Pair<A>),
    (sport_be, dport_be): (u16, u16),
    udp: bool,
) -> usize {
    let off = pkt.tcp as usize - ctx.data() + field;
    A::skb_csum(ctx, off, old_a, new_a, udp);
    ctx.l4_csum_replace(
        off,
        ports(pkt.sport_be, pkt.dport_be),
        ports(sport_be, dport_be),
        4,
        false,
        udp,
    );
    off
}

/// `rewrite`'s UDP half: ports and the checksum (a 0 checksum, "none" in IPv4, stays 0; one
/// that comes out 0 is sent as 0xffff, RFC 768).
///
/// # Safety
/// As `rewrite`.
#[inline(always)]
unsafe fn rewrite_udp<C: Frame, A: L3>(
    ctx: &C,
    pkt: &Packet<A>,
    saddr_be: &A,
    daddr_be: &A,
    sport_be: u16,
    dport_be: u16,
) {
    if pkt.tcp as usize + UDP_HDR_LEN > ctx.data_end() {
        return;
    }
    let udp = pkt.tcp as *mut [u8; UDP_HDR_LEN];
    let mut u = unsafe { *udp };
    let (s, d) = (sport_be.to_ne_bytes(), dport_be.to_ne_bytes());
    u[0] = s[0];
    u[1] = s[1];
    u[2] = d[0];
    u[3] = d[1];
    let old = u16::from_ne_bytes([u[6], u[7]]);
    let (old_a, new_a) = ((&pkt.src_be, &pkt.dst_be), (saddr_be, daddr_be));
    if !C::SKB && old != 0 {
        let mut c = A::csum(old, old_a, new_a);
        c = checksum::replace4(
            c,
            ports(pkt.sport_be, pkt.dport_be),
            ports(sport_be, dport_be),
        );
        if c == 0 {
            c = 0xffff;
        }
        let cs = c.to_ne_bytes();
        u[6] = cs[0];
        u[7] = cs[1];
    }
    unsafe { *udp = u };
    if C::SKB {
        skb_csum(ctx, pkt, 6, (old_a, new_a), (sport_be, dport_be), true);
    }
}

/// The 4 bytes at `off` from the TCP header, bounds-checked.
#[inline(always)]
fn field4<C: Frame, A>(ctx: &C, pkt: &Packet<A>, off: usize) -> Option<*mut [u8; 4]> {
    if off > 56 {
        return None;
    }
    let p = pkt.tcp as usize + off;
    if p + 4 > ctx.data_end() {
        return None;
    }
    Some(p as *mut [u8; 4])
}

/// The 4 bytes at `off` from the TCP header, as they sit in the packet.
#[inline(always)]
pub fn read4<C: Frame, A>(ctx: &C, pkt: &Packet<A>, off: usize) -> Option<[u8; 4]> {
    field4(ctx, pkt, off).map(|p| unsafe { *p })
}

/// How a 4-byte field at `off` from the TCP header enters the ones' complement sum, as the
/// u32 the checksum helpers take: its bytes as they are when `off` is even, rotated by one
/// byte when odd (the words then straddle the field).
#[inline(always)]
fn csum_word(b: [u8; 4], off: usize) -> u32 {
    if off & 1 == 0 {
        u32::from_ne_bytes(b)
    } else {
        u32::from_ne_bytes([b[3], b[0], b[1], b[2]])
    }
}

/// Rewrites MACs, addresses and ports (and, with `ts = (off, delta)`, adds `delta` to the
/// 32-bit timestamp at `off` from the TCP header), updating the IPv4 and TCP checksums
/// incrementally (for an skb, the TCP checksum through the kernel: see `Frame::SKB`).
///
/// # Safety
/// `pkt` must come from `parse` on the packet currently in the context.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn rewrite<C: Frame, A: L3>(
    ctx: &C,
    pkt: &Packet<A>,
    smac: [u8; 6],
    dmac: [u8; 6],
    saddr_be: &A,
    daddr_be: &A,
    sport_be: u16,
    dport_be: u16,
    ts: Option<(usize, u32)>,
) {
    unsafe {
        // The timestamp first, while the packet pointers are valid.
        let mut ts_change = None;
        if let Some((off, delta)) = ts {
            if let Some(p) = field4(ctx, pkt, off) {
                let old = *p;
                let new = u32::from_be_bytes(old).wrapping_add(delta).to_be_bytes();
                *p = new;
                ts_change = Some((csum_word(old, off), csum_word(new, off)));
            }
        }
        (*pkt.eth).src_addr = smac;
        (*pkt.eth).dst_addr = dmac;

        let (old_a, new_a) = ((&pkt.src_be, &pkt.dst_be), (saddr_be, daddr_be));
        A::set_addrs(pkt.ip, old_a, new_a);

        if pkt.udp {
            rewrite_udp(ctx, pkt, saddr_be, daddr_be, sport_be, dport_be);
            return;
        }
        // (parse checked these bounds; checked again on the pointer used, so that the
        // verifier needs no link between `udp` and the range it proved.)
        if pkt.tcp as usize + TCP_HDR_LEN > ctx.data_end() {
            return;
        }
        let tcp = pkt.tcp as *mut [u8; TCP_HDR_LEN];
        let mut t = *tcp;
        let s = sport_be.to_ne_bytes();
        let d = dport_be.to_ne_bytes();
        t[0] = s[0];
        t[1] = s[1];
        t[2] = d[0];
        t[3] = d[1];
        if !C::SKB {
            let mut c = A::csum(u16::from_ne_bytes([t[16], t[17]]), old_a, new_a);
            c = checksum::replace2(c, pkt.sport_be, sport_be);
            c = checksum::replace2(c, pkt.dport_be, dport_be);
            if let Some((old, new)) = ts_change {
                c = checksum::replace4(c, old, new);
            }
            let cs = c.to_ne_bytes();
            t[16] = cs[0];
            t[17] = cs[1];
        }
        *tcp = t;
        if C::SKB {
            // Packet pointers are invalid after these calls: nothing below uses them.
            let off = skb_csum(ctx, pkt, 16, (old_a, new_a), (sport_be, dport_be), false);
            if let Some((old, new)) = ts_change {
                ctx.l4_csum_replace(off, old, new, 4, false, false);
            }
        }
    }
}
