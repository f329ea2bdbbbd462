//! A load balancer's data path: the shared programs (loaded and verified once per node and
//! build, `programs`), its own maps (sized from its configuration, `lbmaps`), its slot in
//! the program set, and its stubs (`stub`), the programs attached to its port.
//!
//! `Dataplane` is one load balancer's handle (the daemon, `lb explain`, the tests); `Maps`
//! opens a load balancer's pinned maps by path, so the daemon, `lb stats` and the tests share
//! one way of reading them. Nothing here tears down on drop: a daemon that leaves keeps its
//! data path serving; `release` (teardown) gives the slot back.

pub mod cancel;
mod lbmaps;
mod live;
mod maps;
pub mod pins;
pub mod programs;
pub mod stub;
mod sys;
mod testrun;

use std::{
    collections::HashMap,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError},
    programs::{ProgramError, SchedClassifier, Xdp},
};

pub use lbmaps::Sizing;
pub use live::{LiveArray, SharedLive};
pub(crate) use maps::open_map;
pub use maps::{map_memory, memory, Maps, Memory, NO_MEMBER};
use programs::{ProgramSet, SetsLock};
use stub::Entry;
pub use testrun::ProgramRunner;

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
    #[error("cannot load the BPF object into {dir}")]
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
    Pins(#[from] pins::PinError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the program set {path} serves {slots} load balancers already, its most")]
    Full { path: PathBuf, slots: u32 },
    #[error("stopped while loading the data path (a signal to stop)")]
    Cancelled,
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// One load balancer's data path, its maps pinned in `pin_dir`.
pub struct Dataplane {
    pub maps: Maps,
    pin_dir: PathBuf,
    set: ProgramSet,
    slot: u32,
    own: lbmaps::Own,
    sizing: Sizing,
    /// Its stubs and the set's trivial program, as aya programs (attach, test runs).
    programs: HashMap<&'static str, aya::programs::Program>,
}

impl Dataplane {
    /// The data path of the load balancer pinned in `pin_dir` (its id is the directory's
    /// name; the program sets are under its parent): the build's program set, loaded and
    /// verified if this node has none yet; the load balancer's maps, made at `sizing` or
    /// reused where pinned (a restarted daemon keeps its flows) if they match this build
    /// (`pins::check`; otherwise nothing changes and the error names the map and the
    /// difference); its slot; its stubs.
    pub fn open(pin_dir: &Path, sizing: &Sizing) -> Result<Self> {
        std::fs::create_dir_all(pin_dir).map_err(|source| DataplaneError::Io {
            what: "cannot create pin directory",
            path: pin_dir.into(),
            source,
        })?;
        let root = pin_dir.parent().unwrap_or(Path::new("/"));
        let id = lb_id(pin_dir);
        let object = bpf_object()?;
        let lock = SetsLock::acquire(root)?;
        let set = ProgramSet::open_or_load(&lock, root, &object, sizing.ipv6)?;
        let own = lbmaps::ensure(pin_dir, sizing, true)?;
        let slot = set.claim_slot(&lock, &id)?;
        lbmaps::register(&set, slot, &own)?;
        let mut programs = HashMap::new();
        for entry in Entry::ALL {
            let path = pin_dir.join(stub_pin(entry, &set.hash, slot));
            if !path.exists() {
                let (current, entries) = set.stub_maps(entry);
                let fd = stub::load(entry, slot, current, entries).map_err(|source| {
                    DataplaneError::Io {
                        what: "cannot load the stub",
                        path: path.clone(),
                        source,
                    }
                })?;
                sys::pin(fd.as_fd(), &path).map_err(|source| DataplaneError::Io {
                    what: "cannot pin",
                    path: path.clone(),
                    source,
                })?;
            }
            programs.insert(entry.program(), from_pin(&path, entry.is_xdp())?);
        }
        programs.insert(
            "lb_peer_pass",
            from_pin(&set.dir.join("lb_peer_pass"), true)?,
        );
        drop(lock);
        let maps = Maps::open(pin_dir)?;
        Ok(Dataplane {
            maps,
            pin_dir: pin_dir.into(),
            set,
            slot,
            own,
            sizing: *sizing,
            programs,
        })
    }

    /// `open` for an IPv4 load balancer with room for a few members (the tests, the
    /// benchmarks; `write_plan` grows it).
    pub fn load(pin_dir: &Path, conntrack_flows: u32) -> Result<Self> {
        Self::open(pin_dir, &Sizing::new(conntrack_flows, 0, 0, false))
    }

    /// `load` for an IPv6 load balancer.
    pub fn load6(pin_dir: &Path, conntrack_flows: u32) -> Result<Self> {
        Self::open(pin_dir, &Sizing::new(conntrack_flows, 0, 0, true))
    }

    /// The program set's hash and this load balancer's slot in it.
    pub fn slot(&self) -> (&str, u32) {
        (&self.set.hash, self.slot)
    }

    pub fn sizing(&self) -> Sizing {
        self.sizing
    }

    /// Writes `plan` (see `Maps::write_plan`), growing the member and pool arrays first if
    /// it needs more than they hold. Returns whether maps were replaced (their users, which
    /// hold the old ones open, must open them again).
    pub fn write_plan(
        &mut self,
        new: &crate::plan::Plan,
        old: Option<&crate::plan::Plan>,
    ) -> Result<bool> {
        let mut to = Sizing::for_plan(&self.sizing, new);
        to.members = to.members.max(self.sizing.members);
        to.pools = to.pools.max(self.sizing.pools);
        let mut replaced = false;
        if to != self.sizing {
            let lock = SetsLock::acquire(self.root())?;
            if to.persistence != self.sizing.persistence {
                // A pool with persistence came (its table is made) or the last one went.
                let mut own = lbmaps::ensure(&self.pin_dir, &to, false)?;
                lbmaps::register(&self.set, self.slot, &own)?;
                if let Some(ring) = self.own.remove("CONN_LOG") {
                    own.insert("CONN_LOG", ring);
                }
                self.own = own;
            }
            let grown = lbmaps::grow(&self.pin_dir, &self.set, self.slot, &mut self.own, &to)?;
            drop(lock);
            self.sizing = to;
            if !grown.is_empty() {
                tracing::info!(pin_dir = %self.pin_dir.display(), maps = ?grown, members = to.members, pools = to.pools, "member and pool arrays grown");
                replaced = true;
            }
            self.maps = Maps::open(&self.pin_dir)?;
        }
        let new = crate::plan::with_udp_shares(new, self.sizing.conntrack_flows);
        self.maps.write_plan(&new, old)?;
        Ok(replaced)
    }

    /// Gives up this load balancer's slots in the program sets of other builds (a takeover
    /// by another build, once its stubs are attached) and the stubs of those sets.
    pub fn retire_others(&self) -> Result<()> {
        programs::release(self.root(), &lb_id(&self.pin_dir), Some(&self.set.hash))?;
        let current: Vec<String> = Entry::ALL
            .iter()
            .map(|e| stub_pin(*e, &self.set.hash, self.slot))
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("stub_") && !current.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn root(&self) -> &Path {
        self.pin_dir.parent().unwrap_or(Path::new("/"))
    }

    /// The connection log's ring of this load balancer (made by this `open`; see
    /// `crate::connlog`). Once: later calls return None.
    pub fn take_conn_log(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let fd = self.own.remove("CONN_LOG")?;
        let data = MapData::from_fd(fd).ok()?;
        aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)).ok()
    }

    /// XDP program `name` ("lb": this load balancer's stub; "lb_peer_pass").
    pub fn xdp(&mut self, name: &str) -> &mut Xdp {
        self.program_mut(name)
            .try_into()
            .expect("an XDP program of the data path")
    }

    /// TC program `name` ("lb_tc", "lb_tc_fast": this load balancer's stubs).
    pub fn tc(&mut self, name: &str) -> &mut SchedClassifier {
        self.program_mut(name)
            .try_into()
            .expect("a TC program of the data path")
    }

    fn program_mut(&mut self, name: &str) -> &mut aya::programs::Program {
        self.programs
            .get_mut(name)
            .unwrap_or_else(|| panic!("program {name} is in the data path"))
    }

    /// A runner for program `name` ("lb", "lb_tc", "lb_tc_fast": through this load
    /// balancer's stub; "lb_peer_pass").
    pub fn runner(&self, name: &str) -> Result<ProgramRunner> {
        let err = |source| DataplaneError::Program {
            name: "test_run",
            source,
        };
        let fd = match self
            .programs
            .get(name)
            .ok_or(err(ProgramError::NotLoaded))?
        {
            aya::programs::Program::Xdp(p) => p.fd().map_err(err)?.as_fd(),
            aya::programs::Program::SchedClassifier(p) => p.fd().map_err(err)?.as_fd(),
            _ => return Err(err(ProgramError::NotLoaded)),
        };
        ProgramRunner::new(fd, name)
    }

    /// BPF_PROG_TEST_RUN of program `name` (see `runner`), `repeat` times, on the live maps.
    /// Returns the program's verdict, the packet as it left it, and the kernel's mean
    /// duration per run.
    pub fn test_run_program(
        &mut self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        self.runner(name)?
            .run_repeat(packet, None, repeat)
            .map_err(|source| DataplaneError::Io {
                what: "test run of",
                path: name.into(),
                source,
            })
    }

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

/// Gives up the slots of the load balancer pinned in `pin_dir` in every program set (the
/// data path can no longer reach its maps), and removes the sets left without load
/// balancers. Its pins stay (the caller removes them).
pub fn release(pin_dir: &Path) -> Result<()> {
    let root = pin_dir.parent().unwrap_or(Path::new("/"));
    programs::release(root, &lb_id(pin_dir), None).map(drop)
}

/// A load balancer's id: its pin directory's name.
fn lb_id(pin_dir: &Path) -> String {
    pin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The pin name of `entry`'s stub for `slot` of the set `hash`.
fn stub_pin(entry: Entry, hash: &str, slot: u32) -> String {
    format!("stub_{}_{}_{slot}", entry.program(), &hash[..8])
}

fn from_pin(path: &Path, xdp: bool) -> Result<aya::programs::Program> {
    let err = |source| DataplaneError::Program {
        name: "from pin",
        source,
    };
    Ok(if xdp {
        aya::programs::Program::Xdp(
            Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface).map_err(err)?,
        )
    } else {
        aya::programs::Program::SchedClassifier(SchedClassifier::from_pin(path).map_err(err)?)
    })
}
