//! haproxy's `user`/`uid` and `group`/`gid`: the daemon gives up root, keeping only the
//! capabilities lb needs to serve and to tear down.
//!
//! haproxy binds its sockets as root and then calls `setgid`/`setuid`. lb's work after setup
//! still crosses into the kernel: map reads and writes (on 6.1, every `bpf()` command needs
//! CAP_BPF while `kernel.unprivileged_bpf_disabled` is set, Debian's default), netlink to
//! detach its programs, files under `/run/lb` and `/sys/fs/bpf/lb` owned by root. So it
//! keeps [`KEPT`] and nothing else, in every set (permitted, effective, bounding), and no
//! exec'd program could regain more.
//!
//! Credentials are per thread in Linux, and a thread starts with its creator's: the change is
//! made while the process is still single-threaded, before the runtime, the monitors and the
//! expiry thread exist, so every thread of the daemon runs with it. Setup (loading programs,
//! attaching, pinning) then runs as that user with these capabilities, as the rest does.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User};

/// What the daemon keeps, and why (README: "Replacing HAProxy in the LBaaS agent").
pub const KEPT: &[(Capability, &str)] = &[
    (
        Capability::CAP_BPF,
        "create, load and use its maps and programs (every bpf() call on 6.1)",
    ),
    (
        Capability::CAP_PERFMON,
        "the verifier's checks as for root (pointer comparisons, no speculation rewrites)",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "attach and detach TC/XDP programs, the namespace's sysctls, checksum offload",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "pins, state and lock files that a root lb made under /sys/fs/bpf/lb and /run/lb",
    ),
    (
        Capability::CAP_KILL,
        "haproxy's -sf/-st signals to old processes of another user",
    ),
    (
        Capability::CAP_NET_RAW,
        "PING monitors' raw ICMP sockets (what Octavia's ping-wrapper.sh runs ping for)",
    ),
];

/// The user and group a configuration asks for, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
}

/// Resolves `user`/`uid` and `group`/`gid` (names or numbers) as haproxy does at startup;
/// an unknown name is refused, naming it.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Credentials, String> {
    let uid = match user {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(u)
                    .map_err(|e| format!("global: cannot look up user '{u}': {e}"))?
                    .ok_or_else(|| format!("global: unknown user '{u}'"))?
                    .uid
            }
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .map_err(|e| format!("global: cannot look up group '{g}': {e}"))?
                    .ok_or_else(|| format!("global: unknown group '{g}'"))?
                    .gid
            }
        }),
    };
    Ok(Credentials { uid, gid })
}

fn kept() -> CapsHashSet {
    KEPT.iter().map(|(c, _)| *c).collect()
}

/// Becomes `c.uid`/`c.gid` keeping [`KEPT`]. Call while the process has a single thread.
pub fn drop_to(c: &Credentials) -> Result<(), String> {
    if c.uid.is_none() && c.gid.is_none() {
        return Ok(());
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    if c.uid.is_some_and(|u| !u.is_root()) {
        // No exec'd program (none is run) could ever hold more than this.
        for cap in caps::all().difference(&kept()) {
            match caps::drop(None, CapSet::Bounding, *cap) {
                Ok(()) => {}
                // A capability this kernel does not have.
                Err(_) if !caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) => {}
                Err(e) => return Err(fail(&format!("dropping {cap} from the bounding set"), &e)),
            }
        }
        nix::sys::prctl::set_keepcaps(true).map_err(|e| fail("PR_SET_KEEPCAPS", &e))?;
    }
    if let Some(gid) = c.gid {
        // As haproxy: supplementary groups go, then the group.
        nix::unistd::setgroups(&[]).map_err(|e| fail("setgroups", &e))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail(&format!("setgid {gid}"), &e))?;
    }
    if let Some(uid) = c.uid {
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail(&format!("setuid {uid}"), &e))?;
        if !uid.is_root() {
            nix::sys::prctl::set_keepcaps(false).map_err(|e| fail("PR_SET_KEEPCAPS", &e))?;
            let keep = kept();
            caps::set(None, CapSet::Permitted, &keep).map_err(|e| fail("capset", &e))?;
            caps::set(None, CapSet::Effective, &keep).map_err(|e| fail("capset", &e))?;
            caps::clear(None, CapSet::Inheritable).map_err(|e| fail("capset", &e))?;
            let _ = caps::clear(None, CapSet::Ambient);
            // Root cannot come back.
            if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err(format!("setuid {uid}: root is still reachable"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_unknown_ones_are_named() {
        let c = resolve(Some("root"), Some("0")).unwrap();
        assert_eq!(
            (c.uid, c.gid),
            (Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
        );
        assert_eq!(
            resolve(Some("65534"), None).unwrap().uid,
            Some(Uid::from_raw(65534))
        );
        assert_eq!(
            resolve(Some("no-such-user-lb"), None).unwrap_err(),
            "global: unknown user 'no-such-user-lb'"
        );
        assert_eq!(
            resolve(None, Some("no-such-group-lb")).unwrap_err(),
            "global: unknown group 'no-such-group-lb'"
        );
        assert_eq!(
            resolve(None, None).unwrap(),
            Credentials {
                uid: None,
                gid: None
            }
        );
    }
}
