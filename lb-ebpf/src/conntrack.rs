//! Flow state and the live connection counts: atomic adds on the shared `Live` counters,
//! a flow's TCP state folded from its flags, and counting a flow open or closed exactly once.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use lb_common::{Flow, Live, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_RST, CT_SYNACK};

use crate::{
    maps::*,
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
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

#[inline(always)]
pub(crate) fn live_add(live: *mut Live, delta: i64) {
    unsafe {
        xadd_i64(&raw mut (*live).active, delta);
        xadd_u64(&raw mut (*live).events, 1);
    }
}

/// Counts a new flow as active on its member and listener.
#[inline(always)]
pub(crate) fn count_open(member: u32, listener: u32) {
    if let Some(l) = MEMBER_LIVE.get_ptr_mut(member) {
        live_add(l, 1);
    }
    if let Some(l) = LISTENER_LIVE.get_ptr_mut(listener) {
        live_add(l, 1);
    }
}

/// Stops counting a flow (closed, or moved away by a redispatch). Idempotent per flow.
#[inline(always)]
pub(crate) fn uncount(flow: *mut Flow) {
    unsafe {
        if (*flow).counted == 0 {
            return;
        }
        (*flow).counted = 0;
        if let Some(l) = MEMBER_LIVE.get_ptr_mut((*flow).member) {
            live_add(l, -1);
        }
        if let Some(l) = LISTENER_LIVE.get_ptr_mut((*flow).listener) {
            live_add(l, -1);
        }
    }
}

/// Folds TCP flags into the flow's state; stops counting it once it is closed.
#[inline(always)]
pub(crate) fn track(flow: *mut Flow, tcp_flags: u8, from_client: bool, now: u64) {
    unsafe {
        let mut st = (*flow).state;
        if tcp_flags & TCP_RST != 0 {
            st |= CT_RST;
        }
        if tcp_flags & TCP_FIN != 0 {
            st |= if from_client {
                CT_FIN_CLIENT
            } else {
                CT_FIN_MEMBER
            };
        }
        if !from_client && tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK != 0 {
            st |= CT_SYNACK;
        }
        if st != (*flow).state {
            (*flow).state = st;
        }
        if (*flow).last_seen_ns != now {
            (*flow).last_seen_ns = now;
        }
        if (*flow).is_closed() {
            uncount(flow);
        }
    }
}
