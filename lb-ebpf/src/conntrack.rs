//! Flow state and the live connection counts. State bits are set with atomic ORs and the
//! `CT_COUNTED` bit cleared with an atomic fetch-and: two CPUs handling the same flow at
//! once (the client's FIN and the member's, two RSTs) lose no bit, and whichever stops
//! counting the flow does so exactly once. RSTs are honoured only within the window of the
//! side they go to.

use core::intrinsics::{atomic_and, atomic_or, atomic_xadd, AtomicOrdering};

use lb_common::{
    closed, Address, FlowG, Live, ADMISSION_WINDOW_NS, CT_COUNTED, CT_ESTABLISHED, CT_FIN_CLIENT,
    CT_FIN_MEMBER, CT_HALF_OPEN, CT_LOG, CT_RST, CT_RST_MEMBER, CT_SYNACK, CT_UDP,
};

use crate::{
    family::{self, slot, Family},
    maps::*,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// An atomic add whose result is unused: BPF_ATOMIC_ADD, available on every BPF CPU version.
#[inline(always)]
pub(crate) unsafe fn xadd_i64(dst: *mut i64, v: i64) {
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(dst, v) };
}

#[inline(always)]
pub(crate) unsafe fn xadd_u64(dst: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// `*dst |= bits` atomically; the value before (BPF_OR | BPF_FETCH, kernel 5.12+).
#[inline(always)]
pub(crate) unsafe fn fetch_or(dst: *mut u64, bits: u64) -> u64 {
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(dst, bits) }
}

/// `*dst &= mask` atomically; the value before.
#[inline(always)]
pub(crate) unsafe fn fetch_and(dst: *mut u64, mask: u64) -> u64 {
    unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(dst, mask) }
}

/// The two counts a flow takes part in: `Live::active` (connections, while `CT_COUNTED`)
/// and `Live::half_open` (handshakes, while `CT_HALF_OPEN`).
#[derive(Clone, Copy)]
enum Gauge {
    Active,
    HalfOpen,
}

impl Gauge {
    /// The flow state bit that says a flow is in this count.
    #[inline(always)]
    fn bit(self) -> u64 {
        match self {
            Gauge::Active => CT_COUNTED,
            Gauge::HalfOpen => CT_HALF_OPEN,
        }
    }

    /// Adds `delta` to this count of `live` (and bumps `events`).
    #[inline(always)]
    fn add(self, live: *mut Live, delta: i64) {
        unsafe {
            let field = match self {
                Gauge::Active => &raw mut (*live).active,
                Gauge::HalfOpen => &raw mut (*live).half_open,
            };
            xadd_i64(field, delta);
            xadd_u64(&raw mut (*live).events, 1);
        }
    }

    /// Adds `delta` on member `member` and listener `listener`.
    #[inline(always)]
    fn add_both(self, member: u32, listener: u32, delta: i64) {
        if let Some(l) = MEMBER_LIVE.get_ptr_mut(member) {
            self.add(l, delta);
        }
        if let Some(l) = LISTENER_LIVE.get_ptr_mut(listener) {
            self.add(l, delta);
        }
    }

    /// Takes `flow` out of this count: exactly once, whichever CPU gets here first (only the
    /// caller whose atomic fetch-and cleared the bit decrements).
    #[inline(always)]
    fn release<A: Address>(self, flow: *mut FlowG<A>) {
        let bit = self.bit();
        unsafe {
            if (*flow).state & bit == 0 {
                return;
            }
            if fetch_and(&raw mut (*flow).state, !bit) & bit == 0 {
                return;
            }
            self.add_both((*flow).member, (*flow).listener, -1);
        }
    }
}

/// Counts a new handshake (a SYN that opened a flow) on its member and listener.
#[inline(always)]
pub(crate) fn count_half_open(member: u32, listener: u32) {
    Gauge::HalfOpen.add_both(member, listener, 1);
}

/// Stops counting a flow as a handshake (established, closed, or moved by a redispatch):
/// exactly once.
#[inline(always)]
pub(crate) fn unhalf<A: Address>(flow: *mut FlowG<A>) {
    Gauge::HalfOpen.release(flow);
}

/// One more new connection in a row that member `member` refused, left unanswered, or
/// could not be sent to (passive health, see `PoolConf::error_limit`).
#[inline(always)]
pub(crate) fn note_failure(member: u32) {
    if let Some(l) = MEMBER_LIVE.get_ptr_mut(member) {
        unsafe { xadd_u64(&raw mut (*l).failures, 1) };
    }
}

/// Member `member` answered a SYN: its run of failures ends.
#[inline(always)]
pub(crate) fn note_answer(member: u32) {
    if let Some(l) = MEMBER_LIVE.get_ptr_mut(member) {
        unsafe {
            if (*l).failures != 0 {
                (*l).failures = 0;
            }
        }
    }
}

/// Counts a new flow as active on its member and listener.
#[inline(always)]
pub(crate) fn count_open(member: u32, listener: u32) {
    Gauge::Active.add_both(member, listener, 1);
}

/// Stops counting a flow (closed, or moved away by a redispatch): exactly once, whichever
/// CPU gets here first.
#[inline(always)]
pub(crate) fn uncount<A: Address>(flow: *mut FlowG<A>) {
    Gauge::Active.release(flow);
}

/// Whether a RST from one side closes the flow (RFC 5961): it must carry exactly the number
/// the other side acknowledged last, or the one after the last byte its sender sent (a
/// sender's RST carries its next sequence number, which the receiver may not have
/// acknowledged yet). Any other RST, in the window or not, leaves the flow as it is: it
/// still goes on to the other side, whose stack answers it (a challenge ACK) or not. A
/// member refusing the SYN answers RST+ACK acknowledging it: it closes when its ACK does.
#[inline(always)]
fn rst_closes<A: Address>(f: &FlowG<A>, pkt: &Packet<A>, from_client: bool) -> bool {
    if from_client {
        return pkt.seq == f.member_ack || pkt.seq == f.client_next;
    }
    if f.state & CT_SYNACK == 0 {
        return pkt.tcp_flags & TCP_ACK != 0 && pkt.ack == f.member_ack;
    }
    let seq = pkt.seq.wrapping_add(f.seq_delta);
    seq == f.client_ack || seq == f.member_next
}

/// Whether a segment carrying a FIN starts in the receive window of the side it goes to
/// (RCV.NXT =< SEG.SEQ < RCV.NXT + RCV.WND; one exact number while the window is 0 or not
/// known): a FIN outside it is not honoured.
#[inline(always)]
fn fin_in_window<A: Address>(f: &FlowG<A>, pkt: &Packet<A>, from_client: bool) -> bool {
    let (at, next, win) = if from_client {
        (pkt.seq, f.member_ack, f.member_win)
    } else {
        (
            pkt.seq.wrapping_add(f.seq_delta),
            f.client_ack,
            f.client_win,
        )
    };
    let win = if win == 0 { 1 } else { win };
    at.wrapping_sub(next) < win
}

/// Whether a segment (not a SYN) fits the connection (RFC 5961, section 5): its sequence
/// number in the receiver's window, and an acknowledgment no further than what the other
/// side sent nor older than the window it was given. Only such segments move the numbers
/// and windows a RST or FIN must match: a blind segment cannot set them up for its RST.
#[inline(always)]
fn acceptable<A: Address>(f: &FlowG<A>, pkt: &Packet<A>, from_client: bool) -> bool {
    if f.state & CT_SYNACK == 0 {
        return false;
    }
    let (seq, rcv_nxt, rcv_win, snd_una, snd_win, snd_nxt) = if from_client {
        let s = pkt.seq;
        (
            s,
            f.member_ack,
            f.member_win,
            f.client_ack,
            f.client_win,
            f.member_next,
        )
    } else {
        let s = pkt.seq.wrapping_add(f.seq_delta);
        (
            s,
            f.client_ack,
            f.client_win,
            f.member_ack,
            f.member_win,
            f.client_next,
        )
    };
    // Beyond the right edge by up to the window again and 64 KiB: a scaled window moves its
    // edge in steps of its scale (it can seem to recede by almost one), and a GSO or GRO
    // super-packet starts in the window but may end past it.
    if seq.wrapping_sub(rcv_nxt) as u64 > ((rcv_win as u64) << 1) + 0x1_0000 {
        return false;
    }
    if pkt.tcp_flags & TCP_ACK == 0 {
        return true;
    }
    let oldest = snd_una.wrapping_sub(snd_win);
    pkt.ack.wrapping_sub(oldest) <= snd_nxt.wrapping_sub(oldest)
}

/// A client's segment of flow `f` that lb holds back (data before the member answered a
/// cookie flow's SYN): the client sent it all the same, so its RST will carry the number
/// after it.
#[inline(always)]
pub(crate) fn note_client_sent<A: Address>(f: *mut FlowG<A>, pkt: &Packet<A>) {
    let f = unsafe { &mut *f };
    advance(&mut f.client_next, end_of(pkt));
}

/// The sequence number after a segment (not a SYN), in its sender's numbers: its payload
/// and its FIN counted.
#[inline(always)]
fn end_of<A>(pkt: &Packet<A>) -> u32 {
    let payload = (pkt.l4_len as u32).wrapping_sub(pkt.doff as u32) & 0xffff;
    let fin = (pkt.tcp_flags & TCP_FIN != 0) as u32;
    pkt.seq.wrapping_add(payload).wrapping_add(fin)
}

/// Whether a member's SYN-ACK (or the member's segment `pkt`, before any SYN-ACK) does not
/// acknowledge the flow's SYN: it is an earlier flow's half-open connection on the same
/// SNAT port (see `cookie::reset_member`).
#[inline(always)]
pub(crate) fn stale_synack<A: Address>(f: &FlowG<A>, pkt: &Packet<A>) -> bool {
    f.state & CT_SYNACK == 0 && pkt.ack != f.member_ack
}

/// A handshake of listener `listener` ended without becoming a connection (a RST or FIN
/// before the client's ACK): one more failed attempt in the current window (see
/// `cookie::flooded`).
#[inline(always)]
fn note_failed(listener: u32, now: u64) {
    let Some(a) = ADMISSION.get_ptr_mut(listener) else {
        return;
    };
    unsafe {
        if now.wrapping_sub((*a).window_since_ns) >= ADMISSION_WINDOW_NS {
            // A new window (two CPUs starting one at once lose at most one count).
            (*a).window_since_ns = now;
            (*a).window_count = 1;
        } else {
            xadd_u64(&raw mut (*a).window_count, 1);
        }
    }
}

/// Whether sequence number `a` comes before `b` (they wrap).
#[inline(always)]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Moves `next` to `end` if `end` is after it (sequence numbers wrap).
#[inline(always)]
fn advance(next: &mut u32, end: u32) {
    if end.wrapping_sub(*next) as i32 > 0 {
        *next = end;
    }
}

/// Records the acknowledgment and window an acceptable segment carries (scaled, as the
/// window of the side that sent it) and the sequence number after it, and for the member's
/// SYN-ACK, the number the client will acknowledge next and the window scaling both sides
/// agreed on. Only forward: segments of one direction handled on two CPUs, or reordered, must
/// not move a side's view of the other's window back, or the next segments would no longer
/// fit it and the numbers would stay where they were for the rest of the flow.
#[inline(always)]
fn note_window<A: Address>(
    f: &mut FlowG<A>,
    pkt: &Packet<A>,
    from_client: bool,
    wscale: Option<u8>,
) {
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    if !syn && (pkt.tcp_flags & TCP_RST != 0 || !acceptable(f, pkt, from_client)) {
        return;
    }
    if from_client {
        if !syn {
            advance(&mut f.client_next, end_of(pkt));
        }
        if pkt.tcp_flags & TCP_ACK != 0 && !syn && !before(pkt.ack, f.client_ack) {
            f.client_ack = pkt.ack;
            f.client_win = (pkt.win as u32) << (f.wscale & 0x0f);
        }
        return;
    }
    if syn {
        if f.state & CT_SYNACK != 0 {
            return; // a retransmitted SYN-ACK: all known already
        }
        // The SYN-ACK: scaling is on only if both sides offered it (the client's offer is in
        // the low nibble, 15 when it made none).
        let client = f.wscale & 0x0f;
        f.wscale = match wscale {
            Some(m) if client != 0x0f => client | (m << 4),
            _ => 0,
        };
        f.client_ack = pkt.seq.wrapping_add(1).wrapping_add(f.seq_delta);
        f.member_next = f.client_ack;
        f.client_win = 1;
        f.member_ack = pkt.ack;
        f.member_win = pkt.win as u32;
        return;
    }
    advance(&mut f.member_next, end_of(pkt).wrapping_add(f.seq_delta));
    if pkt.tcp_flags & TCP_ACK != 0 && !before(pkt.ack, f.member_ack) {
        f.member_ack = pkt.ack;
        f.member_win = (pkt.win as u32) << (f.wscale >> 4);
    }
}

/// The handshake of `flow` is complete: a connection from now on, counted once (whichever
/// CPU's atomic OR sets `CT_ESTABLISHED` counts it). A flow that a FIN or RST closed before
/// that is no connection: its `CT_COUNTED` is taken back (the closing side found nothing to
/// uncount). Returns whether this call counted it.
#[inline(always)]
pub(crate) fn establish<A: Address>(flow: *mut FlowG<A>) -> bool {
    let before = unsafe { fetch_or(&raw mut (*flow).state, CT_ESTABLISHED | CT_COUNTED) };
    if before & CT_ESTABLISHED != 0 {
        return false;
    }
    if closed(before) {
        unsafe { fetch_and(&raw mut (*flow).state, !CT_COUNTED) };
        return false;
    }
    let (member, listener) = unsafe { ((*flow).member, (*flow).listener) };
    count_open(member, listener);
    unhalf(flow);
    true
}

/// Folds a segment into its flow's state: FINs, the member's SYN-ACK, the client's ACK of
/// it (the handshake becomes a connection: counted active from here), RSTs within the
/// window, the windows; stops counting the flow once it is closed. `wscale`: the window
/// scale option of a member's SYN-ACK. Returns whether this segment established the
/// connection (exactly one segment per flow does).
#[inline(always)]
pub(crate) fn track<F: Family>(
    flow: *mut FlowG<F::A>,
    pkt: &Packet<F::A>,
    from_client: bool,
    now: u64,
    wscale: Option<u8>,
) -> bool {
    let f = unsafe { &mut *flow };
    let flags = pkt.tcp_flags;
    let mut established = false;
    if from_client
        && flags & (TCP_ACK | TCP_SYN | TCP_RST) == TCP_ACK
        && f.state & (CT_SYNACK | CT_ESTABLISHED) == CT_SYNACK
    {
        established = establish(flow);
    }
    let mut bits = 0u64;
    if flags & TCP_RST != 0 && rst_closes(f, pkt, from_client) {
        bits |= if from_client {
            CT_RST
        } else {
            CT_RST | CT_RST_MEMBER
        };
    }
    if flags & TCP_FIN != 0 && fin_in_window(f, pkt, from_client) {
        bits |= if from_client {
            CT_FIN_CLIENT
        } else {
            CT_FIN_MEMBER
        };
    }
    if !from_client && flags & TCP_SYN != 0 && flags & TCP_ACK != 0 {
        bits |= CT_SYNACK;
    }
    note_window(f, pkt, from_client, wscale);
    if f.last_seen_ns != now {
        f.last_seen_ns = now;
    }
    if bits != 0 && f.state & bits != bits {
        let before = unsafe { fetch_or(&raw mut f.state, bits) };
        if bits & CT_SYNACK != 0 && before & CT_SYNACK == 0 {
            // The member's first SYN-ACK: haproxy's Tc (plus one; 0 is "never").
            let ms = now.wrapping_sub(f.created_ns) / 1_000_000;
            f.connect_ms = (ms as u32).wrapping_add(f.accept_ms).wrapping_add(1);
        }
        if closed(before | bits) {
            uncount(flow);
            unhalf(flow);
            if !closed(before) {
                if before & CT_LOG != 0 {
                    F::ended(flow, before | bits, now);
                }
                if before & CT_ESTABLISHED == 0 {
                    // A handshake that failed: it counts against the listener's budget.
                    note_failed(f.listener, now);
                }
            }
        }
    }
    established
}

/// Whether `flow` ended before it became a connection (a RST or both FINs during the
/// handshake): nothing more is to come on it, so its caller removes it (`remove`) once it
/// has translated the segment, rather than letting it linger with its slot and SNAT port.
#[inline(always)]
pub(crate) fn ended_early<A: Address>(flow: *const FlowG<A>) -> bool {
    let state = unsafe { (*flow).state };
    closed(state) && state & (CT_ESTABLISHED | CT_UDP) == 0
}

/// Removes both entries of `flow`: its slot and its SNAT port are free at once.
#[inline(always)]
pub(crate) fn remove<F: Family>(flow: *const FlowG<F::A>) {
    let Some(key) = family::key::<F>(slot::TEMP) else {
        return;
    };
    unsafe {
        (*flow).reverse_key_into(key);
        let _ = F::conntrack().remove(&*key);
        (*flow).forward_key_into(key);
        let _ = F::conntrack().remove(&*key);
    }
}
