//! Expiry and census of a load balancer's conntrack table, from userspace, in bounded chunks.
//!
//! One cycle walks the table with `BPF_MAP_LOOKUP_BATCH` ([`crate::batch`]), a chunk of
//! entries per syscall, and between chunks the caller may pause (the daemon's expiry thread
//! does, so a cycle over a large table is spread out and never holds a CPU for long). Per
//! forward entry: idle past its state's timeout (listener gone: at once) -> both entries
//! removed and, if it still counted, its member's and listener's `active` decremented;
//! otherwise it is counted in the census. Per reverse entry: removed once its forward entry is
//! gone and it has lingered (orphans, which only a race or a crash between two deletions
//! leaves). At the end, every counter no packet touched during the cycle (`events`
//! unchanged) is set to the census, so counters equal the table at quiescence whatever raced
//! before, and are 0 once every flow closed or expired.
//!
//! This replaced an in-kernel pass (`lb_sweep`, one `bpf_for_each_map_elem` through
//! BPF_PROG_TEST_RUN, which runs with bottom halves disabled): 0.90-0.93 s in one piece at 1M
//! flows (`cargo xtask bench`'s grid prints both numbers).

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData},
    Pod,
};
use lb_common::{
    Address, FlowG, FlowKeyG, Ip6, ListenerConf, ListenerKeyG, MemberConf, SweepReport,
    CLOSED_LINGER_NS, CT_UDP, FLOW_DIR_REVERSE, MAX_LISTENERS, MEMBER_F_CONFIGURED,
    MEMBER_F_ENABLED, MEMBER_F_UP,
};

use crate::{
    batch::{self, Cursor},
    dataplane::{open_map, DataplaneError, LiveArray},
};

/// Entries read per syscall: about 360 KiB of buffers, well under a millisecond of work.
pub const CHUNK: usize = 4096;

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Which counters a cycle censuses and corrects: the planned members, the retired member
/// slots still draining, and the planned listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub members: Vec<u32>,
    pub retired: Vec<u32>,
    pub listeners: Vec<u32>,
}

/// What one cycle found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Forward entries (flows) seen.
    pub flows: u64,
    /// Forward and reverse entries seen.
    pub entries: u64,
    pub expired: u64,
    pub orphans: u64,
    /// Counters set to the census.
    pub corrected: u64,
    /// Retired member slots that no flow names any more.
    pub freed: Vec<u32>,
    /// The whole cycle, pauses included.
    pub duration: Duration,
    /// The longest chunk (one syscall and its processing): the longest the cycle held a CPU.
    pub longest_chunk: Duration,
    /// False if `pause` stopped the cycle early: nothing was corrected or freed.
    pub complete: bool,
}

/// One family's conntrack table as the sweeper reads it: `CONNTRACK` with `LISTENERS`, or
/// `CONNTRACK6` with `LISTENERS6`.
struct Table<A: Address> {
    name: &'static str,
    conntrack: HashMap<MapData, FlowKeyG<A>, FlowG<A>>,
    /// The table again, for the batch syscall's file descriptor.
    fd: MapData,
    listeners: HashMap<MapData, ListenerKeyG<A>, ListenerConf>,
    keys: Vec<FlowKeyG<A>>,
    values: Vec<FlowG<A>>,
}

impl<A: Address + Pod> Table<A>
where
    FlowKeyG<A>: Pod,
    FlowG<A>: Pod,
    ListenerKeyG<A>: Pod,
{
    fn open(dir: &Path, name: &'static str, listeners: &str) -> Result<Self> {
        Ok(Table {
            name,
            conntrack: open_map(dir, name)?,
            fd: MapData::from_pin(dir.join(name)).map_err(|source| DataplaneError::Map {
                path: dir.join(name),
                source,
            })?,
            listeners: open_map(dir, listeners)?,
            keys: vec![FlowKeyG::default(); CHUNK],
            values: vec![FlowG::default(); CHUNK],
        })
    }

    /// Walks the table chunk by chunk (see `Sweeper::cycle`); false if `pause` stopped it.
    fn walk(&mut self, c: &mut Cycle<'_>, pause: &mut dyn FnMut(Duration) -> bool) -> Result<bool> {
        let listeners: StdHashMap<ListenerKeyG<A>, ListenerConf> =
            self.listeners.iter().filter_map(|r| r.ok()).collect();
        // Reverse entries no forward entry named in the last cycle: (reverse key, forward key).
        let mut candidates: Vec<(FlowKeyG<A>, FlowKeyG<A>)> = Vec::new();
        let mut cursor = Cursor::Start;
        while cursor != Cursor::Done {
            let chunk_start = Instant::now();
            let (n, next) = batch::lookup(
                self.fd.fd().as_fd(),
                cursor,
                &mut self.keys,
                &mut self.values,
            )
            .map_err(|e| DataplaneError::Io {
                what: "BPF_MAP_LOOKUP_BATCH on",
                path: c.dir.join(self.name),
                source: e,
            })?;
            cursor = next;
            let now = monotonic_ns();
            let mut due: Vec<FlowKeyG<A>> = Vec::new();
            for (key, flow) in self.keys[..n].iter().zip(&self.values[..n]) {
                c.out.entries += 1;
                if key.dir == FLOW_DIR_REVERSE {
                    let old = c
                        .named_since_ns
                        .is_some_and(|since| flow.created_ns < since);
                    if old
                        && now.saturating_sub(flow.last_seen_ns) > CLOSED_LINGER_NS
                        && c.last_named.binary_search(&fingerprint(key)).is_err()
                    {
                        candidates.push((*key, flow.forward_key()));
                    }
                    continue;
                }
                c.out.flows += 1;
                if ends(flow, &listeners, c.gone, now) {
                    due.push(*key);
                } else {
                    c.tally.live(flow);
                    c.named.push(fingerprint(&flow.reverse_key()));
                }
            }
            for key in &due {
                self.expire(key, &listeners, c)?;
            }
            c.out.longest_chunk = c.out.longest_chunk.max(chunk_start.elapsed());
            if cursor != Cursor::Done && !pause(chunk_start.elapsed()) {
                return Ok(false);
            }
        }
        c.named.sort_unstable();
        for (rkey, fkey) in candidates {
            if c.named.binary_search(&fingerprint(&rkey)).is_ok() {
                continue;
            }
            // Rare: confirm with the table itself before removing anything.
            let live = matches!(self.conntrack.get(&fkey, 0), Ok(f) if f.reverse_key() == rkey);
            if !live && self.conntrack.remove(&rkey).is_ok() {
                c.out.orphans += 1;
            }
        }
        Ok(true)
    }

    /// Removes a flow the chunk found due, unless a packet refreshed it since the chunk was
    /// read (the entry is read again first; a flow that came back to life is counted live).
    fn expire(
        &mut self,
        key: &FlowKeyG<A>,
        listeners: &StdHashMap<ListenerKeyG<A>, ListenerConf>,
        c: &mut Cycle<'_>,
    ) -> Result<()> {
        let Ok(flow) = self.conntrack.get(key, 0) else {
            return Ok(()); // closed and removed by the data path meanwhile
        };
        if !ends(&flow, listeners, c.gone, monotonic_ns()) {
            c.tally.live(&flow);
            c.named.push(fingerprint(&flow.reverse_key()));
            return Ok(());
        }
        let _ = self.conntrack.remove(&flow.reverse_key());
        // Only the caller whose delete succeeds stops counting the flow.
        if self.conntrack.remove(key).is_ok() {
            c.out.expired += 1;
            if flow.counted() {
                c.member_live.add_quiet(flow.member, -1);
                c.listener_live.add_quiet(flow.listener, -1);
            }
            if flow.half_open() {
                c.member_live.add_half_quiet(flow.member, -1);
                c.listener_live.add_half_quiet(flow.listener, -1);
            }
            if let Some(log) = c.log {
                if flow.state & lb_common::CT_LOG != 0 && !flow.is_closed() {
                    log.expired(&flow, monotonic_ns());
                }
            }
        }
        Ok(())
    }
}

/// One cycle's shared state, across both tables.
struct Cycle<'a> {
    dir: &'a Path,
    out: SweepOutcome,
    tally: Tally,
    /// Reverse keys (fingerprints) forward entries name, this cycle and the last whole one.
    named: Vec<u64>,
    last_named: &'a [u64],
    named_since_ns: Option<u64>,
    gone: &'a HashSet<u32>,
    member_live: &'a LiveArray,
    listener_live: &'a LiveArray,
    log: Option<&'a crate::connlog::Logger>,
}

/// The conntrack tables of one load balancer (IPv4 and IPv6) and the counters its census
/// corrects, opened from the pins (independent of the daemon's loaded programs).
pub struct Sweeper {
    dir: PathBuf,
    /// The load balancer's table (its family's; the other is None).
    v4: Option<Table<u32>>,
    /// None: maps pinned by a version of lb without IPv6.
    v6: Option<Table<Ip6>>,
    members: Array<MapData, MemberConf>,
    report: Array<MapData, SweepReport>,
    member_live: LiveArray,
    listener_live: LiveArray,
    /// Fingerprints of the reverse keys that forward entries named in the last whole cycle,
    /// sorted, and when that cycle started: a reverse entry older than that cycle and named by
    /// none is an orphan candidate.
    named: Vec<u64>,
    named_since_ns: Option<u64>,
    /// Where expired flows of logging listeners are logged.
    log: Option<std::sync::Arc<crate::connlog::Logger>>,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, which stamps flows.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A 64-bit fingerprint of a key (collisions only delay an orphan's removal).
fn fingerprint<A: Address>(k: &FlowKeyG<A>) -> u64 {
    let a = ((k.src_be.fold() as u64) << 32) | k.dst_be.fold() as u64;
    let b = ((k.sport_be as u64) << 48)
        | ((k.dport_be as u64) << 32)
        | ((k.proto as u64) << 8)
        | k.dir as u64;
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b;
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// What the census of one cycle counted.
struct Tally {
    member_open: StdHashMap<u32, i64>,
    member_half: StdHashMap<u32, i64>,
    member_refs: StdHashMap<u32, u64>,
    listener_open: [i64; MAX_LISTENERS as usize],
    listener_half: [i64; MAX_LISTENERS as usize],
}

impl Tally {
    fn new() -> Self {
        Tally {
            member_open: StdHashMap::new(),
            member_half: StdHashMap::new(),
            member_refs: StdHashMap::new(),
            listener_open: [0; MAX_LISTENERS as usize],
            listener_half: [0; MAX_LISTENERS as usize],
        }
    }

    fn live<A: Address>(&mut self, f: &FlowG<A>) {
        *self.member_refs.entry(f.member).or_default() += 1;
        if f.counted() {
            *self.member_open.entry(f.member).or_default() += 1;
            if let Some(l) = self.listener_open.get_mut(f.listener as usize) {
                *l += 1;
            }
        }
        if f.half_open() {
            *self.member_half.entry(f.member).or_default() += 1;
            if let Some(l) = self.listener_half.get_mut(f.listener as usize) {
                *l += 1;
            }
        }
    }
}

impl Sweeper {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Sweeper {
            dir: dir.into(),
            v4: Table::open(dir, "CONNTRACK", "LISTENERS").ok(),
            v6: Table::open(dir, "CONNTRACK6", "LISTENERS6").ok(),
            members: open_map(dir, "MEMBERS")?,
            report: open_map(dir, "SWEEP")?,
            member_live: LiveArray::open(&dir.join("MEMBER_LIVE"))?,
            listener_live: LiveArray::open(&dir.join("LISTENER_LIVE"))?,
            named: Vec::new(),
            named_since_ns: None,
            log: None,
        })
    }

    /// Flows this sweeper expires are logged there (their listener logs connections).
    pub fn with_log(mut self, log: Option<std::sync::Arc<crate::connlog::Logger>>) -> Self {
        self.log = log;
        self
    }

    fn map_err(&self, name: &str, source: aya::maps::MapError) -> DataplaneError {
        DataplaneError::Map {
            path: self.dir.join(name),
            source,
        }
    }

    /// One cycle over the whole of both tables. `pause` runs after every chunk but the last
    /// with the time that chunk took, and may sleep (the daemon's thread) or not (tests,
    /// benchmarks); returning false ends the cycle there (the load balancer is going away).
    pub fn cycle(
        &mut self,
        census: &Census,
        pause: &mut dyn FnMut(Duration) -> bool,
    ) -> Result<SweepOutcome> {
        let start = Instant::now();
        let started_ns = monotonic_ns();
        let members: Vec<u32> = census
            .members
            .iter()
            .chain(&census.retired)
            .copied()
            .collect();
        let before_m: Vec<u64> = members
            .iter()
            .map(|&m| self.member_live.get(m).events)
            .collect();
        let before_l: Vec<u64> = census
            .listeners
            .iter()
            .map(|&l| self.listener_live.get(l).events)
            .collect();
        // Members whose UDP flows end now: down, disabled, removed. A UDP flow is only a
        // mapping (no connection to keep, as LVS's `expire_nodest_conn`): the client's next
        // datagram opens a flow to a member that serves.
        let all_flags = MEMBER_F_CONFIGURED | MEMBER_F_ENABLED | MEMBER_F_UP;
        let gone: HashSet<u32> = census
            .members
            .iter()
            .copied()
            .filter(|&m| {
                self.members
                    .get(&m, 0)
                    .is_ok_and(|c| c.flags & all_flags != all_flags)
            })
            .chain(census.retired.iter().copied())
            .collect();
        let mut c = Cycle {
            dir: &self.dir,
            out: SweepOutcome::default(),
            tally: Tally::new(),
            named: Vec::with_capacity(self.named.len()),
            last_named: &self.named,
            named_since_ns: self.named_since_ns,
            gone: &gone,
            member_live: &self.member_live,
            listener_live: &self.listener_live,
            log: self.log.as_deref(),
        };
        let mut whole = true;
        if let Some(v4) = &mut self.v4 {
            whole = v4.walk(&mut c, pause)?;
        }
        if whole {
            if let Some(v6) = &mut self.v6 {
                whole = v6.walk(&mut c, pause)?;
            }
        }
        let Cycle {
            mut out,
            tally,
            mut named,
            ..
        } = c;
        if !whole {
            out.duration = start.elapsed();
            return Ok(out);
        }
        out.complete = true;
        named.sort_unstable();
        self.named = named;
        self.named_since_ns = Some(started_ns);

        // Drift correction, and the census for `lb stats` and retired slots.
        let live = |t: &StdHashMap<u32, i64>, i: u32| t.get(&i).copied().unwrap_or(0);
        for (&m, &b) in members.iter().zip(&before_m) {
            let open = live(&tally.member_open, m);
            let half = live(&tally.member_half, m);
            let refs = tally.member_refs.get(&m).copied().unwrap_or(0);
            self.member_live.set_census(m, open, half, refs);
            if self.member_live.correct(m, b, open, half) {
                out.corrected += 1;
            }
        }
        for (&l, &b) in census.listeners.iter().zip(&before_l) {
            let open = tally.listener_open.get(l as usize).copied().unwrap_or(0);
            let half = tally.listener_half.get(l as usize).copied().unwrap_or(0);
            self.listener_live.set_census(l, open, half, 0);
            if self.listener_live.correct(l, b, open, half) {
                out.corrected += 1;
            }
        }
        out.freed = census
            .retired
            .iter()
            .copied()
            .filter(|i| !tally.member_refs.contains_key(i))
            .collect();
        out.duration = start.elapsed();
        let report = SweepReport {
            flows: out.flows,
            expired: out.expired,
            orphans: out.orphans,
            cycle_us: out.duration.as_micros() as u64,
        };
        self.report
            .set(0, report, 0)
            .map_err(|e| self.map_err("SWEEP", e))?;
        Ok(out)
    }
}

/// Whether a cycle ends forward entry `flow`: its timeouts (`listeners` as the cycle read
/// them), or, for a UDP flow, its member being `gone` (down, disabled or removed).
fn ends<A: Address>(
    flow: &FlowG<A>,
    listeners: &StdHashMap<ListenerKeyG<A>, ListenerConf>,
    gone: &HashSet<u32>,
    now_ns: u64,
) -> bool {
    idle_past_timeout(flow, listeners, now_ns)
        || (flow.state & CT_UDP != 0 && gone.contains(&flow.member))
}

/// Whether forward entry `flow` has been idle longer than its state allows. A flow whose
/// listener is gone is no longer translated: it expires at once.
pub fn idle_past_timeout<A: Address>(
    flow: &FlowG<A>,
    listeners: &StdHashMap<ListenerKeyG<A>, ListenerConf>,
    now_ns: u64,
) -> bool {
    match listeners.get(&flow.listener_key()) {
        Some(l) => flow.expired(now_ns, l.timeout_member_connect_ns, l.timeout_data_ns),
        None => true,
    }
}

/// How long to wait between cycles for a table of `entries` entries: once a second up to
/// 200,000 entries (100,000 flows), then longer in proportion, at most 10 s. Expiry is that
/// much later than the timeouts at worst (timeouts are seconds to minutes); the sweep's CPU
/// stays bounded as the table grows.
pub fn interval(entries: u64) -> Duration {
    let secs = (entries as f64 / 200_000.0).clamp(1.0, 10.0);
    Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{
        Flow, FlowKey, ListenerKey, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_MEMBER, CT_RST, CT_SYN,
        CT_SYNACK, FLOW_DIR_FORWARD, IPPROTO_TCP,
    };

    fn listener() -> (ListenerKey, ListenerConf) {
        let key = ListenerKey::tcp(u32::from_ne_bytes([10, 0, 0, 250]), 22u16.to_be());
        let conf = ListenerConf {
            timeout_member_connect_ns: 5_000_000_000,
            timeout_data_ns: 50_000_000_000,
            ..Default::default()
        };
        (key, conf)
    }

    fn flow(state: u64, last_seen_ns: u64) -> Flow {
        Flow {
            vip_be: u32::from_ne_bytes([10, 0, 0, 250]),
            listener_port_be: 22u16.to_be(),
            state,
            last_seen_ns,
            ..Default::default()
        }
    }

    #[test]
    fn timeouts_follow_the_state_and_the_listener() {
        let listeners: StdHashMap<_, _> = [listener()].into_iter().collect();
        let s = 1_000_000_000u64;
        let t0 = 100 * s;
        let est = CT_SYN | CT_SYNACK | CT_ESTABLISHED;
        // (state, age since the SYN, idle since the last packet, expired)
        let cases = [
            (CT_SYN, 4 * s, 4 * s, false),
            (CT_SYN, 6 * s, 6 * s, true),
            // A handshake ends 5 s after its SYN, however recently the member (re)sent its
            // SYN-ACK.
            (CT_SYN | CT_SYNACK, 4 * s, 0, false),
            (CT_SYN | CT_SYNACK, 6 * s, 0, true),
            (est, 100 * s, 49 * s, false),
            (est, 100 * s, 51 * s, true),
            (est | CT_FIN_CLIENT | CT_FIN_MEMBER, 100 * s, 9 * s, false),
            (est | CT_FIN_CLIENT | CT_FIN_MEMBER, 100 * s, 11 * s, true),
            (CT_SYN | CT_RST, 100 * s, 9 * s, false),
        ];
        for (state, age, idle, expired) in cases {
            let mut f = flow(state, t0 - idle);
            f.created_ns = t0 - age;
            assert_eq!(
                idle_past_timeout(&f, &listeners, t0),
                expired,
                "state {state:#x}, age {age} ns, idle {idle} ns"
            );
        }
        assert!(
            idle_past_timeout(&flow(CT_SYN | CT_SYNACK, t0 - 1), &StdHashMap::new(), t0),
            "listener gone: expires at once"
        );
    }

    #[test]
    fn intervals_grow_with_the_table_within_bounds() {
        assert_eq!(interval(0), Duration::from_secs(1));
        assert_eq!(interval(200_000), Duration::from_secs(1));
        assert_eq!(interval(1_000_000), Duration::from_secs(5));
        assert_eq!(interval(2_000_000), Duration::from_secs(10));
        assert_eq!(interval(50_000_000), Duration::from_secs(10));
    }

    #[test]
    fn fingerprints_tell_directions_and_ports_apart() {
        let k = FlowKey {
            src_be: 1,
            dst_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto: IPPROTO_TCP,
            dir: FLOW_DIR_FORWARD,
            _pad: [0; 2],
        };
        let r = FlowKey {
            dir: FLOW_DIR_REVERSE,
            ..k
        };
        let p = FlowKey { sport_be: 5, ..k };
        assert_ne!(fingerprint(&k), fingerprint(&r));
        assert_ne!(fingerprint(&k), fingerprint(&p));
    }
}
