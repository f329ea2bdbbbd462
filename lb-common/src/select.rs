//! Member selection: the one implementation the XDP program runs and the host tests exercise.
//!
//! Weighted least connections as HAProxy's `balance leastconn` does it: among members that are
//! configured, enabled, up and of weight > 0, the lowest `(active + 1) / weight`; ties go to the
//! first candidate in rotation order, and the caller rotates `start` on every pick. Backup
//! members are only considered when no primary member is available.
//!
//! A table per pool (`SOURCE_TABLE`, built by the daemon whenever a member's weight or state
//! changes, [`fill_table`]) serves the other algorithms:
//! - SOURCE_IP and SOURCE_IP_PORT: a weighted Maglev table ([`fill_maglev_table`]): every
//!   available member holds a share of entries proportional to its weight, and a member that
//!   goes or comes moves little more than its own share of clients (Maglev's minimal
//!   disruption); the hash of the client's address (and port) picks the entry;
//! - ROUND_ROBIN: the sequence of smooth weighted round robin ([`fill_rr_table`], nginx's):
//!   picks in proportion to the weights, spread out (equal weights alternate), over available
//!   members only, so a down member's turns go to everyone in proportion rather than doubling
//!   the share of the member after it; a rotation counter walks the table.

use crate::{
    ALG_LEAST_CONNECTIONS, MAX_POOL_MEMBERS, MEMBER_F_BACKUP, MEMBER_F_CONFIGURED,
    MEMBER_F_ENABLED, MEMBER_F_UP,
};
#[cfg(any(feature = "user", test))]
use crate::{ALG_ROUND_ROBIN, ALG_SOURCE_IP, ALG_SOURCE_IP_PORT};

/// Entries of a pool's source-hashing table (the `SOURCE_TABLE` map holds one per pool).
pub const SOURCE_TABLE_SIZE: u32 = 1024;
/// A table entry that names no member.
pub const SOURCE_NONE: u16 = u16::MAX;

/// The hash source hashing lands with: murmur3's 32-bit finalizer over the client address,
/// so that every bit of the address moves every bit of the hash (a multiplicative hash
/// leaves the low bits to the low bytes, and `% size` reads exactly those).
#[inline(always)]
pub fn client_hash(addr_be: u32) -> u32 {
    let mut h = addr_be;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash SOURCE_IP_PORT lands with: the client's address and port mixed (the VIP and the
/// listener port are the same for every client of a pool).
#[inline(always)]
pub fn client_port_hash(addr_be: u32, port_be: u16) -> u32 {
    client_hash(addr_be ^ (port_be as u32).wrapping_mul(0x9e37_79b1))
}

/// The members a pool's table is made of: the available primaries, or the available backups
/// when no primary is; (slot, weight) in slot order.
#[cfg(any(feature = "user", test))]
fn table_members(members: &[(u32, Candidate)]) -> std::vec::Vec<(u32, u32)> {
    let primary = |c: &Candidate| c.flags & MEMBER_F_BACKUP == 0;
    let any_primary = members.iter().any(|(_, c)| available(c) && primary(c));
    members
        .iter()
        .filter(|(_, c)| available(c) && primary(c) == any_primary)
        .map(|(s, c)| (*s, c.weight))
        .collect()
}

/// Fills pool table `table` for `algorithm` (see the module's notes); a table is filled with
/// `SOURCE_NONE` when no member is available, and left so for least connections. Returns the
/// entries in use (`PoolConf::table_len`).
#[cfg(any(feature = "user", test))]
pub fn fill_table(algorithm: u32, members: &[(u32, Candidate)], table: &mut [u16]) -> u32 {
    match algorithm {
        ALG_SOURCE_IP | ALG_SOURCE_IP_PORT => {
            fill_maglev_table(members, table);
            table.len() as u32
        }
        ALG_ROUND_ROBIN => fill_rr_table(members, table) as u32,
        _ => {
            table.iter_mut().for_each(|e| *e = SOURCE_NONE);
            0
        }
    }
}

#[cfg(any(feature = "user", test))]
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// SplitMix64's finalizer: a member slot's two Maglev hashes.
#[cfg(any(feature = "user", test))]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted Maglev (Eisenbud et al., NSDI 2016): each member walks its own permutation of
/// the table (an offset and an odd skip, coprime with the power-of-two size, from its slot
/// number: slots are stable across reloads) and takes the next free entry on each of its
/// turns; a member gets turns in proportion to its weight. A member that goes or comes
/// changes few entries besides its own.
#[cfg(any(feature = "user", test))]
pub fn fill_maglev_table(members: &[(u32, Candidate)], table: &mut [u16]) {
    let chosen = table_members(members);
    table.iter_mut().for_each(|e| *e = SOURCE_NONE);
    let m = table.len();
    if chosen.is_empty() || m == 0 {
        return;
    }
    debug_assert!(m.is_power_of_two());
    let max_w = chosen.iter().map(|(_, w)| *w).max().unwrap_or(1).max(1) as u64;
    let perm: std::vec::Vec<(usize, usize)> = chosen
        .iter()
        .map(|(slot, _)| {
            let h = mix64(*slot as u64 + 0x5eed);
            let offset = (h as usize) % m;
            let skip = ((mix64(h) as usize) % (m / 2).max(1)) * 2 + 1;
            (offset, skip)
        })
        .collect();
    let mut next = std::vec![0usize; chosen.len()];
    let mut credit = std::vec![0u64; chosen.len()];
    let mut filled = 0;
    while filled < m {
        for (i, (slot, w)) in chosen.iter().enumerate() {
            credit[i] += *w as u64;
            while credit[i] >= max_w && filled < m {
                credit[i] -= max_w;
                let (offset, skip) = perm[i];
                loop {
                    let e = (offset + next[i] * skip) % m;
                    next[i] += 1;
                    if table[e] == SOURCE_NONE {
                        table[e] = *slot as u16;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
}

/// Smooth weighted round robin (nginx's): each step adds every member's weight to its
/// credit and takes the member with the most (the first on a tie), which then pays the
/// total. With weights reduced by their common divisor the sequence repeats every `period`
/// (their sum) picks; the table holds as many whole periods as fit, so the walk wraps without
/// a seam, and returns its length. A period longer than the table (weights summing past
/// 1024) is scaled to the table (each available member keeps at least one turn).
#[cfg(any(feature = "user", test))]
pub fn fill_rr_table(members: &[(u32, Candidate)], table: &mut [u16]) -> usize {
    let chosen = table_members(members);
    table.iter_mut().for_each(|e| *e = SOURCE_NONE);
    let n = table.len() as u64;
    let g = chosen.iter().fold(0u64, |g, (_, w)| gcd(g, *w as u64));
    if chosen.is_empty() || n == 0 || g == 0 {
        return 0;
    }
    let mut weights: std::vec::Vec<u64> = chosen.iter().map(|(_, w)| *w as u64 / g).collect();
    let period: u64 = weights.iter().sum();
    let len = if period <= n {
        period * (n / period)
    } else {
        // Largest remainders: shares that sum to the table exactly.
        let total = period;
        let mut shares: std::vec::Vec<u64> = weights.iter().map(|w| w * n / total).collect();
        let mut rest: std::vec::Vec<(u64, usize)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (w * n % total, i))
            .collect();
        rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut left = n - shares.iter().sum::<u64>();
        for (_, i) in rest {
            if left == 0 {
                break;
            }
            shares[i] += 1;
            left -= 1;
        }
        for i in 0..shares.len() {
            if shares[i] == 0 {
                let big = (0..shares.len()).max_by_key(|&j| shares[j]).unwrap_or(0);
                shares[big] -= 1;
                shares[i] = 1;
            }
        }
        weights = shares;
        n
    };
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut credit = std::vec![0i64; chosen.len()];
    for e in table.iter_mut().take(len as usize) {
        let mut best = 0;
        for i in 0..chosen.len() {
            credit[i] += weights[i] as i64;
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        *e = chosen[best].0 as u16;
    }
    len as usize
}

/// What selection needs to know of one member slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    pub weight: u32,
    pub flags: u32,
    pub active: i64,
}

const NEEDED: u32 = MEMBER_F_CONFIGURED | MEMBER_F_ENABLED | MEMBER_F_UP;

#[inline(always)]
pub fn available(c: &Candidate) -> bool {
    c.flags & NEEDED == NEEDED && c.weight > 0
}

/// `a` is strictly less loaded than b: (a.active+1)/a.weight < (b_active+1)/b_weight.
#[inline(always)]
fn less_loaded(a: &Candidate, b_active: i64, b_weight: u32) -> bool {
    let aa = if a.active < 0 { 0 } else { a.active as u64 } + 1;
    let ba = if b_active < 0 { 0 } else { b_active as u64 } + 1;
    aa * (b_weight as u64) < ba * (a.weight as u64)
}

/// The selection as a step function, so the XDP program can drive it from `bpf_loop` (one
/// verified callback instead of 256 unrolled iterations) and the host from a plain loop.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Picker {
    count: u32,
    start: u32,
    exclude: u32,
    best_slot: u32,
    best_active: i64,
    backup_slot: u32,
    /// The pool's `error_limit`, for the caller that offers members (passive health: a
    /// member past it is offered as down); kept here so the data path's selection state is
    /// one value.
    limit: u32,
    backup_active: i64,
    /// Weights are 0..=256.
    best_weight: u16,
    backup_weight: u16,
    /// Least connections (else the first available member in rotation order).
    lc: u8,
    excluded: u8,
    _pad: u16,
}

const NONE: u32 = u32::MAX;

impl Picker {
    /// `start` rotates the scan (ties go to the first one seen); `exclude` (an id, or
    /// `u32::MAX`) is skipped unless it is the only choice left, which is how a redispatched
    /// SYN avoids the member that did not answer. `count` slots are visited (`slot`); what
    /// each is offered as (`offer`'s id: the slot itself, or the member index the data path
    /// finds there) is what `exclude` and `result` name.
    #[inline(always)]
    pub fn new(algorithm: u32, count: u32, start: u32, exclude: u32) -> Picker {
        let count = if count > MAX_POOL_MEMBERS { 0 } else { count };
        Picker {
            count,
            start: if count == 0 { 0 } else { start % count },
            exclude,
            best_slot: NONE,
            best_active: 0,
            backup_slot: NONE,
            limit: 0,
            backup_active: 0,
            best_weight: 0,
            backup_weight: 0,
            lc: (algorithm == ALG_LEAST_CONNECTIONS) as u8,
            excluded: 0,
            _pad: 0,
        }
    }

    /// The same picker, carrying the pool's error limit (see `limit`).
    #[inline(always)]
    pub fn with_limit(mut self, limit: u32) -> Picker {
        self.limit = limit;
        self
    }

    #[inline(always)]
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Slots to visit: `0..count()`.
    #[inline(always)]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The slot visited at step `i` (rotation from `start`).
    #[inline(always)]
    pub fn slot(&self, i: u32) -> u32 {
        let s = self.start + i;
        if s >= self.count {
            s - self.count
        } else {
            s
        }
    }

    /// Offers the member with id `slot` (see `new`).
    #[inline(always)]
    pub fn offer(&mut self, slot: u32, c: &Candidate) {
        if !available(c) {
            return;
        }
        if slot == self.exclude {
            self.excluded = 1;
            return;
        }
        let lc = self.lc != 0;
        if c.flags & MEMBER_F_BACKUP != 0 {
            if self.backup_slot == NONE
                || (lc && less_loaded(c, self.backup_active, self.backup_weight as u32))
            {
                self.backup_slot = slot;
                self.backup_weight = c.weight as u16;
                self.backup_active = c.active;
            }
        } else if self.best_slot == NONE
            || (lc && less_loaded(c, self.best_active, self.best_weight as u32))
        {
            self.best_slot = slot;
            self.best_weight = c.weight as u16;
            self.best_active = c.active;
        }
    }

    #[inline(always)]
    pub fn result(&self) -> Option<u32> {
        if self.best_slot != NONE {
            Some(self.best_slot)
        } else if self.backup_slot != NONE {
            Some(self.backup_slot)
        } else if self.excluded != 0 {
            Some(self.exclude)
        } else {
            None
        }
    }
}

/// Picks a slot in `0..count` (see `Picker`), asking `get` for each slot's state.
pub fn pick<F: FnMut(u32) -> Option<Candidate>>(
    algorithm: u32,
    count: u32,
    start: u32,
    exclude: u32,
    mut get: F,
) -> Option<u32> {
    let mut p = Picker::new(algorithm, count, start, exclude);
    for i in 0..p.count() {
        let slot = p.slot(i);
        if let Some(c) = get(slot) {
            p.offer(slot, &c);
        }
    }
    p.result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ALG_ROUND_ROBIN, MEMBER_F_BACKUP};

    const OK: u32 = MEMBER_F_CONFIGURED | MEMBER_F_ENABLED | MEMBER_F_UP;

    fn c(weight: u32, active: i64) -> Candidate {
        Candidate {
            weight,
            flags: OK,
            active,
        }
    }

    fn pick_from(members: &[Candidate], start: u32, exclude: u32) -> Option<u32> {
        pick(
            ALG_LEAST_CONNECTIONS,
            members.len() as u32,
            start,
            exclude,
            |i| members.get(i as usize).copied(),
        )
    }

    #[test]
    fn least_active_wins() {
        let m = [c(1, 3), c(1, 1), c(1, 2)];
        assert_eq!(pick_from(&m, 0, u32::MAX), Some(1));
        assert_eq!(pick_from(&m, 2, u32::MAX), Some(1));
    }

    #[test]
    fn weights_scale_load() {
        // 3 active on weight 3 is (3+1)/3 = 1.33; 1 active on weight 1 is 2: the heavy one wins.
        let m = [c(1, 1), c(3, 3)];
        assert_eq!(pick_from(&m, 0, u32::MAX), Some(1));
    }

    #[test]
    fn ties_rotate_with_start() {
        let m = [c(1, 0), c(1, 0), c(1, 0)];
        let picks: [_; 3] = core::array::from_fn(|s| pick_from(&m, s as u32, u32::MAX));
        assert_eq!(picks, [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn down_disabled_and_drained_members_are_never_chosen() {
        let mut down = c(1, 0);
        down.flags &= !MEMBER_F_UP;
        let mut disabled = c(1, 0);
        disabled.flags &= !MEMBER_F_ENABLED;
        let drained = c(0, 0);
        let m = [down, disabled, drained, c(1, 100)];
        for s in 0..4 {
            assert_eq!(pick_from(&m, s, u32::MAX), Some(3));
        }
        assert_eq!(pick_from(&m[..3], 0, u32::MAX), None);
    }

    #[test]
    fn backup_only_when_no_primary() {
        let mut b = c(1, 0);
        b.flags |= MEMBER_F_BACKUP;
        let mut down = c(1, 0);
        down.flags &= !MEMBER_F_UP;
        assert_eq!(pick_from(&[b, c(1, 50)], 0, u32::MAX), Some(1));
        assert_eq!(pick_from(&[b, down], 0, u32::MAX), Some(0));
    }

    #[test]
    fn exclude_is_last_resort() {
        let m = [c(1, 0), c(1, 5)];
        assert_eq!(pick_from(&m, 0, 0), Some(1));
        assert_eq!(pick_from(&m[..1], 0, 0), Some(0));
    }

    #[test]
    fn negative_drift_counts_as_zero() {
        let m = [c(1, -3), c(1, 0)];
        // Both count as idle: the tie goes to the rotation start.
        assert_eq!(pick_from(&m, 1, u32::MAX), Some(1));
    }

    #[test]
    fn round_robin_takes_first_available_from_start() {
        let m = [c(1, 9), c(1, 0), c(1, 0)];
        let r = pick(ALG_ROUND_ROBIN, 3, 0, u32::MAX, |i| {
            m.get(i as usize).copied()
        });
        assert_eq!(r, Some(0));
    }

    fn count(t: &[u16], s: u16) -> usize {
        t.iter().filter(|&&e| e == s).count()
    }

    /// Source hashing: each member's share of the Maglev table follows its weight (1:3,
    /// 1:1:8); backups only fill it when no primary is available; nothing available
    /// empties it; real client addresses (and ports) spread by the shares.
    #[test]
    fn maglev_tables_follow_the_weights() {
        let mut t = [0u16; SOURCE_TABLE_SIZE as usize];
        fill_maglev_table(&[(0, c(1, 0)), (1, c(3, 0))], &mut t);
        assert_eq!(count(&t, 0) + count(&t, 1), 1024);
        assert!((246..=266).contains(&count(&t, 0)), "{}", count(&t, 0));
        fill_maglev_table(&[(0, c(1, 0)), (1, c(1, 0)), (2, c(8, 0))], &mut t);
        for (s, want) in [(0, 102), (1, 102), (2, 819)] {
            let n = count(&t, s) as i64;
            assert!((n - want).abs() <= 10, "slot {s}: {n}, want ~{want}");
        }
        let mut b = c(1, 0);
        b.flags |= MEMBER_F_BACKUP;
        let mut down = c(5, 0);
        down.flags &= !MEMBER_F_UP;
        fill_maglev_table(&[(0, down), (4, b)], &mut t);
        assert_eq!(count(&t, 4), 1024, "the backup when no primary is up");
        fill_maglev_table(&[(0, c(1, 0)), (4, b)], &mut t);
        assert_eq!(count(&t, 0), 1024, "not while a primary is");
        fill_maglev_table(&[(0, down)], &mut t);
        assert_eq!(count(&t, SOURCE_NONE), 1024);
        fill_maglev_table(&[(0, c(1, 0)), (1, c(3, 0))], &mut t);
        let on_heavy = |hash: &dyn Fn(u32) -> u32| {
            (0..10_000u32)
                .filter(|&i| t[(hash(i) % SOURCE_TABLE_SIZE) as usize] == 1)
                .count()
        };
        let by_address = on_heavy(&|i| client_hash((0xc0a8_0000u32 + i).to_be()));
        assert!((7200..=7800).contains(&by_address), "{by_address}");
        let by_port =
            on_heavy(&|i| client_port_hash(0x0a00_0001u32.to_be(), (20000 + i as u16).to_be()));
        assert!((7200..=7800).contains(&by_port), "{by_port}");
    }

    /// Maglev's point: when one of ten members leaves, the clients of the other nine keep
    /// their member (a map-based table, as haproxy's default, moves about half of them);
    /// when it comes back, they are where they were.
    #[test]
    fn maglev_moves_little_more_than_the_share_of_a_member_that_leaves() {
        let ten: std::vec::Vec<(u32, Candidate)> = (0..10).map(|s| (s, c(1, 0))).collect();
        let mut before = [0u16; SOURCE_TABLE_SIZE as usize];
        fill_maglev_table(&ten, &mut before);
        let mut after = [0u16; SOURCE_TABLE_SIZE as usize];
        let mut nine = ten.clone();
        nine[3].1.flags &= !MEMBER_F_UP;
        fill_maglev_table(&nine, &mut after);
        let moved_others = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 3 && b != a)
            .count();
        assert_eq!(count(&after, 3), 0);
        // For comparison, a map-based table (runs of entries by cumulative share, what lb
        // used before and haproxy's default `hash-type`) of the same members.
        let map_based = |n: usize| -> std::vec::Vec<usize> {
            let members: std::vec::Vec<usize> = (0..10).filter(|&s| n == 10 || s != 3).collect();
            (0..1024)
                .map(|e| members[e * members.len() / 1024])
                .collect()
        };
        let (b, a) = (map_based(10), map_based(9));
        let map_moved = b.iter().zip(&a).filter(|(b, a)| **b != 3 && b != a).count();
        std::eprintln!(
            "one of ten members leaves: Maglev moves {moved_others} of the other members' \
             1024 entries, a map-based table {map_moved}"
        );
        // Its own ~10% must move; of the other 90%, Maglev moves a few percent.
        assert!(
            moved_others < 1024 * 6 / 100,
            "{moved_others} entries of other members moved"
        );
        let mut back = [0u16; SOURCE_TABLE_SIZE as usize];
        fill_maglev_table(&ten, &mut back);
        assert_eq!(back, before, "the same members make the same table");
    }

    /// Weighted round robin: shares by weight (1:3, 1:1:8), spread out (equal weights
    /// alternate, also across the table's wrap; the light member of 1:3 never twice in a row),
    /// and a down member's turns shared by all (not doubling the next one's).
    #[test]
    fn round_robin_tables_are_smooth_and_weighted() {
        let fill = |m: &[(u32, Candidate)]| {
            let mut t = [0u16; SOURCE_TABLE_SIZE as usize];
            let len = fill_rr_table(m, &mut t);
            assert!(t[len..].iter().all(|&e| e == SOURCE_NONE));
            t[..len].to_vec()
        };
        // Runs counted around the wrap too (the walk goes on from the start).
        let longest_run = |t: &[u16], s: u16| {
            let (mut best, mut run) = (0, 0);
            for e in t.iter().chain(t.iter()) {
                run = if *e == s { run + 1 } else { 0 };
                best = best.max(run);
            }
            best
        };
        let share = |t: &[u16], s: u16| count(t, s) as f64 / t.len() as f64;
        let t = fill(&[(0, c(1, 0)), (1, c(1, 0))]);
        assert_eq!(t.len(), 1024);
        assert_eq!((longest_run(&t, 0), longest_run(&t, 1)), (1, 1));
        let t = fill(&[(0, c(1, 0)), (1, c(1, 0)), (2, c(1, 0))]);
        assert_eq!(t.len(), 1023, "whole periods of 3");
        for s in 0..3 {
            assert_eq!(longest_run(&t, s), 1, "slot {s}");
            assert_eq!(count(&t, s), 341);
        }
        let t = fill(&[(0, c(1, 0)), (1, c(3, 0))]);
        assert_eq!((count(&t, 0), count(&t, 1)), (256, 768));
        assert_eq!(longest_run(&t, 0), 1);
        assert!(longest_run(&t, 1) <= 3);
        let t = fill(&[(0, c(1, 0)), (1, c(1, 0)), (2, c(8, 0))]);
        assert_eq!(t.len(), 1020);
        assert_eq!((share(&t, 0), share(&t, 1), share(&t, 2)), (0.1, 0.1, 0.8));
        assert_eq!(longest_run(&t, 0), 1);
        assert_eq!(longest_run(&t, 1), 1);
        // Weights 2 and 4 are 1 and 2.
        let t = fill(&[(0, c(2, 0)), (1, c(4, 0))]);
        assert_eq!(t.len(), 1023);
        assert_eq!(longest_run(&t, 0), 1);
        // Down member 1 of three equal ones: 0 and 2 alternate, half each (not 1/3 and 2/3).
        let mut down = c(1, 0);
        down.flags &= !MEMBER_F_UP;
        let t = fill(&[(0, c(1, 0)), (1, down), (2, c(1, 0))]);
        assert_eq!((count(&t, 0), count(&t, 1), count(&t, 2)), (512, 0, 512));
        assert_eq!(longest_run(&t, 0), 1);
        // Past the table: weights scaled, a weight of 1 among 255 heavy members keeps a turn.
        let many: std::vec::Vec<(u32, Candidate)> = (0..256)
            .map(|s| (s, c(if s == 7 { 1 } else { 255 }, 0)))
            .collect();
        let t = fill(&many);
        assert_eq!(t.len(), 1024);
        assert_eq!(count(&t, 7), 1);
        assert!(fill(&[(0, down)]).is_empty());
    }

    #[test]
    fn spread_follows_weights_when_connections_accumulate() {
        // Open 40 connections one after another on weights 1 and 3: leastconn keeps
        // (active+1)/weight level, so the split is 10/30.
        let mut m = [c(1, 0), c(3, 0)];
        for n in 0..40u32 {
            let s = pick_from(&m, n, u32::MAX).unwrap();
            m[s as usize].active += 1;
        }
        assert_eq!((m[0].active, m[1].active), (10, 30));
    }
}
