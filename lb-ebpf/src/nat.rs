//! Binding a flow to its member: the member's MAC from the namespace's FIB, and the SNAT
//! port, allocated by inserting the reverse conntrack entry; TCP timestamp shifting.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_NOEXIST},
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_loop},
};
use lb_common::{
    reason, Address, FlowG, FlowKeyG, ListenerConf, CT_COUNTED, CT_HALF_OPEN, SNAT_TRIES,
};

use crate::{
    family::{slot, Family},
    maps::*,
    parse::{self, Frame, Packet},
};

pub(crate) const FIB_SUCCESS: i64 = 0;

pub(crate) const FIB_NO_NEIGH: i64 = 7;

pub(crate) const EEXIST: i32 = 17;

/// Fills the flow's member, MAC and SNAT port for member `idx`, inserting the reverse entry;
/// a failure is counted in the member's drops. A BPF subprogram (its result encoded as
/// `balance::encode` does): the verifier checks the FIB lookup and the SNAT search once,
/// however many places bind. BPF functions take at most 5 arguments: `listener` brings the
/// SNAT range.
#[inline(never)]
pub(crate) fn bind_member<C: Frame, F: Family>(
    ctx: &C,
    flow: &mut FlowG<F::A>,
    idx: u32,
    pkt_len: u16,
    listener: &ListenerConf,
) -> u64 {
    let r = try_bind_member::<C, F>(ctx, flow, idx, pkt_len, listener.snat_ports());
    if let Err(why) = r {
        if let Some(s) = MEMBER_STATS.get_ptr_mut(idx) {
            // Slots as in lb_common::MEMBER_DROP_REASONS.
            let slot = match why {
                reason::DROP_NO_NEIGH => 0,
                reason::DROP_NO_ROUTE => 1,
                reason::DROP_SNAT_EXHAUSTED => 2,
                _ => 3,
            };
            unsafe { (*s).drops[slot] += 1 };
        }
    }
    crate::balance::encode(r.map(|()| 0))
}

#[inline(always)]
pub(crate) fn try_bind_member<C: Frame, F: Family>(
    ctx: &C,
    flow: &mut FlowG<F::A>,
    idx: u32,
    pkt_len: u16,
    (snat_min, snat_max): (u16, u16),
) -> Result<(), u32> {
    let (Some(m), Some(addr)) = (MEMBERS.get(idx), F::member_addr(idx)) else {
        return Err(reason::DROP_NO_MEMBER);
    };
    flow.member = idx;
    addr.copy_to(&mut flow.member_be);
    flow.member_port_be = m.port_be;

    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Err(reason::DROP_NO_ROUTE);
    };
    let fib: &mut FibParams = unsafe { &mut (*scratch).fib };
    *fib = unsafe { core::mem::zeroed() };
    F::fib(fib, &flow.vip_be, addr);
    fib.l4_protocol = flow.proto();
    fib.sport = flow.snat_port_be;
    fib.dport = m.port_be;
    fib.__bindgen_anon_1.tot_len = pkt_len;
    fib.ifindex = ctx.ifindex();
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == FIB_NO_NEIGH {
        return Err(reason::DROP_NO_NEIGH);
    }
    if rc != FIB_SUCCESS {
        return Err(reason::DROP_NO_ROUTE);
    }
    flow.member_mac = fib.dmac;

    let mut st = SnatSearch {
        seed: unsafe { bpf_get_prandom_u32() },
        min: snat_min,
        max: snat_max,
        outcome: SNAT_EXHAUSTED,
    };
    unsafe {
        bpf_loop(
            SNAT_TRIES,
            snat_step::<F> as *mut c_void,
            &raw mut st as *mut c_void,
            0,
        );
    }
    match st.outcome {
        SNAT_FOUND => Ok(()),
        SNAT_FULL => Err(reason::DROP_CT_FULL),
        _ => Err(reason::DROP_SNAT_EXHAUSTED),
    }
}

const SNAT_EXHAUSTED: u32 = 0;
const SNAT_FOUND: u32 = 1;
const SNAT_FULL: u32 = 2;

/// The state of a search for a free SNAT port, shared with `snat_step`.
#[repr(C)]
struct SnatSearch {
    seed: u32,
    min: u16,
    max: u16,
    outcome: u32,
}

/// `bpf_loop` callback: try number `i` at a SNAT port for the flow being built in
/// `SCRATCH` (every caller binds that one), by inserting its reverse entry with
/// `BPF_NOEXIST`. The verifier checks one try, not `SNAT_TRIES` of them.
#[inline(never)]
extern "C" fn snat_step<F: Family>(i: u32, ctx: *mut c_void) -> i64 {
    let st = unsafe { &mut *(ctx as *mut SnatSearch) };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        st.outcome = SNAT_FULL;
        return 1;
    };
    // Everything from one lookup of the scratch space (each lookup costs this frame a slot).
    let flow = unsafe { &mut *F::scratch_flow(scratch) };
    let lkey = unsafe { &mut *F::scratch_lkey(scratch) };
    let keys = F::scratch_keys(scratch) as *mut FlowKeyG<F::A>;
    let (rkey, fkey) = unsafe { (&mut *keys.add(slot::SNAT), &mut *keys.add(slot::RECLAIM)) };
    let client_port = u16::from_be(flow.client_port_be);
    // First choice: the client's own source port (as netfilter's NAT does). The member then
    // sees the port the client chose, and when a client reuses a port, the member's
    // TIME_WAIT on that tuple belongs to the same client's earlier connection, whose
    // sequence numbers and timestamps the new SYN continues: the member accepts the reuse as
    // it would without lb. A random port there is refused by TIME_WAIT (PAWS, or an older
    // sequence number), costing the client a 1 s SYN retransmission.
    let port = if i == 0 && client_port >= st.min && client_port <= st.max {
        client_port
    } else {
        // (Computed here, not carried: the verifier must see that it cannot be 0.)
        let span = st.max.wrapping_sub(st.min) as u32 + 1;
        st.min.wrapping_add((st.seed % span) as u16)
    };
    st.seed = st.seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
    let port_be = port.to_be();
    // A port that is also a listener on this VIP would make replies look like clients.
    flow.vip_be.copy_to(&mut lkey.vip_be);
    lkey.port_be = port_be;
    lkey.proto = flow.proto();
    lkey._pad = 0;
    if F::listeners().get_ptr(&*lkey).is_some() {
        return 0;
    }
    flow.snat_port_be = port_be;
    let table = F::conntrack();
    flow.reverse_key_into(rkey);
    match table.insert(&*rkey, &*flow, BPF_NOEXIST as u64) {
        Ok(()) => {
            st.outcome = SNAT_FOUND;
            1
        }
        Err(e) if e == -EEXIST => {
            // Taken: by a flow that may be over. With timestamps on the new flow, the member
            // accepts the port again at once (see `reclaim`).
            if flow.ts_delta != 0
                && reclaim::<F>(rkey, fkey)
                && table.insert(&*rkey, &*flow, BPF_NOEXIST as u64).is_ok()
            {
                st.outcome = SNAT_FOUND;
                return 1;
            }
            0
        }
        Err(_) => {
            st.outcome = SNAT_FULL;
            1
        }
    }
}

/// A closed flow gives its SNAT port back after this long without a packet, instead of the
/// 10 s it lingers otherwise (for its last ACK and retransmitted FINs).
const REUSE_AFTER_NS: u64 = 1_000_000_000;

/// Frees SNAT port `rkey` (member -> VIP:port) for a new flow whose SYN carries timestamps,
/// if the flow holding it closed (both FINs, or a RST) and has been quiet for
/// `REUSE_AFTER_NS`: its forward and reverse entries go. The member may still keep the old
/// connection's tuple in TIME_WAIT (60 s); it accepts the new SYN on it because its
/// timestamp, on lb's millisecond clock (`Flow::ts_delta`), is newer than any the old one
/// carried (RFC 6191 / Linux's `tcp_timewait_state_process`). So a port is reusable after a
/// second, not ten: 50,000 ports per member carry 50,000 new connections a second, not
/// 5,000. A reverse entry whose forward entry is gone (an orphan the expiry has not reached
/// yet) is freed likewise once it is as old.
#[inline(always)]
fn reclaim<F: Family>(rkey: &FlowKeyG<F::A>, fkey: &mut FlowKeyG<F::A>) -> bool {
    let table = F::conntrack();
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let Some(r) = (unsafe { table.get(rkey) }) else {
        return false;
    };
    r.forward_key_into(fkey);
    match unsafe { table.get(&*fkey) } {
        Some(f) => {
            if !f.has_reverse_key(rkey)
                || !lb_common::closed(f.state)
                || f.state & (CT_COUNTED | CT_HALF_OPEN) != 0
                || now.wrapping_sub(f.last_seen_ns) < REUSE_AFTER_NS
                || table.remove(&*fkey).is_err()
            {
                return false;
            }
        }
        None => {
            if now.wrapping_sub(r.created_ns) < REUSE_AFTER_NS {
                return false;
            }
        }
    }
    table.remove(rkey).is_ok()
}

/// The one 4-byte field `parse::rewrite` adjusts in a segment, as (offset from the TCP
/// header, what it adds). A cookie connection (`cookie`: its `Flow::seq_delta`): the
/// acknowledgment towards the member less the delta, the sequence number towards the client
/// plus it. Otherwise lb's clock in the timestamps (`Flow::ts_delta`): TSval towards the
/// member plus the delta, TSecr towards the client less it; no option walk without a delta.
#[inline(always)]
pub(crate) fn shift<C: Frame, A>(
    ctx: &C,
    pkt: &Packet<A>,
    cookie: Option<u32>,
    ts_delta: u32,
    to_member: bool,
) -> Option<(usize, u32)> {
    if let Some(seq_delta) = cookie {
        return Some(if to_member {
            (8, seq_delta.wrapping_neg())
        } else {
            (4, seq_delta)
        });
    }
    let (delta, field) = if to_member {
        (ts_delta, 0)
    } else {
        (ts_delta.wrapping_neg(), 4)
    };
    if delta == 0 {
        return None;
    }
    parse::find_timestamp(ctx, pkt).map(|off| (off + field, delta))
}
