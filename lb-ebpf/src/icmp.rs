//! ICMP errors about balanced flows (destination unreachable — "fragmentation needed" among
//! them —, time exceeded, parameter problem) must reach the right end with the embedded header
//! translated too, or path MTU discovery breaks through the load balancer.
//!
//! The embedded sequence number too: a segment lb sent a client on a cookie flow carries the
//! member's number plus `Flow::seq_delta`, and a member's stack drops an error whose embedded
//! sequence number is not one it sent (`tcp_v4_err`).
//!
//! A member caches a path MTU per destination, and every client's flows share one: the VIP.
//! So a "fragmentation needed" going to a member (about a segment lb sent a client) is
//! honoured only when it shows knowledge of the flow (a TCP segment the client has not
//! acknowledged yet: a blind sender cannot forge one) and asks for at least `PMTU_FLOOR`
//! bytes; otherwise it is dropped (`drop_icmp_unverified`). A client can at worst take the
//! members' segments towards the VIP down to 1280 bytes.
//!
//! The embedded packet is one lb sent: towards a member (VIP:snat -> member:port) when the
//! error comes from the member's side, towards a client (VIP:listener -> client:port) when it
//! comes from the client's side. It is translated back into the packet the other end sent, and
//! the error is re-addressed from the VIP to that end. Every checksum involved is updated
//! incrementally: outer IPv4, embedded IPv4, embedded TCP or UDP (when the error carries it),
//! ICMP.

use aya_ebpf::bindings::xdp_action;
use lb_common::{
    checksum, reason, FlowKey, CT_COOKIE, FLOW_DIR_FORWARD, FLOW_DIR_REVERSE, IPPROTO_TCP,
    IPPROTO_UDP,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::CONNTRACK,
    parse::{ptr_at, Early, Frame},
    verdict, Verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// type, code, checksum, 4 bytes of rest-of-header
const ICMP_HDR_LEN: usize = 8;
/// The part of the embedded transport header every error carries (RFC 792).
const EMBEDDED_L4_MIN: usize = 8;
/// Enough of the embedded TCP header to hold its checksum (offset 16).
const EMBEDDED_TCP_CSUM_END: usize = 18;
/// The smallest path MTU a "fragmentation needed" going to a member may ask for (IPv6's
/// minimum MTU; see the module's comment).
pub(crate) const PMTU_FLOOR: u32 = 1280;
const ICMP_FRAG_NEEDED: u8 = 4;
/// Where the embedded header's checksum is: TCP's at 16, UDP's at 6 (within the 8 bytes
/// every error carries).
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// Addresses and ports of an IPv4 TCP or UDP packet, as on the wire.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

impl Tuple {
    /// `csum` after this tuple's addresses (and, with `ports`, ports) became `new`'s.
    #[inline(always)]
    fn update(&self, csum: u16, new: &Tuple, ports: bool) -> u16 {
        let mut c = checksum::replace4(csum, self.src_be, new.src_be);
        c = checksum::replace4(c, self.dst_be, new.dst_be);
        if ports {
            c = checksum::replace2(c, self.sport_be, new.sport_be);
            c = checksum::replace2(c, self.dport_be, new.dport_be);
        }
        c
    }
}

pub struct IcmpError {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub icmp: *mut [u8; ICMP_HDR_LEN],
    pub inner_ip: *mut Ipv4Hdr,
    pub inner_l4: *mut [u8; EMBEDDED_L4_MIN],
    /// The error carries the embedded header's checksum (TCP's only when it lies within the
    /// datagram; UDP's always, unless it is 0: none).
    pub has_csum: bool,
    /// The embedded packet is UDP (else TCP).
    pub udp: bool,
    pub src_be: u32,
    pub dst_be: u32,
    /// The embedded (offending) packet's addresses and ports.
    pub inner: Tuple,
}

/// Parses an ICMP error whose embedded packet is TCP or UDP; anything else passes to the
/// kernel.
#[inline(always)]
pub fn parse<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    ihl: usize,
    tot_len: usize,
) -> Result<IcmpError, Early> {
    let pass = || Early(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED);
    let off = EthHdr::LEN + ihl;
    let icmp: *mut [u8; ICMP_HDR_LEN] = ptr_at(ctx, off).ok_or_else(pass)?;
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETERPROB {
        return Err(pass());
    }
    let off = off + ICMP_HDR_LEN;
    let inner_ip: *mut Ipv4Hdr = ptr_at(ctx, off).ok_or_else(pass)?;
    let (vihl, proto) = unsafe { ((*inner_ip).vihl, (*inner_ip).proto) };
    let inner_ihl = ((vihl & 0x0f) as usize) * 4;
    let udp = proto == IPPROTO_UDP;
    if vihl >> 4 != 4 || inner_ihl < Ipv4Hdr::LEN || (proto != IPPROTO_TCP && !udp) {
        return Err(pass());
    }
    let l4_off = off + inner_ihl;
    let inner_l4: *mut [u8; EMBEDDED_L4_MIN] = ptr_at(ctx, l4_off).ok_or_else(pass)?;
    let l4 = unsafe { *inner_l4 };
    // The embedded TCP checksum is translated only when it lies inside the IPv4 datagram.
    let has_csum = if udp {
        l4[6] | l4[7] != 0
    } else {
        l4_off + EMBEDDED_TCP_CSUM_END <= EthHdr::LEN + tot_len
    };
    unsafe {
        Ok(IcmpError {
            eth,
            ip,
            icmp,
            inner_ip,
            inner_l4,
            has_csum,
            udp,
            src_be: u32::from_ne_bytes((*ip).src_addr),
            dst_be: u32::from_ne_bytes((*ip).dst_addr),
            inner: Tuple {
                src_be: u32::from_ne_bytes((*inner_ip).src_addr),
                dst_be: u32::from_ne_bytes((*inner_ip).dst_addr),
                sport_be: u16::from_ne_bytes([l4[0], l4[1]]),
                dport_be: u16::from_ne_bytes([l4[2], l4[3]]),
            },
        })
    }
}

/// The translation of one error: `inner` is the packet the receiving end originally sent
/// (that end -> VIP); the error goes out VIP -> that end, between `smac` and `dmac`.
pub struct Translation {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub inner: Tuple,
    /// Subtracted from the embedded TCP sequence number (a cookie flow's `seq_delta`, for an
    /// error going to the member; else 0).
    pub seq_delta: u32,
}

/// # Safety
/// `e` must come from `parse` on the packet currently in the context.
#[inline(always)]
pub unsafe fn rewrite<C: Frame>(ctx: &C, e: &IcmpError, t: &Translation) {
    let (old, new) = (&e.inner, &t.inner);
    unsafe {
        (*e.eth).src_addr = t.smac;
        (*e.eth).dst_addr = t.dmac;

        // Outer IPv4 header: from the VIP to the end the error is for.
        let outer_old = Tuple {
            src_be: e.src_be,
            dst_be: e.dst_be,
            sport_be: 0,
            dport_be: 0,
        };
        let outer_new = Tuple {
            src_be: new.dst_be,
            dst_be: new.src_be,
            sport_be: 0,
            dport_be: 0,
        };
        let c = outer_old.update(u16::from_ne_bytes((*e.ip).check), &outer_new, false);
        (*e.ip).check = c.to_ne_bytes();
        (*e.ip).src_addr = outer_new.src_be.to_ne_bytes();
        (*e.ip).dst_addr = outer_new.dst_be.to_ne_bytes();

        // Embedded packet. The ICMP checksum covers every word that changes in it: addresses,
        // ports, and the embedded checksums themselves.
        let mut icmp = *e.icmp;
        let mut ic = old.update(u16::from_ne_bytes([icmp[2], icmp[3]]), new, true);
        let old_in = u16::from_ne_bytes((*e.inner_ip).check);
        let new_in = old.update(old_in, new, false);
        ic = checksum::replace2(ic, old_in, new_in);
        (*e.inner_ip).check = new_in.to_ne_bytes();
        (*e.inner_ip).src_addr = new.src_be.to_ne_bytes();
        (*e.inner_ip).dst_addr = new.dst_be.to_ne_bytes();
        let mut l4 = *e.inner_l4;
        let (s, d) = (new.sport_be.to_ne_bytes(), new.dport_be.to_ne_bytes());
        l4[0] = s[0];
        l4[1] = s[1];
        l4[2] = d[0];
        l4[3] = d[1];
        // The embedded sequence number, back in the member's numbers.
        let old_seq = u32::from_ne_bytes([l4[4], l4[5], l4[6], l4[7]]);
        let new_seq = u32::from_be(old_seq).wrapping_sub(t.seq_delta).to_be();
        if new_seq != old_seq {
            l4[4..8].copy_from_slice(&new_seq.to_ne_bytes());
            ic = checksum::replace4(ic, old_seq, new_seq);
        }
        *e.inner_l4 = l4;
        // Bounds-checked right here, on the pointer used: the verifier loses a range that
        // travels through the stack from parse() when the offset is variable.
        let off = if e.udp { UDP_CSUM_OFF } else { TCP_CSUM_OFF };
        let p = (e.inner_l4 as usize + off) as *mut [u8; 2];
        if e.has_csum && p as usize + 2 <= ctx.data_end() {
            let old_l4 = u16::from_ne_bytes(*p);
            let mut new_l4 = old.update(old_l4, new, true);
            if new_seq != old_seq {
                new_l4 = checksum::replace4(new_l4, old_seq, new_seq);
            }
            if e.udp && new_l4 == 0 {
                new_l4 = 0xffff;
            }
            ic = checksum::replace2(ic, old_l4, new_l4);
            *p = new_l4.to_ne_bytes();
        }
        let icb = ic.to_ne_bytes();
        icmp[2] = icb[0];
        icmp[3] = icb[1];
        *e.icmp = icmp;
    }
}

/// An ICMP error whose embedded packet is one lb sent: back to the end that sent the original.
#[inline(always)]
pub(crate) fn to_end<C: Frame>(ctx: &C, e: &IcmpError) -> Verdict {
    // Embedded VIP:snat -> member:port (sent to a member): the error is for the client.
    let rkey = FlowKey {
        src_be: e.inner.dst_be,
        dst_be: e.inner.src_be,
        sport_be: e.inner.dport_be,
        dport_be: e.inner.sport_be,
        proto: if e.udp { IPPROTO_UDP } else { IPPROTO_TCP },
        dir: FLOW_DIR_REVERSE,
        _pad: [0; 2],
    };
    // Embedded VIP:listener -> client:port (sent to a client): the error is for the member.
    let fkey = FlowKey {
        dir: FLOW_DIR_FORWARD,
        ..rkey
    };
    let (f, to_client) = match (CONNTRACK.get_ptr(rkey), CONNTRACK.get_ptr(fkey)) {
        (Some(f), _) => (unsafe { *f }, true),
        (None, Some(f)) => (unsafe { *f }, false),
        (None, None) => return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED),
    };
    let mut seq_delta = 0;
    if !to_client {
        let (kind, code, mtu) = unsafe {
            let h = *e.icmp;
            (h[0], h[1], u16::from_be_bytes([h[6], h[7]]) as u32)
        };
        // The embedded segment's sequence number, as lb sent it to the client.
        let seq = unsafe {
            let l4 = *e.inner_l4;
            u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]])
        };
        if kind == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED {
            // About data the client has not acknowledged yet, and not below the floor.
            let unacked =
                e.udp || seq.wrapping_sub(f.client_ack) < f.member_next.wrapping_sub(f.client_ack);
            if mtu < PMTU_FLOOR || !unacked {
                return verdict(xdp_action::XDP_DROP, reason::DROP_ICMP_UNVERIFIED);
            }
        }
        if !e.udp && f.state & CT_COOKIE != 0 {
            seq_delta = f.seq_delta;
        }
    }
    // The end the error goes to, and the packet that end originally sent.
    let (mac, addr, port, vip_port, why) = if to_client {
        let (p, q) = (f.client_port_be, f.listener_port_be);
        (f.client_mac, f.client_be, p, q, reason::TX_ICMP_TO_CLIENT)
    } else {
        let (p, q) = (f.member_port_be, f.snat_port_be);
        (f.member_mac, f.member_be, p, q, reason::TX_ICMP_TO_MEMBER)
    };
    let t = Translation {
        smac: f.port_mac,
        dmac: mac,
        inner: Tuple {
            src_be: addr,
            dst_be: f.vip_be,
            sport_be: port,
            dport_be: vip_port,
        },
        seq_delta,
    };
    unsafe { rewrite(ctx, e, &t) };
    verdict(xdp_action::XDP_TX, why)
}
