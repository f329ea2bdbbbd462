//! The per-packet half of lb: one-arm full NAT with weighted least connections, in XDP.
//!
//! client -> VIP:listener   becomes VIP:snat -> member:port   (XDP_TX, same port)
//! member -> VIP:snat       becomes VIP:listener -> client    (XDP_TX, same port)
//! Everything else goes to the kernel untouched; malformed packets get one counted verdict each.
#![no_std]
#![no_main]
// Atomic adds on map values: core's Atomic* types lack fetch_add on the BPF target.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod icmp;
mod maps;
mod parse;

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_F_INGRESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop, bpf_redirect},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    reason, select, Flow, FlowKey, ListenerConf, ListenerKey, Live, Stats, Sticky, StickyKey,
    ALG_SOURCE_IP, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_RST, CT_SYN, CT_SYNACK, FLOW_DIR_FORWARD,
    FLOW_DIR_REVERSE, IPPROTO_TCP, LISTENER_F_DRAIN, MAX_LISTENERS, MAX_POOL_MEMBERS,
    POOL_F_PERSIST_SOURCE, SNAT_TRIES,
};
use maps::*;
use parse::{Frame, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
const EEXIST: i32 = 17;

struct Verdict {
    action: u32,
    reason: u32,
}

#[inline(always)]
const fn verdict(action: u32, reason: u32) -> Verdict {
    Verdict { action, reason }
}

/// See `fast_path`. Only the segments it translates are counted here; the rest are counted by
/// the port's program.
#[classifier]
pub fn lb_tc_fast(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    match fast_path(&ctx) {
        Some(v) => {
            count(&v);
            unsafe { bpf_redirect(ctx.ifindex(), BPF_F_INGRESS as u64) as i32 }
        }
        None => TC_ACT_OK,
    }
}

#[inline(always)]
fn count(v: &Verdict) {
    if let Some(c) = VERDICTS.get_ptr_mut(v.reason) {
        unsafe { *c += 1 };
    }
    // The upgrade tests' variant: one more load, so every entry point's code (and tag)
    // differs from the default build's.
    #[cfg(feature = "upgrade-variant")]
    unsafe {
        core::ptr::read_volatile(&v.action);
    }
}

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let v = process(&ctx);
    count(&v);
    v.action
}

/// Headers the data path reads: Ethernet, IPv4 with options, and TCP, or an ICMP error with
/// its embedded IPv4 header (options included) and 8 bytes of its transport header.
const HEADERS_MAX: usize = 14 + 60 + 8 + 60 + 18;

/// An skb's linear part may end before the headers do; the kernel pulls them in on asking.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let want = if ctx.len() as usize > HEADERS_MAX {
        HEADERS_MAX
    } else {
        ctx.len() as usize
    };
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
}

/// The same data path at TC ingress of the port (`xdp_mode = "tc"`): it sees skbs as the
/// stack built them, GSO super-packets with partial checksums included, and sends a rewritten
/// one back out of the port it came in on (the XDP_TX of a TC program) without cutting it up.
#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    let v = process(&ctx);
    count(&v);
    match v.action {
        xdp_action::XDP_TX => unsafe { bpf_redirect(ctx.ifindex(), 0) as i32 },
        xdp_action::XDP_DROP => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// Attached to the outer end of a veth port lb created, so that frames XDP_TX'd into the veth
/// are received (native veth XDP needs NAPI on the peer, see docs/ARCHITECTURE.md).
#[xdp]
pub fn lb_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn process<C: Frame>(ctx: &C) -> Verdict {
    let pkt = match parse::parse(ctx) {
        Ok(parse::Parsed::Tcp(p)) => p,
        Ok(parse::Parsed::IcmpError(e)) => return icmp_error(ctx, &e),
        Err(v) => return verdict(v.0, v.1),
    };
    if let Some(listener) = unsafe { LISTENERS.get(pkt.listener_key()) } {
        let v = if pkt.fragment {
            verdict(xdp_action::XDP_DROP, reason::DROP_FRAGMENT)
        } else {
            from_client(ctx, &pkt, listener)
        };
        if v.action == xdp_action::XDP_DROP {
            if let Some(c) = LISTENER_DROPS.get_ptr_mut(listener.index * reason::COUNT + v.reason) {
                unsafe { *c += 1 };
            }
        }
        return v;
    }
    if let Some(rflow) = CONNTRACK.get_ptr(pkt.flow_key(FLOW_DIR_REVERSE)) {
        if pkt.fragment {
            return verdict(xdp_action::XDP_DROP, reason::DROP_FRAGMENT);
        }
        let rflow = unsafe { *rflow };
        return from_member(ctx, &pkt, &rflow);
    }
    verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED)
}

/// An ICMP error whose embedded packet is one lb sent: back to the end that sent the original.
#[inline(always)]
fn icmp_error<C: Frame>(ctx: &C, e: &icmp::IcmpError) -> Verdict {
    // Embedded VIP:snat -> member:port (sent to a member): the error is for the client.
    let rkey = FlowKey {
        src_be: e.inner.dst_be,
        dst_be: e.inner.src_be,
        sport_be: e.inner.dport_be,
        dport_be: e.inner.sport_be,
        proto: IPPROTO_TCP,
        dir: FLOW_DIR_REVERSE,
        _pad: [0; 2],
    };
    // Embedded VIP:listener -> client:port (sent to a client): the error is for the member.
    let fkey = FlowKey {
        dir: FLOW_DIR_FORWARD,
        ..rkey
    };
    let (f, to_client) = match (CONNTRACK.get_ptr(rkey), CONNTRACK.get_ptr(fkey)) {
        (Some(f), _) => (unsafe { *f }, true),
        (None, Some(f)) => (unsafe { *f }, false),
        (None, None) => return verdict(xdp_action::XDP_PASS, reason::PASS_NOT_BALANCED),
    };
    // The end the error goes to, and the packet that end originally sent.
    let (mac, addr, port, vip_port, why) = if to_client {
        let (p, q) = (f.client_port_be, f.listener_port_be);
        (f.client_mac, f.client_be, p, q, reason::TX_ICMP_TO_CLIENT)
    } else {
        let (p, q) = (f.member_port_be, f.snat_port_be);
        (f.member_mac, f.member_be, p, q, reason::TX_ICMP_TO_MEMBER)
    };
    let t = icmp::Translation {
        smac: f.port_mac,
        dmac: mac,
        inner: icmp::Tuple {
            src_be: addr,
            dst_be: f.vip_be,
            sport_be: port,
            dport_be: vip_port,
        },
    };
    unsafe { icmp::rewrite(ctx, e, &t) };
    verdict(xdp_action::XDP_TX, why)
}

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
fn live_add(live: *mut Live, delta: i64) {
    unsafe {
        xadd_i64(&raw mut (*live).active, delta);
        xadd_u64(&raw mut (*live).events, 1);
    }
}

/// Counts a new flow as active on its member and listener.
#[inline(always)]
fn count_open(member: u32, listener: u32) {
    if let Some(l) = MEMBER_LIVE.get_ptr_mut(member) {
        live_add(l, 1);
    }
    if let Some(l) = LISTENER_LIVE.get_ptr_mut(listener) {
        live_add(l, 1);
    }
}

/// Stops counting a flow (closed, or moved away by a redispatch). Idempotent per flow.
#[inline(always)]
fn uncount(flow: *mut Flow) {
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

#[inline(always)]
fn bump(s: Option<*mut Stats>, len: u64, inbound: bool, new_conn: bool) {
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
fn add_stats(member: u32, listener: u32, len: u64, inbound: bool, new_conn: bool) {
    bump(MEMBER_STATS.get_ptr_mut(member), len, inbound, new_conn);
    bump(LISTENER_STATS.get_ptr_mut(listener), len, inbound, new_conn);
}

/// Folds TCP flags into the flow's state; stops counting it once it is closed.
#[inline(always)]
fn track(flow: *mut Flow, tcp_flags: u8, from_client: bool, now: u64) {
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

/// A member for a new flow: the one a sticky client address keeps, else `choose`'s. A
/// subprogram (not inlined): the verifier then sees one result here instead of carrying
/// every path through persistence and selection into the SNAT loop after it.
#[inline(never)]
fn pick_member(listener: &ListenerConf, client_be: u32, now: u64) -> u64 {
    let r = match sticky_member(listener, client_be, now) {
        Some(i) => Ok(i),
        None => choose(listener, client_be, u32::MAX),
    };
    encode(r)
}

/// `choose` for a redispatch, as a subprogram (see `pick_member`).
#[inline(never)]
fn pick_other(listener: &ListenerConf, client_be: u32, exclude: u32) -> u64 {
    encode(choose(listener, client_be, exclude))
}

/// A subprogram's Result in one register: the member index, or the reason with bit 32 set.
#[inline(always)]
fn encode(r: Result<u32, u32>) -> u64 {
    match r {
        Ok(i) => i as u64,
        Err(why) => (1 << 32) | why as u64,
    }
}

#[inline(always)]
fn decode(v: u64) -> Result<u32, u32> {
    if v >> 32 != 0 {
        Err(v as u32)
    } else {
        Ok(v as u32)
    }
}

/// A member for a new (or redispatched) flow: slot index in `MEMBERS`, or a drop reason.
#[inline(always)]
fn choose(listener: &ListenerConf, client_be: u32, exclude: u32) -> Result<u32, u32> {
    let Some(pool) = POOLS.get(listener.pool) else {
        return Err(reason::DROP_NO_MEMBER);
    };
    let base = listener.pool * MAX_POOL_MEMBERS;
    // Source hashing: the client's entry in the pool's table (shares by weight, rebuilt by
    // the daemon on every change); a redispatch, or an entry whose member has just become
    // unavailable, falls back to the scan from the client's hash.
    let hash = select::client_hash(client_be);
    if pool.algorithm == ALG_SOURCE_IP && exclude == u32::MAX {
        if let Some(i) = source_entry(listener.pool, pool.count, hash) {
            return Ok(base + i);
        }
    }
    let start = if pool.algorithm == ALG_SOURCE_IP {
        hash
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
    let exclude_slot = if exclude >= base {
        exclude - base
    } else {
        u32::MAX
    };
    let mut sel = Selection {
        picker: select::Picker::new(pool.algorithm, pool.count, start, exclude_slot),
        base,
        _pad: 0,
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

/// The slot the pool's source-hashing table gives `hash`, if its member is available.
#[inline(always)]
fn source_entry(pool: u32, count: u32, hash: u32) -> Option<u32> {
    let table = SOURCE_TABLE.get(pool)?;
    let slot = table[(hash % select::SOURCE_TABLE_SIZE) as usize] as u32;
    if slot >= count {
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
fn sticky_member(listener: &ListenerConf, client_be: u32, now: u64) -> Option<u32> {
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
    if !fresh || s.member < base || s.member >= base + pool.count {
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
fn stick(listener: &ListenerConf, client_be: u32, member: u32, now: u64) {
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
fn open_connections() -> i64 {
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
extern "C" fn add_active(i: u32, ctx: *mut c_void) -> i64 {
    let sum = unsafe { &mut *(ctx as *mut i64) };
    if let Some(l) = LISTENER_LIVE.get(i) {
        if l.active > 0 {
            *sum += l.active;
        }
    }
    0
}

#[repr(C)]
struct Selection {
    picker: select::Picker,
    base: u32,
    _pad: u32,
}

/// `bpf_loop` callback: offers member slot number `i` (in rotation order) to the picker. The
/// verifier checks it once, whatever the pool size.
#[inline(never)]
extern "C" fn select_step(i: u32, ctx: *mut c_void) -> i64 {
    let sel = unsafe { &mut *(ctx as *mut Selection) };
    let slot = sel.picker.slot(i);
    let idx = sel.base + slot;
    let Some(m) = MEMBERS.get(idx) else { return 1 };
    let active = match MEMBER_LIVE.get(idx) {
        Some(l) => l.active,
        None => 0,
    };
    sel.picker.offer(
        slot,
        &select::Candidate {
            weight: m.weight as u32,
            flags: m.flags,
            active,
        },
    );
    0
}

/// Fills the flow's member, MAC and SNAT port for member `idx`, inserting the reverse entry.
#[inline(always)]
fn bind_member<C: Frame>(
    ctx: &C,
    flow: &mut Flow,
    idx: u32,
    pkt_len: u16,
    snat: (u16, u16),
) -> Result<(), u32> {
    let r = try_bind_member(ctx, flow, idx, pkt_len, snat);
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
    r
}

#[inline(always)]
fn try_bind_member<C: Frame>(
    ctx: &C,
    flow: &mut Flow,
    idx: u32,
    pkt_len: u16,
    (snat_min, snat_max): (u16, u16),
) -> Result<(), u32> {
    let Some(m) = MEMBERS.get(idx) else {
        return Err(reason::DROP_NO_MEMBER);
    };
    flow.member = idx;
    flow.member_be = m.addr_be;
    flow.member_port_be = m.port_be;

    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Err(reason::DROP_NO_ROUTE);
    };
    let fib: &mut FibParams = unsafe { &mut (*scratch).fib };
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_TCP;
    fib.sport = flow.snat_port_be;
    fib.dport = m.port_be;
    fib.__bindgen_anon_1.tot_len = pkt_len;
    fib.ifindex = ctx.ifindex();
    fib.__bindgen_anon_3.ipv4_src = flow.vip_be;
    fib.__bindgen_anon_4.ipv4_dst = m.addr_be;
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

    let span = (snat_max - snat_min) as u32 + 1;
    let mut seed = unsafe { bpf_get_prandom_u32() };
    let client_port = u16::from_be(flow.client_port_be);
    for i in 0..SNAT_TRIES {
        // First choice: the client's own source port (as netfilter's NAT does). The member
        // then sees the port the client chose, and when a client reuses a port, the member's
        // TIME_WAIT on that tuple belongs to the same client's earlier connection, whose
        // sequence numbers and timestamps the new SYN continues: the member accepts the reuse
        // as it would without lb. A random port there is refused by TIME_WAIT (PAWS, or an
        // older sequence number), costing the client a 1 s SYN retransmission.
        let port = if i == 0 && (snat_min..=snat_max).contains(&client_port) {
            client_port
        } else {
            snat_min + (seed % span) as u16
        };
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port_be = port.to_be();
        // A port that is also a listener on this VIP would make replies look like clients.
        if LISTENERS
            .get_ptr(ListenerKey::tcp(flow.vip_be, port_be))
            .is_some()
        {
            continue;
        }
        flow.snat_port_be = port_be;
        match CONNTRACK.insert(flow.reverse_key(), &*flow, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(()),
            Err(e) if e == -EEXIST => continue,
            Err(_) => return Err(reason::DROP_CT_FULL),
        }
    }
    Err(reason::DROP_SNAT_EXHAUSTED)
}

#[inline(always)]
fn from_client<C: Frame>(ctx: &C, pkt: &Packet, listener: &ListenerConf) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    let fkey = pkt.flow_key(FLOW_DIR_FORWARD);
    let is_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut new_conn = false;

    let flow_ptr = match CONNTRACK.get_ptr_mut(fkey) {
        Some(f) if is_syn && unsafe { (*f).is_closed() } => {
            // The client reuses the tuple of a closed connection: start over.
            unsafe {
                uncount(f);
                let _ = CONNTRACK.remove((*f).reverse_key());
            }
            let _ = CONNTRACK.remove(fkey);
            None
        }
        other => other,
    };

    let flow_ptr = match flow_ptr {
        Some(f) => {
            if is_syn && unsafe { (*f).state & CT_SYNACK == 0 } {
                if let Err(r) = maybe_redispatch(ctx, pkt, listener, f) {
                    return verdict(xdp_action::XDP_DROP, r);
                }
            }
            f
        }
        None => {
            // Not lb's flow: the namespace's stack answers it (RST, or a haproxy taking over
            // while this listener drains serves it).
            if !is_syn || listener.flags & LISTENER_F_DRAIN != 0 {
                return verdict(xdp_action::XDP_PASS, reason::PASS_NO_FLOW);
            }
            match open_flow(ctx, pkt, listener, &fkey, now) {
                Ok(f) => {
                    new_conn = true;
                    f
                }
                Err(r) => return verdict(xdp_action::XDP_DROP, r),
            }
        }
    };

    forward(ctx, pkt, flow_ptr, now, new_conn)
}

/// A new flow for a client's SYN: connection limit, member choice, MAC and SNAT port, the
/// forward entry `fkey`; counted as active.
#[inline(always)]
fn open_flow<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    listener: &ListenerConf,
    fkey: &FlowKey,
    now: u64,
) -> Result<*mut Flow, u32> {
    if listener.connection_limit != 0 {
        if let Some(l) = LISTENER_LIVE.get(listener.index) {
            if l.active >= listener.connection_limit as i64 {
                return Err(reason::DROP_CONN_LIMIT);
            }
        }
    }
    if listener.total_limit != 0 && open_connections() >= listener.total_limit as i64 {
        return Err(reason::DROP_CONN_LIMIT);
    }
    let idx = decode(pick_member(listener, pkt.src_be, now))?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(reason::DROP_CT_FULL)?;
    let flow: &mut Flow = unsafe { &mut (*scratch).flow };
    *flow = Flow::default();
    flow.created_ns = now;
    flow.last_seen_ns = now;
    flow.client_be = pkt.src_be;
    flow.client_port_be = pkt.sport_be;
    flow.listener_port_be = pkt.dport_be;
    flow.vip_be = pkt.dst_be;
    flow.listener = listener.index;
    flow.client_mac = pkt.src_mac;
    flow.port_mac = pkt.dst_mac;
    flow.state = CT_SYN;
    flow.counted = 1;
    if let Some(v) = parse::find_timestamp(ctx, pkt).and_then(|off| parse::read4(ctx, pkt, off)) {
        // The member sees lb's millisecond clock (see Flow::ts_delta).
        let now_ms = (now / 1_000_000) as u32;
        flow.ts_delta = now_ms.wrapping_sub(u32::from_be_bytes(v));
    }
    bind_member(ctx, flow, idx, pkt.ip_len, listener.snat_ports())?;
    if CONNTRACK.insert(fkey, &*flow, BPF_NOEXIST as u64).is_err() {
        let _ = CONNTRACK.remove(flow.reverse_key());
        return Err(reason::DROP_CT_FULL);
    }
    let Some(f) = CONNTRACK.get_ptr_mut(fkey) else {
        return Err(reason::DROP_CT_FULL);
    };
    count_open(idx, listener.index);
    stick(listener, pkt.src_be, idx, now);
    Ok(f)
}

/// A client's segment of flow `flow_ptr`, translated towards its member.
#[inline(always)]
fn forward<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    flow_ptr: *mut Flow,
    now: u64,
    new_conn: bool,
) -> Verdict {
    track(flow_ptr, pkt.tcp_flags, true, now);
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
            flow.vip_be,
            flow.member_be,
            flow.snat_port_be,
            flow.member_port_be,
            ts_shift(ctx, pkt, flow.ts_delta, 0),
        );
    }
    verdict(xdp_action::XDP_TX, reason::TX_TO_MEMBER)
}

/// The established-flow shortcut at egress of the outer end of a port lb created (in the
/// node's namespace, `lb_tc_fast`): a segment of a flow lb already tracks, in either
/// direction, is translated there and handed back to the bridge as if the port had sent it,
/// without crossing into the namespace and back. Anything else (SYNs, unknown flows, ICMP,
/// ARP, health-check traffic) returns None and goes on into the namespace, to `lb_tc`.
#[inline(always)]
fn fast_path(ctx: &TcContext) -> Option<Verdict> {
    let Ok(parse::Parsed::Tcp(pkt)) = parse::parse(ctx) else {
        return None;
    };
    if pkt.fragment || pkt.tcp_flags & TCP_SYN != 0 {
        return None;
    }
    if LISTENERS.get_ptr(pkt.listener_key()).is_some() {
        let f = CONNTRACK.get_ptr_mut(pkt.flow_key(FLOW_DIR_FORWARD))?;
        let now = unsafe { bpf_ktime_get_ns() };
        return Some(forward(ctx, &pkt, f, now, false));
    }
    let rflow = unsafe { *CONNTRACK.get_ptr(pkt.flow_key(FLOW_DIR_REVERSE))? };
    Some(from_member(ctx, &pkt, &rflow))
}

/// A retransmitted SYN of a flow whose member has not answered: HAProxy's `retries` +
/// `option redispatch`. Moves the flow to another member when its member is no longer
/// available, or after `retries` retransmissions, or once the connect timeout has passed.
#[inline(always)]
fn maybe_redispatch<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    listener: &ListenerConf,
    f: *mut Flow,
) -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(reason::DROP_CT_FULL)?;
    let flow: &mut Flow = unsafe { &mut (*scratch).flow };
    *flow = unsafe { *f };
    flow.syn_retries = flow.syn_retries.saturating_add(1);
    let member_ok = match MEMBERS.get(flow.member) {
        Some(m) => select::available(&select::Candidate {
            weight: m.weight as u32,
            flags: m.flags,
            active: 0,
        }),
        None => false,
    };
    let overdue = now.wrapping_sub(flow.created_ns) >= listener.timeout_member_connect_ns;
    if member_ok && (flow.syn_retries as u32) <= listener.retries && !overdue {
        unsafe { (*f).syn_retries = flow.syn_retries };
        return Ok(());
    }
    let idx = decode(pick_other(listener, pkt.src_be, flow.member))?;
    if idx == flow.member {
        unsafe { (*f).syn_retries = flow.syn_retries };
        return Ok(());
    }
    let old_rkey = flow.reverse_key();
    let old_member = flow.member;
    flow.created_ns = now;
    flow.syn_retries = 0;
    bind_member(ctx, flow, idx, pkt.ip_len, listener.snat_ports())?;
    let _ = CONNTRACK.remove(old_rkey);
    uncount(f);
    flow.counted = 1;
    unsafe { *f = *flow };
    count_open(idx, listener.index);
    // The client sticks to the member that answers now (haproxy's redispatch does so too).
    stick(listener, pkt.src_be, idx, now);
    // The connection now counts on the new member; the listener saw no new connection.
    if let Some(s) = MEMBER_STATS.get_ptr_mut(old_member) {
        unsafe { (*s).redispatches += 1 };
    }
    if let Some(s) = LISTENER_STATS.get_ptr_mut(listener.index) {
        unsafe { (*s).redispatches += 1 };
    }
    if let Some(s) = MEMBER_STATS.get_ptr_mut(idx) {
        unsafe { (*s).total_connections += 1 };
    }
    Ok(())
}

#[inline(always)]
fn from_member<C: Frame>(ctx: &C, pkt: &Packet, rflow: &Flow) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(f) = CONNTRACK.get_ptr_mut(rflow.forward_key()) {
        track(f, pkt.tcp_flags, false, now);
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
            rflow.vip_be,
            rflow.client_be,
            rflow.listener_port_be,
            rflow.client_port_be,
            ts_shift(ctx, pkt, rflow.ts_delta.wrapping_neg(), 4),
        );
    }
    verdict(xdp_action::XDP_TX, reason::TX_TO_CLIENT)
}

/// What `parse::rewrite` adds to a timestamp field (see `Flow::ts_delta`): `delta` at the
/// timestamp option's TSval (`field` 0, towards a member) or TSecr (`field` 4, towards a
/// client). No option walk for flows without a delta.
#[inline(always)]
fn ts_shift<C: Frame>(ctx: &C, pkt: &Packet, delta: u32, field: usize) -> Option<(usize, u32)> {
    if delta == 0 {
        return None;
    }
    parse::find_timestamp(ctx, pkt).map(|off| (off + field, delta))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
