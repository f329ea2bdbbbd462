//! A load balancer's stub: the program attached to its port. It writes the load balancer's
//! slot into the program set's `CURRENT` (this CPU's value) and tail-calls the shared entry
//! point, which then finds that load balancer's maps at the slot (lb-ebpf's inner.rs). Its
//! dozen instructions are assembled here; the kernel verifies them in microseconds, which
//! is all a new load balancer costs in verification.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

/// Where a stub runs, and what it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `lb`, XDP.
    Xdp,
    /// `lb_tc`, TC ingress of the port.
    Tc,
    /// `lb_tc_fast`, TC egress of a created port's outer end.
    TcFast,
}

impl Entry {
    pub const ALL: [Entry; 3] = [Entry::Xdp, Entry::Tc, Entry::TcFast];

    /// The shared program it enters.
    pub fn program(self) -> &'static str {
        match self {
            Entry::Xdp => "lb",
            Entry::Tc => "lb_tc",
            Entry::TcFast => "lb_tc_fast",
        }
    }

    pub fn from_program(name: &str) -> Option<Entry> {
        Entry::ALL.into_iter().find(|e| e.program() == name)
    }

    /// Its index in the program set's entry array of its kind (`ENTRY_XDP`, `ENTRY_TC`).
    pub fn index(self) -> u32 {
        match self {
            Entry::Xdp | Entry::Tc => 0,
            Entry::TcFast => 1,
        }
    }

    pub fn is_xdp(self) -> bool {
        self == Entry::Xdp
    }

    /// `bpf_prog_type` and expected attach type (as aya loads the shared programs).
    fn prog_type(self) -> (u32, u32) {
        const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const BPF_XDP: u32 = 37;
        if self.is_xdp() {
            (BPF_PROG_TYPE_XDP, BPF_XDP)
        } else {
            (BPF_PROG_TYPE_SCHED_CLS, 0)
        }
    }

    /// What the stub returns if the tail call finds no program (never, once the set is
    /// complete): the packet goes on to the kernel.
    fn fallback(self) -> i32 {
        const XDP_PASS: i32 = 2;
        const TC_ACT_OK: i32 = 0;
        if self.is_xdp() {
            XDP_PASS
        } else {
            TC_ACT_OK
        }
    }
}

/// One BPF instruction: opcode, registers, offset, immediate (also the tests' planted fault's
/// assembler).
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) | ((src & 0xf) << 4)) as u64) << 8
        | ((off as u16) as u64) << 16
        | ((imm as u32) as u64) << 32
}

const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const LD_IMM64: u8 = 0x18;
const ST_MEM_W: u8 = 0x62;
const JEQ_IMM: u8 = 0x15;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_TAIL_CALL: i32 = 12;

/// The stub's instructions for load balancer `slot`.
pub fn instructions(entry: Entry, slot: u32, current: i32, entries: i32) -> Vec<u64> {
    vec![
        insn(MOV64_REG, 6, 1, 0, 0),                  // r6 = ctx
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, current), // r1 = CURRENT
        0,
        insn(ST_MEM_W, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -4), // r2 = r10 - 4
        insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, 6, 0),                    // if r0 == 0 goto out
        insn(ST_MEM_W, 0, 0, 0, slot as i32),         // *(u32 *)r0 = slot
        insn(MOV64_REG, 1, 6, 0, 0),                  // r1 = ctx
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, entries), // r2 = ENTRY_*
        0,
        insn(MOV64_IMM, 3, 0, 0, entry.index() as i32),
        insn(CALL, 0, 0, 0, FN_TAIL_CALL),
        insn(MOV64_IMM, 0, 0, 0, entry.fallback()), // out:
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Loads the stub of `entry` for load balancer `slot` of the set whose `CURRENT` and entry
/// array of `entry`'s kind are `current` and `entries`.
pub fn load(
    entry: Entry,
    slot: u32,
    current: BorrowedFd<'_>,
    entries: BorrowedFd<'_>,
) -> io::Result<OwnedFd> {
    let insns = instructions(entry, slot, current.as_raw_fd(), entries.as_raw_fd());
    let (ty, attach) = entry.prog_type();
    // Named after what it enters and its slot ("lb_tc.3"): the kernel's statistics of a
    // stub (`kernel.bpf_stats_enabled`) are its load balancer's, tail calls included.
    super::sys::prog_load(ty, attach, &insns, &stub_name(entry, slot))
}

/// The kernel's name of `entry`'s stub for `slot` (15 characters at most).
pub fn stub_name(entry: Entry, slot: u32) -> String {
    format!("{}.{slot}", entry.program())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jump_lands_on_the_fallback() {
        let code = instructions(Entry::Tc, 7, 3, 4);
        let jeq = code
            .iter()
            .position(|i| (i & 0xff) as u8 == JEQ_IMM)
            .unwrap();
        let off = ((code[jeq] >> 16) & 0xffff) as i16 as usize;
        let target = code[jeq + 1 + off];
        assert_eq!(target & 0xff, MOV64_IMM as u64);
        assert_eq!((target >> 8) & 0xf, 0, "r0 = fallback");
        assert_eq!(code.last().unwrap() & 0xff, EXIT as u64);
    }

    #[test]
    fn encodes_like_the_kernel() {
        // r1 = r6: BPF_ALU64 | BPF_MOV | BPF_X, dst 1, src 6.
        assert_eq!(insn(MOV64_REG, 1, 6, 0, 0), 0x61bf);
        // *(u32 *)(r10 - 4) = 0.
        assert_eq!(insn(ST_MEM_W, 10, 0, -4, 0), 0x0000_0000_fffc_0a62);
    }
}
