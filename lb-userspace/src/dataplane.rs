//! Loading the XDP program, and every read and write of its pinned maps.
//!
//! `Dataplane` owns the loaded programs (the daemon and the tests); `Maps` opens the pinned maps
//! by path, so the daemon, `lb stats` and the tests share one way of reading them.

use std::{
    num::NonZeroUsize,
    os::fd::AsFd,
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{ProgramError, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    reason, Flow, FlowKey, ListenerConf, ListenerKey, Live, MemberConf, PoolConf, Stats,
    SweepReport, MAX_LISTENERS, MAX_MEMBERS, MAX_POOL_MEMBERS,
};

/// The BPF object built by build.rs (aya-build, pinned nightly).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Environment variable naming a BPF object file to load instead of the embedded one: a data
/// path built separately (development, and the upgrade tests, which take over with a program
/// that differs). Its maps must match the pinned ones like any other.
pub const BPF_OBJECT_ENV: &str = "LB_BPF_OBJECT";

/// The object to load: `$LB_BPF_OBJECT` if set, else the embedded one.
pub fn bpf_object() -> Result<std::borrow::Cow<'static, [u8]>> {
    let Some(path) = std::env::var_os(BPF_OBJECT_ENV) else {
        return Ok(BPF_OBJECT.into());
    };
    let path = PathBuf::from(path);
    let bytes = std::fs::read(&path).map_err(|source| DataplaneError::Io {
        what: "cannot read the BPF object ($LB_BPF_OBJECT)",
        path,
        source,
    })?;
    Ok(bytes.into())
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot load the BPF object (maps pinned under {dir})")]
    Load {
        dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("BPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinned map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Pins(#[from] crate::pins::PinError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The loaded programs of one load balancer, with their maps pinned in `pin_dir`.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
}

impl Dataplane {
    /// Loads the object, creating the pinned maps or reusing those already pinned (a restarted
    /// daemon keeps its flows). Pinned maps are reused only if they match what the object
    /// declares (`pins::check`); otherwise nothing is loaded and the error names the map and
    /// the difference.
    pub fn load(pin_dir: &Path, conntrack_flows: u32) -> Result<Self> {
        Self::load_with(pin_dir, conntrack_flows, false, false)
    }

    /// As `load`, for an IPv6 load balancer.
    pub fn load6(pin_dir: &Path, conntrack_flows: u32) -> Result<Self> {
        Self::load_with(pin_dir, conntrack_flows, false, true)
    }

    /// As `load`; `connection_log`: the `CONN_LOG` ring gets `CONN_LOG_BYTES` (one page
    /// otherwise: nothing writes to it); `ipv6`: the IPv6 programs are loaded and put in the
    /// IPv4 ones' tail-call slots (an IPv4 load balancer has no use for them: its IPv6 frames
    /// pass as `pass_not_ip`, and its load takes half the time).
    pub fn load_with(
        pin_dir: &Path,
        conntrack_flows: u32,
        connection_log: bool,
        ipv6: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(pin_dir).map_err(|source| DataplaneError::Io {
            what: "cannot create pin directory",
            path: pin_dir.into(),
            source,
        })?;
        let object = bpf_object()?;
        let conntrack_entries = conntrack_flows.saturating_mul(2);
        let declared = crate::pins::declared(&object, conntrack_entries)?;
        crate::pins::check(pin_dir, &declared)?;
        crate::pins::record(pin_dir, &declared)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries("CONNTRACK", conntrack_entries)
            .map_max_entries("CONNTRACK6", conntrack_entries)
            .map_max_entries(
                "CONN_LOG",
                if connection_log {
                    lb_common::CONN_LOG_BYTES
                } else {
                    lb_common::CONN_LOG_BYTES_OFF
                },
            )
            .load(&object)
            .map_err(|e| DataplaneError::Load {
                dir: pin_dir.into(),
                source: Box::new(e),
            })?;
        let xdp: &[&str] = if ipv6 {
            &["lb", "lb6", "lb6_icmp", "lb6_cookie", "lb_peer_pass"]
        } else {
            &["lb", "lb_peer_pass"]
        };
        for &name in xdp {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .expect("program is XDP");
            prog.load().map_err(|source| DataplaneError::Program {
                name: "load",
                source,
            })?;
        }
        let tc: &[&str] = if ipv6 {
            &[
                "lb_tc",
                "lb_tc6",
                "lb_tc6_icmp",
                "lb_tc6_cookie",
                "lb_tc_fast",
            ]
        } else {
            &["lb_tc", "lb_tc_fast"]
        };
        for &name in tc {
            let tc: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .expect("program is a classifier");
            tc.load().map_err(|source| DataplaneError::Program {
                name: "load",
                source,
            })?;
        }
        // The IPv4 programs hand IPv6 frames to the IPv6 ones by a tail call (one program
        // for both would not fit the BPF stack): their slots are filled before anything
        // attaches.
        let slots: &[(&str, u32, &str)] = if ipv6 {
            &[
                ("V6_XDP", 0, "lb6"),
                ("V6_XDP", 1, "lb6_icmp"),
                ("V6_XDP", 2, "lb6_cookie"),
                ("V6_TC", 0, "lb_tc6"),
                ("V6_TC", 1, "lb_tc6_icmp"),
                ("V6_TC", 2, "lb_tc6_cookie"),
            ]
        } else {
            &[]
        };
        for &(array, slot, prog) in slots {
            let fd = ebpf
                .program(prog)
                .expect("program is in the object")
                .fd()
                .map_err(|source| DataplaneError::Program {
                    name: "fd of the IPv6 program",
                    source,
                })?
                .try_clone()
                .map_err(|source| DataplaneError::Io {
                    what: "duplicating the IPv6 program's fd",
                    path: pin_dir.into(),
                    source,
                })?;
            let mut slots: aya::maps::ProgramArray<_> = ebpf
                .map_mut(array)
                .expect("map is in the object")
                .try_into()
                .expect("a program array");
            slots
                .set(slot, &fd, 0)
                .map_err(|source| DataplaneError::Map {
                    path: pin_dir.join(array),
                    source,
                })?;
        }
        let maps = Maps::open(pin_dir)?;
        Ok(Dataplane { ebpf, maps })
    }

    /// The connection log's ring buffer of the loaded programs (not pinned: it belongs to
    /// this load; see `crate::connlog`). Once: later calls return None.
    pub fn take_conn_log(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        let map = self.ebpf.take_map("CONN_LOG")?;
        aya::maps::RingBuf::try_from(map).ok()
    }

    /// Program `name` of the loaded object.
    pub(crate) fn program_mut(&mut self, name: &str) -> &mut aya::programs::Program {
        self.ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("program {name} is in the object"))
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf.program_mut("lb").unwrap().try_into().unwrap()
    }

    /// The data path at TC ingress (`xdp_mode = "tc"`).
    pub fn tc_program(&mut self) -> &mut SchedClassifier {
        self.ebpf.program_mut("lb_tc").unwrap().try_into().unwrap()
    }

    /// The established-flow shortcut on the outer end of a port lb created (tc mode).
    pub fn tc_fast_program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut("lb_tc_fast")
            .unwrap()
            .try_into()
            .unwrap()
    }

    pub fn peer_program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut("lb_peer_pass")
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// BPF_PROG_TEST_RUN of program `name` of the object ("lb", "lb_tc", "lb_tc_fast",
    /// "lb_sweep", or "lb_peer_pass", the trivial XDP_PASS program benchmarks compare
    /// against), `repeat` times, on the live maps. Returns the program's verdict, the packet as
    /// it left it, and the kernel's mean duration per run. XDP test runs do not restore the
    /// frame between repetitions: a NAT program sees its own output from the second one on.
    pub fn test_run_program(
        &mut self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        use aya::programs::{Program, TestRun, TestRunOptions};
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let err = |source| DataplaneError::Program {
            name: "test_run",
            source,
        };
        let r = match self
            .ebpf
            .program(name)
            .ok_or(err(ProgramError::NotLoaded))?
        {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            _ => Err(ProgramError::NotLoaded),
        }
        .map_err(err)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out, r.duration))
    }
}

/// One of the object's programs, run with BPF_PROG_TEST_RUN from any thread (the multi-CPU
/// harness pins threads to CPUs and runs the same flows on each at once).
pub struct ProgramRunner {
    fd: std::os::fd::OwnedFd,
}

impl Dataplane {
    /// A runner for program `name` ("lb", "lb_tc", "lb_tc_fast").
    pub fn runner(&self, name: &str) -> Result<ProgramRunner> {
        use aya::programs::Program;
        let err = |source| DataplaneError::Program {
            name: "test_run",
            source,
        };
        let fd = match self
            .ebpf
            .program(name)
            .ok_or(err(ProgramError::NotLoaded))?
        {
            Program::Xdp(p) => p.fd().map_err(err)?.try_clone(),
            Program::SchedClassifier(p) => p.fd().map_err(err)?.try_clone(),
            _ => return Err(err(ProgramError::NotLoaded)),
        }
        .map_err(|source| DataplaneError::Io {
            what: "cannot duplicate the program's fd",
            path: name.into(),
            source,
        })?;
        let fd = fd
            .as_fd()
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
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(&self.fd) as u32,
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
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
        Ok((attr.retval, out))
    }
}

impl Dataplane {
    /// One whole expiry and census cycle over the conntrack table, without pauses (fixtures,
    /// benchmarks); the daemon runs cycles on its own thread (`daemon::expiry`).
    pub fn sweep(
        &mut self,
        members: &[u32],
        listeners: &[u32],
        retired: &[u32],
    ) -> Result<crate::expiry::SweepOutcome> {
        let census = crate::expiry::Census {
            members: members.to_vec(),
            retired: retired.to_vec(),
            listeners: listeners.to_vec(),
        };
        crate::expiry::Sweeper::open(&self.maps.dir)?.cycle(&census, &mut |_| true)
    }
}

/// An mmap of a `BPF_F_MMAPABLE` array of `Live`: real atomics shared with the data path.
pub struct LiveArray {
    _map: MapData,
    ptr: NonNull<Live>,
    len: u32,
    bytes: usize,
}

// The mapping is plain shared memory accessed only through atomics.
unsafe impl Send for LiveArray {}
unsafe impl Sync for LiveArray {}

impl LiveArray {
    pub(crate) fn open(path: &Path, len: u32) -> Result<Self> {
        let map = MapData::from_pin(path).map_err(|source| DataplaneError::Map {
            path: path.into(),
            source,
        })?;
        let page = 4096usize;
        let bytes = (len as usize * std::mem::size_of::<Live>()).div_ceil(page) * page;
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(bytes).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .map_err(|e| DataplaneError::Io {
            what: "cannot mmap",
            path: path.into(),
            source: e.into(),
        })?;
        Ok(LiveArray {
            _map: map,
            ptr: ptr.cast(),
            len,
            bytes,
        })
    }

    fn slot(&self, i: u32) -> *mut Live {
        assert!(i < self.len, "live index {i} out of range");
        unsafe { self.ptr.as_ptr().add(i as usize) }
    }

    /// Overwrites slot `i` (a scratch copy's; never the running data path's, whose counts
    /// change by atomic adds only).
    pub fn set(&self, i: u32, v: Live) {
        unsafe { std::ptr::write_volatile(self.slot(i), v) };
    }

    pub fn get(&self, i: u32) -> Live {
        let p = self.slot(i);
        unsafe {
            Live {
                active: AtomicI64::from_ptr(&raw mut (*p).active).load(Ordering::Relaxed),
                events: AtomicU64::from_ptr(&raw mut (*p).events).load(Ordering::Relaxed),
                rr: AtomicU64::from_ptr(&raw mut (*p).rr).load(Ordering::Relaxed),
                table: AtomicI64::from_ptr(&raw mut (*p).table).load(Ordering::Relaxed),
                refs: AtomicU64::from_ptr(&raw mut (*p).refs).load(Ordering::Relaxed),
                half_open: AtomicI64::from_ptr(&raw mut (*p).half_open).load(Ordering::Relaxed),
                half_table: AtomicI64::from_ptr(&raw mut (*p).half_table).load(Ordering::Relaxed),
                failures: AtomicU64::from_ptr(&raw mut (*p).failures).load(Ordering::Relaxed),
            }
        }
    }

    /// Atomically adds `delta` to `active` (and bumps `events`), as the data path does.
    pub fn add(&self, i: u32, delta: i64) {
        let p = self.slot(i);
        unsafe {
            AtomicI64::from_ptr(&raw mut (*p).active).fetch_add(delta, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*p).events).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `delta` to `active` without bumping `events`: the expiry's own changes, which
    /// its census already accounts for.
    pub fn add_quiet(&self, i: u32, delta: i64) {
        let p = self.slot(i);
        unsafe {
            AtomicI64::from_ptr(&raw mut (*p).active).fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Adds `delta` to `half_open` without bumping `events` (the expiry's own changes).
    pub fn add_half_quiet(&self, i: u32, delta: i64) {
        let p = self.slot(i);
        unsafe {
            AtomicI64::from_ptr(&raw mut (*p).half_open).fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Drift correction after a cycle: if no packet changed the counts since `events` read
    /// `before`, sets `active` and `half_open` to the census. Returns whether either changed.
    pub(crate) fn correct(&self, i: u32, before: u64, census: i64, half: i64) -> bool {
        let now = self.get(i);
        if now.events != before {
            return false;
        }
        let mut changed = false;
        if now.active != census {
            self.add_quiet(i, census - now.active);
            changed = true;
        }
        if now.half_open != half {
            self.add_half_quiet(i, half - now.half_open);
            changed = true;
        }
        changed
    }

    /// Clears a member's run of failed connections (its monitor passed a check).
    pub fn clear_failures(&self, i: u32) {
        let p = self.slot(i);
        unsafe { AtomicU64::from_ptr(&raw mut (*p).failures).store(0, Ordering::Relaxed) };
    }

    /// Zeroes every counter of slot `i` (a slot taken by a new member or listener).
    pub(crate) fn reset(&self, i: u32) {
        let p = self.slot(i);
        unsafe {
            AtomicI64::from_ptr(&raw mut (*p).active).store(0, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*p).events).fetch_add(1, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*p).rr).store(0, Ordering::Relaxed);
            AtomicI64::from_ptr(&raw mut (*p).table).store(0, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*p).refs).store(0, Ordering::Relaxed);
            AtomicI64::from_ptr(&raw mut (*p).half_open).store(0, Ordering::Relaxed);
            AtomicI64::from_ptr(&raw mut (*p).half_table).store(0, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*p).failures).store(0, Ordering::Relaxed);
        }
    }

    /// Records a cycle's census: open connections, handshakes, and flows of any state
    /// naming the index.
    pub(crate) fn set_census(&self, i: u32, open: i64, half: i64, refs: u64) {
        let p = self.slot(i);
        unsafe {
            AtomicI64::from_ptr(&raw mut (*p).table).store(open, Ordering::Relaxed);
            AtomicI64::from_ptr(&raw mut (*p).half_table).store(half, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*p).refs).store(refs, Ordering::Relaxed);
        }
    }
}

impl Drop for LiveArray {
    fn drop(&mut self) {
        unsafe {
            let _ = nix::sys::mman::munmap(self.ptr.cast(), self.bytes);
        }
    }
}

/// Memory the kernel charges to each pinned map under `dir` (the `memlock` line of the map's
/// fdinfo: what the map uses now, e.g. a `BPF_F_NO_PREALLOC` hash its live entries), by name.
pub fn map_memory(dir: &Path) -> Result<Vec<(String, u64)>> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| DataplaneError::Io { what, path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("cannot list pin directory", dir))? {
        let path = entry.map_err(io("cannot list pin directory", dir))?.path();
        let Ok(map) = MapData::from_pin(&path) else {
            continue; // a pinned program or link, not a map
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd());
        let info = format!("/proc/self/fdinfo/{fd}");
        let text = std::fs::read_to_string(&info).map_err(io("cannot read", Path::new(&info)))?;
        let bytes = text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.push((name, bytes));
    }
    out.sort();
    Ok(out)
}

/// The pinned maps of one load balancer.
pub struct Maps {
    pub dir: PathBuf,
    listeners: HashMap<MapData, ListenerKey, ListenerConf>,
    pools: Array<MapData, PoolConf>,
    members: Array<MapData, MemberConf>,
    member_stats: PerCpuArray<MapData, Stats>,
    listener_stats: PerCpuArray<MapData, Stats>,
    verdicts: PerCpuArray<MapData, u64>,
    listener_drops: PerCpuArray<MapData, u64>,
    sweep: Array<MapData, SweepReport>,
    conntrack: HashMap<MapData, FlowKey, Flow>,
    source_table: Array<MapData, [u16; lb_common::select::SOURCE_TABLE_SIZE as usize]>,
    port: Array<MapData, lb_common::PortConf>,
    /// Connection-log events lost to a full ring, per listener (None: maps pinned by a
    /// version of lb without a connection log).
    conn_log_lost: Option<PerCpuArray<MapData, u64>>,
    /// Listeners' allowed prefixes (None: maps pinned by a version of lb without them).
    allowed: Option<aya::maps::LpmTrie<MapData, lb_common::AllowedData, u32>>,
    /// The IPv6 maps (None: pinned by a version of lb without IPv6).
    listeners6: Option<HashMap<MapData, lb_common::ListenerKey6, ListenerConf>>,
    member_addr6: Option<Array<MapData, lb_common::Ip6>>,
    conntrack6: Option<HashMap<MapData, lb_common::FlowKey6, lb_common::Flow6>>,
    allowed6: Option<aya::maps::LpmTrie<MapData, lb_common::AllowedData6, u32>>,
    /// What this process last wrote to each pool's `SOURCE_TABLE` (unchanged tables are not
    /// written again).
    source_written: std::collections::HashMap<u32, Vec<u16>>,
    pub member_live: LiveArray,
    pub listener_live: LiveArray,
}

pub(crate) fn open_map<T>(dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::Map {
        path: path.clone(),
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::Map {
        path: path.clone(),
        source,
    })?;
    T::try_from(map).map_err(|source| DataplaneError::Map { path, source })
}

/// A zero for every possible CPU, to reset an entry of a per-CPU array.
fn per_cpu_zeros<T: aya::Pod + Default + Clone>() -> Result<aya::maps::PerCpuValues<T>> {
    let io = |path: &str, source| DataplaneError::Io {
        what: "cannot count the possible CPUs in",
        path: path.into(),
        source,
    };
    let n = aya::util::nr_cpus().map_err(|(path, source)| io(path, source))?;
    aya::maps::PerCpuValues::try_from(vec![T::default(); n])
        .map_err(|e| io("/sys/devices/system/cpu/possible", e))
}

fn sum_stats(values: &[Stats]) -> Stats {
    values.iter().fold(Stats::default(), |mut a, s| {
        a.packets_in += s.packets_in;
        a.bytes_in += s.bytes_in;
        a.packets_out += s.packets_out;
        a.bytes_out += s.bytes_out;
        a.total_connections += s.total_connections;
        a.redispatches += s.redispatches;
        for (d, x) in a.drops.iter_mut().zip(s.drops) {
            *d += x;
        }
        a
    })
}

impl Maps {
    /// Writes `new` into the maps: pools and members first, listeners last (a listener is live
    /// as soon as it is written); entries `old` had and `new` has not are cleared; indexes
    /// `new` gives to new members and listeners start with zeroed counters. A member whose
    /// address and port did not change keeps the health verdict the data path has.
    pub fn write_plan(
        &mut self,
        new: &crate::plan::Plan,
        old: Option<&crate::plan::Plan>,
    ) -> Result<()> {
        for &i in &new.fresh_members {
            self.reset_member(i)?;
        }
        for &i in &new.fresh_listeners {
            self.reset_listener(i)?;
        }
        for p in &new.pools {
            self.set_pool(p.index, p.conf)?;
        }
        for m in &new.members {
            let mut conf = m.conf;
            let addr6 = m.addr6();
            if let Ok(cur) = self.member(m.index) {
                if cur.addr_be == conf.addr_be
                    && cur.port_be == conf.port_be
                    && (addr6.is_none() || self.member_addr6(m.index)? == addr6)
                    && cur.flags & lb_common::MEMBER_F_UP == 0
                {
                    conf.flags &= !lb_common::MEMBER_F_UP;
                }
            }
            // An IPv6 member's address before the entry that makes it selectable.
            if let Some(a) = addr6 {
                self.set_member_addr6(m.index, a)?;
            }
            self.set_member(m.index, conf)?;
        }
        for &i in &new.retired {
            self.set_member(i, MemberConf::default())?;
        }
        if let Some(old) = old {
            for p in old
                .pools
                .iter()
                .filter(|p| !new.pools.iter().any(|n| n.index == p.index))
            {
                self.set_pool(p.index, PoolConf::default())?;
            }
        }
        let wanted: Vec<_> = new.listeners.iter().map(|l| l.key).collect();
        for (key, _) in self.listeners() {
            if !wanted.contains(&key) {
                self.remove_listener(&key)?;
            }
        }
        let wanted6: Vec<_> = new.listeners.iter().filter_map(|l| l.key6).collect();
        for (key, _) in self.listeners6() {
            if !wanted6.contains(&key) {
                let e = self.err("LISTENERS6");
                if let Some(map) = &mut self.listeners6 {
                    match map.remove(&key) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(x) => return Err(e(x)),
                    }
                }
            }
        }
        for p in &new.pools {
            self.refresh_source_table(p.index)?;
        }
        // A listener's prefixes before its flag says to look them up; the ones it no longer
        // has after.
        let prefixes =
            |p: &crate::plan::Plan| -> std::collections::HashSet<(u32, std::net::IpAddr, u8)> {
                p.listeners
                    .iter()
                    .flat_map(|l| l.allowed_cidrs.iter().map(move |(a, n)| (l.index, *a, *n)))
                    .collect()
            };
        let want = prefixes(new);
        for &(l, a, n) in &want {
            self.set_allowed(l, a, n, true)?;
        }
        for l in &new.listeners {
            self.set_planned_listener(l)?;
        }
        if let Some(old) = old {
            for &(l, a, n) in prefixes(old).difference(&want) {
                self.set_allowed(l, a, n, false)?;
            }
        }
        Ok(())
    }

    /// Adds (or removes) prefix `addr`/`len` of listener `listener` in `ALLOWED`.
    fn set_allowed(
        &mut self,
        listener: u32,
        addr: std::net::IpAddr,
        len: u8,
        add: bool,
    ) -> Result<()> {
        fn apply<K: aya::Pod>(
            map: &mut aya::maps::LpmTrie<MapData, K, u32>,
            key: &aya::maps::lpm_trie::Key<K>,
            add: bool,
        ) -> std::result::Result<(), MapError> {
            if add {
                map.insert(key, 1, 0)
            } else {
                match map.remove(key) {
                    Err(MapError::KeyNotFound) => Ok(()),
                    r => r,
                }
            }
        }
        let listener_be = listener.to_be();
        match addr {
            std::net::IpAddr::V4(a) => {
                let e = self.err("ALLOWED");
                let Some(map) = &mut self.allowed else {
                    return Err(e(MapError::InvalidName {
                        name: "ALLOWED (pinned by a version of lb without allowed_cidrs)".into(),
                    }));
                };
                let data = lb_common::AllowedData {
                    listener_be,
                    addr_be: u32::from(a).to_be(),
                };
                let key = aya::maps::lpm_trie::Key::new(32 + len as u32, data);
                apply(map, &key, add).map_err(e)
            }
            std::net::IpAddr::V6(a) => {
                let e = self.err("ALLOWED6");
                let Some(map) = &mut self.allowed6 else {
                    return Err(e(MapError::InvalidName {
                        name: "ALLOWED6 (pinned by a version of lb without IPv6)".into(),
                    }));
                };
                let data = lb_common::AllowedData6 {
                    listener_be,
                    addr_be: lb_common::ip6(a.octets()),
                };
                let key = aya::maps::lpm_trie::Key::new(32 + len as u32, data);
                apply(map, &key, add).map_err(e)
            }
        }
    }

    pub fn refresh_source_table(&mut self, pool: u32) -> Result<()> {
        let e = self.err("POOLS");
        let mut conf = self.pools.get(&pool, 0).map_err(e)?;
        if conf.algorithm == lb_common::ALG_LEAST_CONNECTIONS {
            self.source_written.remove(&pool);
            return Ok(());
        }
        let base = pool * MAX_POOL_MEMBERS;
        let mut members = Vec::with_capacity(conf.count as usize);
        for slot in 0..conf.count.min(MAX_POOL_MEMBERS) {
            let m = self.member(base + slot)?;
            let c = lb_common::select::Candidate {
                weight: m.weight as u32,
                flags: m.flags,
                active: 0,
            };
            members.push((slot, c));
        }
        let mut table = [0u16; lb_common::select::SOURCE_TABLE_SIZE as usize];
        let len = lb_common::select::fill_table(conf.algorithm, &members, &mut table);
        if self.source_written.get(&pool).map(Vec::as_slice) != Some(&table[..]) {
            let e = self.err("SOURCE_TABLE");
            self.source_table.set(pool, table, 0).map_err(e)?;
            self.source_written.insert(pool, table.to_vec());
        }
        // After the table: round robin walks only entries written.
        if conf.table_len != len {
            conf.table_len = len;
            self.set_pool(pool, conf)?;
        }
        Ok(())
    }

    /// Zeroes every counter of member slot `i` (traffic, connections, drops, census), before
    /// it serves a member it did not serve before.
    pub fn reset_member(&mut self, i: u32) -> Result<()> {
        let e = self.err("MEMBER_STATS");
        self.member_stats.set(i, per_cpu_zeros()?, 0).map_err(e)?;
        self.member_live.reset(i);
        Ok(())
    }

    /// Zeroes every counter of listener index `i`, before it serves a new listener.
    pub fn reset_listener(&mut self, i: u32) -> Result<()> {
        let e = self.err("LISTENER_STATS");
        self.listener_stats.set(i, per_cpu_zeros()?, 0).map_err(e)?;
        for r in 0..reason::COUNT {
            let e = self.err("LISTENER_DROPS");
            self.listener_drops
                .set(i * reason::COUNT + r, per_cpu_zeros()?, 0)
                .map_err(e)?;
        }
        let e = self.err("CONN_LOG_LOST");
        if let Some(lost) = &mut self.conn_log_lost {
            lost.set(i, per_cpu_zeros()?, 0).map_err(e)?;
        }
        self.listener_live.reset(i);
        Ok(())
    }

    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Maps {
            dir: dir.into(),
            listeners: open_map(dir, "LISTENERS")?,
            pools: open_map(dir, "POOLS")?,
            members: open_map(dir, "MEMBERS")?,
            member_stats: open_map(dir, "MEMBER_STATS")?,
            listener_stats: open_map(dir, "LISTENER_STATS")?,
            verdicts: open_map(dir, "VERDICTS")?,
            listener_drops: open_map(dir, "LISTENER_DROPS")?,
            sweep: open_map(dir, "SWEEP")?,
            conntrack: open_map(dir, "CONNTRACK")?,
            source_table: open_map(dir, "SOURCE_TABLE")?,
            port: open_map(dir, "PORT")?,
            conn_log_lost: open_map(dir, "CONN_LOG_LOST").ok(),
            allowed: open_map(dir, "ALLOWED").ok(),
            listeners6: open_map(dir, "LISTENERS6").ok(),
            member_addr6: open_map(dir, "MEMBER_ADDR6").ok(),
            conntrack6: open_map(dir, "CONNTRACK6").ok(),
            allowed6: open_map(dir, "ALLOWED6").ok(),
            source_written: Default::default(),
            member_live: LiveArray::open(&dir.join("MEMBER_LIVE"), MAX_MEMBERS)?,
            listener_live: LiveArray::open(&dir.join("LISTENER_LIVE"), MAX_LISTENERS)?,
        })
    }

    fn err(&self, name: &str) -> impl FnOnce(MapError) -> DataplaneError + 'static {
        let path = self.dir.join(name);
        move |source| DataplaneError::Map { path, source }
    }

    pub fn set_listener(&mut self, key: ListenerKey, conf: ListenerConf) -> Result<()> {
        let e = self.err("LISTENERS");
        self.listeners.insert(key, conf, 0).map_err(e)
    }

    pub fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        let e = self.err("LISTENERS");
        match self.listeners.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(x) => Err(e(x)),
        }
    }

    pub fn listeners(&self) -> Vec<(ListenerKey, ListenerConf)> {
        self.listeners.iter().filter_map(|r| r.ok()).collect()
    }

    /// The IPv6 listeners.
    pub fn listeners6(&self) -> Vec<(lb_common::ListenerKey6, ListenerConf)> {
        match &self.listeners6 {
            Some(m) => m.iter().filter_map(|r| r.ok()).collect(),
            None => Vec::new(),
        }
    }

    /// Writes a planned listener into `LISTENERS` or, for an IPv6 VIP, `LISTENERS6`.
    pub fn set_planned_listener(&mut self, l: &crate::plan::PlannedListener) -> Result<()> {
        self.set_listener_conf(l, l.conf)
    }

    /// Planned listener `l`'s entry as the data path has it now (in its family's map).
    pub fn listener_conf(&self, l: &crate::plan::PlannedListener) -> Option<ListenerConf> {
        match l.key6 {
            None => self.listeners.get(&l.key, 0).ok(),
            Some(k) => self.listeners6.as_ref()?.get(&k, 0).ok(),
        }
    }

    /// Writes `conf` as planned listener `l`'s entry (in its family's map).
    pub fn set_listener_conf(
        &mut self,
        l: &crate::plan::PlannedListener,
        conf: ListenerConf,
    ) -> Result<()> {
        match l.key6 {
            None => self.set_listener(l.key, conf),
            Some(k) => {
                let e = self.err("LISTENERS6");
                let Some(map) = &mut self.listeners6 else {
                    return Err(e(MapError::InvalidName {
                        name: "LISTENERS6 (pinned by a version of lb without IPv6)".into(),
                    }));
                };
                map.insert(k, conf, 0).map_err(e)
            }
        }
    }

    /// An IPv6 member's address (None: not set, or no IPv6 maps).
    pub fn member_addr6(&self, index: u32) -> Result<Option<lb_common::Ip6>> {
        let e = self.err("MEMBER_ADDR6");
        match &self.member_addr6 {
            Some(m) => m.get(&index, 0).map(Some).map_err(e),
            None => Ok(None),
        }
    }

    pub fn set_member_addr6(&mut self, index: u32, addr: lb_common::Ip6) -> Result<()> {
        let e = self.err("MEMBER_ADDR6");
        let Some(map) = &mut self.member_addr6 else {
            return Err(e(MapError::InvalidName {
                name: "MEMBER_ADDR6 (pinned by a version of lb without IPv6)".into(),
            }));
        };
        map.set(index, addr, 0).map_err(e)
    }

    /// The port's MAC: only frames addressed to it are balanced (all zeros: every frame).
    pub fn set_port(&mut self, mac: [u8; 6]) -> Result<()> {
        let e = self.err("PORT");
        let conf = lb_common::PortConf { mac, _pad: [0; 2] };
        self.port.set(0, conf, 0).map_err(e)
    }

    pub fn pool(&self, index: u32) -> Result<PoolConf> {
        let e = self.err("POOLS");
        self.pools.get(&index, 0).map_err(e)
    }

    pub fn set_pool(&mut self, index: u32, conf: PoolConf) -> Result<()> {
        let e = self.err("POOLS");
        self.pools.set(index, conf, 0).map_err(e)
    }

    pub fn set_member(&mut self, index: u32, conf: MemberConf) -> Result<()> {
        let e = self.err("MEMBERS");
        self.members.set(index, conf, 0).map_err(e)
    }

    pub fn member(&self, index: u32) -> Result<MemberConf> {
        let e = self.err("MEMBERS");
        self.members.get(&index, 0).map_err(e)
    }

    pub fn member_stats(&self, index: u32) -> Result<Stats> {
        let e = self.err("MEMBER_STATS");
        Ok(sum_stats(&self.member_stats.get(&index, 0).map_err(e)?))
    }

    pub fn listener_stats(&self, index: u32) -> Result<Stats> {
        let e = self.err("LISTENER_STATS");
        Ok(sum_stats(&self.listener_stats.get(&index, 0).map_err(e)?))
    }

    /// Packets per verdict reason (`lb_common::reason`), summed over CPUs.
    pub fn verdicts(&self) -> Result<[u64; reason::COUNT as usize]> {
        let mut out = [0u64; reason::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let e = self.err("VERDICTS");
            *o = self.verdicts.get(&(i as u32), 0).map_err(e)?.iter().sum();
        }
        Ok(out)
    }

    /// Packets of listener `index` dropped, per reason (`lb_common::reason`), summed over CPUs.
    pub fn listener_drops(&self, index: u32) -> Result<[u64; reason::COUNT as usize]> {
        let mut out = [0u64; reason::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let e = self.err("LISTENER_DROPS");
            let key = index * reason::COUNT + i as u32;
            *o = self.listener_drops.get(&key, 0).map_err(e)?.iter().sum();
        }
        Ok(out)
    }

    /// Connection-log events of listener `index` lost to a full ring, summed over CPUs.
    pub fn conn_log_lost(&self, index: u32) -> Result<u64> {
        let Some(lost) = &self.conn_log_lost else {
            return Ok(0);
        };
        let e = self.err("CONN_LOG_LOST");
        Ok(lost.get(&index, 0).map_err(e)?.iter().sum())
    }

    /// What the daemon's last sweep (at most a second ago while it runs) found and did.
    pub fn last_sweep(&self) -> Result<SweepReport> {
        let e = self.err("SWEEP");
        self.sweep.get(&0, 0).map_err(e)
    }

    /// Every conntrack entry (forward and reverse). Two syscalls per entry: for tests and
    /// small tables; the daemon's census is `last_sweep`.
    /// Every entry of the IPv6 conntrack table.
    pub fn flows6(&self) -> Vec<(lb_common::FlowKey6, lb_common::Flow6)> {
        match &self.conntrack6 {
            Some(m) => m.iter().filter_map(|r| r.ok()).collect(),
            None => Vec::new(),
        }
    }

    pub fn flow6(&self, key: &lb_common::FlowKey6) -> Option<lb_common::Flow6> {
        self.conntrack6.as_ref()?.get(key, 0).ok()
    }

    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        self.conntrack.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.conntrack.get(key, 0).ok()
    }
}
