//! SYN cookies: admission under a flood of handshakes.
//!
//! While a listener has fewer than `half_open_limit` handshakes in progress, a SYN opens a
//! flow at once (member, SNAT port, the SYN forwarded). Past it, lb answers the SYN itself
//! with a SYN-ACK whose sequence number is the kernel's SYN cookie for the tuple
//! (`bpf_tcp_raw_gen_syncookie_ipv4`, the same code the kernel's own listeners use), and
//! keeps nothing: a spoofed SYN costs one rewritten frame. A client that answers with an ACK
//! carrying a valid cookie (`bpf_tcp_raw_check_syncookie_ipv4`) gets its flow then: lb turns
//! that ACK into a SYN to the chosen member (the client's ISN, and the MSS the cookie encodes:
//! `cookie_mss`), turns the member's
//! SYN-ACK into the ACK that completes the member's handshake, and from then on translates
//! sequence numbers by `Flow::seq_delta` (the member's ISN is not the cookie).
//!
//! A cookie encodes only the MSS: a cookie connection has no window scaling, SACK or
//! timestamps (as with the kernel's cookies without timestamps), so its windows stay within
//! 64 KiB. While the member has not answered, every segment of the client's (a repeated ACK,
//! data) becomes lb's SYN again: its data is dropped and sent again by the client, and a SYN
//! lost, or refused by an earlier connection's state at the member, is sent again. A
//! member's SYN-ACK that does not acknowledge that SYN (an earlier flow's half-open
//! connection on the same SNAT port) is answered with a RST (`reset_member`), not taken.
//!
//! Once a listener is past its budget it stays in cookie mode for two connect timeouts, and
//! again for as long as most cookies go unanswered and they are at least half the budget
//! per hold (a flood goes on; a trickle cannot hold cookie mode on): the half-open flows the
//! flood made before it began expire meanwhile, and no spoofed source holds a flow or a
//! SNAT port after that.
//!
//! IPv6 listeners get the same (`bpf_tcp_raw_gen_syncookie_ipv6`): the steps run in a program
//! of their own, `lb6_cookie`/`lb_tc6_cookie` (`step6`), which `lb6`/`lb_tc6` enter by a tail
//! call wherever IPv4's path calls this module, since `lb6` has no stack left for them. A SYN
//! with IPv4 options or IPv6 extension headers gets no cookie: in cookie mode it is dropped
//! (`DROP_SYN_OPTIONS`), never given a flow; an ACK with them is not checked for a cookie.
//!
//! Handshakes that end without becoming a connection (a RST or FIN before the client's ACK)
//! count against the budget too, over one-second windows (`Admission::failed`): a flood of
//! spoofed SYN+RST pairs, each freeing its flow at once, turns cookie mode on as a flood of
//! SYNs does.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr, xdp_action},
    helpers::{
        bpf_ktime_get_ns, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
    },
};
use lb_common::{
    checksum, reason, FlowG, Ip6, ListenerConf, ADMISSION_WINDOW_NS, CT_COOKIE, CT_SYNACK,
    FLOW_DIR_FORWARD, FLOW_DIR_REVERSE,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    client::open_flow,
    conntrack::{establish, note_answer, stale_synack, track, xadd_u64},
    family::{self, slot, Family, V6},
    maps::*,
    parse::{self, ptr_at, Frame, Packet, L3, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::add_stats,
    verdict, Verdict,
};

/// Cookies sent in a hold beyond twice those answered, for the flood to count as going on
/// (at least; half the listener's budget when that is more).
const FLOOD_FLOOR: u64 = 64;
/// How long after its last hold a listener still accepts cookies (the kernel's cookies are
/// valid for about two minutes).
const ACCEPT_NS: u64 = 130_000_000_000;
/// The low bits of a kernel SYN cookie that carry its MSS table index (`COOKIEMASK`).
const COOKIE_MASK: u32 = 0x00ff_ffff;
/// The TCP header of a segment lb makes: 20 bytes and one option word.
const TCP_LEN: usize = 24;

/// What the cookies need of a family: the kernel's cookie helpers, and the IP header of the
/// segments lb makes (no options, no extension headers).
pub(crate) trait Cookie: L3 {
    /// The IP header lb writes.
    const IP_LEN: usize;
    /// The kernel's MSS table for this family's cookies (`msstab` in
    /// net/ipv4/syncookies.c, net/ipv6/syncookies.c): a cookie carries an index into it.
    const MSS_TABLE: [u16; 4];
    /// The MSS lb offers a member when the cookie's index cannot be read back (the cookie
    /// was made in the kernel's previous cookie minute): the table's value for a 1500-byte
    /// MTU (the member clamps it to its own).
    const DEFAULT_MSS: u16;
    /// `bpf_tcp_raw_gen_syncookie_*` for the IP header `ip` (in the packet) and the TCP
    /// header copied to `th` (`len` bytes).
    ///
    /// # Safety
    /// `ip` must be the packet's IP header as `parse` found it.
    unsafe fn gen(ip: *mut u8, th: *mut u8, len: u32) -> i64;
    /// `bpf_tcp_raw_check_syncookie_*`: 0 if the ACK carries a valid cookie.
    ///
    /// # Safety
    /// `ip` and `th` must be the packet's headers as `parse` found them.
    unsafe fn check(ip: *mut u8, th: *mut u8) -> i64;
    /// The address's 16-bit words added up as they sit in memory (a checksum's share).
    fn sum(&self) -> u64;
    /// Writes the IP header of a segment from `s` to `d` with `TCP_LEN` bytes of TCP, at
    /// frame offset `EthHdr::LEN` of a frame of `EthHdr::LEN + IP_LEN + TCP_LEN` bytes.
    fn write_ip<C: Frame>(ctx: &C, s: &Self, d: &Self) -> bool;
}

impl Cookie for u32 {
    const IP_LEN: usize = Ipv4Hdr::LEN;
    const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
    const DEFAULT_MSS: u16 = 1460;
    #[inline(always)]
    unsafe fn gen(ip: *mut u8, th: *mut u8, len: u32) -> i64 {
        unsafe { bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, th as *mut tcphdr, len) }
    }
    #[inline(always)]
    unsafe fn check(ip: *mut u8, th: *mut u8) -> i64 {
        unsafe { bpf_tcp_raw_check_syncookie_ipv4(ip as *mut iphdr, th as *mut tcphdr) }
    }
    #[inline(always)]
    fn sum(&self) -> u64 {
        (*self & 0xffff) as u64 + (*self >> 16) as u64
    }
    /// The header the frame came with (its TOS and ID kept), its length, flags, TTL,
    /// addresses and checksum rewritten.
    #[inline(always)]
    fn write_ip<C: Frame>(ctx: &C, s: &u32, d: &u32) -> bool {
        let Some(ip) = ptr_at::<[u8; 20], C>(ctx, EthHdr::LEN) else {
            return false;
        };
        unsafe {
            let mut h = *ip;
            let tot = ((Ipv4Hdr::LEN + TCP_LEN) as u16).to_be_bytes();
            let (s, d) = (s.to_ne_bytes(), d.to_ne_bytes());
            h[2] = tot[0];
            h[3] = tot[1];
            h[6] = 0x40; // don't fragment
            h[7] = 0;
            h[8] = 64;
            h[10] = 0;
            h[11] = 0;
            h[12..16].copy_from_slice(&s);
            h[16..20].copy_from_slice(&d);
            let mut sum = 0u64;
            let mut i = 0;
            while i < 20 {
                sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u64;
                i += 2;
            }
            let c = (!checksum::fold(sum)).to_ne_bytes();
            h[10] = c[0];
            h[11] = c[1];
            *ip = h;
        }
        true
    }
}

impl Cookie for Ip6 {
    const IP_LEN: usize = 40;
    const MSS_TABLE: [u16; 4] = [1220, 1420, 1440, 8940];
    const DEFAULT_MSS: u16 = 1440;
    #[inline(always)]
    unsafe fn gen(ip: *mut u8, th: *mut u8, len: u32) -> i64 {
        unsafe { bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, th as *mut tcphdr, len) }
    }
    #[inline(always)]
    unsafe fn check(ip: *mut u8, th: *mut u8) -> i64 {
        unsafe { bpf_tcp_raw_check_syncookie_ipv6(ip as *mut ipv6hdr, th as *mut tcphdr) }
    }
    #[inline(always)]
    fn sum(&self) -> u64 {
        let mut s = 0u64;
        for w in self {
            s += (*w & 0xffff) as u64 + (*w >> 16) as u64;
        }
        s
    }
    /// A fresh header (no traffic class or flow label), written word by word.
    #[inline(always)]
    fn write_ip<C: Frame>(ctx: &C, s: &Ip6, d: &Ip6) -> bool {
        let Some(ip) = ptr_at::<[u32; 10], C>(ctx, EthHdr::LEN) else {
            return false;
        };
        unsafe {
            let ip = ip as *mut u32;
            core::ptr::write_unaligned(ip, 0x6000_0000u32.to_be());
            let w1 = ((TCP_LEN as u32) << 16) | (6 << 8) | 64;
            core::ptr::write_unaligned(ip.add(1), w1.to_be());
            let mut i = 0;
            while i < 4 {
                core::ptr::write_unaligned(ip.add(2 + i), s[i]);
                core::ptr::write_unaligned(ip.add(6 + i), d[i]);
                i += 1;
            }
        }
        true
    }
}

/// Whether this SYN, with no flow, is answered with a cookie.
#[inline(always)]
pub(crate) fn flooded(listener: &ListenerConf, now: u64) -> bool {
    if listener.half_open_limit == u32::MAX {
        return false;
    }
    let Some(a) = ADMISSION.get_ptr_mut(listener.index) else {
        return false;
    };
    unsafe {
        let until = (*a).until_ns;
        if now < until {
            xadd_u64(&raw mut (*a).sent, 1);
            return true;
        }
        // Handshakes in progress, and those that failed in the current window.
        let failed = if now.wrapping_sub((*a).window_since_ns) < ADMISSION_WINDOW_NS {
            (*a).window_count as i64
        } else {
            0
        };
        let over = match LISTENER_LIVE.get(listener.index) {
            Some(l) => l.half_open + failed >= listener.half_open_limit as i64,
            None => false,
        };
        // A hold ended: the flood goes on while most cookies went unanswered, and enough
        // of them to matter: a trickle of spoofed SYNs (fewer than half the budget per
        // hold) would otherwise keep the listener in cookie mode, and its connections
        // without window scaling, for ever. Below that, its SYNs fit the budget as flows.
        let floor = (listener.half_open_limit as u64 / 2).max(FLOOD_FLOOR);
        let flood = until != 0 && (*a).sent > 2 * (*a).valid + floor;
        if over || flood {
            let hold = 2 * listener.timeout_member_connect_ns;
            let hold = if hold < 1_000_000_000 {
                1_000_000_000
            } else {
                hold
            };
            (*a).until_ns = now + hold;
            (*a).accept_until_ns = now + hold + ACCEPT_NS;
            (*a).sent = 1;
            (*a).valid = 0;
            return true;
        }
        if until != 0 {
            (*a).until_ns = 0;
        }
    }
    false
}

/// Whether `pkt`'s TCP header follows a plain IP header (no IPv4 options, no IPv6
/// extension headers): only such segments are answered with, or checked for, cookies.
#[inline(always)]
pub(crate) fn plain<A: Cookie>(pkt: &Packet<A>) -> bool {
    pkt.tcp as usize - pkt.ip as usize == A::IP_LEN
}

/// Answers a SYN with a SYN cookie: the frame becomes the SYN-ACK to the client. None when
/// the SYN cannot be answered so (IP options, a malformed header): the caller opens a flow.
#[inline(always)]
pub(crate) fn answer_syn<C: Frame, A: Cookie>(ctx: &C, pkt: &Packet<A>) -> Option<Verdict> {
    if !plain(pkt) {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // Checked on the very register the helpers get, after a volatile load (the compiler
    // would otherwise test an earlier copy, whose bounds older verifiers do not carry over).
    let extra = unsafe { core::ptr::read_volatile(&(pkt.doff as u64).wrapping_sub(20)) };
    if extra > 40 {
        return None;
    }
    let len = (extra + 20) as u32;
    // The helper reads the header from memory the verifier can size: a copy.
    let th = unsafe { (*scratch).tcp.as_mut_ptr() };
    if !ctx.load(EthHdr::LEN + A::IP_LEN, th, len) {
        return None;
    }
    let v = unsafe { A::gen(pkt.ip, th, len) };
    if v < 0 {
        return None;
    }
    let seg = Segment::reply(
        pkt,
        v as u32,
        pkt.seq.wrapping_add(1),
        TCP_SYN | TCP_ACK,
        65535,
        mss_option((v >> 32) as u16),
    );
    Some(if emit(ctx, pkt, &seg) {
        verdict(xdp_action::XDP_TX, reason::TX_SYNCOOKIE)
    } else {
        verdict(xdp_action::XDP_DROP, reason::DROP_BAD_L4)
    })
}

/// Whether ACKs to this listener are checked for cookies now (cookie mode was on lately).
#[inline(always)]
pub(crate) fn accepting(listener: &ListenerConf, now: u64) -> bool {
    match ADMISSION.get(listener.index) {
        Some(a) => now < a.accept_until_ns,
        None => false,
    }
}

/// Whether a client's ACK with no flow carries a valid cookie of this listener's recent
/// cookie mode (then its flow opens and the ACK becomes the SYN to the member; else the
/// namespace's stack answers it, as a host would).
#[inline(always)]
pub(crate) fn valid_ack<A: Cookie>(pkt: &Packet<A>, listener: &ListenerConf, now: u64) -> bool {
    if pkt.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) != TCP_ACK || !plain(pkt) {
        return false;
    }
    let Some(a) = ADMISSION.get_ptr_mut(listener.index) else {
        return false;
    };
    if now >= unsafe { (*a).accept_until_ns } {
        return false;
    }
    if unsafe { A::check(pkt.ip, pkt.tcp) } != 0 {
        return false;
    }
    unsafe { xadd_u64(&raw mut (*a).valid, 1) };
    true
}

/// The MSS the client's SYN offered, as the cookie lb answered it with encodes it (the
/// table's value at or below the client's). The kernel's cookie is a hash of the tuple and
/// the ISN, plus the cookie minute, plus (a second hash + the MSS index) in the low 24 bits;
/// no helper reads the index back. So the cookie the same SYN gets with the table's first
/// MSS is made again (`gen`, into the scratch space): within the same cookie minute the two
/// differ by the index alone, in the low 24 bits. Otherwise (the minute turned between the
/// SYN and now: the difference is then anything, almost never below 4) the family's
/// default. `ip`: the packet's IP header (the client's addresses); the ports, the client's
/// ISN and the cookie lb sent are the flow's.
#[inline(never)]
fn cookie_mss<A: Cookie>(ip: *mut u8, sport_be: u16, dport_be: u16, isn: u32, cookie: u32) -> u16 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return A::DEFAULT_MSS;
    };
    let th = unsafe { &mut (*scratch).tcp };
    let (sp, dp) = (sport_be.to_ne_bytes(), dport_be.to_ne_bytes());
    let seq = isn.to_be_bytes();
    let mss = mss_option(A::MSS_TABLE[0]);
    let mut i = 0;
    while i < TCP_LEN {
        th[i] = 0;
        i += 1;
    }
    (th[0], th[1], th[2], th[3]) = (sp[0], sp[1], dp[0], dp[1]);
    (th[4], th[5], th[6], th[7]) = (seq[0], seq[1], seq[2], seq[3]);
    th[12] = ((TCP_LEN / 4) as u8) << 4;
    th[13] = TCP_SYN;
    (th[20], th[21], th[22], th[23]) = (mss[0], mss[1], mss[2], mss[3]);
    let v = unsafe { A::gen(ip, th.as_mut_ptr(), TCP_LEN as u32) };
    if v < 0 {
        return A::DEFAULT_MSS;
    }
    match cookie.wrapping_sub(v as u32) & COOKIE_MASK {
        0 => A::MSS_TABLE[0],
        1 => A::MSS_TABLE[1],
        2 => A::MSS_TABLE[2],
        3 => A::MSS_TABLE[3],
        _ => A::DEFAULT_MSS,
    }
}

/// The SYN to the member of cookie flow `f`, made of the client's segment `pkt` (its cookie
/// ACK, or any segment of its while the member has not answered): the client's ISN, the MSS
/// its cookie encodes (`cookie_mss`), the client's window.
#[inline(always)]
pub(crate) fn member_syn<C: Frame, A: Cookie>(
    ctx: &C,
    pkt: &Packet<A>,
    f: *mut FlowG<A>,
) -> Verdict {
    let flow = unsafe { &*f };
    let seg = Segment {
        smac: flow.port_mac,
        dmac: flow.member_mac,
        saddr: &flow.vip_be,
        daddr: &flow.member_be,
        sport_be: flow.snat_port_be,
        dport_be: flow.member_port_be,
        seq: flow.member_ack.wrapping_sub(1),
        ack: 0,
        flags: TCP_SYN,
        win: if flow.client_win < 65535 {
            flow.client_win as u16
        } else {
            65535
        },
        opt: mss_option(cookie_mss::<A>(
            pkt.ip,
            flow.client_port_be,
            flow.listener_port_be,
            flow.member_ack.wrapping_sub(1),
            flow.seq_delta.wrapping_sub(1),
        )),
    };
    if !emit(ctx, pkt, &seg) {
        return verdict(xdp_action::XDP_DROP, reason::DROP_BAD_L4);
    }
    let len = (A::IP_LEN + TCP_LEN) as u64;
    add_stats(flow.member, flow.listener, len, true, false);
    verdict(xdp_action::XDP_TX, reason::TX_COOKIE_TO_MEMBER)
}

/// A valid cookie ACK whose flow could not open (`why`: no member, no neighbour, no port,
/// a limit): the client believes it is connected and, if it waits for the server to speak,
/// would wait for ever (no SYN of its own will come again). It gets a RST instead, in its
/// window, and `why` is counted among the listener's drops.
#[inline(always)]
pub(crate) fn reset<C: Frame, A: Cookie>(
    ctx: &C,
    pkt: &Packet<A>,
    listener: &ListenerConf,
    why: u32,
) -> Verdict {
    if let Some(c) = LISTENER_DROPS.get_ptr_mut(listener.index * reason::COUNT + why) {
        unsafe { *c += 1 };
    }
    let seg = Segment::reply(pkt, pkt.ack, pkt.seq, TCP_RST | TCP_ACK, 0, [1, 1, 1, 1]);
    if !emit(ctx, pkt, &seg) {
        return verdict(xdp_action::XDP_DROP, why);
    }
    verdict(xdp_action::XDP_TX, reason::TX_COOKIE_RESET)
}

/// A member's SYN-ACK that does not acknowledge the flow's SYN (`TX_STALE_RESET`): the frame
/// becomes the RST a host answers it with (its acknowledgment as the sequence number), back
/// to the member.
#[inline(always)]
pub(crate) fn reset_member<C: Frame, A: Cookie>(ctx: &C, pkt: &Packet<A>) -> Verdict {
    let seg = Segment::reply(pkt, pkt.ack, 0, TCP_RST, 0, [1, 1, 1, 1]);
    if !emit(ctx, pkt, &seg) {
        return verdict(xdp_action::XDP_DROP, reason::DROP_STALE);
    }
    verdict(xdp_action::XDP_TX, reason::TX_STALE_RESET)
}

/// The member's SYN-ACK on cookie flow `f`: the client acknowledged lb's SYN-ACK already,
/// so the connection is established; the frame becomes lb's ACK to the member.
#[inline(always)]
pub(crate) fn member_synack<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    f: *mut FlowG<F::A>,
    now: u64,
) -> Verdict {
    let (first, win) = unsafe {
        let fl = &mut *f;
        let first = fl.state & CT_SYNACK == 0;
        if stale_synack(fl, pkt) {
            // Not the answer to lb's SYN: an earlier flow's half-open connection on this
            // SNAT port. Taking it would complete that handshake at the member with the
            // wrong numbers.
            return reset_member(ctx, pkt);
        }
        if first {
            // Until now seq_delta was the cookie + 1 (what the client acknowledged): it
            // becomes the distance between the cookie and the member's ISN.
            fl.seq_delta = fl.seq_delta.wrapping_sub(pkt.seq.wrapping_add(1));
        }
        let w = fl.client_win;
        (first, if first && w <= 65535 { w as u16 } else { 65535 })
    };
    track::<F>(f, pkt, false, now, None);
    note_answer(unsafe { (*f).member });
    let flow = unsafe { &*f };
    let new_conn = first && establish(f);
    add_stats(
        flow.member,
        flow.listener,
        pkt.ip_len as u64,
        false,
        new_conn,
    );
    let seg = Segment::reply(
        pkt,
        pkt.ack,
        pkt.seq.wrapping_add(1),
        TCP_ACK,
        win,
        [1, 1, 1, 1],
    );
    if !emit(ctx, pkt, &seg) {
        return verdict(xdp_action::XDP_DROP, reason::DROP_BAD_L4);
    }
    verdict(xdp_action::XDP_TX, reason::TX_COOKIE_TO_MEMBER)
}

/// The cookie steps of an IPv6 segment, in `lb6_cookie`/`lb_tc6_cookie`: `lb6` tail-calls
/// them for a SYN past the listener's budget, an ACK without a flow while the listener
/// accepts cookies, a repeated ACK of a cookie flow whose member has not answered, and the
/// member's SYN-ACK of a cookie flow. Each is found again here from the packet.
#[inline(always)]
pub(crate) fn step6<C: Frame>(ctx: &C) -> Verdict {
    let pkt = match parse::parse6(ctx) {
        Ok(parse::Parsed6::L4(p)) if !p.udp && crate::for_port(&p.dst_mac) => p,
        Ok(_) => return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED),
        Err(v) => return verdict(v.0, v.1),
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(lkey) = family::lkey::<V6>() else {
        return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    };
    pkt.listener_key_into(lkey);
    if let Some(listener) = unsafe { V6::listeners().get(&*lkey) } {
        let v = client6(ctx, &pkt, listener, now);
        if v.action == xdp_action::XDP_DROP {
            if let Some(c) = LISTENER_DROPS.get_ptr_mut(listener.index * reason::COUNT + v.reason) {
                unsafe { *c += 1 };
            }
        }
        return v;
    }
    // The member's SYN-ACK.
    let (Some(rkey), Some(fkey)) = (
        family::key::<V6>(slot::TEMP),
        family::key::<V6>(slot::FORWARD),
    ) else {
        return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    };
    pkt.flow_key_into(FLOW_DIR_REVERSE, rkey);
    let Some(r) = V6::conntrack().get_ptr(&*rkey) else {
        return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    };
    unsafe { (*r).forward_key_into(fkey) };
    match V6::conntrack().get_ptr_mut(&*fkey) {
        Some(f)
            if unsafe { (*f).state } & CT_COOKIE != 0
                && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK =>
        {
            let v = member_synack::<C, V6>(ctx, &pkt, f, now);
            V6::flush_log();
            v
        }
        _ => verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED),
    }
}

/// `step6` for a client's segment to listener `listener`.
#[inline(always)]
fn client6<C: Frame>(ctx: &C, pkt: &Packet<Ip6>, listener: &ListenerConf, now: u64) -> Verdict {
    let Some(fkey) = family::key::<V6>(slot::FORWARD) else {
        return verdict(xdp_action::XDP_DROP, reason::DROP_CT_FULL);
    };
    pkt.flow_key_into(FLOW_DIR_FORWARD, fkey);
    if let Some(f) = V6::conntrack().get_ptr_mut(&*fkey) {
        // A repeated ACK while lb's SYN to the member is unanswered (`from_client` checked).
        return member_syn(ctx, pkt, f);
    }
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let why = if plain(pkt) {
            reason::DROP_BAD_L4
        } else {
            reason::DROP_SYN_OPTIONS
        };
        return answer_syn(ctx, pkt).unwrap_or(verdict(xdp_action::XDP_DROP, why));
    }
    if !valid_ack(pkt, listener, now) {
        return verdict(xdp_action::XDP_PASS, reason::PASS_NO_FLOW);
    }
    match open_flow::<C, V6>(ctx, pkt, listener, fkey, now, true) {
        Ok(f) => member_syn(ctx, pkt, f),
        Err(r) => reset(ctx, pkt, listener, r),
    }
}

#[inline(always)]
fn mss_option(mss: u16) -> [u8; 4] {
    let m = mss.to_be_bytes();
    [2, 4, m[0], m[1]]
}

/// A TCP segment lb makes in place of the frame it came in.
pub(crate) struct Segment<'a, A> {
    smac: [u8; 6],
    dmac: [u8; 6],
    saddr: &'a A,
    daddr: &'a A,
    sport_be: u16,
    dport_be: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    win: u16,
    /// The one option word (MSS, or NOPs).
    opt: [u8; 4],
}

impl<'a, A> Segment<'a, A> {
    /// A segment back to whoever sent `pkt`: MACs, addresses and ports swapped.
    #[inline(always)]
    fn reply(
        pkt: &'a Packet<A>,
        seq: u32,
        ack: u32,
        flags: u8,
        win: u16,
        opt: [u8; 4],
    ) -> Segment<'a, A> {
        Segment {
            smac: pkt.dst_mac,
            dmac: pkt.src_mac,
            saddr: &pkt.dst_be,
            daddr: &pkt.src_be,
            sport_be: pkt.dport_be,
            dport_be: pkt.sport_be,
            seq,
            ack,
            flags,
            win,
            opt,
        }
    }
}

/// Ones' complement sum of the pseudo-header (IPv4's or IPv6's: the same words in another
/// order), as words sit in memory.
#[inline(always)]
fn pseudo<A: Cookie>(saddr: &A, daddr: &A, tcp_len: u16) -> u64 {
    let l = tcp_len.to_be_bytes();
    saddr.sum() + daddr.sum() + u16::from_ne_bytes([0, 6]) as u64 + u16::from_ne_bytes(l) as u64
}

/// Rewrites the frame `pkt` came in as segment `seg` (Ethernet, the family's plain IP
/// header, `TCP_LEN` bytes of TCP), checksums computed whole. An skb whose TCP checksum is
/// still to be completed by whoever sends it (a local sender's offload: its field then holds
/// the folded pseudo-header sum) gets the new pseudo-header sum instead, and is completed on
/// its way out as before.
#[inline(always)]
fn emit<C: Frame, A: Cookie>(ctx: &C, pkt: &Packet<A>, seg: &Segment<A>) -> bool {
    // Checked again: the parser proved 20 bytes for TCP but 8 for UDP, and 6.1's verifier
    // keeps the smaller range once both ways meet.
    if pkt.tcp as usize + 18 > ctx.data_end() {
        return false;
    }
    let old_csum = unsafe { u16::from_ne_bytes([*pkt.tcp.add(16), *pkt.tcp.add(17)]) };
    let partial =
        C::SKB && old_csum == checksum::fold(pseudo(&pkt.src_be, &pkt.dst_be, pkt.l4_len));
    let l4 = EthHdr::LEN + A::IP_LEN;
    if ctx.len() != l4 + TCP_LEN && !ctx.resize(l4 + TCP_LEN) {
        return false;
    }
    let Some(eth) = ptr_at::<EthHdr, C>(ctx, 0) else {
        return false;
    };
    unsafe {
        (*eth).src_addr = seg.smac;
        (*eth).dst_addr = seg.dmac;
    }
    if !A::write_ip(ctx, seg.saddr, seg.daddr) {
        return false;
    }
    let Some(tcp) = ptr_at::<[u8; TCP_LEN], C>(ctx, l4) else {
        return false;
    };
    unsafe {
        let mut t = [0u8; TCP_LEN];
        let (sp, dp) = (seg.sport_be.to_ne_bytes(), seg.dport_be.to_ne_bytes());
        t[0] = sp[0];
        t[1] = sp[1];
        t[2] = dp[0];
        t[3] = dp[1];
        t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
        t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
        t[12] = 6 << 4;
        t[13] = seg.flags;
        let w = seg.win.to_be_bytes();
        t[14] = w[0];
        t[15] = w[1];
        t[20..24].copy_from_slice(&seg.opt);
        let ps = pseudo(seg.saddr, seg.daddr, TCP_LEN as u16);
        let c = if partial {
            checksum::fold(ps)
        } else {
            let mut sum = ps;
            let mut i = 0;
            while i < TCP_LEN {
                sum += u16::from_ne_bytes([t[i], t[i + 1]]) as u64;
                i += 2;
            }
            !checksum::fold(sum)
        };
        let c = c.to_ne_bytes();
        t[16] = c[0];
        t[17] = c[1];
        *tcp = t;
    }
    true
}
