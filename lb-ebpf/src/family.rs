//! What differs between IPv4 and IPv6 flows beyond the headers (`parse::L3`): their maps, a
//! member's address, the FIB lookup, the 32-bit form of a client address that hashing and
//! persistence use, the SYN cookies' steps (IPv6's run in a program of their own) and the
//! connection log's record (IPv6's written after the subprogram that ended the flow). The
//! data path's flow logic is generic over `Family` and compiled once per family.

use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use lb_common::{AllowedData, AllowedData6, FlowG, FlowKeyG, Ip6, ListenerConf, ListenerKeyG};

use crate::{
    cookie::{self, Cookie},
    inner::{Hash, Outer},
    maps::*,
    parse::{Frame, Packet},
    tail_call_v6, v6slot, Verdict,
};

pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

pub(crate) trait Family: 'static {
    type A: Cookie;
    /// The translation of an established flow's segment runs as a BPF subprogram of its
    /// own (IPv6: its frame then does not add to the entry point's, which the flow-opening
    /// chain shares with `pick_member` and `bind_member`).
    const OUTLINE: bool;
    /// The member's SYN-ACK of a cookie flow goes to a program of its own (IPv6's
    /// `lb6_cookie`) before the member path's subprogram.
    const COOKIE_PROGRAM: bool;
    /// The outer maps of this family's conntrack and listener tables.
    type Ct: Outer;
    type Ls: Outer;
    /// The conntrack table of this family's flows.
    fn conntrack() -> &'static Hash<Self::Ct, FlowKeyG<Self::A>, FlowG<Self::A>>;
    fn listeners() -> &'static Hash<Self::Ls, ListenerKeyG<Self::A>, ListenerConf>;
    /// The address of member `idx` (its pool shares the VIP's family).
    fn member_addr(idx: u32) -> Option<&'static Self::A>;
    /// The flow being built in the per-CPU scratch space.
    fn scratch_flow(s: *mut Scratch) -> *mut FlowG<Self::A>;
    /// The flow key slots of the scratch space.
    fn scratch_keys(s: *mut Scratch) -> *mut [FlowKeyG<Self::A>; 4];
    /// The listener key slot of the scratch space.
    fn scratch_lkey(s: *mut Scratch) -> *mut ListenerKeyG<Self::A>;
    /// 1 if `client` is in one of listener `listener`'s allowed prefixes.
    fn allowed(listener: u32, client: &Self::A) -> u64;
    /// Fills the FIB lookup's family and addresses.
    fn fib(fib: &mut FibParams, src: &Self::A, dst: &Self::A);
    /// The connection log's record of a flow that ended (IPv6: left pending, see connlog.rs).
    fn ended(flow: *const FlowG<Self::A>, state: u64, now: u64);
    /// Writes the record a subprogram left pending (`connlog::flush`; IPv4: none).
    fn flush_log();

    // SYN cookies' steps (cookie.rs): IPv4 takes them in place, IPv6 by a tail call into
    // `lb6_cookie`/`lb_tc6_cookie` (`cookie::step6`), after which the caller's fallback
    // only runs if that program is missing.
    fn answer_syn<C: Frame>(ctx: &C, pkt: &Packet<Self::A>) -> Option<Verdict>;
    fn valid_ack<C: Frame>(
        ctx: &C,
        pkt: &Packet<Self::A>,
        listener: &ListenerConf,
        now: u64,
    ) -> bool;
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
    /// `cookie::reset_member` (IPv4 only: the IPv6 member path drops the SYN-ACK instead).
    fn reset_member<C: Frame>(ctx: &C, pkt: &Packet<Self::A>) -> Verdict;
}

/// The scratch space's flow key slots: who uses which, so that no two uses overlap.
pub(crate) mod slot {
    /// A client's forward key (`from_client`, all along); the forward key a member's
    /// segment looks up (`from_member`).
    pub(crate) const FORWARD: usize = 0;
    /// Short-lived keys of the client and member paths (a reverse key to look up or remove;
    /// a redispatch's old reverse key, across `bind_member`).
    pub(crate) const TEMP: usize = 1;
    /// The SNAT search's reverse key (`snat_step`).
    pub(crate) const SNAT: usize = 2;
    /// `reclaim`'s forward key.
    pub(crate) const RECLAIM: usize = 3;
}

/// Flow key slot `i` of this CPU's scratch space.
#[inline(always)]
pub(crate) fn key<F: Family>(i: usize) -> Option<&'static mut FlowKeyG<F::A>> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let keys = unsafe { &mut *F::scratch_keys(s) };
    keys.get_mut(i)
}

/// The listener key slot of this CPU's scratch space.
#[inline(always)]
pub(crate) fn lkey<F: Family>() -> Option<&'static mut ListenerKeyG<F::A>> {
    let s = SCRATCH.get_ptr_mut(0)?;
    Some(unsafe { &mut *F::scratch_lkey(s) })
}

pub(crate) struct V4;

impl Family for V4 {
    type A = u32;
    const OUTLINE: bool = false;
    const COOKIE_PROGRAM: bool = false;
    type Ct = OfConntrack;
    type Ls = OfListeners;
    #[inline(always)]
    fn conntrack() -> &'static Hash<OfConntrack, FlowKeyG<u32>, FlowG<u32>> {
        &CONNTRACK
    }
    #[inline(always)]
    fn listeners() -> &'static Hash<OfListeners, ListenerKeyG<u32>, ListenerConf> {
        &LISTENERS
    }
    #[inline(always)]
    fn member_addr(idx: u32) -> Option<&'static u32> {
        MEMBERS.get(idx).map(|m| &m.addr_be)
    }
    #[inline(always)]
    fn scratch_flow(s: *mut Scratch) -> *mut FlowG<u32> {
        unsafe { &raw mut (*s).flow }
    }
    #[inline(always)]
    fn scratch_keys(s: *mut Scratch) -> *mut [FlowKeyG<u32>; 4] {
        unsafe { &raw mut (*s).keys }
    }
    #[inline(always)]
    fn scratch_lkey(s: *mut Scratch) -> *mut ListenerKeyG<u32> {
        unsafe { &raw mut (*s).lkey }
    }
    #[inline(always)]
    fn allowed(listener: u32, client: &u32) -> u64 {
        allowed4(listener, *client)
    }
    #[inline(always)]
    fn fib(fib: &mut FibParams, src: &u32, dst: &u32) {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = *src;
        fib.__bindgen_anon_4.ipv4_dst = *dst;
    }
    #[inline(always)]
    fn ended(flow: *const FlowG<u32>, state: u64, now: u64) {
        crate::connlog::ended(flow, state, now)
    }
    #[inline(always)]
    fn flush_log() {}
    #[inline(always)]
    fn answer_syn<C: Frame>(ctx: &C, pkt: &Packet<u32>) -> Option<Verdict> {
        cookie::answer_syn(ctx, pkt)
    }
    #[inline(always)]
    fn valid_ack<C: Frame>(_: &C, pkt: &Packet<u32>, listener: &ListenerConf, now: u64) -> bool {
        cookie::valid_ack(pkt, listener, now)
    }
    #[inline(always)]
    fn member_syn<C: Frame>(ctx: &C, pkt: &Packet<u32>, f: *mut FlowG<u32>) -> Verdict {
        cookie::member_syn(ctx, pkt, f)
    }
    #[inline(always)]
    fn reset<C: Frame>(ctx: &C, pkt: &Packet<u32>, listener: &ListenerConf, why: u32) -> Verdict {
        cookie::reset(ctx, pkt, listener, why)
    }
    #[inline(always)]
    fn member_synack<C: Frame>(
        ctx: &C,
        pkt: &Packet<u32>,
        f: *mut FlowG<u32>,
        now: u64,
    ) -> Verdict {
        cookie::member_synack::<C, V4>(ctx, pkt, f, now)
    }
    #[inline(always)]
    fn reset_member<C: Frame>(ctx: &C, pkt: &Packet<u32>) -> Verdict {
        cookie::reset_member(ctx, pkt)
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

pub(crate) struct V6;

/// The verdict of an IPv6 cookie step whose program is missing (the loader fills its slot
/// before anything attaches: not seen in practice). What follows a tail call that returned
/// reads no packet: from 6.12 on, the verifier invalidates packet pointers across it.
#[inline(always)]
pub(crate) fn no_cookie_program() -> Verdict {
    crate::verdict(
        aya_ebpf::bindings::xdp_action::XDP_DROP,
        lb_common::reason::DROP_BAD_L4,
    )
}

impl Family for V6 {
    type A = Ip6;
    const OUTLINE: bool = true;
    const COOKIE_PROGRAM: bool = true;
    type Ct = OfConntrack6;
    type Ls = OfListeners6;
    #[inline(always)]
    fn conntrack() -> &'static Hash<OfConntrack6, FlowKeyG<Ip6>, FlowG<Ip6>> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn listeners() -> &'static Hash<OfListeners6, ListenerKeyG<Ip6>, ListenerConf> {
        &LISTENERS6
    }
    #[inline(always)]
    fn member_addr(idx: u32) -> Option<&'static Ip6> {
        MEMBER_ADDR6.get(idx)
    }
    #[inline(always)]
    fn scratch_flow(s: *mut Scratch) -> *mut FlowG<Ip6> {
        unsafe { &raw mut (*s).flow6 }
    }
    #[inline(always)]
    fn scratch_keys(s: *mut Scratch) -> *mut [FlowKeyG<Ip6>; 4] {
        unsafe { &raw mut (*s).keys6 }
    }
    #[inline(always)]
    fn scratch_lkey(s: *mut Scratch) -> *mut ListenerKeyG<Ip6> {
        unsafe { &raw mut (*s).lkey6 }
    }
    #[inline(always)]
    fn allowed(listener: u32, client: &Ip6) -> u64 {
        allowed6(listener, client)
    }
    #[inline(always)]
    fn fib(fib: &mut FibParams, src: &Ip6, dst: &Ip6) {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    }
    #[inline(always)]
    fn ended(_: *const FlowG<Ip6>, state: u64, _: u64) {
        crate::connlog::pending(state)
    }
    #[inline(always)]
    fn flush_log() {
        crate::connlog::flush::<V6>()
    }
    #[inline(always)]
    fn answer_syn<C: Frame>(ctx: &C, pkt: &Packet<Ip6>) -> Option<Verdict> {
        if !cookie::plain(pkt) {
            // Extension headers: the SYN opens its flow (IPv4's SYN with options does too).
            return None;
        }
        tail_call_v6(ctx, v6slot::COOKIE);
        // Not `None`: after a tail call 6.12's verifier holds every packet pointer invalid.
        Some(no_cookie_program())
    }
    #[inline(always)]
    fn valid_ack<C: Frame>(ctx: &C, pkt: &Packet<Ip6>, listener: &ListenerConf, now: u64) -> bool {
        if cookie::plain(pkt) && cookie::accepting(listener, now) {
            tail_call_v6(ctx, v6slot::COOKIE);
        }
        false
    }
    #[inline(always)]
    fn member_syn<C: Frame>(ctx: &C, _: &Packet<Ip6>, _: *mut FlowG<Ip6>) -> Verdict {
        tail_call_v6(ctx, v6slot::COOKIE);
        no_cookie_program()
    }
    /// Not reached in `lb6`: its `valid_ack` is false (`step6` resets).
    #[inline(always)]
    fn reset<C: Frame>(_: &C, _: &Packet<Ip6>, _: &ListenerConf, why: u32) -> Verdict {
        crate::verdict(aya_ebpf::bindings::xdp_action::XDP_DROP, why)
    }
    /// Not reached in `lb6`: `balance` tail-calls before the member path (a subprogram, from
    /// which 6.1 allows no tail call past 256 bytes of stack).
    #[inline(always)]
    fn member_synack<C: Frame>(_: &C, _: &Packet<Ip6>, _: *mut FlowG<Ip6>, _: u64) -> Verdict {
        no_cookie_program()
    }
    #[inline(always)]
    fn reset_member<C: Frame>(_: &C, _: &Packet<Ip6>) -> Verdict {
        no_cookie_program()
    }
}

/// `allowed4` for an IPv6 client (the address by reference: BPF passes 5 registers).
#[inline(never)]
fn allowed6(listener: u32, client: &Ip6) -> u64 {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        160,
        AllowedData6 {
            listener_be: listener.to_be(),
            addr_be: *client,
        },
    );
    ALLOWED6.get(&key).is_some() as u64
}
