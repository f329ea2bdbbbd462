//! A load balancer's own maps, as the shared programs reach them.
//!
//! The programs are loaded once per node and serve every load balancer (see maps.rs). Each
//! load balancer's maps are inner maps, one per kind, held by the kind's outer map
//! (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) at the load balancer's slot; the per-load-balancer stub
//! program that runs first on the load balancer's port writes that slot into `CURRENT`
//! (per CPU: a program runs to its end on one CPU, with bottom halves off) and tail-calls
//! the shared program. Every access below finds the map again: `CURRENT`, the outer map
//! at the slot (both lookups the verifier inlines on current kernels), then the access
//! itself on the inner map. Keys point into map values (`ZERO` in .rodata, the slot in
//! `CURRENT`), so no access takes a stack slot beyond the caller's own key.
//!
//! The handles mirror aya-ebpf's map types (`get`, `get_ptr`, `get_ptr_mut`, `insert`,
//! `remove`) so the flow logic reads as it did with one load balancer per object; a kind a
//! load balancer does not have (the other family's tables, persistence without a
//! persisting pool, a ring without a connection log) is an empty outer slot: lookups find
//! nothing and writes fail.

use core::{borrow::Borrow, ffi::c_void, marker::PhantomData, ptr::NonNull};

use aya_ebpf::{
    btf_maps,
    helpers::{
        bpf_map_delete_elem, bpf_map_lookup_elem, bpf_map_update_elem, bpf_ringbuf_query,
        bpf_ringbuf_reserve, bpf_ringbuf_submit,
    },
    macros::btf_map,
    maps::lpm_trie::Key,
};

/// The slot of the load balancer whose packet is being handled (its stub wrote it). The
/// program set's own map, pinned as `CURRENT`.
#[btf_map]
pub static CURRENT: btf_maps::PerCpuArray<u32, 1> = btf_maps::PerCpuArray::new();

/// The key of single-entry arrays, in .rodata: a pointer to it costs no stack.
static ZERO: u32 = 0;

/// An outer map: where the inner maps of one kind are, by load balancer slot.
pub(crate) trait Outer {
    fn ptr() -> *mut c_void;
}

/// The inner map of kind `O` of the load balancer whose packet this is.
#[inline(always)]
fn inner<O: Outer>() -> Option<*mut c_void> {
    let current = core::ptr::from_ref(&CURRENT).cast_mut().cast();
    let slot = unsafe { bpf_map_lookup_elem(current, (&raw const ZERO).cast()) };
    if slot.is_null() {
        return None;
    }
    let map = unsafe { bpf_map_lookup_elem(O::ptr(), slot) };
    if map.is_null() {
        None
    } else {
        Some(map)
    }
}

#[inline(always)]
fn lookup<K, V>(map: *mut c_void, key: &K) -> Option<NonNull<V>> {
    NonNull::new(unsafe { bpf_map_lookup_elem(map, (key as *const K).cast()) }.cast())
}

/// A hash map (or LRU hash map) of each load balancer.
pub(crate) struct Hash<O, K, V>(PhantomData<(O, K, V)>);

// The handle holds nothing: the maps are the kernel's.
unsafe impl<O, K, V> Sync for Hash<O, K, V> {}

impl<O: Outer, K, V> Hash<O, K, V> {
    pub(crate) const fn new() -> Self {
        Hash(PhantomData)
    }

    /// Whether this load balancer has a map of this kind.
    #[inline(always)]
    pub(crate) fn present(&self) -> bool {
        inner::<O>().is_some()
    }

    /// # Safety
    /// As aya-ebpf's `HashMap::get`: the entry may be removed or reused under the caller.
    #[inline(always)]
    pub(crate) unsafe fn get(&self, key: impl Borrow<K>) -> Option<&'static V> {
        lookup::<K, V>(inner::<O>()?, key.borrow()).map(|p| unsafe { &*p.as_ptr() })
    }

    #[inline(always)]
    pub(crate) fn get_ptr(&self, key: impl Borrow<K>) -> Option<*const V> {
        lookup::<K, V>(inner::<O>()?, key.borrow()).map(|p| p.as_ptr().cast_const())
    }

    #[inline(always)]
    pub(crate) fn get_ptr_mut(&self, key: impl Borrow<K>) -> Option<*mut V> {
        lookup::<K, V>(inner::<O>()?, key.borrow()).map(NonNull::as_ptr)
    }

    /// Inserts (or, without `BPF_NOEXIST`, replaces) `key`; the kernel's error otherwise
    /// (-ENOENT when the load balancer has no such map).
    #[inline(always)]
    pub(crate) fn insert(&self, key: &K, value: &V, flags: u64) -> Result<(), i32> {
        let Some(map) = inner::<O>() else {
            return Err(-ENOENT);
        };
        let rc = unsafe {
            bpf_map_update_elem(
                map,
                (key as *const K).cast(),
                (value as *const V).cast(),
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(rc as i32)
        }
    }

    #[inline(always)]
    pub(crate) fn remove(&self, key: &K) -> Result<(), i32> {
        let Some(map) = inner::<O>() else {
            return Err(-ENOENT);
        };
        let rc = unsafe { bpf_map_delete_elem(map, (key as *const K).cast()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(rc as i32)
        }
    }
}

const ENOENT: i32 = 2;

/// An array (or per-CPU array: this CPU's value) of each load balancer.
pub(crate) struct Array<O, V>(PhantomData<(O, V)>);

unsafe impl<O, V> Sync for Array<O, V> {}

impl<O: Outer, V> Array<O, V> {
    pub(crate) const fn new() -> Self {
        Array(PhantomData)
    }

    #[inline(always)]
    pub(crate) fn get(&self, index: u32) -> Option<&'static V> {
        lookup::<u32, V>(inner::<O>()?, &index).map(|p| unsafe { &*p.as_ptr() })
    }

    /// `get` with the index where it already is: one stack slot serves as the key of
    /// several lookups (each helper call clobbers five registers; a value kept across them
    /// is spilled, and 6.1's call chains have no bytes to spare).
    #[inline(always)]
    pub(crate) fn get_at(&self, index: &u32) -> Option<&'static V> {
        lookup::<u32, V>(inner::<O>()?, index).map(|p| unsafe { &*p.as_ptr() })
    }

    #[inline(always)]
    pub(crate) fn get_ptr_mut(&self, index: u32) -> Option<*mut V> {
        lookup::<u32, V>(inner::<O>()?, &index).map(NonNull::as_ptr)
    }

    /// Entry 0, keyed by a pointer into .rodata (single-entry arrays).
    #[inline(always)]
    pub(crate) fn first(&self) -> Option<&'static V> {
        lookup::<u32, V>(inner::<O>()?, &ZERO).map(|p| unsafe { &*p.as_ptr() })
    }
}

/// One load balancer's array, found once: what a `bpf_loop` callback looks up in. (The
/// verifier checks a callback until its states stop changing; a state that came through the
/// outer lookups inside the callback never matches an earlier one, and the check of
/// `select_step` ran past its million instructions.)
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Found<V>(*mut c_void, PhantomData<V>);

impl<V> Found<V> {
    #[inline(always)]
    pub(crate) fn get(&self, index: &u32) -> Option<&'static V> {
        lookup::<u32, V>(self.0, index).map(|p| unsafe { &*p.as_ptr() })
    }
}

impl<O: Outer, V> Array<O, V> {
    /// This load balancer's array of this kind.
    #[inline(always)]
    pub(crate) fn find(&self) -> Option<Found<V>> {
        inner::<O>().map(|m| Found(m, PhantomData))
    }
}

/// A longest-prefix-match trie of each load balancer.
pub(crate) struct LpmTrie<O, K, V>(PhantomData<(O, K, V)>);

unsafe impl<O, K, V> Sync for LpmTrie<O, K, V> {}

impl<O: Outer, K, V> LpmTrie<O, K, V> {
    pub(crate) const fn new() -> Self {
        LpmTrie(PhantomData)
    }

    #[inline(always)]
    pub(crate) fn get(&self, key: &Key<K>) -> Option<&'static V> {
        lookup::<Key<K>, V>(inner::<O>()?, key).map(|p| unsafe { &*p.as_ptr() })
    }
}

/// A ring buffer of each load balancer (that has one).
pub(crate) struct RingBuf<O>(PhantomData<O>);

unsafe impl<O> Sync for RingBuf<O> {}

/// A record reserved in a ring: written in place, then submitted.
pub(crate) struct Reserved<T>(*mut T);

impl<T> Reserved<T> {
    pub(crate) fn as_mut_ptr(&mut self) -> *mut T {
        self.0
    }

    #[inline(always)]
    pub(crate) fn submit(self, flags: u64) {
        unsafe { bpf_ringbuf_submit(self.0.cast(), flags) }
    }
}

impl<O: Outer> RingBuf<O> {
    pub(crate) const fn new() -> Self {
        RingBuf(PhantomData)
    }

    /// `bpf_ringbuf_query` of this load balancer's ring; 0 without one.
    #[inline(always)]
    pub(crate) fn query(&self, flags: u64) -> u64 {
        match inner::<O>() {
            Some(map) => unsafe { bpf_ringbuf_query(map, flags) },
            None => 0,
        }
    }

    /// Room for one `T`; None when the ring is full or the load balancer has none.
    #[inline(always)]
    pub(crate) fn reserve<T>(&self, flags: u64) -> Option<Reserved<T>> {
        let map = inner::<O>()?;
        let p = unsafe { bpf_ringbuf_reserve(map, core::mem::size_of::<T>() as u64, flags) };
        if p.is_null() {
            None
        } else {
            Some(Reserved(p.cast()))
        }
    }
}
