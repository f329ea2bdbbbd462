//! The shared counters (`MEMBER_LIVE`, `LISTENER_LIVE`): `BPF_F_MMAPABLE` arrays the
//! daemon maps into its memory and changes with the same atomic operations the data path
//! uses (drift correction, census, resets).

use std::{
    num::NonZeroUsize,
    os::fd::AsFd,
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use aya::maps::MapData;
use lb_common::Live;

use super::{DataplaneError, Result};

/// An mmap of a `BPF_F_MMAPABLE` array of `Live`: real atomics shared with the data path.
pub struct LiveArray {
    _map: MapData,
    ptr: NonNull<Live>,
    len: u32,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for LiveArray {}
// SAFETY: as above.
unsafe impl Sync for LiveArray {}

impl LiveArray {
    /// Maps the array pinned at `path`, all its entries (member arrays are sized per load
    /// balancer).
    pub fn open(path: &Path) -> Result<Self> {
        let map = MapData::from_pin(path).map_err(|source| DataplaneError::Map {
            path: path.into(),
            source,
        })?;
        let len = map
            .info()
            .map_err(|source| DataplaneError::Map {
                path: path.into(),
                source,
            })?
            .max_entries();
        let page = 4096usize;
        let bytes = (len as usize * std::mem::size_of::<Live>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own pages, as many as it has; it lives until
        // `drop` unmaps it, and is only ever read and written through atomics.
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

    /// Entries of the array.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

/// The member array's mapping, shared by the threads that use it (monitors, the
/// connection log) and replaced by a bigger one when the member arrays grow.
#[derive(Clone)]
pub struct SharedLive(std::sync::Arc<std::sync::RwLock<std::sync::Arc<LiveArray>>>);

impl SharedLive {
    pub fn new(a: LiveArray) -> SharedLive {
        SharedLive(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(a),
        )))
    }

    /// Maps the array pinned at `path`.
    pub fn open(path: &Path) -> Result<SharedLive> {
        LiveArray::open(path).map(SharedLive::new)
    }

    /// The mapping now.
    pub fn get(&self) -> std::sync::Arc<LiveArray> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on, `a`.
    pub fn replace(&self, a: LiveArray) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(a);
    }
}
