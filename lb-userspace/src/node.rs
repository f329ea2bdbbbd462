//! The load balancer's home on the node: namespace `qlbaas-<id>`, its port (a veth whose outer
//! end joins the bridge, or an adopted device), the VIP, and the namespace's sysctls.
//!
//! Links and addresses are driven through iproute2's `ip` (what Neutron's agents use too);
//! entering a namespace is done on a dedicated thread through `setns`, never for the whole
//! process.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use nix::sched::{setns, CloneFlags};

use crate::config::{parse_mac, LoadBalancer};

/// The namespace's own ephemeral ports (health checks, ssh from the namespace) live here,
/// disjoint from the data path's SNAT range `lb_common::SNAT_PORT_MIN..=SNAT_PORT_MAX`.
pub const LOCAL_PORT_RANGE: &str = "60000 65535";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip` (install iproute2)")]
    IpMissing(#[source] std::io::Error),
    #[error("port {port}: {reason}")]
    Port { port: String, reason: String },
    #[error("namespace {ns}: cannot enter")]
    Enter {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace {ns}: cannot set {key}")]
    Sysctl {
        ns: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = NodeError> = std::result::Result<T, E>;

pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NodeError::IpMissing)?;
    if !out.status.success() {
        return Err(NodeError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Moves the calling thread into namespace `ns`. Only call on a thread you own.
pub fn enter(ns: &str) -> Result<()> {
    let f = File::open(netns_path(ns)).map_err(|source| NodeError::Enter {
        ns: ns.into(),
        source,
    })?;
    setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| NodeError::Enter {
        ns: ns.into(),
        source: e.into(),
    })
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn link_exists(ns: Option<&str>, dev: &str) -> bool {
    let mut args = vec![];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["link", "show", "dev", dev]);
    ip(&args).is_ok()
}

/// Writes a sysctl of the namespace through /proc/sys from a thread inside it.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || std::fs::write(&path, value))?.map_err(|source| NodeError::Sysctl {
        ns: ns.into(),
        key: key.into(),
        source,
    })
}

/// What `Node::setup` created, so teardown removes exactly that.
#[derive(Debug, Default)]
pub struct Node {
    pub namespace: String,
    pub port: String,
    /// Outer end of a veth lb created (in the node namespace), if any.
    pub outer: Option<String>,
    pub created_namespace: bool,
    pub created_bridge: Option<String>,
    /// An adopted port lb moved from the node namespace into the load balancer's namespace.
    pub moved_port: bool,
}

/// Name of the outer end of a created port: Neutron's `tap` prefix becomes `ns` (as its
/// Linux bridge interface driver does), else the name gets an `o` prefix.
pub fn outer_name(port: &str) -> String {
    let base = port
        .strip_prefix("tap")
        .map(|s| format!("ns{s}"))
        .unwrap_or_else(|| format!("o{port}"));
    base.chars().take(15).collect()
}

impl Node {
    pub fn setup(lb: &LoadBalancer) -> Result<Node> {
        let ns = lb.namespace();
        let port = lb.port.name.clone();
        let mut node = Node {
            namespace: ns.clone(),
            port: port.clone(),
            ..Default::default()
        };
        let r = node.setup_inner(lb);
        if let Err(e) = r {
            node.teardown();
            return Err(e);
        }
        Ok(node)
    }

    fn setup_inner(&mut self, lb: &LoadBalancer) -> Result<()> {
        let ns = self.namespace.clone();
        let port = self.port.clone();
        let port_err = |reason: String| NodeError::Port {
            port: port.clone(),
            reason,
        };
        if !netns_exists(&ns) {
            ip(&["netns", "add", &ns])?;
            self.created_namespace = true;
        }
        if lb.port.adopt {
            if link_exists(None, &port) {
                ip(&["link", "set", "dev", &port, "netns", &ns])?;
                self.moved_port = true;
            } else if !link_exists(Some(&ns), &port) {
                return Err(port_err(format!(
                    "adopt = true but no device of that name in the node namespace or in {ns}"
                )));
            }
        } else {
            if link_exists(None, &port) || link_exists(Some(&ns), &port) {
                return Err(port_err(
                    "a device of that name already exists; set port.adopt = true to use it".into(),
                ));
            }
            let bridge = &lb.port.bridge;
            if !link_exists(None, bridge) {
                ip(&["link", "add", "name", bridge, "type", "bridge"])?;
                self.created_bridge = Some(bridge.clone());
            }
            ip(&["link", "set", "dev", bridge, "up"])?;
            let outer = outer_name(&port);
            if link_exists(None, &outer) {
                return Err(port_err(format!("the outer end's name {outer} is taken")));
            }
            ip(&[
                "link", "add", "name", &outer, "type", "veth", "peer", "name", &port, "netns", &ns,
            ])?;
            self.outer = Some(outer.clone());
            ip(&["link", "set", "dev", &outer, "master", bridge])?;
            ip(&["link", "set", "dev", &outer, "up"])?;
            if let Some(mac) = &lb.port.mac {
                debug_assert!(parse_mac(mac).is_some());
                ip(&["-n", &ns, "link", "set", "dev", &port, "address", mac])?;
            }
        }
        ip(&["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", "dev", &port, "up"])?;
        let vip = format!("{}/{}", lb.vip_address, lb.vip_prefixlen);
        ip(&["-n", &ns, "addr", "replace", &vip, "dev", &port])?;
        sysctl(&ns, "net.ipv4.ip_local_port_range", LOCAL_PORT_RANGE)?;
        // bpf_fib_lookup answers FWD_DISABLED unless forwarding is on for the ingress device.
        sysctl(&ns, &format!("net.ipv4.conf.{port}.forwarding"), "1")?;
        // Members on the VIP's subnet are on-link: never send them ICMP redirects.
        sysctl(&ns, &format!("net.ipv4.conf.{port}.send_redirects"), "0")?;
        sysctl(&ns, "net.ipv4.conf.all.send_redirects", "0")?;
        Ok(())
    }

    /// Removes what setup created; an adopted port goes back where it came from.
    pub fn teardown(&mut self) {
        if self.moved_port {
            // Back to the node namespace: the daemon's main thread is in it, so name it by pid
            // (`ip` runs from a thread inside the load balancer's namespace, where the port is).
            let target = std::process::id().to_string();
            if let Err(e) = in_netns(&self.namespace, || {
                Command::new("ip")
                    .args(["link", "set", "dev", &self.port, "netns", &target])
                    .status()
            }) {
                tracing::warn!(error = %e, port = %self.port, "cannot return adopted port");
            }
            self.moved_port = false;
        }
        if let Some(outer) = self.outer.take() {
            let _ = ip(&["link", "del", "dev", &outer]);
        }
        if self.created_namespace {
            let _ = ip(&["netns", "del", &self.namespace]);
            self.created_namespace = false;
        }
        if let Some(br) = self.created_bridge.take() {
            let _ = ip(&["link", "del", "dev", &br]);
        }
    }
}

/// The MAC of a device inside a namespace (for logs and tests).
pub fn mac_of(ns: &str, dev: &str) -> Option<String> {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", dev]).ok()?;
    let i = out.find("link/ether ")?;
    Some(out[i + 11..i + 28].to_string())
}
