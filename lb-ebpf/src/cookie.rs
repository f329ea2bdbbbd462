//! SYN cookies: admission under a flood of handshakes.
//!
//! While a listener has fewer than `half_open_limit` handshakes in progress, a SYN opens a
//! flow at once (member, SNAT port, the SYN forwarded). Past it, lb answers the SYN itself
//! with a SYN-ACK whose sequence number is the kernel's SYN cookie for the tuple
//! (`bpf_tcp_raw_gen_syncookie_ipv4`, the same code the kernel's own listeners use), and
//! keeps nothing: a spoofed SYN costs one rewritten frame. A client that answers with an ACK
//! carrying a valid cookie (`bpf_tcp_raw_check_syncookie_ipv4`) gets its flow then: lb turns
//! that ACK into a SYN to the chosen member (the client's ISN, MSS 1460), turns the member's
//! SYN-ACK into the ACK that completes the member's handshake, and from then on translates
//! sequence numbers by `Flow::seq_delta` (the member's ISN is not the cookie).
//!
//! A cookie encodes only the MSS: a cookie connection has no window scaling, SACK or
//! timestamps (as with the kernel's cookies without timestamps), so its windows stay within
//! 64 KiB. Data the client sends before the member has answered is dropped and sent again
//! by the client; a repeated pure ACK repeats lb's SYN.
//!
//! Once a listener is past its budget it stays in cookie mode for two connect timeouts, and
//! again for as long as most cookies go unanswered (a flood goes on): the half-open flows the
//! flood made before it began expire meanwhile, and no spoofed source holds a flow or a
//! SNAT port after that.

use aya_ebpf::{
    bindings::{iphdr, tcphdr, xdp_action},
    helpers::{bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv4},
};
use lb_common::{checksum, reason, Flow, ListenerConf, CT_SYNACK};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    conntrack::{establish, note_answer, track, xadd_u64},
    maps::*,
    parse::{ptr_at, Frame, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::add_stats,
    verdict, Verdict,
};

/// Cookies sent in a hold beyond twice those answered, for the flood to count as going on.
const FLOOD_FLOOR: u64 = 64;
/// How long after its last hold a listener still accepts cookies (the kernel's cookies are
/// valid for about two minutes).
const ACCEPT_NS: u64 = 130_000_000_000;
/// MSS lb offers a member on a cookie connection (the member clamps it to its own MTU).
const MEMBER_MSS: u16 = 1460;
/// A SYN, SYN-ACK or ACK lb makes: Ethernet, IPv4 without options, TCP with one option word.
const SEG_LEN: usize = EthHdr::LEN + Ipv4Hdr::LEN + 24;
const L4: usize = EthHdr::LEN + Ipv4Hdr::LEN;

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
        let over = match LISTENER_LIVE.get(listener.index) {
            Some(l) => l.half_open >= listener.half_open_limit as i64,
            None => false,
        };
        // A hold ended: the flood goes on while most cookies went unanswered.
        let flood = until != 0 && (*a).sent > 2 * (*a).valid + FLOOD_FLOOR;
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

/// Answers a SYN with a SYN cookie: the frame becomes the SYN-ACK to the client. None when
/// the SYN cannot be answered so (IP options, a malformed header): the caller opens a flow.
#[inline(always)]
pub(crate) fn answer_syn<C: Frame>(ctx: &C, pkt: &Packet) -> Option<Verdict> {
    if pkt.tcp as usize - pkt.ip as usize != Ipv4Hdr::LEN {
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
    if !ctx.load(L4, th, len) {
        return None;
    }
    let v = unsafe { bpf_tcp_raw_gen_syncookie_ipv4(pkt.ip as *mut iphdr, th as *mut tcphdr, len) };
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

/// Whether a client's ACK with no flow carries a valid cookie of this listener's recent
/// cookie mode (then its flow opens and the ACK becomes the SYN to the member; else the
/// namespace's stack answers it, as a host would).
#[inline(always)]
pub(crate) fn valid_ack(pkt: &Packet, listener: &ListenerConf, now: u64) -> bool {
    if pkt.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) != TCP_ACK
        || pkt.tcp as usize - pkt.ip as usize != Ipv4Hdr::LEN
    {
        return false;
    }
    let Some(a) = ADMISSION.get_ptr_mut(listener.index) else {
        return false;
    };
    if now >= unsafe { (*a).accept_until_ns } {
        return false;
    }
    let r =
        unsafe { bpf_tcp_raw_check_syncookie_ipv4(pkt.ip as *mut iphdr, pkt.tcp as *mut tcphdr) };
    if r != 0 {
        return false;
    }
    unsafe { xadd_u64(&raw mut (*a).valid, 1) };
    true
}

/// The SYN to the member of cookie flow `f`, made of the client's ACK `pkt`: the client's
/// ISN, lb's MSS offer, the client's window.
#[inline(always)]
pub(crate) fn member_syn<C: Frame>(ctx: &C, pkt: &Packet, f: *mut Flow) -> Verdict {
    let flow = unsafe { &*f };
    let seg = Segment {
        smac: flow.port_mac,
        dmac: flow.member_mac,
        saddr_be: flow.vip_be,
        daddr_be: flow.member_be,
        sport_be: flow.snat_port_be,
        dport_be: flow.member_port_be,
        seq: flow.member_ack.wrapping_sub(1),
        ack: 0,
        flags: TCP_SYN,
        win: pkt.win,
        opt: mss_option(MEMBER_MSS),
    };
    if !emit(ctx, pkt, &seg) {
        return verdict(xdp_action::XDP_DROP, reason::DROP_BAD_L4);
    }
    add_stats(flow.member, flow.listener, SEG_LEN as u64 - 14, true, false);
    verdict(xdp_action::XDP_TX, reason::TX_COOKIE_TO_MEMBER)
}

/// A valid cookie ACK whose flow could not open (`why`: no member, no neighbour, no port,
/// a limit): the client believes it is connected and, if it waits for the server to speak,
/// would wait for ever (no SYN of its own will come again). It gets a RST instead, in its
/// window, and `why` is counted among the listener's drops.
#[inline(always)]
pub(crate) fn reset<C: Frame>(ctx: &C, pkt: &Packet, listener: &ListenerConf, why: u32) -> Verdict {
    if let Some(c) = LISTENER_DROPS.get_ptr_mut(listener.index * reason::COUNT + why) {
        unsafe { *c += 1 };
    }
    let seg = Segment::reply(pkt, pkt.ack, pkt.seq, TCP_RST | TCP_ACK, 0, [1, 1, 1, 1]);
    if !emit(ctx, pkt, &seg) {
        return verdict(xdp_action::XDP_DROP, why);
    }
    verdict(xdp_action::XDP_TX, reason::TX_COOKIE_RESET)
}

/// The member's SYN-ACK on cookie flow `f`: the client acknowledged lb's SYN-ACK already,
/// so the connection is established; the frame becomes lb's ACK to the member.
#[inline(always)]
pub(crate) fn member_synack<C: Frame>(ctx: &C, pkt: &Packet, f: *mut Flow, now: u64) -> Verdict {
    let (first, win) = unsafe {
        let fl = &mut *f;
        let first = fl.state & CT_SYNACK == 0;
        if first {
            // Until now seq_delta was the cookie + 1 (what the client acknowledged): it
            // becomes the distance between the cookie and the member's ISN.
            fl.seq_delta = fl.seq_delta.wrapping_sub(pkt.seq.wrapping_add(1));
        }
        let w = fl.client_win;
        (first, if first && w <= 65535 { w as u16 } else { 65535 })
    };
    track::<crate::family::V4>(f, pkt, false, now, None);
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

#[inline(always)]
fn mss_option(mss: u16) -> [u8; 4] {
    let m = mss.to_be_bytes();
    [2, 4, m[0], m[1]]
}

/// A TCP segment lb makes in place of the frame it came in.
pub(crate) struct Segment {
    smac: [u8; 6],
    dmac: [u8; 6],
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    win: u16,
    /// The one option word (MSS, or NOPs).
    opt: [u8; 4],
}

impl Segment {
    /// A segment back to whoever sent `pkt`: MACs, addresses and ports swapped.
    #[inline(always)]
    fn reply(pkt: &Packet, seq: u32, ack: u32, flags: u8, win: u16, opt: [u8; 4]) -> Segment {
        Segment {
            smac: pkt.dst_mac,
            dmac: pkt.src_mac,
            saddr_be: pkt.dst_be,
            daddr_be: pkt.src_be,
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

/// Ones' complement sum of the IPv4 pseudo-header, as words sit in memory.
#[inline(always)]
fn pseudo(saddr_be: u32, daddr_be: u32, tcp_len: u16) -> u64 {
    let (s, d) = (saddr_be.to_ne_bytes(), daddr_be.to_ne_bytes());
    let l = tcp_len.to_be_bytes();
    u16::from_ne_bytes([s[0], s[1]]) as u64
        + u16::from_ne_bytes([s[2], s[3]]) as u64
        + u16::from_ne_bytes([d[0], d[1]]) as u64
        + u16::from_ne_bytes([d[2], d[3]]) as u64
        + u16::from_ne_bytes([0, 6]) as u64
        + u16::from_ne_bytes(l) as u64
}

/// Rewrites the frame `pkt` came in as segment `seg` (58 bytes), checksums computed whole.
/// An skb whose TCP checksum is still to be completed by whoever sends it (a local sender's
/// offload: its field then holds the folded pseudo-header sum) gets the new pseudo-header
/// sum instead, and is completed on its way out as before.
#[inline(always)]
fn emit<C: Frame>(ctx: &C, pkt: &Packet, seg: &Segment) -> bool {
    let old_csum = unsafe { u16::from_ne_bytes([*pkt.tcp.add(16), *pkt.tcp.add(17)]) };
    let old_len = pkt.ip_len.wrapping_sub(Ipv4Hdr::LEN as u16);
    let partial = C::SKB && old_csum == checksum::fold(pseudo(pkt.src_be, pkt.dst_be, old_len));
    if ctx.len() != SEG_LEN && !ctx.resize(SEG_LEN) {
        return false;
    }
    let (Some(eth), Some(ip), Some(tcp)) = (
        ptr_at::<EthHdr, C>(ctx, 0),
        ptr_at::<[u8; 20], C>(ctx, EthHdr::LEN),
        ptr_at::<[u8; 24], C>(ctx, L4),
    ) else {
        return false;
    };
    unsafe {
        (*eth).src_addr = seg.smac;
        (*eth).dst_addr = seg.dmac;
        let mut h = *ip;
        let tot = (Ipv4Hdr::LEN as u16 + 24).to_be_bytes();
        let (s, d) = (seg.saddr_be.to_ne_bytes(), seg.daddr_be.to_ne_bytes());
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

        let mut t = [0u8; 24];
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
        let ps = pseudo(seg.saddr_be, seg.daddr_be, 24);
        let c = if partial {
            checksum::fold(ps)
        } else {
            let mut sum = ps;
            let mut i = 0;
            while i < 24 {
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

/// `ADMISSION` value: a listener's cookie mode.
#[repr(C)]
pub struct Admission {
    /// Cookie mode lasts until then (0: off).
    pub until_ns: u64,
    /// ACKs are checked for cookies until then.
    pub accept_until_ns: u64,
    /// Cookies sent and ACKs with a valid cookie in the current hold.
    pub sent: u64,
    pub valid: u64,
}
