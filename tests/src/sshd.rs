//! The real OpenSSH server and client, for end-to-end tests: an sshd in a member's
//! namespace that lets the tests' key in as root, and `ssh` from the client's namespace.
//! Missing programs (the VM image has none) make the tests that need them skip.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::unique;

/// Whether sshd and ssh are installed (Debian's openssh-server and openssh-client).
pub fn available() -> bool {
    let ok = std::path::Path::new("/usr/sbin/sshd").exists()
        && Command::new("ssh").arg("-V").output().is_ok();
    if !ok {
        crate::skip::skip("no sshd/ssh (Debian packages openssh-server, openssh-client)");
    }
    ok
}

/// A key pair for the client (and the host keys the servers use), removed on drop.
pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = std::env::temp_dir().join(unique("ssh"));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["client", "host"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name))
                .status()
                .expect("ssh-keygen");
            assert!(st.success(), "ssh-keygen");
        }
        Keys { dir }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// sshd on `addr`:22 in namespace `ns`, in the foreground, killed on drop.
pub struct Sshd {
    child: Child,
}

impl Sshd {
    pub fn start(ns: &str, addr: IpAddr, keys: &Keys) -> Sshd {
        let conf = keys.dir.join(format!("sshd-{addr}.conf"));
        std::fs::write(
            &conf,
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nLogLevel ERROR\n",
                keys.dir.join("host").display(),
                keys.dir.join("client.pub").display(),
            ),
        )
        .unwrap();
        // Debian's sshd wants its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd");
        let s = Sshd { child };
        crate::wait_for("sshd listening", Duration::from_secs(10), || {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-Hltn", "sport", "= :22"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains(&addr.to_string())
                .then_some(())
        });
        s
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh root@addr command` from namespace `ns` with the tests' key: its output, or its
/// complaint.
pub fn ssh(ns: &str, keys: &Keys, addr: IpAddr, command: &str) -> Result<String, String> {
    ssh_with_input(ns, keys, addr, command, &[])
}

/// `ssh` with `input` on the remote command's standard input (30 s at most): an upload.
pub fn ssh_with_input(
    ns: &str,
    keys: &Keys,
    addr: IpAddr,
    command: &str,
    input: &[u8],
) -> Result<String, String> {
    let file = keys.dir.join("stdin");
    std::fs::write(&file, input).expect("ssh input");
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "30", "ssh", "-i"])
        .arg(keys.dir.join("client"))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("root@{addr}"))
        .arg(command)
        .stdin(std::fs::File::open(&file).expect("ssh input"))
        .output()
        .expect("ssh");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
