//! Stopping a load of the data path under way (SIGTERM or SIGINT while `lb run` starts).
//!
//! The kernel verifies a program inside `BPF_PROG_LOAD` for seconds of CPU, and gives up
//! with `EAGAIN` as soon as a signal is pending for the thread that asked. `request` marks
//! the process as stopping and, every few milliseconds until no load is under way, sends
//! each loading thread (registered by `Loading`) a signal whose handler does nothing: the
//! verifier stops, aya's retries stop too, and the loader returns `Cancelled`.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, Once,
};

static CANCELLED: AtomicBool = AtomicBool::new(false);
static LOADERS: Mutex<Vec<libc::pthread_t>> = Mutex::new(Vec::new());

/// The signal that interrupts a verification (its default action is to ignore it; the
/// handler installed here makes it pending, which is all the verifier looks at).
const KICK: libc::c_int = libc::SIGURG;

extern "C" fn nothing(_: libc::c_int) {}

/// From now on, loads under way stop, and those to come do not start.
pub fn request() {
    if CANCELLED.swap(true, Ordering::SeqCst) {
        return;
    }
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: a handler that does nothing is async-signal-safe.
        unsafe {
            let _ = nix::sys::signal::sigaction(
                nix::sys::signal::Signal::SIGURG,
                &nix::sys::signal::SigAction::new(
                    nix::sys::signal::SigHandler::Handler(nothing),
                    nix::sys::signal::SaFlags::empty(),
                    nix::sys::signal::SigSet::empty(),
                ),
            );
        }
    });
    let _ = std::thread::Builder::new()
        .name("cancel-loads".into())
        .spawn(|| loop {
            {
                let loaders = LOADERS.lock().unwrap_or_else(|e| e.into_inner());
                if loaders.is_empty() {
                    // A load that starts later sees the flag first.
                    return;
                }
                for &t in loaders.iter() {
                    // SAFETY: `t` registered itself and cannot end meanwhile: it deregisters
                    // (under this lock, which is held here) before it returns.
                    unsafe { libc::pthread_kill(t, KICK) };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        });
}

/// Whether loads are being stopped.
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// The calling thread loads programs while this lives.
pub struct Loading(libc::pthread_t);

impl Loading {
    pub fn enter() -> Loading {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        LOADERS.lock().unwrap_or_else(|e| e.into_inner()).push(me);
        Loading(me)
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let mut l = LOADERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = l.iter().position(|t| *t == self.0) {
            l.remove(i);
        }
    }
}
