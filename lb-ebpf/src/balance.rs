//! Which member a new flow goes to: source-address persistence, then the pool's algorithm
//! (weighted least connections or round robin through `lb_common::select::Picker` in a
//! `bpf_loop`; `balance source` from the daemon-built table), and the load balancer's
//! connection count for its limit.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use lb_common::{
    member_failed, reason, select, ListenerConf, PoolMembers, Sticky, StickyKey, ALG_SOURCE_IP,
    ALG_SOURCE_IP_PORT, MAX_LISTENERS, MEMBER_F_UP, NO_MEMBER, POOL_F_PERSIST_SOURCE,
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

/// A member for a new (or redispatched) flow: its index in `MEMBERS`, or a drop reason.
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
        if let Ok(i) = decode(table_member(
            listener.pool,
            pool.count,
            at,
            pool.error_limit,
        )) {
            return Ok(i);
        }
    }
    let Some(slots) = POOL_MEMBERS.get(listener.pool) else {
        return Err(reason::DROP_NO_MEMBER);
    };
    // The picker keeps the members it is offered by index (the slots only order the walk):
    // its result and its `exclude` are member indexes.
    let Some(live) = MEMBER_LIVE.find() else {
        return Err(reason::DROP_NO_MEMBER);
    };
    let mut sel = Selection {
        picker: select::Picker::new(pool.algorithm, pool.count, start, exclude)
            .with_limit(pool.error_limit),
        slots,
        live,
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
    sel.picker.result().ok_or(reason::DROP_NO_MEMBER)
}

/// Whether member `idx` is past its pool's error limit (passive health).
#[inline(always)]
fn failed(idx: &u32, limit: u32) -> bool {
    match MEMBER_LIVE.get_at(idx) {
        Some(l) => member_failed(l.failures, limit),
        None => false,
    }
}

/// `source_entry` as a subprogram (its result encoded): `pick_member`'s frame then does
/// not hold what the table's lookups keep across their calls.
#[inline(never)]
fn table_member(pool: u32, count: u32, hash: u32, limit: u32) -> u64 {
    encode(source_entry(pool, count, hash, limit).ok_or(reason::DROP_NO_MEMBER))
}

/// The member the pool's source-hashing table gives `hash`, if it is available.
#[inline(always)]
pub(crate) fn source_entry(pool: u32, count: u32, hash: u32, limit: u32) -> Option<u32> {
    let table = SOURCE_TABLE.get(pool)?;
    let slot = table[(hash % select::SOURCE_TABLE_SIZE) as usize] as u32;
    if slot >= count {
        return None;
    }
    let s = POOL_MEMBERS.get(pool)?.get(slot as usize)?;
    if s.member == NO_MEMBER {
        return None;
    }
    let idx = s.member as u32;
    if failed(&idx, limit) {
        return None;
    }
    let c = select::Candidate {
        weight: s.weight as u32,
        flags: s.flags,
        active: 0,
    };
    select::available(&c).then_some(idx)
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
    if !fresh || failed(&s.member, pool.error_limit) {
        return None;
    }
    // As haproxy's: a member drained to weight 0 still takes the clients stuck to it.
    let m = MEMBERS.get(s.member)?;
    if m.pool != listener.pool {
        // Its index went to another pool's member since.
        return None;
    }
    let c = select::Candidate {
        weight: 1,
        flags: m.flags,
        active: 0,
    };
    select::available(&c).then_some(s.member)
}

/// Remembers the member a client address got (pools with source-address persistence). A
/// subprogram: its key and value take its own frame, not the new-flow path's.
#[inline(never)]
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

/// Connections open on all listeners of the load balancer.
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
        if l.failures != 0 {
            // A UDP listener: its flows are not connections of the load balancer's.
            return 0;
        }
        // Handshakes in progress count as connections (see `open_flow`).
        let n = l.active + l.half_open;
        if n > 0 {
            *sum += n;
        }
    }
    0
}

#[repr(C)]
pub(crate) struct Selection {
    picker: select::Picker,
    /// The pool's slots (its `POOL_MEMBERS` value).
    slots: &'static PoolMembers,
    /// The load balancer's `MEMBER_LIVE`, found before the loop (see `inner::Found`).
    live: crate::inner::Found<lb_common::Live>,
}

/// `bpf_loop` callback: offers member slot number `i` (in rotation order) to the picker. The
/// verifier checks it once, whatever the pool size.
#[inline(never)]
pub(crate) extern "C" fn select_step(i: u32, ctx: *mut c_void) -> i64 {
    let sel = unsafe { &mut *(ctx as *mut Selection) };
    let slot = sel.picker.slot(i);
    let Some(s) = sel.slots.get(slot as usize) else {
        return 1;
    };
    if s.member == NO_MEMBER {
        return 0;
    }
    let idx = s.member as u32;
    let (active, failed) = match sel.live.get(&idx) {
        Some(l) => (l.active, member_failed(l.failures, sel.picker.limit())),
        None => (0, false),
    };
    sel.picker.offer(
        idx,
        &select::Candidate {
            weight: s.weight as u32,
            flags: if failed {
                s.flags & !MEMBER_F_UP
            } else {
                s.flags
            },
            active,
        },
    );
    0
}
