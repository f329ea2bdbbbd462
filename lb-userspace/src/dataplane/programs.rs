//! The program set: lb's data path, loaded and verified once per node and build, shared by
//! every load balancer of the node.
//!
//! Verifying the data path costs seconds of CPU (about 300k instructions per entry point); a
//! load balancer costs none of it. The first load balancer of a build on a node loads the
//! object into `<bpffs>/.programs/<object hash>/`: the shared programs, their own maps
//! (`CURRENT`, `SCRATCH`, the IPv6 programs' tail-call arrays), one outer map per kind of
//! load-balancer map (`OF_<NAME>`, an array of maps by slot, made here from the schema
//! table before the loader runs so that the verifier sees lb's templates), the stubs' entry
//! arrays (`ENTRY_XDP`, `ENTRY_TC`), and `OWNERS` (slot -> load balancer), pinned last: a
//! set without it is an interrupted creation, made again. Every later load balancer of the
//! build opens the pins, takes a slot, puts its maps there and attaches its stubs (stub.rs).
//! The IPv6 programs are loaded into the set when its first IPv6 load balancer comes.
//!
//! Everything here happens under an exclusive flock of the bpffs directory (processes of
//! every kind: daemons, drop-ins, `lb explain`). The set goes when its last load balancer
//! does, and `@programs` with the last set.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{programs::Program, EbpfLoader};
use lb_common::{
    schema::{self, map_type, Entries},
    MAX_SLOTS,
};
use tracing::info;

use super::{
    stub::Entry,
    sys::{self, MapSpec},
    DataplaneError, Result,
};

/// The directory of every program set under a bpffs directory (bpffs refuses names with a
/// dot; load balancer ids have no `@`).
pub const SETS: &str = "@programs";

/// The IPv4 programs (and the trivial one), loaded when a set is made.
const IPV4_XDP: &[&str] = &["lb", "lb_peer_pass"];
const IPV4_TC: &[&str] = &["lb_tc", "lb_tc_fast"];
/// The IPv6 programs, with their slots in `V6_XDP` / `V6_TC`.
const IPV6_XDP: &[(&str, u32)] = &[("lb6", 0), ("lb6_icmp", 1), ("lb6_cookie", 2)];
const IPV6_TC: &[(&str, u32)] = &[("lb_tc6", 0), ("lb_tc6_icmp", 1), ("lb_tc6_cookie", 2)];
/// The set's own maps, which the loader creates and this module pins.
const OWN_MAPS: &[&str] = &["CURRENT", "SCRATCH", "V6_XDP", "V6_TC"];
/// Bytes of a load balancer's id kept in `OWNERS`.
const ID_BYTES: usize = 128;

/// FNV-1a, 64 bits: a build's object names its set.
pub fn object_hash(object: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in object {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The exclusive lock on every set under a bpffs directory, held while this process makes,
/// opens or changes one (released when dropped).
pub struct SetsLock {
    _dir: File,
}

impl SetsLock {
    pub fn acquire(root: &Path) -> Result<SetsLock> {
        let io = |what, source| DataplaneError::Io {
            what,
            path: root.into(),
            source,
        };
        let f = File::open(root).map_err(|e| io("cannot open", e))?;
        lock_fd(&f).map_err(|e| io("cannot lock", e))?;
        Ok(SetsLock { _dir: f })
    }
}

/// flock(2), exclusive, waiting: the lock belongs to the open file, released when it closes.
fn lock_fd(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An open program set.
pub struct ProgramSet {
    pub dir: PathBuf,
    pub hash: String,
    current: OwnedFd,
    entry_xdp: OwnedFd,
    entry_tc: OwnedFd,
    owners: OwnedFd,
    /// `OF_<NAME>` by the inner maps' name.
    outers: HashMap<&'static str, OwnedFd>,
}

impl ProgramSet {
    /// The set of `object` under `root`, made (programs verified) if it does not exist, with
    /// the IPv6 programs loaded if `ipv6`. The caller holds `_lock`.
    pub fn open_or_load(
        _lock: &SetsLock,
        root: &Path,
        object: &[u8],
        ipv6: bool,
    ) -> Result<ProgramSet> {
        let hash = object_hash(object);
        let dir = root.join(SETS).join(&hash);
        std::fs::create_dir_all(root.join(SETS)).map_err(|source| DataplaneError::Io {
            what: "cannot create",
            path: root.join(SETS),
            source,
        })?;
        if dir.exists() && !dir.join("OWNERS").exists() {
            // A creation that was interrupted: what it pinned is of no use.
            remove_dir(&dir);
        }
        let set = if dir.exists() {
            Self::open(&dir, &hash)?
        } else {
            let _loading = super::cancel::Loading::enter();
            info!(set = %hash, ipv6, "loading and verifying the data path for this node");
            let started = std::time::Instant::now();
            let r = Self::load(&dir, object, ipv6).and_then(|()| Self::open(&dir, &hash));
            if r.is_err() {
                remove_dir(&dir);
            }
            info!(set = %hash, ipv6, took_ms = started.elapsed().as_millis() as u64, "data path loaded and verified for this node");
            return r;
        };
        if ipv6 && !dir.join("lb6").exists() {
            let _loading = super::cancel::Loading::enter();
            info!(set = %hash, "loading and verifying the IPv6 programs for this node");
            let started = std::time::Instant::now();
            load_ipv6(&dir, object)?;
            info!(set = %hash, took_ms = started.elapsed().as_millis() as u64, "IPv6 programs loaded and verified for this node");
        }
        Ok(set)
    }

    /// Opens the set pinned in `dir`.
    pub fn open(dir: &Path, hash: &str) -> Result<ProgramSet> {
        let get = |name: &str| pinned(&dir.join(name));
        let mut outers = HashMap::new();
        for m in schema::MAPS.iter().filter(|m| m.data_path) {
            outers.insert(m.name, get(&format!("OF_{}", m.name))?);
        }
        Ok(ProgramSet {
            dir: dir.into(),
            hash: hash.into(),
            current: get("CURRENT")?,
            entry_xdp: get("ENTRY_XDP")?,
            entry_tc: get("ENTRY_TC")?,
            owners: get("OWNERS")?,
            outers,
        })
    }

    /// Makes the set in `dir`: outer maps, programs (verified now), entry arrays, owners.
    fn load(dir: &Path, object: &[u8], ipv6: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
            what: "cannot create",
            path: dir.into(),
            source,
        })?;
        create_outers(dir)?;
        let mut loader = EbpfLoader::new();
        let names: Vec<String> = schema::MAPS
            .iter()
            .filter(|m| m.data_path)
            .map(|m| format!("OF_{}", m.name))
            .collect();
        for n in &names {
            loader.map_pin_path(n.as_str(), dir.join(n));
        }
        let mut ebpf = loader.load(object).map_err(|e| load_error(dir, e))?;
        for name in OWN_MAPS {
            let map = ebpf.map(name).expect("the object declares it");
            map.pin(dir.join(name))
                .map_err(|e| pin_error(dir, name, e))?;
        }
        let ipv4: Vec<&'static str> = IPV4_XDP.iter().chain(IPV4_TC).copied().collect();
        verify(&mut ebpf, &ipv4)?;
        for &name in &ipv4 {
            let p = ebpf.program_mut(name).expect("the object declares it");
            p.pin(dir.join(name)).map_err(|e| pin_error(dir, name, e))?;
        }
        if ipv6 {
            load_ipv6_into(dir, &mut ebpf)?;
        }
        // The stubs' tail-call targets.
        let arrays = [
            ("ENTRY_XDP", &[Entry::Xdp][..]),
            ("ENTRY_TC", &[Entry::Tc, Entry::TcFast][..]),
        ];
        for (array, entries) in arrays {
            let spec = MapSpec {
                map_type: map_type::PROG_ARRAY,
                key_size: 4,
                value_size: 4,
                max_entries: 2,
                flags: 0,
            };
            let fd = sys::map_create(&spec, array, None).map_err(|e| io_err(dir, array, e))?;
            for e in entries {
                let prog = pinned(&dir.join(e.program()))?;
                set_prog(fd.as_fd(), e.index(), prog.as_fd()).map_err(|x| io_err(dir, array, x))?;
            }
            sys::pin(fd.as_fd(), &dir.join(array)).map_err(|e| io_err(dir, array, e))?;
        }
        // Last: its pin says the set is complete.
        let owners = MapSpec {
            map_type: map_type::HASH,
            key_size: 4,
            value_size: ID_BYTES as u32,
            max_entries: MAX_SLOTS,
            flags: schema::flags::NO_PREALLOC,
        };
        let fd = sys::map_create(&owners, "OWNERS", None).map_err(|e| io_err(dir, "OWNERS", e))?;
        sys::pin(fd.as_fd(), &dir.join("OWNERS")).map_err(|e| io_err(dir, "OWNERS", e))
    }

    /// This set's `CURRENT` and entry array for stubs of `entry`.
    pub fn stub_maps(&self, entry: Entry) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        let entries = if entry.is_xdp() {
            &self.entry_xdp
        } else {
            &self.entry_tc
        };
        (self.current.as_fd(), entries.as_fd())
    }

    /// The outer map of kind `name`.
    pub fn outer(&self, name: &str) -> BorrowedFd<'_> {
        self.outers[name].as_fd()
    }

    /// The slot of load balancer `id`, taken now if it has none. The caller holds the lock.
    pub fn claim_slot(&self, _lock: &SetsLock, id: &str) -> Result<u32> {
        let owners = self.owners()?;
        if let Some((&slot, _)) = owners.iter().find(|(_, o)| o.as_str() == id) {
            return Ok(slot);
        }
        let root = self.root();
        // Slots of load balancers whose pins are gone (a fixture's panic, a killed daemon
        // whose remains were removed by hand) are free again.
        for (&slot, owner) in &owners {
            if !root.join(owner).exists() {
                self.clear_slot(slot)?;
            }
        }
        let taken: Vec<u32> = self.owners()?.keys().copied().collect();
        let Some(slot) = (0..MAX_SLOTS).find(|s| !taken.contains(s)) else {
            return Err(DataplaneError::Full {
                path: self.dir.clone(),
                slots: MAX_SLOTS,
            });
        };
        let mut value = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        value[..n].copy_from_slice(&id.as_bytes()[..n]);
        sys::map_update(self.owners.as_fd(), &slot.to_ne_bytes(), &value, 0)
            .map_err(|e| io_err(&self.dir, "OWNERS", e))?;
        Ok(slot)
    }

    /// Slot -> load balancer id.
    pub fn owners(&self) -> Result<HashMap<u32, String>> {
        let keys =
            sys::map_keys_u32(self.owners.as_fd()).map_err(|e| io_err(&self.dir, "OWNERS", e))?;
        let mut out = HashMap::new();
        for k in keys {
            let mut v = [0u8; ID_BYTES];
            if sys::map_lookup(self.owners.as_fd(), &k.to_ne_bytes(), &mut v)
                .map_err(|e| io_err(&self.dir, "OWNERS", e))?
            {
                let end = v.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
                out.insert(k, String::from_utf8_lossy(&v[..end]).into_owned());
            }
        }
        Ok(out)
    }

    /// Empties `slot`: no map of it is reachable from the programs any more, and it is free.
    pub fn clear_slot(&self, slot: u32) -> Result<()> {
        let outers: Vec<_> = self.outers.iter().collect();
        let changes: Vec<_> = outers.iter().map(|(_, fd)| (fd.as_fd(), None)).collect();
        for ((name, _), r) in outers.iter().zip(sys::set_slots(slot, &changes)) {
            r.map_err(|e| io_err(&self.dir, name, e))?;
        }
        sys::map_delete(self.owners.as_fd(), &slot.to_ne_bytes())
            .map_err(|e| io_err(&self.dir, "OWNERS", e))
    }

    /// The bpffs directory of the load balancers this set serves.
    fn root(&self) -> PathBuf {
        self.dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Releases load balancer `id`'s slots in every set under `root` but the one named `keep`,
/// and removes the sets left without load balancers. Returns how many slots it released.
pub fn release(root: &Path, id: &str, keep: Option<&str>) -> Result<usize> {
    let sets = root.join(SETS);
    let Ok(entries) = std::fs::read_dir(&sets) else {
        return Ok(0);
    };
    let lock = SetsLock::acquire(root)?;
    let mut released = 0;
    let entries: Vec<_> = entries.flatten().collect();
    for e in entries {
        let hash = e.file_name().to_string_lossy().into_owned();
        if Some(hash.as_str()) == keep {
            continue;
        }
        let dir = e.path();
        let Ok(set) = ProgramSet::open(&dir, &hash) else {
            // Not a set (or one whose creation was interrupted): nothing can use it.
            remove_dir(&dir);
            continue;
        };
        for (slot, owner) in set.owners()? {
            if owner == id || !root.join(&owner).exists() {
                set.clear_slot(slot)?;
                released += usize::from(owner == id);
            }
        }
        if set.owners()?.is_empty() {
            drop(set);
            remove_dir(&dir);
            info!(set = %hash, "data path of this build unloaded: no load balancer uses it");
        }
    }
    // (Fails while a set is left.)
    let _ = std::fs::remove_dir(&sets);
    drop(lock);
    Ok(released)
}

/// Gives back the slots of load balancers whose pins are gone from `root` (removed by hand,
/// or by a cleanup that did not go through lb) and removes the sets left without load
/// balancers.
pub fn collect(root: &Path) -> Result<()> {
    // An id no load balancer has: only stale slots are released.
    release(root, "@", None).map(drop)
}

/// Loads the IPv6 programs into the set pinned in `dir` (made earlier without them).
fn load_ipv6(dir: &Path, object: &[u8]) -> Result<()> {
    let mut loader = EbpfLoader::new();
    let mut names: Vec<String> = schema::MAPS
        .iter()
        .filter(|m| m.data_path)
        .map(|m| format!("OF_{}", m.name))
        .collect();
    names.extend(OWN_MAPS.iter().map(|s| s.to_string()));
    for n in &names {
        loader.map_pin_path(n.as_str(), dir.join(n));
    }
    let mut ebpf = loader.load(object).map_err(|e| load_error(dir, e))?;
    load_ipv6_into(dir, &mut ebpf)
}

fn load_ipv6_into(dir: &Path, ebpf: &mut aya::Ebpf) -> Result<()> {
    let v6_xdp = pinned(&dir.join("V6_XDP"))?;
    let v6_tc = pinned(&dir.join("V6_TC"))?;
    let names: Vec<&'static str> = IPV6_XDP.iter().chain(IPV6_TC).map(|&(n, _)| n).collect();
    verify(ebpf, &names)?;
    let tables = IPV6_XDP
        .iter()
        .map(|e| (e, &v6_xdp, "V6_XDP"))
        .chain(IPV6_TC.iter().map(|e| (e, &v6_tc, "V6_TC")));
    // `lb6` last: its pin says the IPv6 programs are in.
    for (&(name, slot), table, table_name) in tables {
        let p = ebpf.program_mut(name).expect("the object declares it");
        let fd = p.fd().map_err(|source| prog_error(name, source))?;
        set_prog(table.as_fd(), slot, fd.as_fd()).map_err(|e| io_err(dir, table_name, e))?;
        if name != "lb6" {
            p.pin(dir.join(name)).map_err(|e| pin_error(dir, name, e))?;
        }
    }
    let p = ebpf.program_mut("lb6").expect("the object declares it");
    p.pin(dir.join("lb6")).map_err(|e| pin_error(dir, "lb6", e))
}

/// Loads (the kernel verifies) the programs `names` of `ebpf`, side by side: a thread each,
/// registered with `cancel` so that a SIGTERM stops every verification under way. The
/// kernel verifies programs of a privileged loader in parallel (its verifier lock is for
/// unprivileged ones), so the set is ready in about the time of its longest program, not
/// their sum, where the node has the cores.
fn verify(ebpf: &mut aya::Ebpf, names: &[&'static str]) -> Result<()> {
    go_on()?;
    let programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(n, _)| names.contains(n))
        .collect();
    std::thread::scope(|s| {
        let loads: Vec<_> = programs
            .into_iter()
            .map(|(name, p)| {
                let name = *names.iter().find(|n| **n == name).expect("filtered");
                s.spawn(move || {
                    let _loading = super::cancel::Loading::enter();
                    go_on()?;
                    let info = match p {
                        Program::Xdp(p) => p.load().and_then(|()| p.info()),
                        Program::SchedClassifier(p) => p.load().and_then(|()| p.info()),
                        _ => unreachable!("{name}: the set has XDP and TC programs only"),
                    };
                    let info = info.map_err(|source| prog_error(name, source))?;
                    verified(name, Ok(info));
                    Ok(())
                })
            })
            .collect();
        // Every thread is joined (the scope would anyway); the first error is returned.
        let mut first = Ok(());
        for l in loads {
            let r = l.join().unwrap_or_else(|_| {
                Err(DataplaneError::Io {
                    what: "verifying",
                    path: PathBuf::new(),
                    source: io::Error::other("a loading thread panicked"),
                })
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// The outer maps, each with its inner template made from the schema table.
fn create_outers(dir: &Path) -> Result<()> {
    for m in schema::MAPS.iter().filter(|m| m.data_path) {
        let template =
            sys::map_create(&template_spec(m), m.name, None).map_err(|e| io_err(dir, m.name, e))?;
        let outer = MapSpec {
            map_type: map_type::ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: MAX_SLOTS,
            flags: 0,
        };
        let name = format!("OF_{}", m.name);
        let fd = sys::map_create(&outer, &name, Some(template.as_fd()))
            .map_err(|e| io_err(dir, &name, e))?;
        sys::pin(fd.as_fd(), &dir.join(&name)).map_err(|e| io_err(dir, &name, e))?;
    }
    Ok(())
}

/// What every inner map of kind `m` must match: the kernel compares type, key and value
/// sizes and flags; the size only of arrays without `BPF_F_INNER_MAP` (the verifier inlines
/// their lookups with it).
pub fn template_spec(m: &schema::MapSchema) -> MapSpec {
    MapSpec {
        map_type: m.map_type,
        key_size: m.key_size,
        value_size: m.value_size,
        max_entries: match m.entries {
            Entries::Fixed(n) => n,
            Entries::Bytes(_) => 4096,
            Entries::Members | Entries::Pools | Entries::Flows => 1,
        },
        flags: m.flags,
    }
}

/// Logs how many instructions the verifier went through for program `name`.
fn verified(
    name: &str,
    info: std::result::Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) {
    if let Some(n) = info.ok().and_then(|i| i.verified_instruction_count()) {
        tracing::debug!(program = name, verified_instructions = n, "verified");
    }
}

fn set_prog(array: BorrowedFd<'_>, slot: u32, prog: BorrowedFd<'_>) -> io::Result<()> {
    sys::set_inner(array, slot, prog)
}

fn pinned(path: &Path) -> Result<OwnedFd> {
    sys::pinned(path).map_err(|source| DataplaneError::Io {
        what: "cannot open pinned",
        path: path.into(),
        source,
    })
}

/// Unpins everything under `dir` and removes it.
pub fn remove_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn io_err(dir: &Path, name: &str, source: io::Error) -> DataplaneError {
    DataplaneError::Io {
        what: "program set",
        path: dir.join(name),
        source,
    }
}

fn load_error(dir: &Path, e: aya::EbpfError) -> DataplaneError {
    DataplaneError::Load {
        dir: dir.into(),
        source: Box::new(e),
    }
}

fn prog_error(name: &'static str, source: aya::programs::ProgramError) -> DataplaneError {
    if super::cancel::cancelled() {
        return DataplaneError::Cancelled;
    }
    DataplaneError::Program { name, source }
}

/// Err(Cancelled) once loads are being stopped.
fn go_on() -> Result<()> {
    if super::cancel::cancelled() {
        Err(DataplaneError::Cancelled)
    } else {
        Ok(())
    }
}

fn pin_error(dir: &Path, name: &str, e: aya::pin::PinError) -> DataplaneError {
    DataplaneError::Io {
        what: "cannot pin",
        path: dir.join(name),
        source: io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod debug {
    /// Not a test: `cargo test -p lb-userspace verifier_log -- --ignored` writes the
    /// verifier's log of `lb` to /tmp/verifier-lb.log (investigating verification cost).
    #[test]
    #[ignore]
    fn verifier_log() {
        use aya::{programs::Xdp, EbpfLoader, VerifierLogLevel};
        let root = std::path::Path::new("/sys/fs/bpf");
        let dir = root.join("@programs").join("debug");
        let _ = std::fs::create_dir_all(&dir);
        super::create_outers(&dir).unwrap();
        let mut loader = EbpfLoader::new();
        let names: Vec<String> = lb_common::schema::MAPS
            .iter()
            .filter(|m| m.data_path)
            .map(|m| format!("OF_{}", m.name))
            .collect();
        for n in &names {
            loader.map_pin_path(n.as_str(), dir.join(n));
        }
        loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        let mut ebpf = loader.load(crate::dataplane::BPF_OBJECT).unwrap();
        let name = std::env::var("LB_DEBUG_PROG").unwrap_or("lb".into());
        let p: &mut Xdp = ebpf.program_mut(&name).unwrap().try_into().unwrap();
        let r = p.load();
        let text = match &r {
            Err(aya::programs::ProgramError::LoadError { verifier_log, .. }) => {
                verifier_log.to_string()
            }
            _ => format!("{r:?}"),
        };
        std::fs::write("/tmp/verifier-lb.log", text).unwrap();
        super::remove_dir(&dir);
    }
}
