//! The client's side: segments to a listener. A SYN opens a flow (limits, member, SNAT);
//! a retransmitted SYN may be redispatched; everything else of a known flow is translated
//! towards its member. A UDP datagram without a flow opens one as a SYN does (no handshake,
//! no cookies, no redispatch). Also the established-flow shortcut of `lb_tc_fast`.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use lb_common::{
    reason, select, Address, FlowG, FlowKeyG, ListenerConf, ADMISSION_WINDOW_NS, CT_COOKIE,
    CT_COUNTED, CT_ESTABLISHED, CT_HALF_OPEN, CT_LOG, CT_REFUSED, CT_SYN, CT_SYNACK, CT_UDP,
    FLOW_DIR_FORWARD, FLOW_DIR_REVERSE, LISTENER_F_ALLOWED_CIDRS, LISTENER_F_DRAIN, LISTENER_F_LOG,
};

use crate::{
    balance::{client_of, decode, open_connections, pick_member, pick_other, stick},
    conntrack::{
        count_half_open, count_open, ended_early, fetch_or, note_client_sent, note_failure, remove,
        track, uncount, unhalf, xadd_u64,
    },
    family::{self, slot, Family, V4},
    maps::*,
    member::from_member,
    nat::{bind_member, shift, EEXIST},
    parse::{self, Frame, Packet, TCP_ACK, TCP_RST, TCP_SYN},
    stats::add_stats,
    verdict, Verdict,
};

#[inline(always)]
pub(crate) fn from_client<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    listener: &ListenerConf,
) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(fkey) = family::key::<F>(slot::FORWARD) else {
        return verdict(xdp_action::XDP_DROP, reason::DROP_CT_FULL);
    };
    pkt.flow_key_into(FLOW_DIR_FORWARD, fkey);
    let fkey = &*fkey;
    let udp = pkt.udp;
    let mut opened = false;

    let flow_ptr = match F::conntrack().get_ptr_mut(fkey) {
        Some(f) if is_syn(pkt) && unsafe { (*f).is_closed() } => {
            // The client reuses the tuple of a closed connection: start over.
            unsafe {
                uncount(f);
                unhalf(f);
                if let Some(rkey) = family::key::<F>(slot::TEMP) {
                    (*f).reverse_key_into(rkey);
                    let _ = F::conntrack().remove(&*rkey);
                }
            }
            let _ = F::conntrack().remove(fkey);
            None
        }
        other => other,
    };

    let flow_ptr = match flow_ptr {
        Some(f) => {
            let state = unsafe { (*f).state };
            if state & (CT_COOKIE | CT_SYNACK) == CT_COOKIE && pkt.tcp_flags & TCP_RST == 0 {
                // lb's SYN to the member is not answered yet: a repeated ACK repeats it, and
                // so does the client's data, which waits (the client sends it again; until
                // then it only says the member has not answered, and the SYN may have been
                // lost or refused by an earlier connection's state at the member).
                if pkt.tcp_flags & TCP_SYN != 0 {
                    return verdict(xdp_action::XDP_DROP, reason::DROP_COOKIE_WAIT);
                }
                note_client_sent(f, pkt);
                return F::member_syn(ctx, pkt, f);
            }
            if is_syn(pkt) && state & CT_SYNACK == 0 {
                if let Err(r) = maybe_redispatch::<C, F>(ctx, pkt, listener, f) {
                    return verdict(xdp_action::XDP_DROP, r);
                }
            }
            f
        }
        None => {
            // A client outside the listener's allowed prefixes gets nothing: no flow, no
            // cookie, and not the namespace's RST either.
            if listener.flags & LISTENER_F_ALLOWED_CIDRS != 0
                && F::allowed(listener.index, &pkt.src_be) == 0
            {
                return verdict(xdp_action::XDP_DROP, reason::DROP_NOT_ALLOWED);
            }
            // Not lb's flow: the namespace's stack answers it (RST, or a haproxy taking over
            // while this listener drains serves it).
            if listener.flags & LISTENER_F_DRAIN != 0 {
                return verdict(xdp_action::XDP_PASS, reason::PASS_NO_FLOW);
            }
            if udp {
                opened = true;
                match open_flow::<C, F>(ctx, pkt, listener, fkey, now, false) {
                    Ok(f) => f,
                    Err(r) => return verdict(xdp_action::XDP_DROP, r),
                }
            } else if !is_syn(pkt) {
                // An ACK with a SYN cookie lb sent opens its flow now.
                if !F::valid_ack(ctx, pkt, listener, now) {
                    return verdict(xdp_action::XDP_PASS, reason::PASS_NO_FLOW);
                }
                return match open_flow::<C, F>(ctx, pkt, listener, fkey, now, true) {
                    Ok(f) => F::member_syn(ctx, pkt, f),
                    Err(r) => F::reset(ctx, pkt, listener, r),
                };
            } else {
                if crate::cookie::flooded(listener, now) {
                    // In cookie mode a SYN never opens a flow: one that cannot be answered
                    // with a cookie (IP options, extension headers) is dropped.
                    if !crate::cookie::plain(pkt) {
                        return verdict(xdp_action::XDP_DROP, reason::DROP_SYN_OPTIONS);
                    }
                    return F::answer_syn(ctx, pkt)
                        .unwrap_or(verdict(xdp_action::XDP_DROP, reason::DROP_BAD_L4));
                }
                match open_flow::<C, F>(ctx, pkt, listener, fkey, now, false) {
                    Ok(f) => f,
                    Err(r) => return verdict(xdp_action::XDP_DROP, r),
                }
            }
        }
    };

    if F::OUTLINE {
        let v = Verdict::decode(forward_sub::<C, F>(ctx, pkt, flow_ptr, now, opened));
        F::flush_log();
        // Here rather than in the subprogram, whose frame has no 8 bytes to spare on 6.1
        // (see `forward`).
        if ended_early(flow_ptr) {
            remove::<F>(flow_ptr);
        }
        return v;
    }
    forward::<C, F>(ctx, pkt, flow_ptr, now, opened)
}

/// A client's SYN (a TCP segment with SYN and without ACK). Read from the packet at each
/// use rather than kept: a value kept across the map lookups is a spilled stack slot, and
/// `lb`'s new-flow path has none to spare on 6.1 (see docs/ARCHITECTURE.md, "Stack").
#[inline(always)]
fn is_syn<A>(pkt: &Packet<A>) -> bool {
    !pkt.udp && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// `forward` as a BPF subprogram (`Family::OUTLINE`), its verdict encoded.
#[inline(never)]
fn forward_sub<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    flow_ptr: *mut FlowG<F::A>,
    now: u64,
    opened: bool,
) -> u64 {
    forward::<C, F>(ctx, pkt, flow_ptr, now, opened).encode()
}

/// A new flow for a client's SYN: connection limit, member choice, MAC and SNAT port, the
/// forward entry `fkey`; counted as a handshake (a connection once the client acknowledges
/// the member's SYN-ACK). The same SYN handled by another CPU at the same moment may have
/// inserted the flow first: then that flow.
#[inline(always)]
pub(crate) fn open_flow<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    listener: &ListenerConf,
    fkey: &FlowKeyG<F::A>,
    now: u64,
    by_cookie: bool,
) -> Result<*mut FlowG<F::A>, u32> {
    // Handshakes in progress count against the limits as connections do: a burst of SYNs
    // within one round trip overshoots a limit only by the CPUs racing here.
    if listener.connection_limit != 0 {
        if let Some(l) = LISTENER_LIVE.get(listener.index) {
            if l.active + l.half_open >= listener.connection_limit as i64 {
                return Err(reason::DROP_CONN_LIMIT);
            }
        }
    }
    if pkt.udp {
        // UDP's admission: the listener's share of the table and its rate of new flows.
        let why = admit_udp(listener.index, listener.flow_limit, listener.flow_rate, now);
        if why != 0 {
            return Err(why as u32);
        }
    } else if listener.total_limit != 0 && open_connections() >= listener.total_limit as i64 {
        return Err(reason::DROP_CONN_LIMIT);
    }
    let idx = decode(pick_member(listener, client_of::<F>(pkt), now))?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(reason::DROP_CT_FULL)?;
    let flow = unsafe { &mut *F::scratch_flow(scratch) };
    *flow = FlowG::default();
    flow.created_ns = now;
    flow.last_seen_ns = now;
    flow.client_be = pkt.src_be;
    flow.client_port_be = pkt.sport_be;
    flow.listener_port_be = pkt.dport_be;
    flow.vip_be = pkt.dst_be;
    flow.listener = listener.index;
    flow.client_mac = pkt.src_mac;
    flow.port_mac = pkt.dst_mac;
    flow.state = if pkt.udp {
        // No handshake: a connection (for least connections and limits) from the first
        // datagram until the idle timeout.
        CT_UDP | CT_ESTABLISHED | CT_COUNTED
    } else {
        CT_SYN | CT_HALF_OPEN
    };
    if listener.flags & LISTENER_F_LOG != 0 {
        flow.state |= CT_LOG;
    }
    // Until the member answers, a client's RST must carry exactly the number after its SYN.
    flow.member_ack = pkt.seq.wrapping_add(1);
    flow.member_win = 1;
    flow.client_next = flow.member_ack;
    if by_cookie {
        // `pkt` is the client's ACK of lb's SYN-ACK: its sequence number is the one after the
        // client's ISN, its acknowledgment the cookie + 1 (see cookie.rs).
        flow.state |= CT_COOKIE;
        flow.member_ack = pkt.seq;
        flow.client_next = pkt.seq;
        flow.seq_delta = pkt.ack;
        flow.client_win = pkt.win as u32;
    }
    // The client's window scale offer (15: none), settled at the member's SYN-ACK.
    flow.wscale = parse::find_wscale(ctx, pkt).unwrap_or(0x0f);
    if let Some(v) = parse::find_timestamp(ctx, pkt).and_then(|off| parse::read4(ctx, pkt, off)) {
        // The member sees lb's millisecond clock (see Flow::ts_delta).
        let now_ms = (now / 1_000_000) as u32;
        flow.ts_delta = now_ms.wrapping_sub(u32::from_be_bytes(v));
    }
    // A member that cannot be sent to (no neighbour, no route, no SNAT port) costs this
    // SYN nothing: another member takes it at once. Those are lb's failures, not the
    // member's: they do not count against its passive health.
    let mut idx = idx;
    if let Err(why) = decode(bind_member::<C, F>(ctx, flow, idx, pkt.ip_len, listener)) {
        idx = match decode(pick_other(listener, client_of::<F>(pkt), idx)) {
            Ok(other) if other != idx => other,
            _ => return Err(why),
        };
        decode(bind_member::<C, F>(ctx, flow, idx, pkt.ip_len, listener))?;
    }
    if let Err(e) = F::conntrack().insert(fkey, &*flow, BPF_NOEXIST as u64) {
        if let Some(rkey) = family::key::<F>(slot::TEMP) {
            flow.reverse_key_into(rkey);
            let _ = F::conntrack().remove(&*rkey);
        }
        if e == -EEXIST {
            // Another CPU opened this flow from the same SYN a moment ago.
            if let Some(f) = F::conntrack().get_ptr_mut(fkey) {
                return Ok(f);
            }
        }
        return Err(reason::DROP_CT_FULL);
    }
    let Some(f) = F::conntrack().get_ptr_mut(fkey) else {
        return Err(reason::DROP_CT_FULL);
    };
    if pkt.udp {
        count_open(idx, listener.index);
    } else {
        count_half_open(idx, listener.index);
    }
    stick(listener, pkt.src_be.fold(), idx, now);
    Ok(f)
}

/// Whether UDP listener `listener` may open one more flow now: 0, or the reason it may not
/// (`DROP_UDP_LIMIT`: it holds `flow_limit` flows; `DROP_UDP_RATE`: `flow_rate` new flows in
/// the current second). Marks the listener as UDP in `LISTENER_LIVE` (its flows are not the
/// load balancer's connections, see `add_active`). A subprogram: the new-flow path of `lb`
/// has no stack to spare for it inlined.
#[inline(never)]
fn admit_udp(listener: u32, flow_limit: u32, flow_rate: u32, now: u64) -> u64 {
    if let Some(l) = LISTENER_LIVE.get_ptr_mut(listener) {
        unsafe {
            if flow_limit != 0 && (*l).active >= flow_limit as i64 {
                return reason::DROP_UDP_LIMIT as u64;
            }
            if (*l).failures == 0 {
                (*l).failures = 1;
            }
        }
    }
    if flow_rate == 0 {
        return 0;
    }
    let Some(a) = ADMISSION.get_ptr_mut(listener) else {
        return 0;
    };
    unsafe {
        if now.wrapping_sub((*a).window_since_ns) >= ADMISSION_WINDOW_NS {
            // A new window (two CPUs starting one at once let one more flow through).
            (*a).window_since_ns = now;
            (*a).window_count = 1;
            return 0;
        }
        if (*a).window_count >= flow_rate as u64 {
            return reason::DROP_UDP_RATE as u64;
        }
        xadd_u64(&raw mut (*a).window_count, 1);
    }
    0
}

/// A client's segment of flow `flow_ptr`, translated towards its member. The one that
/// completes the handshake (or the datagram that `opened` a UDP flow) counts the connection
/// in the traffic counters' totals.
#[inline(always)]
pub(crate) fn forward<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    flow_ptr: *mut FlowG<F::A>,
    now: u64,
    opened: bool,
) -> Verdict {
    let new_conn = track::<F>(flow_ptr, pkt, true, now, None) || opened;
    let flow = unsafe { &*flow_ptr };
    add_stats(
        flow.member,
        flow.listener,
        pkt.ip_len as u64,
        true,
        new_conn,
    );
    unsafe {
        parse::rewrite(
            ctx,
            pkt,
            flow.port_mac,
            flow.member_mac,
            &flow.vip_be,
            &flow.member_be,
            flow.snat_port_be,
            flow.member_port_be,
            shift(
                ctx,
                pkt,
                (flow.state & CT_COOKIE != 0).then_some(flow.seq_delta),
                flow.ts_delta,
                true,
            ),
        );
    }
    // A handshake that ended (the client's RST before its ACK) goes now that its last
    // segment is translated. (`from_client` does it for `Family::OUTLINE`.)
    if !F::OUTLINE && ended_early(flow_ptr) {
        remove::<F>(flow_ptr);
    }
    verdict(xdp_action::XDP_TX, reason::TX_TO_MEMBER)
}

/// The established-flow shortcut at egress of the outer end of a port lb created (in the
/// node's namespace, `lb_tc_fast`): a segment of a flow lb already tracks, in either
/// direction, is translated there and handed back to the bridge as if the port had sent it,
/// without crossing into the namespace and back. Anything else (SYNs, unknown flows, ICMP,
/// ARP, health-check traffic) returns None and goes on into the namespace, to `lb_tc`.
#[inline(always)]
pub(crate) fn fast_path(ctx: &TcContext) -> Option<Verdict> {
    let Ok(parse::Parsed::L4(pkt)) = parse::parse(ctx) else {
        return None;
    };
    if pkt.fragment || pkt.tcp_flags & TCP_SYN != 0 || !crate::for_port(&pkt.dst_mac) {
        return None;
    }
    let v = if LISTENERS.get_ptr(pkt.listener_key()).is_some() {
        let f = CONNTRACK.get_ptr_mut(pkt.flow_key(FLOW_DIR_FORWARD))?;
        if unsafe { (*f).state } & (CT_COOKIE | CT_SYNACK) == CT_COOKIE {
            // lb's SYN to the member is not answered yet: the port's program holds the
            // client's data and repeats the SYN (`from_client`).
            return None;
        }
        let now = unsafe { bpf_ktime_get_ns() };
        forward::<TcContext, V4>(ctx, &pkt, f, now, false)
    } else {
        let rflow = unsafe { *CONNTRACK.get_ptr(pkt.flow_key(FLOW_DIR_REVERSE))? };
        from_member::<TcContext, V4>(ctx, &pkt, &rflow)
    };
    Some(v)
}

/// The initial retransmission timeout of a SYN (RFC 6298, Linux's `TCP_TIMEOUT_INIT`).
const SYN_RTO_NS: u64 = 1_000_000_000;

/// A retransmitted SYN of a flow whose member has not answered: HAProxy's `retries` +
/// `option redispatch`. Moves the flow to another member when its member is no longer
/// available, or after `retries` retransmissions, or once the connect timeout has passed.
/// A retransmission that stays with its member goes out on another SNAT port: a tuple the
/// member still holds (another stack's connection in TIME_WAIT, with timestamps or
/// sequence numbers ahead of lb's) refuses every SYN on it until it ends, a minute.
#[inline(always)]
pub(crate) fn maybe_redispatch<C: Frame, F: Family>(
    ctx: &C,
    pkt: &Packet<F::A>,
    listener: &ListenerConf,
    f: *mut FlowG<F::A>,
) -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(reason::DROP_CT_FULL)?;
    let flow = unsafe { &mut *F::scratch_flow(scratch) };
    *flow = unsafe { *f };
    // Retransmissions in the low nibble, redispatches in the high one.
    let (tries, moves) = (flow.syn_retries & 0x0f, flow.syn_retries >> 4);
    // A SYN sooner than the initial RTO after the last one is a duplicate, not a client's
    // retransmission: it counts neither against the member nor towards a redispatch.
    let retransmitted = now.wrapping_sub(flow.last_seen_ns) >= SYN_RTO_NS;
    let tries = if retransmitted && tries < 0x0f {
        tries + 1
    } else {
        tries
    };
    flow.syn_retries = tries | (moves << 4);
    let refused = flow.state & CT_REFUSED != 0;
    let member_ok = !refused
        && match MEMBERS.get(flow.member) {
            Some(m) => select::available(&select::Candidate {
                weight: m.weight as u32,
                flags: m.flags,
                active: 0,
            }),
            None => false,
        };
    let overdue = now.wrapping_sub(flow.created_ns) >= listener.timeout_member_connect_ns;
    let unanswered = tries as u32 > listener.retries || overdue;
    if member_ok && unanswered {
        // Passive health: the member left this SYN unanswered.
        note_failure(flow.member);
    }
    let idx = if member_ok && !unanswered {
        flow.member
    } else {
        decode(pick_other(listener, client_of::<F>(pkt), flow.member))?
    };
    if idx == flow.member && !retransmitted {
        unsafe { (*f).syn_retries = flow.syn_retries };
        return Ok(());
    }
    let old_rkey = family::key::<F>(slot::TEMP).ok_or(reason::DROP_CT_FULL)?;
    flow.reverse_key_into(old_rkey);
    if idx == flow.member {
        // Another port, the same member: still the same attempt (its connect timeout and
        // retries go on). The first port tried is the client's, which this flow may hold:
        // then the insert fails and a random one is taken. No port free: the old one.
        // Only the port and the MAC are written (not the whole flow: another CPU may be
        // setting its state). If the member's SYN-ACK was taken meanwhile on another CPU,
        // the old port stays and the new one is given back. (A SYN-ACK that finds the old
        // reverse entry between this check and its removal still gets through, and the
        // client's ACK then goes out on the new port: the member resets it. Released in
        // lockstep on two CPUs, 66 of 3,000 did (multi_cpu.rs); in traffic it takes a
        // member's SYN-ACK a second late, crossing the client's retransmission.)
        if decode(bind_member::<C, F>(ctx, flow, idx, pkt.ip_len, listener)).is_ok() {
            let answered = unsafe { fetch_or(&raw mut (*f).state, 0) } & CT_SYNACK != 0;
            let gone = if answered {
                let new_rkey = family::key::<F>(slot::SNAT).ok_or(reason::DROP_CT_FULL)?;
                flow.reverse_key_into(new_rkey);
                new_rkey
            } else {
                unsafe {
                    (*f).member_mac = flow.member_mac;
                    (*f).snat_port_be = flow.snat_port_be;
                }
                old_rkey
            };
            let _ = F::conntrack().remove(&*gone);
        }
        unsafe { (*f).syn_retries = flow.syn_retries };
        return Ok(());
    }
    let old_member = flow.member;
    // The connect timeout starts again; the accept time stays.
    let moved_ms = (now.wrapping_sub(flow.created_ns) / 1_000_000) as u32;
    flow.accept_ms = flow.accept_ms.wrapping_add(moved_ms);
    flow.created_ns = now;
    flow.syn_retries = (if moves < 0x0f { moves + 1 } else { moves }) << 4;
    decode(bind_member::<C, F>(ctx, flow, idx, pkt.ip_len, listener))?;
    let _ = F::conntrack().remove(&*old_rkey);
    // Still a handshake: it moves to the new member.
    unhalf(f);
    flow.state = (flow.state & !CT_REFUSED) | CT_HALF_OPEN;
    unsafe { *f = *flow };
    count_half_open(idx, listener.index);
    // The client sticks to the member that answers now (haproxy's redispatch does so too).
    stick(listener, pkt.src_be.fold(), idx, now);
    if let Some(s) = MEMBER_STATS.get_ptr_mut(old_member) {
        unsafe { (*s).redispatches += 1 };
    }
    if let Some(s) = LISTENER_STATS.get_ptr_mut(listener.index) {
        unsafe { (*s).redispatches += 1 };
    }
    Ok(())
}
