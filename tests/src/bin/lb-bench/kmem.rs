//! The kernel memory load balancers hold, for the control-plane table: what the kernel charges
//! (`memlock`) to each map pinned in a load balancer's directory (`lb::dataplane::map_memory`),
//! what is pinned beside those directories once for the node, and what the daemons hold that
//! is pinned nowhere (their programs, maps that live as long as one load). A per-CPU map's
//! charge grows with the CPUs the kernel could bring up, so each object also carries that
//! part, to say what the same load balancer holds on a bigger node.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{MapInfo, MapType};

/// One map or program the kernel charges memory for.
#[derive(Clone, Debug)]
pub struct Object {
    /// The pin's path under the load balancer's or the node's directory, else the kernel's name.
    pub name: String,
    /// The map type (`PerCpuArray`, `Hash`, ...) or `program`.
    pub kind: String,
    pub id: u32,
    pub bytes: u64,
    /// The part of `bytes` that is one value per possible CPU (per-CPU map types).
    pub per_cpu: u64,
}

/// The CPUs the kernel could bring up (`/sys/devices/system/cpu/possible`): what a per-CPU map
/// allocates for.
pub fn possible_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))
        .context("counting the possible CPUs")
}

/// A map's object: its kernel charge `bytes`, and of that what one value per possible CPU
/// takes (`round_up(value_size, 8) * max_entries * cpus`, the kernel's sizing of a per-CPU
/// map's values; capped at `bytes` for a hash holding fewer than `max_entries`).
fn map_object(name: String, info: &MapInfo, bytes: u64, cpus: usize) -> Object {
    let kind = info.map_type().ok();
    let per_cpu = match kind {
        Some(
            MapType::PerCpuArray
            | MapType::PerCpuHash
            | MapType::LruPerCpuHash
            | MapType::PerCpuCgroupStorage,
        ) => {
            let value = u64::from(info.value_size()).div_ceil(8) * 8;
            (value * u64::from(info.max_entries()) * cpus as u64).min(bytes)
        }
        _ => 0,
    };
    Object {
        name,
        kind: kind.map_or_else(|| "unknown map".into(), |k| format!("{k:?}")),
        id: info.id(),
        bytes,
        per_cpu,
    }
}

/// The anon-inode name of a BPF descriptor (`bpf-map`, `bpf-prog`, `bpf_link`) and its fdinfo.
fn describe(fd_link: &Path, fdinfo: &Path) -> Option<(String, String)> {
    let kind = std::fs::read_link(fd_link).ok()?;
    let kind = kind
        .to_string_lossy()
        .strip_prefix("anon_inode:")?
        .to_string();
    Some((kind, std::fs::read_to_string(fdinfo).ok()?))
}

/// What is pinned at `path` (see `describe`). aya's `MapData::from_pin` serves as the plain
/// BPF_OBJ_GET: the kernel answers its info query for programs and links too.
fn open_pin(path: &Path) -> Option<(String, String)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let pin = aya::maps::MapData::from_pin(path).ok()?;
    let fd = pin.fd().as_fd().as_raw_fd();
    describe(
        Path::new(&format!("/proc/self/fd/{fd}")),
        Path::new(&format!("/proc/self/fdinfo/{fd}")),
    )
}

/// A number of an fdinfo text (`memlock:`, `map_id:`, `prog_id:`).
fn field(fdinfo: &str, key: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A program's object from its fdinfo, named `name`.
fn program_object(name: String, fdinfo: &str) -> Object {
    Object {
        name,
        kind: PROGRAM.into(),
        id: field(fdinfo, "prog_id:") as u32,
        bytes: field(fdinfo, "memlock:"),
        per_cpu: 0,
    }
}

/// The kind of a program's object.
pub const PROGRAM: &str = "program";

/// The maps pinned in `dir` itself, with the kernel's charge and type. `prefix` names them.
fn pinned_maps(dir: &Path, prefix: &str, cpus: usize) -> anyhow::Result<Vec<Object>> {
    let charged = lb::dataplane::map_memory(dir)
        .with_context(|| format!("reading the maps pinned in {}", dir.display()))?;
    let mut out = Vec::new();
    for (name, bytes) in charged {
        let path = dir.join(&name);
        // `map_memory` takes whatever BPF_OBJ_GET opens for a map; a pinned link opens too.
        if open_pin(&path).is_none_or(|(kind, _)| kind != "bpf-map") {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("map info of {}", path.display()))?;
        out.push(map_object(format!("{prefix}{name}"), &info, bytes, cpus));
    }
    Ok(out)
}

/// Every map and program pinned under `dir`, its subdirectories included except those named
/// in `skip` (links and other pins are charged no memory of their own).
fn pinned_tree(
    dir: &Path,
    prefix: &str,
    cpus: usize,
    skip: &[&str],
) -> anyhow::Result<Vec<Object>> {
    let mut out = pinned_maps(dir, prefix, cpus)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let name = format!("{prefix}{file}");
        if path.is_dir() {
            if !skip.contains(&file.as_str()) {
                out.extend(pinned_tree(&path, &format!("{name}/"), cpus, &[])?);
            }
        } else if let Some((_, fdinfo)) = open_pin(&path).filter(|(k, _)| k == "bpf-prog") {
            out.push(program_object(name, &fdinfo));
        }
    }
    Ok(out)
}

/// The maps and programs process `pid` holds descriptors of, each once, from its fdinfo.
fn held(pid: u32, cpus: usize) -> anyhow::Result<Vec<Object>> {
    let programs: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    let fds = format!("/proc/{pid}/fd");
    let mut out: BTreeMap<(bool, u32), Object> = BTreeMap::new();
    for entry in std::fs::read_dir(&fds).with_context(|| format!("listing {fds}"))? {
        let fd = entry?.file_name().to_string_lossy().into_owned();
        let Some((kind, fdinfo)) = describe(
            Path::new(&format!("{fds}/{fd}")),
            Path::new(&format!("/proc/{pid}/fdinfo/{fd}")),
        ) else {
            continue; // not a BPF object, or closed meanwhile
        };
        let object = match kind.as_str() {
            "bpf-map" => {
                let id = field(&fdinfo, "map_id:") as u32;
                let info = MapInfo::from_id(id).with_context(|| format!("map info of map {id}"))?;
                let name = info.name_as_str().unwrap_or("").to_string();
                map_object(name, &info, field(&fdinfo, "memlock:"), cpus)
            }
            "bpf-prog" => {
                let id = field(&fdinfo, "prog_id:") as u32;
                program_object(programs.get(&id).cloned().unwrap_or_default(), &fdinfo)
            }
            _ => continue,
        };
        out.insert((object.kind != PROGRAM, object.id), object);
    }
    Ok(out.into_values().collect())
}

/// What the load balancers of one node hold in the kernel.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Per load balancer, the maps and programs pinned in `<bpffs>/<id>/`.
    pub per_lb: Vec<Vec<Object>>,
    /// Pinned under the bpffs root outside the load balancers' directories: the node's, shared
    /// by all of them.
    pub node_wide: Vec<Object>,
    /// The names under the bpffs root that are not a load balancer's directory.
    pub outside: Vec<String>,
    /// Held by the daemons and pinned nowhere (programs, maps of one load), each object once.
    pub unpinned: Vec<Object>,
    /// The possible CPUs the per-CPU parts are sized for.
    pub cpus: usize,
}

impl Memory {
    /// Load balancers `ids` pinned under `bpffs`, served by daemons `pids`.
    pub fn of(bpffs: &Path, ids: &[&str], pids: &[u32]) -> anyhow::Result<Memory> {
        let cpus = possible_cpus()?;
        let per_lb = ids
            .iter()
            .map(|id| pinned_tree(&bpffs.join(id), &format!("{id}/"), cpus, &[]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Other load balancers on the node (a directory with a SCHEMA pin) are neither these
        // nor the node's.
        let names: Vec<String> = std::fs::read_dir(bpffs)
            .with_context(|| format!("listing {}", bpffs.display()))?
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        let others: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !ids.contains(n) && bpffs.join(n).join("SCHEMA").exists())
            .collect();
        let outside = names
            .iter()
            .filter(|n| !ids.contains(&n.as_str()) && !others.contains(&n.as_str()))
            .cloned()
            .collect();
        let skip: Vec<&str> = ids.iter().copied().chain(others.iter().copied()).collect();
        let node_wide = pinned_tree(bpffs, "", cpus, &skip)?;
        let pinned: BTreeSet<(bool, u32)> = per_lb
            .iter()
            .flatten()
            .chain(&node_wide)
            .map(|o| (o.kind != PROGRAM, o.id))
            .collect();
        let mut unpinned: BTreeMap<(bool, u32), Object> = BTreeMap::new();
        for &pid in pids {
            for o in held(pid, cpus)? {
                let key = (o.kind != PROGRAM, o.id);
                if !pinned.contains(&key) {
                    unpinned.insert(key, o);
                }
            }
        }
        Ok(Memory {
            per_lb,
            node_wide,
            outside,
            unpinned: unpinned.into_values().collect(),
            cpus,
        })
    }

    /// The maps pinned in the directory of load balancer `i` (what its targets count).
    pub fn maps_of(&self, i: usize) -> Vec<&Object> {
        self.per_lb[i]
            .iter()
            .filter(|o| o.kind != PROGRAM)
            .collect()
    }

    /// Everything, once: every load balancer's pins, the node's, and what is pinned nowhere.
    pub fn all(&self) -> impl Iterator<Item = &Object> {
        self.per_lb
            .iter()
            .flatten()
            .chain(&self.node_wide)
            .chain(&self.unpinned)
    }
}

/// The bytes of `objects` on this node, and on a node with `cpus` possible CPUs: the per-CPU
/// parts scaled (`per_cpu / here * cpus`), the rest as is. `here` is this node's count.
pub fn bytes_at(objects: &[&Object], here: usize, cpus: usize) -> (u64, f64) {
    let total: u64 = objects.iter().map(|o| o.bytes).sum();
    let per_cpu: u64 = objects.iter().map(|o| o.per_cpu).sum();
    let scaled = (total - per_cpu) as f64 + per_cpu as f64 / here.max(1) as f64 * cpus as f64;
    (total, scaled)
}
