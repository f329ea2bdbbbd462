//! ICMPv6 errors about balanced flows (destination unreachable, Packet Too Big above all —
//! IPv6 routers never fragment, so path MTU discovery through the VIP depends on it —, time
//! exceeded, parameter problem), as `icmp.rs` does for IPv4: the embedded packet is one lb
//! sent (to a member, or to a client); it is translated back into the one that end sent,
//! and the error goes from the VIP to that end. ICMPv6's checksum covers a pseudo-header
//! (the outer addresses) as well as the message: every changed word is folded in. The
//! embedded sequence number of a cookie flow's segment and the policy for a Packet Too Big
//! going to a member are `icmp.rs`'s.

use aya_ebpf::bindings::xdp_action;
use lb_common::{checksum, reason, Ip6, FLOW_DIR_FORWARD, FLOW_DIR_REVERSE, IPPROTO_TCP};

use crate::{
    family::{self, slot, V6},
    maps::CONNTRACK6,
    parse::{ptr_at, Frame},
    verdict, Verdict,
};

const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_PARAMPROB: u8 = 4;
/// type, code, checksum, 4 bytes (Packet Too Big: the MTU)
const ICMP6_HDR_LEN: usize = 8;
const IPV6_HDR_LEN: usize = 40;

/// Word `i` of the address at `p` in the packet.
#[inline(always)]
unsafe fn get(p: *const u8, i: usize) -> u32 {
    unsafe { core::ptr::read_unaligned(p.add(4 * i) as *const u32) }
}

#[inline(always)]
unsafe fn set(p: *mut u8, i: usize, v: u32) {
    unsafe { core::ptr::write_unaligned(p.add(4 * i) as *mut u32, v) }
}

/// Writes `key` from the embedded packet's addresses (at `inner`: source at 8, destination
/// at 24) and ports, reversed: the entry of the flow that packet belongs to.
#[inline(always)]
unsafe fn fill(
    key: &mut lb_common::FlowKey6,
    inner: *const u8,
    ports: (u16, u16),
    proto: u8,
    dir: u8,
) {
    for i in 0..4 {
        unsafe {
            key.src_be[i] = get(inner.add(24), i);
            key.dst_be[i] = get(inner.add(8), i);
        }
    }
    key.sport_be = ports.1;
    key.dport_be = ports.0;
    key.proto = proto;
    key.dir = dir;
    key._pad = [0; 2];
}

/// Replaces the address at `p` with `new` word by word, folding each change into `c` (and
/// into `c2` when there is one). Nothing of the old address is kept (the IPv6 program's
/// stack has no room for copies).
#[inline(always)]
unsafe fn swap(p: *mut u8, new: &Ip6, c: &mut u16, c2: &mut Option<u16>) {
    for i in 0..4 {
        unsafe {
            let old = get(p, i);
            *c = checksum::replace4(*c, old, new[i]);
            if let Some(x) = c2.as_mut() {
                *x = checksum::replace4(*x, old, new[i]);
            }
            set(p, i, new[i]);
        }
    }
}

/// The ICMPv6 message at frame offset `off` (after the outer header and its extension
/// headers): an error about a flow goes to its other end, translated; anything else (neighbour
/// discovery, echo, errors about other traffic) passes. Runs in programs of its own
/// (`lb6_icmp`, `lb_tc6_icmp`), entered by a tail call from the IPv6 ones.
#[inline(always)]
pub(crate) fn to_end<C: Frame>(ctx: &C, off: usize) -> Verdict {
    let pass = verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    let Some(icmp) = ptr_at::<[u8; ICMP6_HDR_LEN], C>(ctx, off) else {
        return pass;
    };
    let kind = unsafe { (*icmp)[0] };
    if !(ICMP6_DEST_UNREACH..=ICMP6_PARAMPROB).contains(&kind) {
        return pass;
    }
    let inner_off = off + ICMP6_HDR_LEN;
    let Some(inner) = ptr_at::<[u8; IPV6_HDR_LEN], C>(ctx, inner_off) else {
        return pass;
    };
    let (version, proto) = unsafe { ((*inner)[0] >> 4, (*inner)[6]) };
    let udp = proto == lb_common::IPPROTO_UDP;
    if version != 6 || (proto != IPPROTO_TCP && !udp) {
        return pass;
    }
    let Some(l4) = ptr_at::<[u8; 8], C>(ctx, inner_off + IPV6_HDR_LEN) else {
        return pass;
    };
    let p = unsafe { *l4 };
    let ports = (
        u16::from_ne_bytes([p[0], p[1]]),
        u16::from_ne_bytes([p[2], p[3]]),
    );
    // Embedded VIP:snat -> member:port (lb sent it to a member): its reverse entry; the
    // error is for the client. Embedded VIP:listener -> client:port: its forward entry; the
    // error is for the member.
    let (Some(rkey), Some(fkey)) = (
        family::key::<V6>(slot::TEMP),
        family::key::<V6>(slot::FORWARD),
    ) else {
        return pass;
    };
    unsafe {
        fill(rkey, inner as *const u8, ports, proto, FLOW_DIR_REVERSE);
        fill(fkey, inner as *const u8, ports, proto, FLOW_DIR_FORWARD);
    }
    let (f, to_client) = match (CONNTRACK6.get_ptr(&*rkey), CONNTRACK6.get_ptr(&*fkey)) {
        (Some(f), _) => (f, true),
        (None, Some(f)) => (f, false),
        (None, None) => return pass,
    };
    let f = unsafe { &*f };
    let mut seq_delta = 0;
    if !to_client && !udp {
        let seq = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let h = unsafe { *icmp };
        if kind == ICMP6_PACKET_TOO_BIG {
            // See icmp.rs: about data the client has not acknowledged yet, not below 1280.
            let mtu = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let unacked = seq.wrapping_sub(f.client_ack) < f.member_next.wrapping_sub(f.client_ack);
            if mtu < crate::icmp::PMTU_FLOOR || !unacked {
                return verdict(xdp_action::XDP_DROP, reason::DROP_ICMP_UNVERIFIED);
            }
        }
        if f.state & lb_common::CT_COOKIE != 0 {
            seq_delta = f.seq_delta;
        }
    }
    // The end the error goes to, and the packet that end sent (it -> VIP).
    let (mac, end, port, vip_port, why) = if to_client {
        (
            f.client_mac,
            &f.client_be,
            f.client_port_be,
            f.listener_port_be,
            reason::TX_ICMP_TO_CLIENT,
        )
    } else {
        (
            f.member_mac,
            &f.member_be,
            f.member_port_be,
            f.snat_port_be,
            reason::TX_ICMP_TO_MEMBER,
        )
    };
    // The Ethernet and outer IPv6 headers, through one pointer checked here, after the map
    // lookups (a pointer checked before them reached the writes without its range).
    let Some(head) = ptr_at::<[u8; 14 + IPV6_HDR_LEN], C>(ctx, 0) else {
        return pass;
    };
    let outer = unsafe { (head as *mut u8).add(14) };
    unsafe {
        let eth = head as *mut [u8; 12];
        let mut e = *eth;
        e[..6].copy_from_slice(&mac);
        e[6..].copy_from_slice(&f.port_mac);
        *eth = e;
        // The embedded transport checksum (UDP's 0: none), if the error carries it.
        let at = l4 as usize + if udp { 6 } else { 16 };
        let carried = at + 2 <= ctx.data_end();
        let old_l4 = if carried {
            u16::from_ne_bytes(*(at as *const [u8; 2]))
        } else {
            0
        };
        let mut l4c = (carried && !(udp && old_l4 == 0)).then_some(old_l4);
        let mut none = None;
        // ICMPv6's checksum: the pseudo-header's addresses (outer: now from the VIP to the
        // end), the embedded addresses and ports, the embedded checksum.
        let h = &mut *icmp;
        let mut ic = u16::from_ne_bytes([h[2], h[3]]);
        let inner = inner as *mut u8;
        swap(outer.add(8), &f.vip_be, &mut ic, &mut none);
        swap(outer.add(24), end, &mut ic, &mut none);
        swap(inner.add(8), end, &mut ic, &mut l4c);
        swap(inner.add(24), &f.vip_be, &mut ic, &mut l4c);
        ic = checksum::replace2(ic, ports.0, port);
        ic = checksum::replace2(ic, ports.1, vip_port);
        let mut p = *l4;
        let (s, d) = (port.to_ne_bytes(), vip_port.to_ne_bytes());
        p[0] = s[0];
        p[1] = s[1];
        p[2] = d[0];
        p[3] = d[1];
        if seq_delta != 0 {
            // The embedded sequence number, back in the member's numbers.
            let old = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            let new = u32::from_be(old).wrapping_sub(seq_delta).to_be();
            p[4..8].copy_from_slice(&new.to_ne_bytes());
            ic = checksum::replace4(ic, old, new);
            if let Some(n) = l4c.as_mut() {
                *n = checksum::replace4(*n, old, new);
            }
        }
        *l4 = p;
        if let Some(mut n) = l4c {
            n = checksum::replace2(n, ports.0, port);
            n = checksum::replace2(n, ports.1, vip_port);
            if udp && n == 0 {
                n = 0xffff;
            }
            let c = at as *mut [u8; 2];
            if at + 2 <= ctx.data_end() {
                *c = n.to_ne_bytes();
                ic = checksum::replace2(ic, old_l4, n);
            }
        }
        let icb = ic.to_ne_bytes();
        h[2] = icb[0];
        h[3] = icb[1];
    }
    verdict(xdp_action::XDP_TX, why)
}
