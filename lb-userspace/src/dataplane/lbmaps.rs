//! A load balancer's own maps: made by the daemon at the sizes its configuration needs
//! (`Sizing`), from the schema table (`lb_common::schema::MAPS`), pinned under
//! `<bpffs>/<id>/`, and put at the load balancer's slot of the program set's outer maps,
//! where the shared programs find them.
//!
//! Memory follows the configuration, not lb's maxima: member arrays hold the members (with
//! room to grow, `schema::member_capacity`), pool arrays the pools, the conntrack table
//! `conntrack_flows`; only an IPv6 load balancer has IPv6 tables, only one with a persisting
//! pool a persistence table, only one whose daemon logs connections a ring. A reload that
//! needs more member or pool slots than the arrays hold grows them (`grow`): bigger maps,
//! the entries copied, switched in at the slot at once, counters that moved meanwhile
//! carried over.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use lb_common::schema::{self, map_type, Entries, Has, MapSchema};

use super::{
    pins,
    programs::ProgramSet,
    sys::{self, MapSpec},
    DataplaneError, Result,
};

/// What a load balancer's maps are sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Flows of its conntrack table.
    pub conntrack_flows: u32,
    /// Member indexes its member arrays hold.
    pub members: u32,
    /// Pool indexes its pool arrays hold.
    pub pools: u32,
    pub ipv6: bool,
    /// A pool with session persistence.
    pub persistence: bool,
    /// Its daemon logs connections (a ring).
    pub connection_log: bool,
}

impl Sizing {
    /// Room for `members` member indexes and `pools` pool indexes (the highest index a plan
    /// uses, plus one), rounded up with headroom.
    pub fn new(conntrack_flows: u32, members: u32, pools: u32, ipv6: bool) -> Sizing {
        Sizing {
            conntrack_flows,
            members: schema::member_capacity(members),
            pools: schema::pool_capacity(pools),
            ipv6,
            persistence: false,
            connection_log: false,
        }
    }

    /// `base` (its conntrack table, family and ring) with room for `plan`'s members and
    /// pools and its persistence.
    pub fn for_plan(base: &Sizing, plan: &crate::plan::Plan) -> Sizing {
        let mut s = Sizing::new(
            base.conntrack_flows,
            plan.member_span(),
            plan.pool_span(),
            base.ipv6,
        );
        s.persistence = plan
            .pools
            .iter()
            .any(|p| p.conf.flags & lb_common::POOL_F_PERSIST_SOURCE != 0);
        s.connection_log = base.connection_log;
        s
    }

    /// Whether a load balancer sized so has maps of kind `has`.
    pub fn has(&self, has: Has) -> bool {
        match has {
            Has::Always => true,
            Has::Ipv4 => !self.ipv6,
            Has::Ipv6 => self.ipv6,
            Has::Persistence => self.persistence,
            Has::ConnectionLog => self.connection_log,
        }
    }

    /// Entries of its map `m`.
    pub fn entries(&self, m: &MapSchema) -> u32 {
        match m.entries {
            Entries::Fixed(n) | Entries::Bytes(n) => n,
            Entries::Members => self.members,
            Entries::Pools => self.pools,
            Entries::Flows => self.conntrack_flows.saturating_mul(2),
        }
    }

    fn spec(&self, m: &MapSchema) -> MapSpec {
        MapSpec {
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: self.entries(m),
            flags: m.flags,
        }
    }
}

/// A load balancer's maps, open, by name.
pub type Own = HashMap<&'static str, OwnedFd>;

/// The maps `sizing` needs in `dir`: those pinned are checked (refused as a whole, naming
/// the map, if this build cannot use them) and reused, the others made and pinned. With
/// `fresh_ring`, the ring is made anew (a daemon starting: each reads its own). Kinds the
/// load balancer no longer has (a ring without a connection log, persistence no pool uses)
/// are unpinned.
pub fn ensure(dir: &Path, sizing: &Sizing, fresh_ring: bool) -> Result<Own> {
    let declared = pins::declared(sizing);
    pins::check(dir, &declared)?;
    pins::record(dir, &declared)?;
    let mut own = Own::new();
    for m in schema::MAPS {
        let path = dir.join(m.name);
        if !sizing.has(m.has) {
            if matches!(m.has, Has::ConnectionLog | Has::Persistence) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let fresh = fresh_ring && m.map_type == map_type::RINGBUF;
        let fd = if path.exists() && !fresh {
            sys::pinned(&path).map_err(|e| io(&path, "cannot open pinned", e))?
        } else {
            let fd = create(m, sizing, &path)?;
            let _ = std::fs::remove_file(&path);
            sys::pin(fd.as_fd(), &path).map_err(|e| io(&path, "cannot pin", e))?;
            fd
        };
        own.insert(m.name, fd);
    }
    Ok(own)
}

fn create(m: &MapSchema, sizing: &Sizing, path: &Path) -> Result<OwnedFd> {
    sys::map_create(&sizing.spec(m), m.name, None).map_err(|e| io(path, "cannot create", e))
}

/// Puts `own` at `slot` of `set`'s outer maps (the data path uses them from the next
/// packet on) and empties the slot's kinds the load balancer does not have.
pub fn register(set: &ProgramSet, slot: u32, own: &Own) -> Result<()> {
    let kinds: Vec<&MapSchema> = schema::MAPS.iter().filter(|m| m.data_path).collect();
    let changes: Vec<_> = kinds
        .iter()
        .map(|m| (set.outer(m.name), own.get(m.name).map(|fd| fd.as_fd())))
        .collect();
    for (m, r) in kinds.iter().zip(sys::set_slots(slot, &changes)) {
        r.map_err(|e| {
            io(
                &set.dir.join(format!("OF_{}", m.name)),
                "cannot set slot",
                e,
            )
        })?;
    }
    Ok(())
}

/// The entries of the member and pool arrays of `own` that `to` holds more of than they
/// do: made bigger, their entries copied, put at `slot` of `set` (atomically, for the data
/// path) and pinned in their place in `dir`. Counters the data path moved in the old maps
/// while they were copied are added to the new ones once no program can still hold the old
/// ones. Returns the names of the maps it replaced.
pub fn grow(
    dir: &Path,
    set: &ProgramSet,
    slot: u32,
    own: &mut Own,
    to: &Sizing,
) -> Result<Vec<&'static str>> {
    let mut grown = Vec::new();
    let mut copies: Vec<(&'static str, OwnedFd, Vec<Vec<u8>>)> = Vec::new();
    for m in schema::MAPS
        .iter()
        .filter(|m| matches!(m.entries, Entries::Members | Entries::Pools) && to.has(m.has))
    {
        let Some(old) = own.get(m.name) else { continue };
        let path = dir.join(m.name);
        let have = sys::map_info(old.as_fd())
            .map_err(|e| io(&path, "cannot read", e))?
            .max_entries;
        let want = to.entries(m);
        if have >= want {
            continue;
        }
        let new = create(m, to, &path)?;
        let snapshot =
            copy(m, old.as_fd(), new.as_fd(), have).map_err(|e| io(&path, "cannot copy", e))?;
        sys::set_inner(set.outer(m.name), slot, new.as_fd())
            .map_err(|e| io(&path, "cannot set slot", e))?;
        let _ = std::fs::remove_file(&path);
        sys::pin(new.as_fd(), &path).map_err(|e| io(&path, "cannot pin", e))?;
        let old = own.insert(m.name, new).expect("present");
        copies.push((m.name, old, snapshot));
        grown.push(m.name);
    }
    if !copies.is_empty() {
        // A program that looked the old map up before the switch finishes within
        // microseconds; what it added after the copy is carried over now.
        std::thread::sleep(std::time::Duration::from_millis(20));
        for (name, old, snapshot) in &copies {
            let m = schema::find(name).expect("a schema map");
            if counters(m) {
                carry(m, old.as_fd(), own[name].as_fd(), snapshot)
                    .map_err(|e| io(&dir.join(name), "cannot carry counters", e))?;
            }
        }
    }
    Ok(grown)
}

/// Whether the data path changes the map's values (counters) rather than the daemon alone.
fn counters(m: &MapSchema) -> bool {
    matches!(m.name, "MEMBER_LIVE" | "MEMBER_STATS")
}

/// The bytes of one entry as `BPF_MAP_LOOKUP_ELEM` gives them (per-CPU maps: one value per
/// possible CPU, each rounded up to 8 bytes).
fn value_len(m: &MapSchema) -> io::Result<usize> {
    let one = (m.value_size as usize).div_ceil(8) * 8;
    if map_type::per_cpu(m.map_type) {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(one * n)
    } else {
        Ok(m.value_size as usize)
    }
}

/// Copies entries `0..n` of array `from` into `to`; returns what it read.
fn copy(
    m: &MapSchema,
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    n: u32,
) -> io::Result<Vec<Vec<u8>>> {
    let len = value_len(m)?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut v = vec![0u8; len];
        // (A hash has no entry for an index no member had.)
        if sys::map_lookup(from, &i.to_ne_bytes(), &mut v)? {
            sys::map_update(to, &i.to_ne_bytes(), &v, 0)?;
        }
        out.push(v);
    }
    Ok(out)
}

/// Adds to each counter of `to` what it gained in `from` since `snapshot` was read (all
/// fields of both counter maps are 64-bit integers; wrapping arithmetic is exact for the
/// signed ones too).
fn carry(
    m: &MapSchema,
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    snapshot: &[Vec<u8>],
) -> io::Result<()> {
    let len = value_len(m)?;
    for (i, before) in snapshot.iter().enumerate() {
        let key = (i as u32).to_ne_bytes();
        let mut now = vec![0u8; len];
        if !sys::map_lookup(from, &key, &mut now)? || now == *before {
            continue;
        }
        let mut cur = vec![0u8; len];
        sys::map_lookup(to, &key, &mut cur)?;
        for w in 0..len / 8 {
            let r = w * 8..w * 8 + 8;
            let word = |b: &[u8]| u64::from_ne_bytes(b[r.clone()].try_into().unwrap());
            let v = word(&cur).wrapping_add(word(&now).wrapping_sub(word(before)));
            cur[r.clone()].copy_from_slice(&v.to_ne_bytes());
        }
        sys::map_update(to, &key, &cur, 0)?;
    }
    Ok(())
}

fn io(path: &Path, what: &'static str, source: io::Error) -> DataplaneError {
    DataplaneError::Io {
        what,
        path: path.into(),
        source,
    }
}
