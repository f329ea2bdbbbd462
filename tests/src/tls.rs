//! A real TLS server for the TLS-HELLO checks: `openssl s_server` with a self-signed
//! certificate, in a member's namespace, killed (and its files removed) on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

pub struct TlsServer {
    child: Child,
    dir: PathBuf,
}

impl TlsServer {
    /// `openssl s_server` in namespace `ns` accepting on `accept` (`10.0.0.2:8443`,
    /// `[2001:db8::2]:8443`); `extra` goes before `-accept` (`-6`).
    pub fn start(ns: &str, extra: &[&str], accept: &str) -> TlsServer {
        let dir = std::env::temp_dir().join(crate::unique("tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=member", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{made:?}");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .args(["openssl", "s_server", "-quiet"])
            .args(extra)
            .args(["-accept", accept, "-key"])
            .arg(&key)
            .arg("-cert")
            .arg(&cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        TlsServer { child, dir }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
