//! The member's side: replies to VIP:snat, translated back to the client.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns};
use lb_common::{reason, Flow};

use crate::{
    conntrack::track,
    maps::*,
    nat::ts_shift,
    parse::{self, Frame, Packet, TCP_SYN},
    stats::add_stats,
    verdict, Verdict,
};

#[inline(always)]
pub(crate) fn from_member<C: Frame>(ctx: &C, pkt: &Packet, rflow: &Flow) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(f) = CONNTRACK.get_ptr_mut(rflow.forward_key()) {
        let wscale = if pkt.tcp_flags & TCP_SYN != 0 {
            parse::find_wscale(ctx, pkt)
        } else {
            None
        };
        let _ = track(f, pkt, false, now, wscale);
    }
    add_stats(
        rflow.member,
        rflow.listener,
        pkt.ip_len as u64,
        false,
        false,
    );
    unsafe {
        parse::rewrite(
            ctx,
            pkt,
            rflow.port_mac,
            rflow.client_mac,
            rflow.vip_be,
            rflow.client_be,
            rflow.listener_port_be,
            rflow.client_port_be,
            ts_shift(ctx, pkt, rflow.ts_delta.wrapping_neg(), 4),
        );
    }
    verdict(xdp_action::XDP_TX, reason::TX_TO_CLIENT)
}
