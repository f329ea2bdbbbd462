//! A planted checksum fault, to prove that the checksum tests can fail: a TC egress program
//! on a host-facing veth that flips one bit of the TCP or UDP checksum field of every IPv4
//! and IPv6 data packet leaving through it. On a packet whose checksum the kernel has still
//! to complete (CHECKSUM_PARTIAL: the field holds the pseudo-header seed), that is a wrong
//! seed, the fault a translation that updated the seed wrongly would make; on a complete one,
//! a wrong checksum. The program is assembled here (a dozen instructions; lb-ebpf has no
//! place for a fault) and attached with `tc ... bpf object-pinned`.

use std::{ffi::CString, os::fd::FromRawFd as _, path::PathBuf};

use lb::dataplane::stub::insn;

use crate::{sh, unique};

const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const STX_H: u8 = 0x6b;
const MOV_REG: u8 = 0xbf;
const MOV_IMM: u8 = 0xb7;
const ADD_IMM: u8 = 0x07;
const ADD_REG: u8 = 0x0f;
const XOR_IMM: u8 = 0xa7;
const JGT_REG: u8 = 0x2d;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const JA: u8 = 0x05;
const EXIT: u8 = 0x95;

/// The program: frames long enough to hold an IPv6 TCP checksum (74 bytes: pure ACKs of
/// IPv4 pass untouched, data does not), IPv4 without options or IPv6 without extension
/// headers, TCP or UDP.
fn instructions() -> Vec<u64> {
    vec![
        insn(LDX_W, 2, 1, 76, 0),        // 0: r2 = skb->data
        insn(LDX_W, 3, 1, 80, 0),        // 1: r3 = skb->data_end
        insn(MOV_REG, 4, 2, 0, 0),       // 2: r4 = r2
        insn(ADD_IMM, 4, 0, 0, 74),      // 3: r4 += 74
        insn(JGT_REG, 4, 3, 19, 0),      // 4: if r4 > r3 goto out
        insn(LDX_H, 5, 2, 12, 0),        // 5: r5 = ethertype (as read, little endian)
        insn(JEQ_IMM, 5, 0, 7, 0x0008),  // 6: IPv4: goto v4
        insn(JNE_IMM, 5, 0, 16, 0xdd86), // 7: not IPv6: goto out
        insn(LDX_B, 5, 2, 20, 0),        // 8: r5 = next header
        insn(MOV_IMM, 6, 0, 0, 70),      // 9: TCP's checksum in IPv6
        insn(JEQ_IMM, 5, 0, 9, 6),       // 10: goto flip
        insn(MOV_IMM, 6, 0, 0, 60),      // 11: UDP's
        insn(JEQ_IMM, 5, 0, 7, 17),      // 12: goto flip
        insn(JA, 0, 0, 10, 0),           // 13: goto out
        insn(LDX_B, 5, 2, 23, 0),        // 14: v4: r5 = protocol
        insn(MOV_IMM, 6, 0, 0, 50),      // 15: TCP's checksum in IPv4
        insn(JEQ_IMM, 5, 0, 3, 6),       // 16: goto flip
        insn(MOV_IMM, 6, 0, 0, 40),      // 17: UDP's
        insn(JEQ_IMM, 5, 0, 1, 17),      // 18: goto flip
        insn(JA, 0, 0, 4, 0),            // 19: goto out
        insn(ADD_REG, 2, 6, 0, 0),       // 20: flip: r2 += r6
        insn(LDX_H, 5, 2, 0, 0),         // 21: r5 = checksum field
        insn(XOR_IMM, 5, 0, 0, 0x100),   // 22: one bit flipped
        insn(STX_H, 2, 5, 0, 0),         // 23: written back
        insn(MOV_IMM, 0, 0, 0, 0),       // 24: out: TC_ACT_OK
        insn(EXIT, 0, 0, 0, 0),          // 25
    ]
}

/// `bpf(cmd, attr)` with a 128-byte attribute block.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: the kernel reads and writes at most the 128 bytes it is given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The fault, attached on `dev`'s egress in namespace `ns` until dropped.
pub struct ChecksumFault {
    ns: String,
    dev: String,
    pin: PathBuf,
}

impl ChecksumFault {
    pub fn plant(ns: &str, dev: &str) -> ChecksumFault {
        let insns = instructions();
        let license = c"GPL";
        let mut log = vec![0u8; 16384];
        let mut a = [0u8; 128];
        a[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
        a[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        a[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        a[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        a[24..28].copy_from_slice(&1u32.to_ne_bytes());
        a[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        a[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        a[48..53].copy_from_slice(b"fault");
        let fd = bpf(5, &mut a).unwrap_or_else(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            panic!(
                "loading the fault: {e}: {}",
                String::from_utf8_lossy(&log[..end])
            )
        });
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let pin = PathBuf::from("/sys/fs/bpf").join(unique("fault"));
        let path = CString::new(pin.to_str().unwrap()).unwrap();
        let mut a = [0u8; 128];
        a[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        a[8..12].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
        bpf(6, &mut a).expect("pinning the fault"); // BPF_OBJ_PIN
        let f = ChecksumFault {
            ns: ns.into(),
            dev: dev.into(),
            pin,
        };
        // nsenter, not `ip netns exec`: tc must see the host's bpffs.
        let tc = format!("nsenter --net=/var/run/netns/{ns} tc");
        sh(&format!("{tc} qdisc add dev {dev} clsact"));
        sh(&format!(
            "{tc} filter add dev {dev} egress bpf direct-action object-pinned {}",
            f.pin.display()
        ));
        f
    }
}

impl Drop for ChecksumFault {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .args(["tc", "qdisc", "del", "dev", &self.dev, "clsact"])
            .status();
        let _ = std::fs::remove_file(&self.pin);
    }
}
