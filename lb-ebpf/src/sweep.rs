//! `lb_sweep`: the conntrack table's expiry and census, run by the daemon once a second through
//! BPF_PROG_TEST_RUN. One `bpf_for_each_map_elem` pass in the kernel instead of two syscalls
//! per entry from userspace (`cargo xtask perf`: 101 ms to merely read 20k flows that way,
//! 16 ms for this whole pass).
//!
//! Per forward entry: idle past its state's timeout -> both entries removed and, if it still
//! counted, its member's and listener's `active` decremented; otherwise, if it counts, it is
//! added to their `table` census, from which the daemon corrects drift. Per reverse entry:
//! removed if its forward entry is gone and it has lingered long enough.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Flow, FlowKey, ListenerKey, Live, SweepReport, CLOSED_LINGER_NS, FLOW_DIR_REVERSE, IPPROTO_TCP,
};

use crate::maps::{CONNTRACK, LISTENERS, LISTENER_LIVE, MEMBER_LIVE, SWEEP};

#[repr(C)]
struct SweepCtx {
    now: u64,
    report: SweepReport,
}

#[xdp]
pub fn lb_sweep(_ctx: XdpContext) -> u32 {
    let mut c = SweepCtx {
        now: unsafe { bpf_ktime_get_ns() },
        report: SweepReport::default(),
    };
    unsafe {
        bpf_for_each_map_elem(
            &raw const CONNTRACK as *mut c_void,
            sweep_step as *mut c_void,
            &raw mut c as *mut c_void,
            0,
        );
    }
    if let Some(r) = SWEEP.get_ptr_mut(0) {
        unsafe { *r = c.report };
    }
    xdp_action::XDP_PASS
}

/// Decrements `active` without bumping `events`: the daemon reads an unchanged `events` as
/// "no packet touched this counter during the sweep", and the sweep's own changes are
/// consistent with its census.
#[inline(always)]
fn add_quiet(live: Option<*mut Live>, active: i64, table: i64) {
    if let Some(l) = live {
        unsafe {
            crate::xadd_i64(&raw mut (*l).active, active);
            crate::xadd_i64(&raw mut (*l).table, table);
        }
    }
}

#[inline(never)]
extern "C" fn sweep_step(
    _map: *mut c_void,
    key: *const c_void,
    value: *mut c_void,
    ctx: *mut c_void,
) -> i64 {
    let (key, flow, c) = unsafe {
        (
            *(key as *const FlowKey),
            *(value as *const Flow),
            &mut *(ctx as *mut SweepCtx),
        )
    };
    let idle = c.now.saturating_sub(flow.last_seen_ns);
    if key.dir == FLOW_DIR_REVERSE {
        let live = match CONNTRACK.get_ptr(flow.forward_key()) {
            Some(f) => unsafe { (*f).reverse_key() == key },
            None => false,
        };
        if !live && idle > CLOSED_LINGER_NS {
            let _ = CONNTRACK.remove(key);
            c.report.orphans += 1;
        }
        return 0;
    }
    c.report.flows += 1;
    let lk = ListenerKey {
        vip_be: key.dst_be,
        port_be: key.dport_be,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // A flow whose listener is gone no longer gets translated: it expires now.
    let timeout = match unsafe { LISTENERS.get(lk) } {
        Some(l) => flow.timeout_ns(l.timeout_member_connect_ns, l.timeout_data_ns),
        None => 0,
    };
    let counted = if flow.counted != 0 { 1 } else { 0 };
    if idle > timeout {
        let _ = CONNTRACK.remove(flow.reverse_key());
        let _ = CONNTRACK.remove(key);
        add_quiet(MEMBER_LIVE.get_ptr_mut(flow.member), -counted, 0);
        add_quiet(LISTENER_LIVE.get_ptr_mut(flow.listener), -counted, 0);
        c.report.expired += 1;
    } else {
        if counted != 0 {
            add_quiet(MEMBER_LIVE.get_ptr_mut(flow.member), 0, 1);
            add_quiet(LISTENER_LIVE.get_ptr_mut(flow.listener), 0, 1);
        }
        if let Some(l) = MEMBER_LIVE.get_ptr_mut(flow.member) {
            unsafe { crate::xadd_u64(&raw mut (*l).refs, 1) };
        }
    }
    0
}
