//! ICMP errors about balanced flows (destination unreachable — "fragmentation needed" among
//! them —, time exceeded, parameter problem) must reach the right end with the embedded header
//! translated too, or path MTU discovery breaks through the load balancer.
//!
//! The embedded packet is one lb sent: towards a member (VIP:snat -> member:port) when the
//! error comes from the member's side, towards a client (VIP:listener -> client:port) when it
//! comes from the client's side. It is translated back into the packet the other end sent, and
//! the error is re-addressed from the VIP to that end. Every checksum involved is updated
//! incrementally: outer IPv4, embedded IPv4, embedded TCP (when the error carries it), ICMP.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{checksum, reason, IPPROTO_TCP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::parse::{ptr_at, Early};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// type, code, checksum, 4 bytes of rest-of-header
const ICMP_HDR_LEN: usize = 8;
/// The part of the embedded transport header every error carries (RFC 792).
const EMBEDDED_L4_MIN: usize = 8;
/// Enough of the embedded TCP header to hold its checksum (offset 16).
const EMBEDDED_TCP_CSUM_END: usize = 18;

pub struct IcmpError {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub icmp: *mut [u8; ICMP_HDR_LEN],
    pub inner_ip: *mut Ipv4Hdr,
    pub inner_l4: *mut [u8; EMBEDDED_L4_MIN],
    /// The error carries the embedded TCP header up to its checksum (within the datagram).
    pub has_tcp_csum: bool,
    pub src_be: u32,
    pub dst_be: u32,
    /// The embedded (offending) packet's addresses and ports.
    pub in_src_be: u32,
    pub in_dst_be: u32,
    pub in_sport_be: u16,
    pub in_dport_be: u16,
}

/// Parses an ICMP error whose embedded packet is TCP; anything else passes to the kernel.
#[inline(always)]
pub fn parse(
    ctx: &XdpContext,
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
    if vihl >> 4 != 4 || inner_ihl < Ipv4Hdr::LEN || proto != IPPROTO_TCP {
        return Err(pass());
    }
    let l4_off = off + inner_ihl;
    let inner_l4: *mut [u8; EMBEDDED_L4_MIN] = ptr_at(ctx, l4_off).ok_or_else(pass)?;
    // The embedded TCP checksum is translated only when it lies inside the IPv4 datagram.
    let has_tcp_csum = l4_off + EMBEDDED_TCP_CSUM_END <= EthHdr::LEN + tot_len;
    let l4 = unsafe { *inner_l4 };
    unsafe {
        Ok(IcmpError {
            eth,
            ip,
            icmp,
            inner_ip,
            inner_l4,
            has_tcp_csum,
            src_be: u32::from_ne_bytes((*ip).src_addr),
            dst_be: u32::from_ne_bytes((*ip).dst_addr),
            in_src_be: u32::from_ne_bytes((*inner_ip).src_addr),
            in_dst_be: u32::from_ne_bytes((*inner_ip).dst_addr),
            in_sport_be: u16::from_ne_bytes([l4[0], l4[1]]),
            in_dport_be: u16::from_ne_bytes([l4[2], l4[3]]),
        })
    }
}

/// The translation of one error: new outer addresses, new embedded addresses and ports.
pub struct Translation {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub src_be: u32,
    pub dst_be: u32,
    pub in_src_be: u32,
    pub in_dst_be: u32,
    pub in_sport_be: u16,
    pub in_dport_be: u16,
}

/// # Safety
/// `e` must come from `parse` on the packet currently in the context.
#[inline(always)]
pub unsafe fn rewrite(ctx: &XdpContext, e: &IcmpError, t: &Translation) {
    unsafe {
        (*e.eth).src_addr = t.smac;
        (*e.eth).dst_addr = t.dmac;

        // Outer IPv4 header.
        let mut c = u16::from_ne_bytes((*e.ip).check);
        c = checksum::replace4(c, e.src_be, t.src_be);
        c = checksum::replace4(c, e.dst_be, t.dst_be);
        (*e.ip).check = c.to_ne_bytes();
        (*e.ip).src_addr = t.src_be.to_ne_bytes();
        (*e.ip).dst_addr = t.dst_be.to_ne_bytes();

        // Embedded IPv4 header; the ICMP checksum covers every word that changes in it.
        let mut icmp = *e.icmp;
        let mut ic = u16::from_ne_bytes([icmp[2], icmp[3]]);
        let old_in = u16::from_ne_bytes((*e.inner_ip).check);
        let mut new_in = checksum::replace4(old_in, e.in_src_be, t.in_src_be);
        new_in = checksum::replace4(new_in, e.in_dst_be, t.in_dst_be);
        ic = checksum::replace4(ic, e.in_src_be, t.in_src_be);
        ic = checksum::replace4(ic, e.in_dst_be, t.in_dst_be);
        ic = checksum::replace2(ic, old_in, new_in);
        (*e.inner_ip).check = new_in.to_ne_bytes();
        (*e.inner_ip).src_addr = t.in_src_be.to_ne_bytes();
        (*e.inner_ip).dst_addr = t.in_dst_be.to_ne_bytes();

        // Embedded ports, and the embedded TCP checksum if it is there.
        ic = checksum::replace2(ic, e.in_sport_be, t.in_sport_be);
        ic = checksum::replace2(ic, e.in_dport_be, t.in_dport_be);
        let mut l4 = *e.inner_l4;
        let (s, d) = (t.in_sport_be.to_ne_bytes(), t.in_dport_be.to_ne_bytes());
        l4[0] = s[0];
        l4[1] = s[1];
        l4[2] = d[0];
        l4[3] = d[1];
        *e.inner_l4 = l4;
        // Bounds-checked right here, on the pointer used: the verifier loses a range that
        // travels through the stack from parse() when the offset is variable.
        let p = (e.inner_l4 as usize + 16) as *mut [u8; 2];
        if e.has_tcp_csum && p as usize + 2 <= ctx.data_end() {
            let old = u16::from_ne_bytes(*p);
            let mut new = checksum::replace4(old, e.in_src_be, t.in_src_be);
            new = checksum::replace4(new, e.in_dst_be, t.in_dst_be);
            new = checksum::replace2(new, e.in_sport_be, t.in_sport_be);
            new = checksum::replace2(new, e.in_dport_be, t.in_dport_be);
            ic = checksum::replace2(ic, old, new);
            *p = new.to_ne_bytes();
        }
        let icb = ic.to_ne_bytes();
        icmp[2] = icb[0];
        icmp[3] = icb[1];
        *e.icmp = icmp;
    }
}
