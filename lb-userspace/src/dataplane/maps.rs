//! Every read and write of a load balancer's pinned maps, by the daemon, `lb stats`, the
//! tests: typed, by name, from the pin directory.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use lb_common::{
    reason, Flow, FlowKey, ListenerConf, ListenerKey, MemberConf, PoolConf, PoolMembers, PoolSlot,
    Stats, SweepReport, MAX_POOL_MEMBERS,
};

use super::{live::LiveArray, DataplaneError, Result};

pub use lb_common::NO_MEMBER;

/// The pinned maps of one load balancer.
pub struct Maps {
    pub dir: PathBuf,
    /// The IPv4 tables (None: an IPv6 load balancer's).
    listeners: Option<HashMap<MapData, ListenerKey, ListenerConf>>,
    pools: Array<MapData, PoolConf>,
    pool_members: Array<MapData, PoolMembers>,
    members: Array<MapData, MemberConf>,
    member_stats: aya::maps::PerCpuHashMap<MapData, u32, Stats>,
    listener_stats: PerCpuArray<MapData, Stats>,
    verdicts: PerCpuArray<MapData, u64>,
    listener_drops: PerCpuArray<MapData, u64>,
    sweep: Array<MapData, SweepReport>,
    conntrack: Option<HashMap<MapData, FlowKey, Flow>>,
    source_table: Array<MapData, [u16; lb_common::select::SOURCE_TABLE_SIZE as usize]>,
    port: Array<MapData, lb_common::PortConf>,
    /// Connection-log events lost to a full ring, per listener.
    conn_log_lost: PerCpuArray<MapData, u64>,
    /// Listeners' allowed prefixes (None: an IPv6 load balancer's).
    allowed: Option<aya::maps::LpmTrie<MapData, lb_common::AllowedData, u32>>,
    /// The IPv6 maps (None: an IPv4 load balancer's).
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
            // The slots (after their members) before the count that walks them.
            self.set_pool_members(p.index, &p.members)?;
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

    /// After a change of one of pool `pool`'s members (weight, health, admin state): its
    /// slots take the members' weight and flags as `MEMBERS` has them, and a pool with a
    /// table (source hashing, round robin) gets it made again.
    pub fn refresh_source_table(&mut self, pool: u32) -> Result<()> {
        let e = self.err("POOLS");
        let mut conf = self.pools.get(&pool, 0).map_err(e)?;
        let indexes: Vec<u32> = self
            .pool_members(pool)?
            .iter()
            .map(|s| s.member as u32)
            .collect();
        self.set_pool_members(pool, &indexes)?;
        if conf.algorithm == lb_common::ALG_LEAST_CONNECTIONS {
            self.source_written.remove(&pool);
            return Ok(());
        }
        let slots = self.pool_members(pool)?;
        let mut members = Vec::with_capacity(conf.count as usize);
        for slot in 0..conf.count.min(MAX_POOL_MEMBERS) {
            let s = slots[slot as usize];
            let c = lb_common::select::Candidate {
                weight: s.weight as u32,
                flags: s.flags,
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
        self.member_stats
            .insert(i, per_cpu_zeros()?, 0)
            .map_err(e)?;
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
        self.conn_log_lost.set(i, per_cpu_zeros()?, 0).map_err(e)?;
        self.listener_live.reset(i);
        Ok(())
    }

    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Maps {
            dir: dir.into(),
            listeners: open_map(dir, "LISTENERS").ok(),
            pools: open_map(dir, "POOLS")?,
            pool_members: open_map(dir, "POOL_MEMBERS")?,
            members: open_map(dir, "MEMBERS")?,
            member_stats: open_map(dir, "MEMBER_STATS")?,
            listener_stats: open_map(dir, "LISTENER_STATS")?,
            verdicts: open_map(dir, "VERDICTS")?,
            listener_drops: open_map(dir, "LISTENER_DROPS")?,
            sweep: open_map(dir, "SWEEP")?,
            conntrack: open_map(dir, "CONNTRACK").ok(),
            source_table: open_map(dir, "SOURCE_TABLE")?,
            port: open_map(dir, "PORT")?,
            conn_log_lost: open_map(dir, "CONN_LOG_LOST")?,
            allowed: open_map(dir, "ALLOWED").ok(),
            listeners6: open_map(dir, "LISTENERS6").ok(),
            member_addr6: open_map(dir, "MEMBER_ADDR6").ok(),
            conntrack6: open_map(dir, "CONNTRACK6").ok(),
            allowed6: open_map(dir, "ALLOWED6").ok(),
            source_written: Default::default(),
            member_live: LiveArray::open(&dir.join("MEMBER_LIVE"))?,
            listener_live: LiveArray::open(&dir.join("LISTENER_LIVE"))?,
        })
    }

    fn err(&self, name: &str) -> impl FnOnce(MapError) -> DataplaneError + 'static {
        let path = self.dir.join(name);
        move |source| DataplaneError::Map { path, source }
    }

    pub fn set_listener(&mut self, key: ListenerKey, conf: ListenerConf) -> Result<()> {
        let e = self.err("LISTENERS");
        let Some(map) = &mut self.listeners else {
            return Err(e(MapError::InvalidName {
                name: "LISTENERS (an IPv6 load balancer has none)".into(),
            }));
        };
        map.insert(key, conf, 0).map_err(e)
    }

    pub fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        let e = self.err("LISTENERS");
        let Some(map) = &mut self.listeners else {
            return Ok(());
        };
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(x) => Err(e(x)),
        }
    }

    pub fn listeners(&self) -> Vec<(ListenerKey, ListenerConf)> {
        match &self.listeners {
            Some(m) => m.iter().filter_map(|r| r.ok()).collect(),
            None => Vec::new(),
        }
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
            None => self.listeners.as_ref()?.get(&l.key, 0).ok(),
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

    /// Pool `index`'s slots: the member index in each (`NO_MEMBER` as u32: none), with the
    /// weight and flags `MEMBERS` has for it now.
    pub fn set_pool_members(&mut self, index: u32, members: &[u32]) -> Result<()> {
        let mut v: PoolMembers = [PoolSlot::default(); MAX_POOL_MEMBERS as usize];
        for (s, &i) in v.iter_mut().zip(members) {
            let Ok(member) = u16::try_from(i) else {
                continue;
            };
            if member == NO_MEMBER {
                continue;
            }
            let m = self.member(i)?;
            *s = PoolSlot {
                member,
                weight: m.weight,
                flags: m.flags,
            };
        }
        let e = self.err("POOL_MEMBERS");
        self.pool_members.set(index, v, 0).map_err(e)
    }

    pub fn pool_members(&self, index: u32) -> Result<PoolMembers> {
        let e = self.err("POOL_MEMBERS");
        self.pool_members.get(&index, 0).map_err(e)
    }

    pub fn set_pool(&mut self, index: u32, conf: PoolConf) -> Result<()> {
        let e = self.err("POOLS");
        self.pools.set(index, conf, 0).map_err(e)
    }

    /// Writes member `index`'s entry, and its pool slot's copy of its weight and flags.
    pub fn set_member(&mut self, index: u32, conf: MemberConf) -> Result<()> {
        let e = self.err("MEMBERS");
        self.members.set(index, conf, 0).map_err(e)?;
        let Ok(mut slots) = self.pool_members(conf.pool) else {
            return Ok(());
        };
        let Some(s) = slots.iter_mut().find(|s| s.member as u32 == index) else {
            return Ok(());
        };
        if (s.weight, s.flags) != (conf.weight, conf.flags) {
            (s.weight, s.flags) = (conf.weight, conf.flags);
            let e = self.err("POOL_MEMBERS");
            self.pool_members.set(conf.pool, slots, 0).map_err(e)?;
        }
        Ok(())
    }

    pub fn member(&self, index: u32) -> Result<MemberConf> {
        let e = self.err("MEMBERS");
        self.members.get(&index, 0).map_err(e)
    }

    pub fn member_stats(&self, index: u32) -> Result<Stats> {
        let e = self.err("MEMBER_STATS");
        match self.member_stats.get(&index, 0) {
            Ok(v) => Ok(sum_stats(&v)),
            // A member index that never served has no entry yet.
            Err(MapError::KeyNotFound) => Ok(Stats::default()),
            Err(x) => Err(e(x)),
        }
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
        let e = self.err("CONN_LOG_LOST");
        Ok(self.conn_log_lost.get(&index, 0).map_err(e)?.iter().sum())
    }

    /// What the daemon's last sweep (at most a second ago while it runs) found and did.
    pub fn last_sweep(&self) -> Result<SweepReport> {
        let e = self.err("SWEEP");
        self.sweep.get(&0, 0).map_err(e)
    }

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

    /// Every conntrack entry (forward and reverse). Two syscalls per entry: for tests and
    /// small tables; the daemon's census is `last_sweep`.
    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        match &self.conntrack {
            Some(m) => m.iter().filter_map(|r| r.ok()).collect(),
            None => Vec::new(),
        }
    }

    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.conntrack.as_ref()?.get(key, 0).ok()
    }

    /// Replaces the conntrack entry at `key` (tests: a flow's clock moved back).
    pub fn set_flow(&mut self, key: &FlowKey, flow: Flow) -> Result<()> {
        let e = self.err("CONNTRACK");
        let Some(map) = &mut self.conntrack else {
            return Err(e(MapError::InvalidName {
                name: "CONNTRACK (an IPv6 load balancer has none)".into(),
            }));
        };
        map.insert(key, flow, 0).map_err(e)
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
        // A pinned program (a stub) opens as a map too: BPF_OBJ_GET returns any object, and
        // its info, read as a map's, gave an XDP stub as a per-CPU array of 7e11 bytes. The
        // fdinfo says which it is.
        let Ok(map) = MapData::from_pin(&path) else {
            continue; // a link, or not a BPF object
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
        let info = format!("/proc/self/fdinfo/{fd}");
        let text = std::fs::read_to_string(&info).map_err(io("cannot read", Path::new(&info)))?;
        if !text.lines().any(|l| l.starts_with("map_type:")) {
            continue; // a pinned program
        }
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

/// What a load balancer's maps take from the kernel: the `memlock` the kernel charges each
/// (what a table without preallocation uses now, the rest as sized), and, of that, the part
/// per-CPU maps take per CPU (it grows with the node's CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub bytes: u64,
    /// Bytes per possible CPU of its per-CPU maps (included in `bytes`, times `cpus`).
    pub per_cpu_bytes: u64,
    /// Possible CPUs of this node.
    pub cpus: u32,
}

impl Memory {
    /// `bytes` on a node with `cpus` CPUs.
    pub fn with_cpus(&self, cpus: u32) -> u64 {
        let fixed = self
            .bytes
            .saturating_sub(self.per_cpu_bytes * self.cpus as u64);
        fixed + self.per_cpu_bytes * cpus as u64
    }
}

/// The memory of the maps pinned under `dir` (a load balancer's).
pub fn memory(dir: &Path) -> Result<Memory> {
    let cpus = aya::util::nr_cpus().map_err(|(path, source)| DataplaneError::Io {
        what: "cannot count the possible CPUs in",
        path: path.into(),
        source,
    })? as u32;
    let mut m = Memory {
        cpus,
        ..Memory::default()
    };
    for (name, bytes) in map_memory(dir)? {
        m.bytes += bytes;
        let Ok(info) = aya::maps::MapInfo::from_pin(dir.join(&name)) else {
            continue;
        };
        let ty = info.map_type().map(|t| t as u32).unwrap_or(0);
        if lb_common::schema::map_type::per_cpu(ty) {
            let value = (info.value_size() as u64).div_ceil(8) * 8;
            m.per_cpu_bytes += value * info.max_entries() as u64;
        }
    }
    Ok(m)
}
