//! The per-packet half of lb: one-arm full NAT with weighted least connections, in XDP.
//!
//! client -> VIP:listener   becomes VIP:snat -> member:port   (XDP_TX, same port)
//! member -> VIP:snat       becomes VIP:listener -> client    (XDP_TX, same port)
//! Everything else goes to the kernel untouched; malformed packets get one counted verdict each.
//!
//! These programs are loaded once per node and shared by every load balancer: a load
//! balancer's port runs a stub (made by the daemon, a few instructions) that writes the load
//! balancer's slot into `CURRENT` and tail-calls the entry point here; every map access then
//! goes to that load balancer's own maps (maps.rs, inner.rs).
#![no_std]
#![no_main]
// Atomic adds on map values: core's Atomic* types lack fetch_add on the BPF target.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod balance;
mod client;
mod connlog;
mod conntrack;
mod cookie;
mod family;
mod icmp;
mod icmp6;
mod inner;
mod maps;
mod member;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::ProgramArray,
    programs::{TcContext, XdpContext},
};
use family::{Family, V4, V6};
use lb_common::{reason, CT_COOKIE, FLOW_DIR_REVERSE};
use maps::*;
use parse::{Frame, Packet};

use client::{fast_path, from_client};
use member::from_member;

pub(crate) struct Verdict {
    pub(crate) action: u32,
    pub(crate) reason: u32,
}

#[inline(always)]
pub(crate) const fn verdict(action: u32, reason: u32) -> Verdict {
    Verdict { action, reason }
}

impl Verdict {
    /// In one register, as a BPF subprogram returns it.
    #[inline(always)]
    pub(crate) fn encode(&self) -> u64 {
        ((self.action as u64) << 32) | self.reason as u64
    }

    #[inline(always)]
    pub(crate) fn decode(v: u64) -> Verdict {
        verdict((v >> 32) as u32, v as u32)
    }
}

/// See `client::fast_path`. Only the segments it decides are counted here (as the port's
/// program would count them); the rest go on into the namespace and are counted there. A
/// translated segment goes back into the bridge as if the port had sent it; a drop stays a
/// drop (a member's refusal kept from the client must not reach the bridge untranslated:
/// a learning bridge would move the member's MAC to the port).
#[classifier]
#[inline(always)]
pub fn lb_tc_fast(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    match fast_path(&ctx) {
        Some(v) => {
            count(&v);
            match v.action {
                xdp_action::XDP_TX => unsafe {
                    bpf_redirect(ctx.ifindex(), BPF_F_INGRESS as u64) as i32
                },
                xdp_action::XDP_DROP => TC_ACT_SHOT,
                _ => TC_ACT_OK,
            }
        }
        None => TC_ACT_OK,
    }
}

#[inline(always)]
fn count(v: &Verdict) {
    if let Some(c) = VERDICTS.get_ptr_mut(v.reason) {
        unsafe { *c += 1 };
    }
    // The upgrade tests' variant: one more load, so every entry point's code (and tag)
    // differs from the default build's.
    #[cfg(feature = "upgrade-variant")]
    unsafe {
        core::ptr::read_volatile(&v.action);
    }
}

/// The IPv6 programs, entered by a tail call from the IPv4 ones (`lb` -> `lb6`, `lb_tc` ->
/// `lb_tc6`; slot 0), and from those for ICMPv6 (`lb6_icmp`, `lb_tc6_icmp`; slot 1) and for
/// the SYN cookies' steps (`lb6_cookie`, `lb_tc6_cookie`; slot 2): each program has the whole
/// 512-byte stack to itself, which one program for everything would not fit in. The loader
/// fills the slots before it attaches.
#[map]
static V6_XDP: ProgramArray = ProgramArray::with_max_entries(3, 0);
#[map]
static V6_TC: ProgramArray = ProgramArray::with_max_entries(3, 0);

/// The slots of `V6_XDP` and `V6_TC`.
pub(crate) mod v6slot {
    /// `lb6`, `lb_tc6`.
    pub(crate) const IPV6: u32 = 0;
    /// `lb6_icmp`, `lb_tc6_icmp`.
    pub(crate) const ICMP: u32 = 1;
    /// `lb6_cookie`, `lb_tc6_cookie` (`cookie::step6`).
    pub(crate) const COOKIE: u32 = 2;
}

#[xdp]
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
    let v = process(&ctx);
    count(&v);
    v.action
}

#[xdp]
#[inline(always)]
pub fn lb6(ctx: XdpContext) -> u32 {
    let v = process6(&ctx);
    count(&v);
    v.action
}

/// Headers the data path reads: Ethernet, IPv4 with options, and TCP, or an ICMP error with
/// its embedded IPv4 header (options included) and 8 bytes of its transport header; IPv6
/// with some extension headers and TCP.
const HEADERS_MAX: usize = 256;

/// An skb's linear part may end before the headers do; the kernel pulls them in on asking.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let want = if ctx.len() as usize > HEADERS_MAX {
        HEADERS_MAX
    } else {
        ctx.len() as usize
    };
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
}

/// The same data path at TC ingress of the port (`xdp_mode = "tc"`): it sees skbs as the
/// stack built them, GSO super-packets with partial checksums included, and sends a rewritten
/// one back out of the port it came in on (the XDP_TX of a TC program) without cutting it up.
#[classifier]
#[inline(always)]
pub fn lb_tc(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    let v = process(&ctx);
    count(&v);
    tc_action(&ctx, &v)
}

#[xdp]
#[inline(always)]
pub fn lb6_icmp(ctx: XdpContext) -> u32 {
    let v = process6_icmp(&ctx);
    count(&v);
    v.action
}

/// `lb_tc6` for ICMPv6 (see `lb6_icmp`).
#[classifier]
#[inline(always)]
pub fn lb_tc6_icmp(ctx: TcContext) -> i32 {
    let v = process6_icmp(&ctx);
    count(&v);
    tc_action(&ctx, &v)
}

/// See `cookie::step6`.
#[xdp]
#[inline(always)]
pub fn lb6_cookie(ctx: XdpContext) -> u32 {
    let v = cookie::step6(&ctx);
    count(&v);
    v.action
}

/// `lb6_cookie` at TC.
#[classifier]
#[inline(always)]
pub fn lb_tc6_cookie(ctx: TcContext) -> i32 {
    let v = cookie::step6(&ctx);
    count(&v);
    tc_action(&ctx, &v)
}

/// An ICMPv6 message: an error about a flow goes to its other end, translated.
#[inline(always)]
fn process6_icmp<C: Frame>(ctx: &C) -> Verdict {
    match parse::parse6(ctx) {
        Ok(parse::Parsed6::Icmp(off)) if for_port6(ctx) => icmp6::to_end(ctx, off),
        Ok(_) => verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED),
        Err(v) => verdict(v.0, v.1),
    }
}

/// `lb_tc` for IPv6 (see `lb6`).
#[classifier]
#[inline(always)]
pub fn lb_tc6(ctx: TcContext) -> i32 {
    let v = process6(&ctx);
    count(&v);
    tc_action(&ctx, &v)
}

/// A verdict as a TC program returns it: XDP_TX becomes the redirect to the port's own egress.
#[inline(always)]
fn tc_action(ctx: &TcContext, v: &Verdict) -> i32 {
    match v.action {
        xdp_action::XDP_TX => unsafe { bpf_redirect(ctx.ifindex(), 0) as i32 },
        xdp_action::XDP_DROP => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// Attached to the outer end of a veth port lb created, so that frames XDP_TX'd into the veth
/// are received (native veth XDP needs NAPI on the peer, see docs/ARCHITECTURE.md).
#[xdp]
#[inline(always)]
pub fn lb_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn process<C: Frame>(ctx: &C) -> Verdict {
    match parse::parse(ctx) {
        Ok(parse::Parsed::Ipv6) => {
            // An IPv4 load balancer has no IPv6 tables: its IPv6 frames are the kernel's.
            if LISTENERS6.present() {
                tail_call_v6(ctx, v6slot::IPV6);
            }
            // (Or no IPv6 program in the slot: the set loads them for its first IPv6 load
            // balancer.)
            verdict(xdp_action::XDP_PASS, reason::PASS_NOT_IP)
        }
        Ok(parse::Parsed::L4(p)) if for_port(&p.dst_mac) => balance::<C, V4>(ctx, &p),
        Ok(parse::Parsed::IcmpError(e)) if for_port(unsafe { &(*e.eth).dst_addr }) => {
            icmp::to_end(ctx, &e)
        }
        Ok(_) => verdict(xdp_action::XDP_PASS, reason::PASS_NOT_FOR_PORT),
        Err(v) => verdict(v.0, v.1),
    }
}

/// Into the IPv6 program in `slot` of the context's kind (`V6_TC` or `V6_XDP`); back here
/// only if the slot is empty.
#[inline(always)]
pub(crate) fn tail_call_v6<C: Frame>(ctx: &C, slot: u32) {
    unsafe {
        if C::SKB {
            V6_TC.tail_call(ctx, slot);
        } else {
            V6_XDP.tail_call(ctx, slot);
        }
    }
}

/// The IPv6 programs' half of `process`.
#[inline(always)]
fn process6<C: Frame>(ctx: &C) -> Verdict {
    match parse::parse6(ctx) {
        Ok(parse::Parsed6::L4(p)) if for_port(&p.dst_mac) => balance::<C, V6>(ctx, &p),
        Ok(parse::Parsed6::Icmp(_)) if for_port6(ctx) => {
            // ICMPv6 errors are translated by a program of their own (its frame would not
            // fit beside this one's).
            tail_call_v6(ctx, v6slot::ICMP);
            verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED)
        }
        Ok(_) => verdict(xdp_action::XDP_PASS, reason::PASS_NOT_FOR_PORT),
        Err(v) => verdict(v.0, v.1),
    }
}

/// A segment or datagram of family `F` addressed to the port: a client's to a listener, or a
/// member's reply of a flow.
#[inline(always)]
fn balance<C: Frame, F: Family>(ctx: &C, pkt: &Packet<F::A>) -> Verdict {
    let Some(lkey) = family::lkey::<F>() else {
        return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    };
    pkt.listener_key_into(lkey);
    if let Some(listener) = unsafe { F::listeners().get(&*lkey) } {
        let v = if pkt.fragment {
            verdict(xdp_action::XDP_DROP, reason::DROP_FRAGMENT)
        } else {
            from_client::<C, F>(ctx, pkt, listener)
        };
        if v.action == xdp_action::XDP_DROP {
            if let Some(c) = LISTENER_DROPS.get_ptr_mut(listener.index * reason::COUNT + v.reason) {
                unsafe { *c += 1 };
            }
        }
        return v;
    }
    let Some(rkey) = family::key::<F>(family::slot::TEMP) else {
        return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    };
    pkt.flow_key_into(FLOW_DIR_REVERSE, rkey);
    let rflow = F::conntrack().get_ptr(&*rkey);
    if F::OUTLINE {
        if let (true, Some(r)) = (F::COOKIE_PROGRAM, rflow) {
            // The member's SYN-ACK of a cookie flow: the cookie program turns it into lb's
            // ACK (no tail call from the member path's subprogram: 6.1 refuses one below
            // 256 bytes of stack).
            if unsafe { (*r).state } & CT_COOKIE != 0
                && pkt.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK)
                    == parse::TCP_SYN | parse::TCP_ACK
            {
                tail_call_v6(ctx, v6slot::COOKIE);
                return family::no_cookie_program();
            }
        }
        // The lookup's result goes to the subprogram as it is, null or not: LLVM merges the
        // null checks around an inlined call so that 6.1's verifier follows a null pointer
        // into it.
        let p = rflow.unwrap_or(core::ptr::null());
        let v = Verdict::decode(member::from_member_sub::<C, F>(ctx, pkt, p));
        F::flush_log();
        return v;
    }
    if let Some(rflow) = rflow {
        if pkt.fragment {
            return verdict(xdp_action::XDP_DROP, reason::DROP_FRAGMENT);
        }
        return from_member::<C, F>(ctx, pkt, unsafe { &*rflow });
    }
    verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED)
}

/// `for_port` of the frame's Ethernet destination.
#[inline(always)]
fn for_port6<C: Frame>(ctx: &C) -> bool {
    match parse::ptr_at::<[u8; 6], C>(ctx, 0) {
        Some(d) => for_port(unsafe { &*d }),
        None => false,
    }
}

/// Whether a frame's destination is the port (a bridge floods unknown unicast to every port;
/// those frames are not lb's to balance).
#[inline(always)]
pub(crate) fn for_port(dst: &[u8; 6]) -> bool {
    match PORT.first() {
        Some(p) if p.mac != [0; 6] => p.mac == *dst,
        _ => true,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
