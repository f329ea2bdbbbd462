//! The connection log's data-path half: when a connection of a logging listener ends (both
//! FINs or a RST: the segment whose atomic OR closed the flow, so exactly once), one
//! `ConnEvent` goes into the `CONN_LOG` ring buffer; the daemon formats it as haproxy's
//! `option tcplog` line (lb-userspace/src/connlog/). The data path never waits for the
//! reader: a full ring loses the event, counted per listener in `CONN_LOG_LOST`. The reader
//! is woken only once a quarter of the ring is used (it also drains every 100 ms), so a
//! busy listener costs one wake-up per ~3,300 connections, not one per connection.
//!
//! An IPv6 flow ends inside `forward_sub` or `from_member_sub`, subprograms at the bottom of
//! `lb6`'s 512 bytes of stack, where a call to `ended` does not fit: `track` leaves the
//! state in `SCRATCH` (`pending`) and `lb6` writes the record once the subprogram returned
//! (`flush`), from the forward key the subprogram left in the scratch space.

use lb_common::{Address, ConnEvent, FlowG, Live};

use crate::{
    family::{self, slot, Family},
    maps::{CONN_LOG, CONN_LOG_LOST, LISTENER_LIVE, MEMBER_LIVE, SCRATCH},
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

#[inline(always)]
fn active(l: Option<&Live>) -> u32 {
    match l {
        Some(l) if l.active > 0 => l.active as u32,
        _ => 0,
    }
}

/// Records the end of `flow` (`state`: its bits after the closing segment) at `now`.
#[inline(never)]
pub(crate) fn ended<A: Address>(flow: *const FlowG<A>, state: u64, now: u64) {
    let f = unsafe { &*flow };
    let wake = if CONN_LOG.query(BPF_RB_AVAIL_DATA) * 4 >= CONN_LOG.query(BPF_RB_RING_SIZE) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let Some(mut entry) = CONN_LOG.reserve::<ConnEvent>(0) else {
        if let Some(c) = CONN_LOG_LOST.get_ptr_mut(f.listener) {
            unsafe { *c += 1 };
        }
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).accepted_ns = f.accepted_ns();
        (*e).ended_ns = now;
        (*e).member_bytes = f.member_bytes;
        (*e).state = state;
        f.client_be.widen_to(&mut (*e).client_be);
        (*e).member = f.member;
        (*e).listener = f.listener;
        (*e).connect_ms = f.connect_ms;
        (*e).feconn = active(LISTENER_LIVE.get(f.listener));
        (*e).srv_conn = active(MEMBER_LIVE.get(f.member));
        (*e).client_port_be = f.client_port_be;
        (*e).syn_retries = f.syn_retries;
        (*e).family = A::FAMILY;
    }
    entry.submit(wake);
}

/// The IPv6 flow in the forward key slot ended with `state`: its record is written by
/// `flush`.
#[inline(always)]
pub(crate) fn pending(state: u64) {
    if let Some(s) = SCRATCH.get_ptr_mut(0) {
        unsafe { (*s).log_state = state };
    }
}

/// Writes the record `pending` left, if any, of the flow in the forward key slot (the
/// closing segment's time is the flow's `last_seen_ns`). A subprogram: `lb6` calls it with
/// nothing else on its stack's chain.
#[inline(never)]
pub(crate) fn flush<F: Family>() {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let state = unsafe { (*s).log_state };
    if state == 0 {
        return;
    }
    unsafe { (*s).log_state = 0 };
    let Some(key) = family::key::<F>(slot::FORWARD) else {
        return;
    };
    if let Some(f) = F::conntrack().get_ptr(&*key) {
        ended(f, state, unsafe { (*f).last_seen_ns });
    }
}
