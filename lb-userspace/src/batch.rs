//! `BPF_MAP_LOOKUP_BATCH` on a hash map: a table read in bounded chunks with a cursor, in
//! process context, one syscall per chunk (aya 0.14 does not wrap the batch commands).
//!
//! The kernel walks the hash table bucket by bucket and resumes at the bucket the cursor
//! names, so an entry that exists for a whole walk is returned exactly once; entries added or
//! removed meanwhile may or may not be. Each call holds a bucket's lock only while copying
//! that bucket, never across the chunk, and nothing runs with bottom halves disabled.

use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

/// `enum bpf_cmd`: BPF_MAP_LOOKUP_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Where a walk of the table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Start,
    /// The kernel's token: the next bucket to read.
    At(u32),
    Done,
}

/// Reads up to `keys.len()` entries from `cursor` on; returns how many were filled and where
/// the walk stands after them.
pub fn lookup<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    cursor: Cursor,
    keys: &mut [K],
    values: &mut [V],
) -> std::io::Result<(usize, Cursor)> {
    assert_eq!(keys.len(), values.len());
    let mut token_in: u32 = match cursor {
        Cursor::Start => 0,
        Cursor::At(t) => t,
        Cursor::Done => return Ok((0, Cursor::Done)),
    };
    let mut token_out: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: match cursor {
            Cursor::Start => 0,
            _ => &raw mut token_in as u64,
        },
        out_batch: &raw mut token_out as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` points at buffers of `count` keys and values of the map's sizes (the
    // caller's types are the map's Pod key and value) and at two u32 tokens, all of which
    // outlive the call; the kernel writes at most `count` entries and one token.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &raw mut attr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    let filled = attr.count as usize;
    if rc == 0 {
        return Ok((filled, Cursor::At(token_out)));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // The end of the table; the last entries may come with it.
        Some(libc::ENOENT) => Ok((filled, Cursor::Done)),
        _ => Err(err),
    }
}
