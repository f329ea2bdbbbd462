//! Per-member and per-listener traffic counters (per-CPU: plain adds).

use lb_common::Stats;

use crate::maps::*;

#[inline(always)]
pub(crate) fn bump(s: Option<*mut Stats>, len: u64, inbound: bool, new_conn: bool) {
    let Some(s) = s else { return };
    unsafe {
        if inbound {
            (*s).packets_in += 1;
            (*s).bytes_in += len;
        } else {
            (*s).packets_out += 1;
            (*s).bytes_out += len;
        }
        if new_conn {
            (*s).total_connections += 1;
        }
    }
}

// Two separate lookups and checks: LLVM would otherwise merge the null checks of both map
// values into one `or` of pointers, which the verifier refuses.
#[inline(always)]
pub(crate) fn add_stats(member: u32, listener: u32, len: u64, inbound: bool, new_conn: bool) {
    bump(MEMBER_STATS.get_ptr_mut(member), len, inbound, new_conn);
    bump(LISTENER_STATS.get_ptr_mut(listener), len, inbound, new_conn);
}
