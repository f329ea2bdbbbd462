//! The few `bpf(2)` commands lb makes itself, where aya has no call for them: maps created
//! from the schema table (outer maps with their inner template, inner maps of a size the
//! configuration chose), map updates whose value is a map's fd, and the stub programs'
//! load (a dozen instructions assembled here, see stub.rs).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `union bpf_attr`, as large as any command here needs (the kernel reads only the leading
/// fields of the command's member and wants the rest zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn put_u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn put_u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn put_bytes(&mut self, at: usize, v: &[u8]) -> &mut Self {
        self.0[at..at + v.len()].copy_from_slice(v);
        self
    }

    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attr is a zeroed `union bpf_attr` of 128 bytes (more than any command
        // here reads) whose pointer fields point to buffers the caller keeps alive.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                std::mem::size_of::<Attr>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn call_fd(&mut self, cmd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: these commands return a new file descriptor on success.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// What a new map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// `BPF_MAP_CREATE`; `inner` is the template of a map of maps.
pub fn map_create(
    spec: &MapSpec,
    name: &str,
    inner: Option<BorrowedFd<'_>>,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, spec.map_type)
        .put_u32(4, spec.key_size)
        .put_u32(8, spec.value_size)
        .put_u32(12, spec.max_entries)
        .put_u32(16, spec.flags)
        .put_u32(20, inner.map_or(0, |f| f.as_raw_fd() as u32));
    // map_name at offset 28 (after numa_node): 15 characters and a NUL.
    let n: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .take(15)
        .collect();
    a.put_bytes(28, &n);
    a.call_fd(BPF_MAP_CREATE)
}

fn elem(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: *const u8,
    value: u64,
    flags: u64,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32)
        .put_u64(8, key as u64)
        .put_u64(16, value)
        .put_u64(24, flags);
    a.call(cmd).map(drop)
}

/// `BPF_MAP_UPDATE_ELEM` of raw bytes.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    elem(
        BPF_MAP_UPDATE_ELEM,
        map,
        key.as_ptr(),
        value.as_ptr() as u64,
        flags,
    )
}

/// `BPF_MAP_LOOKUP_ELEM` into `value`; Ok(false) when the key is absent.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match elem(
        BPF_MAP_LOOKUP_ELEM,
        map,
        key.as_ptr(),
        value.as_mut_ptr() as u64,
        0,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`; a key already absent is no error.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    match elem(BPF_MAP_DELETE_ELEM, map, key.as_ptr(), 0, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Every key of a map with `u32` keys (`BPF_MAP_GET_NEXT_KEY`).
pub fn map_keys_u32(map: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut prev: Option<u32> = None;
    loop {
        let mut next = 0u32;
        let mut a = Attr::new();
        a.put_u32(0, map.as_raw_fd() as u32)
            .put_u64(8, prev.as_ref().map_or(0, |p| p as *const u32 as u64))
            .put_u64(16, &mut next as *mut u32 as u64);
        match a.call(BPF_MAP_GET_NEXT_KEY) {
            Ok(_) => {
                out.push(next);
                prev = Some(next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Puts map `inner` at `slot` of the map of maps `outer` (the data path switches to it at
/// once, atomically).
pub fn set_inner(outer: BorrowedFd<'_>, slot: u32, inner: BorrowedFd<'_>) -> io::Result<()> {
    let fd = inner.as_raw_fd() as u32;
    map_update(outer, &slot.to_ne_bytes(), &fd.to_ne_bytes(), 0)
}

/// The id of the map at `slot` of the map of maps `outer`, if any.
pub fn inner_id(outer: BorrowedFd<'_>, slot: u32) -> io::Result<Option<u32>> {
    let mut id = [0u8; 4];
    Ok(map_lookup(outer, &slot.to_ne_bytes(), &mut id)?.then(|| u32::from_ne_bytes(id)))
}

/// Puts each `(outer, inner)`'s map at `slot` of its map of maps, or empties that slot
/// (`None`), leaving alone the slots that already hold what they should. Every change to a
/// map of maps returns only after an RCU grace period (the kernel's `maybe_wait_bpf_programs`:
/// no program may still hold what was replaced), 5-25 ms each on this machine; made one after
/// another, the dozen and a half of a load balancer took 300 ms of sleep per deploy. So the
/// changes are made side by side, a thread each, and wait out the same grace period. One
/// result per change, in order.
pub fn set_slots(
    slot: u32,
    changes: &[(BorrowedFd<'_>, Option<BorrowedFd<'_>>)],
) -> Vec<io::Result<()>> {
    let key = slot.to_ne_bytes();
    let change = |outer: BorrowedFd<'_>, inner: Option<BorrowedFd<'_>>| -> io::Result<()> {
        match inner {
            Some(fd) => set_inner(outer, slot, fd),
            None => map_delete(outer, &key),
        }
    };
    let needed = |outer: BorrowedFd<'_>, inner: Option<BorrowedFd<'_>>| -> io::Result<bool> {
        let now = inner_id(outer, slot)?;
        Ok(match inner {
            None => now.is_some(),
            Some(fd) => now != Some(map_info(fd)?.id),
        })
    };
    std::thread::scope(|s| {
        let pending: Vec<_> = changes
            .iter()
            .map(|&(outer, inner)| match needed(outer, inner) {
                Ok(true) => Err(s.spawn(move || change(outer, inner))),
                Ok(false) => Ok(Ok(())),
                Err(e) => Ok(Err(e)),
            })
            .collect();
        pending
            .into_iter()
            .map(|p| match p {
                Ok(done) => done,
                Err(thread) => thread.join().unwrap_or_else(|_| {
                    Err(io::Error::other("the thread changing the slot panicked"))
                }),
            })
            .collect()
    })
}

/// `BPF_OBJ_PIN`.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    let mut a = Attr::new();
    a.put_u64(0, p.as_ptr() as u64)
        .put_u32(8, fd.as_raw_fd() as u32);
    a.call(BPF_OBJ_PIN).map(drop)
}

/// `BPF_OBJ_GET`: the map or program pinned at `path`.
pub fn pinned(path: &Path) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    let mut a = Attr::new();
    a.put_u64(0, p.as_ptr() as u64);
    a.call_fd(BPF_OBJ_GET)
}

fn cpath(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a pin path"))
}

/// What the kernel says a map is (`struct bpf_map_info`'s leading fields).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a map.
pub fn map_info(map: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut info = MapInfo::default();
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32)
        .put_u32(4, std::mem::size_of::<MapInfo>() as u32)
        .put_u64(8, &mut info as *mut MapInfo as u64);
    a.call(BPF_OBJ_GET_INFO_BY_FD)?;
    Ok(info)
}

/// `BPF_PROG_LOAD` of `insns` (8 bytes each).
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[u64],
    name: &str,
) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut a = Attr::new();
    a.put_u32(0, prog_type)
        .put_u32(4, insns.len() as u32)
        .put_u64(8, insns.as_ptr() as u64)
        .put_u64(16, license.as_ptr() as u64)
        .put_u32(24, 1) // log_level
        .put_u32(28, log.len() as u32)
        .put_u64(32, log.as_mut_ptr() as u64);
    // prog_name at offset 48, expected_attach_type at 68.
    let n: Vec<u8> = name.bytes().take(15).collect();
    a.put_bytes(48, &n).put_u32(68, expected_attach_type);
    a.call_fd(BPF_PROG_LOAD).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("{e}; verifier: {}", text.trim()))
    })
}

#[cfg(test)]
mod tests {
    /// The attr offsets above are those of `union bpf_attr` in linux/bpf.h.
    #[test]
    fn attr_offsets_are_the_kernels() {
        use aya_obj::generated::bpf_attr;
        let a = std::mem::MaybeUninit::<bpf_attr>::uninit();
        let base = a.as_ptr() as usize;
        // SAFETY: only field addresses are taken, nothing is read.
        unsafe {
            let m = &raw const (*a.as_ptr()).__bindgen_anon_1;
            assert_eq!(&raw const (*m).inner_map_fd as usize - base, 20);
            assert_eq!(&raw const (*m).map_name as usize - base, 28);
            let p = &raw const (*a.as_ptr()).__bindgen_anon_3;
            assert_eq!(&raw const (*p).log_buf as usize - base, 32);
            assert_eq!(&raw const (*p).prog_name as usize - base, 48);
            assert_eq!(&raw const (*p).expected_attach_type as usize - base, 68);
            let o = &raw const (*a.as_ptr()).__bindgen_anon_4;
            assert_eq!(&raw const (*o).bpf_fd as usize - base, 8);
        }
    }
}
