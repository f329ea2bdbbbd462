//! What differs between IPv4 and IPv6 flows beyond the headers (`parse::L3`): their maps, a
//! member's address, the FIB lookup, the 32-bit form of a client address that hashing and
//! persistence use, and the parts only IPv4 has yet (SYN cookies, the connection log). The
//! data path's flow logic is generic over `Family` and compiled once per family.

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, maps::HashMap};
use lb_common::{AllowedData, FlowG, FlowKeyG, ListenerConf, ListenerKeyG};

use crate::{
    maps::*,
    parse::{Frame, Packet, L3},
    Verdict,
};

pub(crate) const AF_INET: u8 = 2;

pub(crate) trait Family: 'static {
    type A: L3;
    /// The conntrack table of this family's flows.
    fn conntrack() -> &'static HashMap<FlowKeyG<Self::A>, FlowG<Self::A>>;
    fn listeners() -> &'static HashMap<ListenerKeyG<Self::A>, ListenerConf>;
    /// The address of member `idx` (its pool shares the VIP's family).
    fn member_addr(idx: u32) -> Option<Self::A>;
    /// The flow being built in the per-CPU scratch space.
    fn scratch_flow(s: *mut Scratch) -> *mut FlowG<Self::A>;
    /// A client address in 32 bits: the key of source hashing and persistence.
    fn hash(a: Self::A) -> u32;
    /// 1 if `client` is in one of listener `listener`'s allowed prefixes.
    fn allowed(listener: u32, client: Self::A) -> u64;
    /// Fills the FIB lookup's family and addresses.
    fn fib(fib: &mut FibParams, src: Self::A, dst: Self::A);
    /// The connection log's record of a flow that ended (IPv4 flows only carry `CT_LOG`).
    fn ended(flow: *const FlowG<Self::A>, state: u64, now: u64);

    // SYN cookies (IPv4 only for now): see cookie.rs.
    fn answer_syn<C: Frame>(ctx: &C, pkt: &Packet<Self::A>) -> Option<Verdict>;
    fn valid_ack(pkt: &Packet<Self::A>, listener: &ListenerConf, now: u64) -> bool;
    fn member_syn<C: Frame>(ctx: &C, pkt: &Packet<Self::A>, f: *mut FlowG<Self::A>) -> Verdict;
    fn reset<C: Frame>(
        ctx: &C,
        pkt: &Packet<Self::A>,
        listener: &ListenerConf,
        why: u32,
    ) -> Verdict;
    fn member_synack<C: Frame>(
        ctx: &C,
        pkt: &Packet<Self::A>,
        f: *mut FlowG<Self::A>,
        now: u64,
    ) -> Verdict;
}

pub(crate) struct V4;

impl Family for V4 {
    type A = u32;
    #[inline(always)]
    fn conntrack() -> &'static HashMap<FlowKeyG<u32>, FlowG<u32>> {
        &CONNTRACK
    }
    #[inline(always)]
    fn listeners() -> &'static HashMap<ListenerKeyG<u32>, ListenerConf> {
        &LISTENERS
    }
    #[inline(always)]
    fn member_addr(idx: u32) -> Option<u32> {
        MEMBERS.get(idx).map(|m| m.addr_be)
    }
    #[inline(always)]
    fn scratch_flow(s: *mut Scratch) -> *mut FlowG<u32> {
        unsafe { &raw mut (*s).flow }
    }
    #[inline(always)]
    fn hash(a: u32) -> u32 {
        a
    }
    #[inline(always)]
    fn allowed(listener: u32, client: u32) -> u64 {
        allowed4(listener, client)
    }
    #[inline(always)]
    fn fib(fib: &mut FibParams, src: u32, dst: u32) {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src;
        fib.__bindgen_anon_4.ipv4_dst = dst;
    }
    #[inline(always)]
    fn ended(flow: *const FlowG<u32>, state: u64, now: u64) {
        crate::connlog::ended(flow, state, now)
    }
    #[inline(always)]
    fn answer_syn<C: Frame>(ctx: &C, pkt: &Packet<u32>) -> Option<Verdict> {
        crate::cookie::answer_syn(ctx, pkt)
    }
    #[inline(always)]
    fn valid_ack(pkt: &Packet<u32>, listener: &ListenerConf, now: u64) -> bool {
        crate::cookie::valid_ack(pkt, listener, now)
    }
    #[inline(always)]
    fn member_syn<C: Frame>(ctx: &C, pkt: &Packet<u32>, f: *mut FlowG<u32>) -> Verdict {
        crate::cookie::member_syn(ctx, pkt, f)
    }
    #[inline(always)]
    fn reset<C: Frame>(ctx: &C, pkt: &Packet<u32>, listener: &ListenerConf, why: u32) -> Verdict {
        crate::cookie::reset(ctx, pkt, listener, why)
    }
    #[inline(always)]
    fn member_synack<C: Frame>(
        ctx: &C,
        pkt: &Packet<u32>,
        f: *mut FlowG<u32>,
        now: u64,
    ) -> Verdict {
        crate::cookie::member_synack(ctx, pkt, f, now)
    }
}

/// 1 if `client_be` falls in one of listener `listener`'s allowed prefixes, else 0. A
/// subprogram: its key and the lookup's pointer stay in its own frame, so the verifier's
/// states after the check are the same with and without it (inlined, the rest of the new
/// flow's path was verified twice: 250k -> 468k instructions).
#[inline(never)]
fn allowed4(listener: u32, client_be: u32) -> u64 {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        64,
        AllowedData {
            listener_be: listener.to_be(),
            addr_be: client_be,
        },
    );
    ALLOWED.get(&key).is_some() as u64
}
