//! One daemon per load balancer: an exclusive `flock` on `<state_dir>/<id>.lock`, taken before
//! anything of the load balancer is touched and held for the daemon's life. The kernel drops
//! it when the process ends, however it ends (SIGKILL included), so a stale lock cannot
//! exist. The holder writes its pid into the file, so a refused `lb run` can name it.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

/// The lock of one load balancer, held.
#[derive(Debug)]
pub struct LbLock {
    _file: Flock<File>,
    path: PathBuf,
}

/// What trying the lock found.
#[derive(Debug)]
pub enum Acquire {
    Acquired(LbLock),
    /// Another process holds it; its pid as it wrote it (None if it had not yet).
    HeldBy(Option<u32>),
}

pub fn path(state_dir: &Path, lb: &str) -> PathBuf {
    state_dir.join(format!("{lb}.lock"))
}

impl LbLock {
    /// Takes the lock if no one holds it; never waits.
    pub fn try_acquire(state_dir: &Path, lb: &str) -> std::io::Result<Acquire> {
        std::fs::create_dir_all(state_dir)?;
        let path = path(state_dir, lb);
        loop {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Ok(Acquire::HeldBy(holder_pid(&mut file)));
                }
                Err((_, e)) => return Err(e.into()),
            };
            // The holder before us may have removed the file after we opened it (teardown
            // does): a lock on a file no longer at `path` protects nothing; start over.
            let same = std::fs::metadata(&path)
                .is_ok_and(|m| m.ino() == held.metadata().map(|h| h.ino()).unwrap_or(0));
            if !same {
                continue;
            }
            held.set_len(0)?;
            held.rewind()?;
            write!(held, "{}", std::process::id())?;
            return Ok(Acquire::Acquired(LbLock { _file: held, path }));
        }
    }

    /// Takes the lock, waiting up to `timeout` for its holder to let go (a daemon handing
    /// over exits). On timeout, says who still holds it.
    pub fn acquire_within(
        state_dir: &Path,
        lb: &str,
        timeout: Duration,
    ) -> std::io::Result<Acquire> {
        let start = Instant::now();
        loop {
            match Self::try_acquire(state_dir, lb)? {
                Acquire::HeldBy(pid) if start.elapsed() < timeout => {
                    let _ = pid;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return Ok(other),
            }
        }
    }

    /// Removes the lock file while still holding the lock (teardown: nothing of the load
    /// balancer is left). Whoever opened it meanwhile sees it gone and retries.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid the holder wrote. A holder writes it right after it takes the lock: one that has
/// only just taken it (the file still empty, or naming an earlier holder that is gone) is
/// given half a second.
fn holder_pid(file: &mut File) -> Option<u32> {
    for _ in 0..50 {
        let mut s = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut s).is_ok() {
            if let Ok(pid) = s.trim().parse::<u32>() {
                if Path::new(&format!("/proc/{pid}")).exists() {
                    return Some(pid);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = std::env::temp_dir().join(format!("lb-lock-test-{}", std::process::id()));
        let first = match LbLock::try_acquire(&dir, "x").unwrap() {
            Acquire::Acquired(l) => l,
            other => panic!("{other:?}"),
        };
        match LbLock::try_acquire(&dir, "x").unwrap() {
            Acquire::HeldBy(pid) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        let waited = Instant::now();
        assert!(matches!(
            LbLock::acquire_within(&dir, "x", Duration::from_millis(50)).unwrap(),
            Acquire::HeldBy(_)
        ));
        assert!(waited.elapsed() >= Duration::from_millis(50));
        first.remove();
        drop(first);
        assert!(matches!(
            LbLock::try_acquire(&dir, "x").unwrap(),
            Acquire::Acquired(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
