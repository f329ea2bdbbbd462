//! The member's side: replies to VIP:snat, translated back to the client.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns};
use lb_common::{reason, FlowG, CT_ANSWERED, CT_COOKIE, CT_LOG, CT_REFUSED, CT_SYNACK};

use crate::{
    conntrack::{
        ended_early, fetch_or, note_answer, note_failure, remove, stale_synack, track, xadd_u64,
    },
    family::{self, slot, Family},
    nat::shift,
    parse::{self, Frame, Packet, TCP_ACK, TCP_RST, TCP_SYN},
    stats::add_stats,
    verdict, Verdict,
};

/// The member path as a BPF subprogram (`Family::OUTLINE`), from the reverse lookup's
/// result (null: no flow), its verdict encoded.
#[inline(never)]
pub(crate) fn from_member_sub<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    rflow: *const FlowG<F::A>,
) -> u64 {
    let v = match unsafe { rflow.as_ref() } {
        None => verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED),
        Some(_) if pkt.fragment => verdict(xdp_action::XDP_DROP, reason::DROP_FRAGMENT),
        Some(r) => from_member::<C, F>(ctx, pkt, r),
    };
    v.encode()
}

#[inline(always)]
pub(crate) fn from_member<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    rflow: &FlowG<F::A>,
) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    // A cookie connection's sequence delta, from the forward entry (the reverse one is the
    // copy made before the member answered).
    let mut cookie_delta = None;
    let mut ended: *const FlowG<F::A> = core::ptr::null();
    let Some(fkey) = family::key::<F>(slot::FORWARD) else {
        return verdict(xdp_action::XDP_DROP, reason::DROP_CT_FULL);
    };
    rflow.forward_key_into(fkey);
    if let Some(f) = F::conntrack().get_ptr_mut(&*fkey) {
        let cookie = unsafe { (*f).state } & CT_COOKIE != 0;
        if cookie && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            return F::member_synack(ctx, pkt, f, now);
        }
        if !pkt.udp && unsafe { (*f).state } & CT_SYNACK == 0 {
            let synack = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
            if synack && stale_synack(unsafe { &*f }, pkt) {
                if F::OUTLINE {
                    return verdict(xdp_action::XDP_DROP, reason::DROP_STALE);
                }
                return F::reset_member(ctx, pkt);
            }
            if !synack && pkt.tcp_flags & TCP_RST == 0 {
                // Nothing but the SYN-ACK (or a refusal) comes before the SYN-ACK: this is
                // that earlier connection's too.
                return verdict(xdp_action::XDP_DROP, reason::DROP_STALE);
            }
        }
        if refused::<F>(f, pkt) {
            return verdict(xdp_action::XDP_DROP, reason::DROP_REFUSED);
        }
        if pkt.udp && unsafe { (*f).state } & CT_ANSWERED == 0 {
            // The member answers: the flow keeps its data timeout from now on.
            unsafe { fetch_or(&raw mut (*f).state, CT_ANSWERED) };
        }
        if unsafe { (*f).state } & CT_LOG != 0 {
            let payload = (pkt.l4_len as u64).saturating_sub(pkt.doff as u64);
            if payload != 0 {
                unsafe { xadd_u64(&raw mut (*f).member_bytes, payload) };
            }
        }
        let wscale = if pkt.tcp_flags & TCP_SYN != 0 {
            note_answer(rflow.member);
            parse::find_wscale(ctx, pkt)
        } else {
            None
        };
        let _ = track::<F>(f, pkt, false, now, wscale);
        if ended_early(f) {
            ended = f;
        }
        if cookie {
            cookie_delta = Some(unsafe { (*f).seq_delta });
        }
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
            &rflow.vip_be,
            &rflow.client_be,
            rflow.listener_port_be,
            rflow.client_port_be,
            shift(ctx, pkt, cookie_delta, rflow.ts_delta, false),
        );
    }
    if !ended.is_null() {
        // The member ended a handshake (a RST after its SYN-ACK): the flow goes now.
        remove::<F>(ended);
    }
    verdict(xdp_action::XDP_TX, reason::TX_TO_CLIENT)
}

/// The member refuses the handshake (RST+ACK acknowledging the SYN, before any SYN-ACK):
/// counted against it (passive health) and, while the listener's retries allow another
/// member, kept from the client: the flow is marked so that the client's next SYN goes
/// elsewhere (haproxy's `retries` + `option redispatch`). Past them, the RST goes on to the
/// client as a refusal.
#[inline(always)]
fn refused<F: Family>(f: *mut FlowG<F::A>, pkt: &Packet<F::A>) -> bool {
    let flow = unsafe { &*f };
    if pkt.tcp_flags & (TCP_RST | TCP_ACK) != TCP_RST | TCP_ACK
        || flow.state & CT_SYNACK != 0
        || pkt.ack != flow.member_ack
    {
        return false;
    }
    note_failure(flow.member);
    if flow.state & CT_COOKIE != 0 {
        // The client holds a connection already (lb's SYN-ACK): no SYN of its own will come
        // to redispatch. It hears the refusal.
        return false;
    }
    let Some(lkey) = family::lkey::<F>() else {
        return false;
    };
    flow.listener_key_into(lkey);
    let Some(listener) = (unsafe { F::listeners().get(&*lkey) }) else {
        return false;
    };
    if (flow.syn_retries >> 4) as u32 >= listener.retries {
        return false;
    }
    unsafe { fetch_or(&raw mut (*f).state, CT_REFUSED) };
    true
}
