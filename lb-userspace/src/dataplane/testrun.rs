//! BPF_PROG_TEST_RUN of a load balancer's data path: its stub, so the shared program runs on
//! that load balancer's maps (the fixtures, `lb explain`, the benchmarks).

use std::os::fd::{AsFd, OwnedFd};

use super::{DataplaneError, Result};

/// A program run with BPF_PROG_TEST_RUN from any thread (the multi-CPU harness pins threads
/// to CPUs and runs the same flows on each at once).
pub struct ProgramRunner {
    fd: OwnedFd,
}

impl ProgramRunner {
    pub(super) fn new(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> Result<ProgramRunner> {
        let fd = fd
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Io {
                what: "cannot duplicate the program's fd",
                path: name.into(),
                source,
            })?;
        Ok(ProgramRunner { fd })
    }
}

impl ProgramRunner {
    /// Runs the program once on `packet` on the calling thread's CPU: its verdict and the
    /// packet as it left it.
    pub fn run(&self, packet: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        self.run_on(packet, None)
    }

    /// As `run`, as if received on interface `ifindex` (an XDP program's ingress device, in
    /// the calling thread's namespace: its FIB lookups are that device's).
    pub fn run_on(&self, packet: &[u8], ifindex: Option<u32>) -> std::io::Result<(u32, Vec<u8>)> {
        self.run_repeat(packet, ifindex, 1)
            .map(|(r, out, _)| (r, out))
    }

    /// `repeat` runs (XDP test runs do not restore the frame between them: a NAT program
    /// sees its own output from the second on): the verdict, the packet as the last run left
    /// it, and the kernel's mean duration per run.
    pub fn run_repeat(
        &self,
        packet: &[u8],
        ifindex: Option<u32>,
        repeat: u32,
    ) -> std::io::Result<(u32, Vec<u8>, std::time::Duration)> {
        /// `union bpf_attr`'s `test` member.
        #[repr(C)]
        #[derive(Default)]
        struct TestAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        /// `struct xdp_md`, the context of an XDP test run.
        #[repr(C)]
        struct XdpMd {
            data: u32,
            data_end: u32,
            data_meta: u32,
            ingress_ifindex: u32,
            rx_queue_index: u32,
            egress_ifindex: u32,
        }
        let ctx = ifindex.map(|i| XdpMd {
            data: 0,
            data_end: packet.len() as u32,
            data_meta: 0,
            ingress_ifindex: i,
            rx_queue_index: 0,
            egress_ifindex: 0,
        });
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = TestAttr {
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd()) as u32,
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        };
        if let Some(c) = &ctx {
            attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
            attr.ctx_in = c as *const XdpMd as u64;
        }
        // SAFETY: attr points to valid buffers of the sizes it names for the call's duration.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr,
                std::mem::size_of::<TestAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.truncate(attr.data_size_out as usize);
        Ok((
            attr.retval,
            out,
            std::time::Duration::from_nanos(attr.duration as u64),
        ))
    }
}
