//! Which member a new flow goes to: source-address persistence, then the pool's algorithm
//! (weighted least connections or round robin through `lb_common::select::Picker` in a
//! `bpf_loop`; `balance source` from the daemon-built table), and the load balancer's
//! connection count for its limit.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use lb_common::{
    member_failed, reason, select, ListenerConf, Sticky, StickyKey, ALG_SOURCE_IP,
    ALG_SOURCE_IP_PORT, MAX_LISTENERS, MAX_POOL_MEMBERS, MEMBER_F_UP, POOL_F_PERSIST_SOURCE,
};

use crate::{conntrack::xadd_u64, maps::*};

/// A member for a new flow: the one a sticky client address keeps, else `choose`'s. A
/// subprogram (not inlined): the verifier then sees one result here instead of carrying
/// every path through persistence and selection into the SNAT loop after it.
#[inline(never)]
pub(crate) fn pick_member(listener: &ListenerConf, client: u64, now: u64) -> u64 {
    let r = match sticky_member(listener, client as u32, now) {
        Some(i) => Ok(i),
        None => choose::<true>(listener, client, u32::MAX),
    };
    encode(r)
}

/// `choose` for a redispatch, as a subprogram (see `pick_member`).
#[inline(never)]
pub(crate) fn pick_other(listener: &ListenerConf, client: u64, exclude: u32) -> u64 {
    encode(choose::<false>(listener, client, exclude))
}

/// The client's address (an IPv6 one folded to 32 bits: two clients may share a persistence
/// entry or a hash, never a flow) and port in one register (`choose`'s `client`): the subprograms'
/// frames stay within what 6.1's verifier allows on top of the entry points' (it counts
/// frames rounded to 32 bytes along the call chain, 512 at most).
#[inline(always)]
pub(crate) fn client_of<F: crate::family::Family>(pkt: &crate::parse::Packet<F::A>) -> u64 {
    ((pkt.sport_be as u64) << 32) | lb_common::Address::fold(&pkt.src_be) as u64
}

/// A subprogram's Result in one register: the member index, or the reason with bit 32 set.
#[inline(always)]
pub(crate) fn encode(r: Result<u32, u32>) -> u64 {
    match r {
        Ok(i) => i as u64,
        Err(why) => (1 << 32) | why as u64,
    }
}

#[inline(always)]
pub(crate) fn decode(v: u64) -> Result<u32, u32> {
    if v >> 32 != 0 {
        Err(v as u32)
    } else {
        Ok(v as u32)
    }
}

/// A member for a new (or redispatched) flow: slot index in `MEMBERS`, or a drop reason.
#[inline(always)]
/// `TABLE`: look the pool's table up first (a new flow); a redispatch (`exclude` a member)
/// scans only, which keeps `pick_other`'s frame small.
pub(crate) fn choose<const TABLE: bool>(
    listener: &ListenerConf,
    client: u64,
    exclude: u32,
) -> Result<u32, u32> {
    let (client_be, client_port_be) = (client as u32, (client >> 32) as u16);
    let Some(pool) = POOLS.get(listener.pool) else {
        return Err(reason::DROP_NO_MEMBER);
    };
    let base = listener.pool * MAX_POOL_MEMBERS;
    let hashed = pool.algorithm == ALG_SOURCE_IP || pool.algorithm == ALG_SOURCE_IP_PORT;
    let start = if hashed {
        if pool.algorithm == ALG_SOURCE_IP_PORT {
            select::client_port_hash(client_be, client_port_be)
        } else {
            select::client_hash(client_be)
        }
    } else {
        match LISTENER_LIVE.get_ptr_mut(listener.index) {
            Some(l) => unsafe {
                let r = (*l).rr;
                xadd_u64(&raw mut (*l).rr, 1);
                r as u32
            },
            None => 0,
        }
    };
    // Source hashing: the client's entry in the pool's Maglev table; round robin: the next
    // entry of its weighted sequence (both rebuilt by the daemon on every change; only those
    // algorithms have a table, `table_len` 0 otherwise). A redispatch, or an entry whose
    // member has just become unavailable, falls back to the scan from the same start.
    if TABLE && pool.table_len != 0 {
        let at = start % pool.table_len;
        if let Some(i) = source_entry(listener.pool, pool.count, at, pool.error_limit) {
            return Ok(base + i);
        }
    }
    let exclude_slot = if exclude >= base {
        exclude - base
    } else {
        u32::MAX
    };
    let mut sel = Selection {
        picker: select::Picker::new(pool.algorithm, pool.count, start, exclude_slot),
        base,
        limit: pool.error_limit,
    };
    let n = sel.picker.count();
    unsafe {
        bpf_loop(
            n,
            select_step as *mut c_void,
            &raw mut sel as *mut c_void,
            0,
        );
    }
    match sel.picker.result() {
        Some(s) => Ok(base + s),
        None => Err(reason::DROP_NO_MEMBER),
    }
}

/// Whether member `idx` is past its pool's error limit (passive health).
#[inline(always)]
fn failed(idx: u32, limit: u32) -> bool {
    match MEMBER_LIVE.get(idx) {
        Some(l) => member_failed(l.failures, limit),
        None => false,
    }
}

/// The slot the pool's source-hashing table gives `hash`, if its member is available.
#[inline(always)]
pub(crate) fn source_entry(pool: u32, count: u32, hash: u32, limit: u32) -> Option<u32> {
    let table = SOURCE_TABLE.get(pool)?;
    let slot = table[(hash % select::SOURCE_TABLE_SIZE) as usize] as u32;
    if slot >= count || failed(pool * MAX_POOL_MEMBERS + slot, limit) {
        return None;
    }
    let m = MEMBERS.get(pool * MAX_POOL_MEMBERS + slot)?;
    let c = select::Candidate {
        weight: m.weight as u32,
        flags: m.flags,
        active: 0,
    };
    select::available(&c).then_some(slot)
}

/// The member a client address sticks to in the listener's pool (source-address
/// persistence), if it is still within the pool's timeout, configured, enabled and up.
#[inline(always)]
pub(crate) fn sticky_member(listener: &ListenerConf, client_be: u32, now: u64) -> Option<u32> {
    let pool = POOLS.get(listener.pool)?;
    if pool.flags & POOL_F_PERSIST_SOURCE == 0 {
        return None;
    }
    let key = StickyKey {
        client_be,
        pool: listener.pool,
    };
    let s = unsafe { STICKY.get(&key) }?;
    let fresh = pool.persist_timeout_s == 0
        || now.wrapping_sub(s.last_ns) < pool.persist_timeout_s as u64 * 1_000_000_000;
    let base = listener.pool * MAX_POOL_MEMBERS;
    if !fresh
        || s.member < base
        || s.member >= base + pool.count
        || failed(s.member, pool.error_limit)
    {
        return None;
    }
    // As haproxy's: a member drained to weight 0 still takes the clients stuck to it.
    let m = MEMBERS.get(s.member)?;
    let c = select::Candidate {
        weight: 1,
        flags: m.flags,
        active: 0,
    };
    select::available(&c).then_some(s.member)
}

/// Remembers the member a client address got (pools with source-address persistence).
#[inline(always)]
pub(crate) fn stick(listener: &ListenerConf, client_be: u32, member: u32, now: u64) {
    let Some(pool) = POOLS.get(listener.pool) else {
        return;
    };
    if pool.flags & POOL_F_PERSIST_SOURCE == 0 {
        return;
    }
    let key = StickyKey {
        client_be,
        pool: listener.pool,
    };
    let v = Sticky {
        member,
        _pad: 0,
        last_ns: now,
    };
    let _ = STICKY.insert(&key, &v, 0);
}

/// Connections open on all listeners of the load balancer (this object's maps serve one).
#[inline(always)]
pub(crate) fn open_connections() -> i64 {
    let mut sum: i64 = 0;
    unsafe {
        bpf_loop(
            MAX_LISTENERS,
            add_active as *mut c_void,
            &raw mut sum as *mut c_void,
            0,
        );
    }
    sum
}

/// `bpf_loop` callback: adds listener `i`'s open connections to the sum at `ctx`.
#[inline(never)]
pub(crate) extern "C" fn add_active(i: u32, ctx: *mut c_void) -> i64 {
    let sum = unsafe { &mut *(ctx as *mut i64) };
    if let Some(l) = LISTENER_LIVE.get(i) {
        if l.active > 0 {
            *sum += l.active;
        }
    }
    0
}

#[repr(C)]
pub(crate) struct Selection {
    picker: select::Picker,
    base: u32,
    /// The pool's `error_limit`: members past it are out.
    limit: u32,
}

/// `bpf_loop` callback: offers member slot number `i` (in rotation order) to the picker. The
/// verifier checks it once, whatever the pool size.
#[inline(never)]
pub(crate) extern "C" fn select_step(i: u32, ctx: *mut c_void) -> i64 {
    let sel = unsafe { &mut *(ctx as *mut Selection) };
    let slot = sel.picker.slot(i);
    let idx = sel.base + slot;
    let Some(m) = MEMBERS.get(idx) else { return 1 };
    let (active, failed) = match MEMBER_LIVE.get(idx) {
        Some(l) => (l.active, member_failed(l.failures, sel.limit)),
        None => (0, false),
    };
    sel.picker.offer(
        slot,
        &select::Candidate {
            weight: m.weight as u32,
            flags: if failed {
                m.flags & !MEMBER_F_UP
            } else {
                m.flags
            },
            active,
        },
    );
    0
}
