//! Member selection: the one implementation the XDP program runs and the host tests exercise.
//!
//! Weighted least connections as HAProxy's `balance leastconn` does it: among members that are
//! configured, enabled, up and of weight > 0, the lowest `(active + 1) / weight`; ties go to the
//! first candidate in rotation order, and the caller rotates `start` on every pick. Backup
//! members are only considered when no primary member is available.
//!
//! `balance source` as HAProxy's default (`hash-type map-based`) does it: a table per pool in
//! which every available member holds a share of entries proportional to its weight
//! ([`fill_source_table`], built by the daemon whenever a member's weight or state changes);
//! the client address's hash picks the entry.

use crate::{
    ALG_LEAST_CONNECTIONS, MAX_POOL_MEMBERS, MEMBER_F_BACKUP, MEMBER_F_CONFIGURED,
    MEMBER_F_ENABLED, MEMBER_F_UP,
};

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

/// Fills a pool's source-hashing table: every available member (primaries, or the backups
/// when no primary is available) gets a run of entries proportional to its weight; an
/// empty pool fills it with `SOURCE_NONE`. `members` are (slot, candidate) in slot order.
pub fn fill_source_table(members: &[(u32, Candidate)], table: &mut [u16]) {
    let primary = |c: &Candidate| c.flags & MEMBER_F_BACKUP == 0;
    let any_primary = members.iter().any(|(_, c)| available(c) && primary(c));
    let chosen = |c: &Candidate| available(c) && primary(c) == any_primary;
    let total: u64 = members
        .iter()
        .filter(|(_, c)| chosen(c))
        .map(|(_, c)| c.weight as u64)
        .sum();
    if total == 0 {
        table.iter_mut().for_each(|e| *e = SOURCE_NONE);
        return;
    }
    let n = table.len() as u64;
    let (mut acc, mut at, mut last) = (0u64, 0usize, SOURCE_NONE);
    for (slot, c) in members.iter().filter(|(_, c)| chosen(c)) {
        acc += c.weight as u64;
        last = *slot as u16;
        // Entries up to this member's cumulative share of the table.
        let end = ((acc * n + total / 2) / total) as usize;
        while at < end.min(table.len()) {
            table[at] = last;
            at += 1;
        }
    }
    table[at..].iter_mut().for_each(|e| *e = last);
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
    algorithm: u32,
    count: u32,
    start: u32,
    exclude: u32,
    best_slot: u32,
    best_weight: u32,
    best_active: i64,
    backup_slot: u32,
    backup_weight: u32,
    backup_active: i64,
    excluded: u32,
    _pad: u32,
}

const NONE: u32 = u32::MAX;

impl Picker {
    /// `start` rotates the scan (ties go to the first one seen); `exclude` (a slot, or
    /// `u32::MAX`) is skipped unless it is the only choice left, which is how a redispatched
    /// SYN avoids the member that did not answer.
    #[inline(always)]
    pub fn new(algorithm: u32, count: u32, start: u32, exclude: u32) -> Picker {
        let count = if count > MAX_POOL_MEMBERS { 0 } else { count };
        Picker {
            algorithm,
            count,
            start: if count == 0 { 0 } else { start % count },
            exclude,
            best_slot: NONE,
            best_weight: 0,
            best_active: 0,
            backup_slot: NONE,
            backup_weight: 0,
            backup_active: 0,
            excluded: 0,
            _pad: 0,
        }
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

    #[inline(always)]
    pub fn offer(&mut self, slot: u32, c: &Candidate) {
        if !available(c) {
            return;
        }
        if slot == self.exclude {
            self.excluded = 1;
            return;
        }
        let lc = self.algorithm == ALG_LEAST_CONNECTIONS;
        if c.flags & MEMBER_F_BACKUP != 0 {
            if self.backup_slot == NONE
                || (lc && less_loaded(c, self.backup_active, self.backup_weight))
            {
                self.backup_slot = slot;
                self.backup_weight = c.weight;
                self.backup_active = c.active;
            }
        } else if self.best_slot == NONE
            || (lc && less_loaded(c, self.best_active, self.best_weight))
        {
            self.best_slot = slot;
            self.best_weight = c.weight;
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

    /// Source hashing: each member's share of the table follows its weight (1:3, 1:1:8);
    /// backups only fill it when no primary is available; nothing available empties it.
    #[test]
    fn source_tables_follow_the_weights() {
        let mut t = [0u16; SOURCE_TABLE_SIZE as usize];
        let count = |t: &[u16], s: u16| t.iter().filter(|&&e| e == s).count();
        fill_source_table(&[(0, c(1, 0)), (1, c(3, 0))], &mut t);
        assert_eq!((count(&t, 0), count(&t, 1)), (256, 768));
        fill_source_table(&[(0, c(1, 0)), (1, c(1, 0)), (2, c(8, 0))], &mut t);
        assert_eq!((count(&t, 0), count(&t, 1), count(&t, 2)), (102, 103, 819));
        let mut b = c(1, 0);
        b.flags |= MEMBER_F_BACKUP;
        let mut down = c(5, 0);
        down.flags &= !MEMBER_F_UP;
        fill_source_table(&[(0, down), (4, b)], &mut t);
        assert_eq!(count(&t, 4), 1024, "the backup when no primary is up");
        fill_source_table(&[(0, c(1, 0)), (4, b)], &mut t);
        assert_eq!(count(&t, 0), 1024, "not while a primary is");
        fill_source_table(&[(0, down)], &mut t);
        assert_eq!(count(&t, SOURCE_NONE), 1024);
        // Spread of real client addresses over a 1:3 table.
        fill_source_table(&[(0, c(1, 0)), (1, c(3, 0))], &mut t);
        let on_heavy = (0..10_000u32)
            .filter(|i| {
                let h = client_hash((0xc0a8_0000u32 + i).to_be());
                t[(h % SOURCE_TABLE_SIZE) as usize] == 1
            })
            .count();
        assert!((7300..=7700).contains(&on_heavy), "{on_heavy}");
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
