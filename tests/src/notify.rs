//! What a service tells systemd on `$NOTIFY_SOCKET` (`Type=notify`), received by a test.

use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Receives what the service sends systemd on `$NOTIFY_SOCKET`.
pub struct Notify {
    sock: UnixDatagram,
    pub path: PathBuf,
}

impl Notify {
    pub fn new() -> Notify {
        let path = std::env::temp_dir().join(crate::unique("notify"));
        let sock = UnixDatagram::bind(&path).unwrap();
        Notify { sock, path }
    }

    /// Waits for a message holding `what` (e.g. `READY=1`); returns every line seen.
    pub fn wait(&self, what: &str, timeout: Duration) -> Result<Vec<String>, Vec<String>> {
        let mut seen = Vec::new();
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            self.sock
                .set_read_timeout(Some(
                    end.saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(10)),
                ))
                .unwrap();
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let hit = msg.lines().any(|l| l == what);
                seen.extend(msg.lines().map(String::from));
                if hit {
                    return Ok(seen);
                }
            }
        }
        Err(seen)
    }
}

impl Default for Notify {
    fn default() -> Self {
        Notify::new()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
