//! Where the drop-in runs: the namespace `ip netns exec qlbaas-<id>` put it in, with the mount
//! namespace that command made.
//!
//! `ip netns exec` gives the command a private mount namespace with a fresh `/sys`: a bpffs
//! mounted there, and pins made in it, are seen by nobody else (found: `lb run` under
//! `ip netns exec` pinned into a private bpffs, and `lb stats` from another `ip netns exec`
//! failed with "BPF_OBJ_GET failed: No such file or directory"). So lb first joins the mount
//! namespace `ip netns exec` was called from (its closest ancestor in another one): its pins,
//! state files under /run/lb and lock files are then the host's, where `lb stats` on the host
//! and the next instance find them. The network namespace stays the one the agent chose.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use nix::sched::{setns, CloneFlags};

use super::convert::Namespace;

fn inode(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Joins the mount namespace of the closest ancestor that is in another one: the one
/// `ip netns exec` was called from (it unshares the mount namespace of the command it runs).
/// Nothing happens when there is none, or when this namespace has a bpffs of its own at
/// /sys/fs/bpf (then it is the host's view already). Must run before any thread is started
/// (setns of a mount namespace needs a single-threaded process).
pub fn join_host_mounts() -> std::io::Result<bool> {
    let bpffs =
        nix::sys::statfs::statfs("/sys/fs/bpf").is_ok_and(|s| s.filesystem_type().0 == 0xcafe4a11);
    if bpffs {
        return Ok(false);
    }
    let mine = inode("/proc/self/ns/mnt");
    let mut pid = std::process::id();
    for _ in 0..64 {
        let Some(parent) = parent_of(pid).filter(|p| *p > 0) else {
            return Ok(false);
        };
        let path = format!("/proc/{parent}/ns/mnt");
        if let Some(theirs) = inode(&path) {
            if Some(theirs) != mine {
                let f = std::fs::File::open(&path)?;
                setns(f, CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
                // The working directory was resolved in the old mount namespace.
                let _ = std::env::set_current_dir("/");
                return Ok(true);
            }
        }
        if parent == 1 {
            return Ok(false);
        }
        pid = parent;
    }
    Ok(false)
}

/// The name (under /var/run/netns, as `ip netns` names them) of the network namespace this
/// process is in, if it has one.
pub fn current_netns_name() -> Option<String> {
    let me = inode("/proc/self/ns/net")?;
    let dir = std::fs::read_dir("/var/run/netns").ok()?;
    dir.flatten()
        .find(|e| e.path().to_str().and_then(inode).is_some_and(|i| i == me))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The load balancer's id: the namespace's `qlbaas-<id>`, else the configuration's directory
/// (`<state path>/<id>/haproxy.conf`, as both drivers lay them out).
pub fn loadbalancer_id(netns: &str, conf: &Path) -> String {
    if let Some(id) = netns.strip_prefix("qlbaas-") {
        return id.to_string();
    }
    conf.parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| netns.to_string())
}

/// The addresses of the calling thread's network namespace, IPv4 and IPv6, without loopback
/// and IPv6 link-local ones (no load balancer's VIP).
pub struct Here {
    addrs: Vec<(String, IpAddr, u8)>,
}

impl Here {
    pub fn read() -> std::io::Result<Here> {
        let mut addrs = Vec::new();
        for a in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
            let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
                continue;
            };
            let (ip, prefix) = if let (Some(a), Some(m)) =
                (addr.as_sockaddr_in(), mask.as_sockaddr_in())
            {
                (IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones() as u8)
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones() as u8)
            } else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if ip.is_loopback() || link_local {
                continue;
            }
            addrs.push((a.interface_name, ip, prefix));
        }
        Ok(Here { addrs })
    }
}

impl Namespace for Here {
    fn locate(&self, address: IpAddr) -> Option<(String, u8)> {
        self.addrs
            .iter()
            .find(|(_, a, _)| *a == address)
            .map(|(d, _, p)| (d.clone(), *p))
    }

    fn awaits(&self, address: IpAddr) -> Option<(String, u8)> {
        let sysctl = if address.is_ipv4() {
            "/proc/sys/net/ipv4/ip_nonlocal_bind"
        } else {
            "/proc/sys/net/ipv6/ip_nonlocal_bind"
        };
        if !std::fs::read_to_string(sysctl).is_ok_and(|v| v.trim() == "1") {
            return None;
        }
        self.addrs
            .iter()
            .find(|(_, a, p)| {
                a.is_ipv4() == address.is_ipv4()
                    && crate::config::mask(*a, *p) == crate::config::mask(address, *p)
            })
            .map(|(d, _, p)| (d.clone(), *p))
    }

    fn only_address(&self) -> Option<IpAddr> {
        match self.addrs.as_slice() {
            [(_, a, _)] => Some(*a),
            _ => None,
        }
    }
}

/// For `-c`: a namespace that holds whatever the configuration binds (haproxy's `-c` does not
/// look at the machine's addresses either).
pub struct Anywhere;

impl Namespace for Anywhere {
    fn locate(&self, a: IpAddr) -> Option<(String, u8)> {
        Some(("(checked)".into(), if a.is_ipv4() { 32 } else { 128 }))
    }
    fn only_address(&self) -> Option<IpAddr> {
        Some(Ipv4Addr::new(192, 0, 2, 1).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_the_namespace_or_the_config_directory() {
        let conf = Path::new("/opt/stack/data/neutron/lbaas/v2/abc/haproxy.conf");
        assert_eq!(loadbalancer_id("qlbaas-574a31da", conf), "574a31da");
        assert_eq!(loadbalancer_id("other", conf), "abc");
    }
}
