//! The load balancer's home on the node: namespace `qlbaas-<id>`, its port (a veth whose outer
//! end joins the bridge, or an adopted device), the VIP, and the namespace's sysctls.
//!
//! Links and addresses go through rtnetlink. A netlink socket belongs to the namespace it was
//! opened in, so the connection for the load balancer's namespace is opened on a thread that
//! entered it; the process as a whole never changes namespace. Named namespaces themselves are
//! made and removed by iproute2's `ip netns` (the bind mount under /var/run/netns that every
//! other tool, Neutron's agents included, expects).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use futures::TryStreamExt as _;
use nix::sched::{setns, CloneFlags};
use rtnetlink::{packet_route::link::LinkMessage, Handle, LinkBridge, LinkUnspec, LinkVeth};

use crate::config::{parse_mac, LoadBalancer};

/// The namespace's own ephemeral ports (health checks, ssh from the namespace) live here,
/// disjoint from the data path's SNAT range `lb_common::SNAT_PORT_MIN..=SNAT_PORT_MAX`.
pub const LOCAL_PORT_RANGE: &str = "60000 65535";

const ENODEV: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip` (install iproute2)")]
    IpMissing(#[source] std::io::Error),
    #[error("netlink: {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink socket in namespace {ns}")]
    Socket {
        ns: String,
        #[source]
        source: std::io::Error,
    },
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

/// `ip netns add|del NAME`.
fn ip_netns(verb: &str, ns: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", verb, ns])
        .output()
        .map_err(NodeError::IpMissing)?;
    if !out.status.success() {
        return Err(NodeError::Ip {
            args: format!("netns {verb} {ns}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

fn open_netns(ns: &str) -> Result<File> {
    File::open(netns_path(ns)).map_err(|source| NodeError::Enter {
        ns: ns.into(),
        source,
    })
}

/// Moves the calling thread into namespace `ns`. Only call on a thread you own.
pub fn enter(ns: &str) -> Result<()> {
    setns(open_netns(ns)?, CloneFlags::CLONE_NEWNET).map_err(|e| NodeError::Enter {
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

/// Writes a sysctl of the namespace through /proc/sys from a thread inside it.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || std::fs::write(&path, value))?.map_err(|source| NodeError::Sysctl {
        ns: ns.into(),
        key: key.into(),
        source,
    })
}

/// Turns TX checksum offload off or on on `dev` (in the calling thread's namespace), as
/// `ethtool -K dev tx off|on` does (ETHTOOL_STXCSUM; the ethtool netlink crate can only read
/// features). Segmentation offloads follow: they need checksum offload.
///
/// Off on the outer end of a port lb creates, for XDP: a CHECKSUM_PARTIAL frame (a local
/// sender, a VM with checksum offload behind a tap) that the bridge forwards into it then has
/// its checksum completed by the kernel before it crosses into the namespace, where XDP needs
/// it complete. Back on for the TC data path, which handles partial checksums and GSO whole.
pub fn set_tx_checksum(dev: &str, enabled: bool) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    if dev.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: enabled as u32,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: a datagram socket for the ioctl, closed on drop; `req` outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An rtnetlink connection bound to one namespace; its I/O runs on the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Netlink { what, source }
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn here() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NodeError::Socket {
                ns: "(node)".into(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection whose socket is opened inside namespace `ns`.
    pub fn in_ns(ns: &str) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = in_netns(ns, || {
            let _runtime = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(|source| NodeError::Socket {
            ns: ns.into(),
            source,
        })?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// The ifindex of `name`, or None if there is no such device here.
    pub async fn index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.is_some_and(|c| -c.get() == ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(nl(format!("looking up {name}"))(e)),
        }
    }

    async fn require(&self, name: &str) -> Result<u32> {
        self.index(name).await?.ok_or_else(|| NodeError::Port {
            port: name.into(),
            reason: "device disappeared".into(),
        })
    }

    async fn set(&self, what: String, msg: LinkMessage) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(what))
    }

    pub async fn up(&self, name: &str) -> Result<()> {
        let i = self.require(name).await?;
        self.set(
            format!("setting {name} up"),
            LinkUnspec::new_with_index(i).up().build(),
        )
        .await
    }

    async fn add_bridge(&self, name: &str) -> Result<()> {
        let msg = LinkBridge::new(name).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating bridge {name}")))
    }

    async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        let msg = LinkVeth::new(name, peer).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating veth {name} / {peer}")))
    }

    async fn set_controller(&self, name: &str, bridge: &str) -> Result<()> {
        let (i, b) = (self.require(name).await?, self.require(bridge).await?);
        let msg = LinkUnspec::new_with_index(i).controller(b).build();
        self.set(format!("adding {name} to {bridge}"), msg).await
    }

    async fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let i = self.require(name).await?;
        let msg = LinkUnspec::new_with_index(i).address(mac.to_vec()).build();
        self.set(format!("setting the MAC of {name}"), msg).await
    }

    /// Moves device `name` into the namespace `ns_fd` refers to.
    async fn move_to(&self, name: &str, ns_fd: &impl AsRawFd) -> Result<()> {
        let i = self.require(name).await?;
        let msg = LinkUnspec::new_with_index(i)
            .setns_by_fd(ns_fd.as_raw_fd())
            .build();
        self.set(format!("moving {name} to another namespace"), msg)
            .await
    }

    async fn replace_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let i = self.require(name).await?;
        self.handle
            .address()
            .add(i, IpAddr::V4(addr), prefix)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("assigning {addr}/{prefix} to {name}")))
    }

    /// `ip route replace default via <gw>`.
    async fn default_route(&self, gw: Ipv4Addr) -> Result<()> {
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("default route via {gw}")))
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        if let Some(i) = self.index(name).await? {
            self.handle
                .link()
                .del(i)
                .execute()
                .await
                .map_err(nl(format!("deleting {name}")))?;
        }
        Ok(())
    }
}

/// What `Node::setup` created, so teardown removes exactly that.
#[derive(Default)]
pub struct Node {
    pub namespace: String,
    pub port: String,
    /// Outer end of a veth lb created (in the node namespace), if any.
    pub outer: Option<String>,
    pub created_namespace: bool,
    pub created_bridge: Option<String>,
    /// An adopted port lb moved from the node namespace into the load balancer's namespace.
    pub moved_port: bool,
    /// The node namespace (the daemon's), to hand an adopted port back on teardown.
    node_ns: Option<OwnedFd>,
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
    pub async fn setup(lb: &LoadBalancer) -> Result<Node> {
        let node_ns =
            File::open("/proc/thread-self/ns/net").map_err(|source| NodeError::Enter {
                ns: "(node)".into(),
                source,
            })?;
        let mut node = Node {
            namespace: lb.namespace(),
            port: lb.port.name.clone(),
            node_ns: Some(node_ns.into()),
            ..Default::default()
        };
        if let Err(e) = node.setup_inner(lb).await {
            node.teardown().await;
            return Err(e);
        }
        Ok(node)
    }

    async fn setup_inner(&mut self, lb: &LoadBalancer) -> Result<()> {
        let ns = self.namespace.clone();
        let port = self.port.clone();
        let port_err = |reason: String| NodeError::Port {
            port: port.clone(),
            reason,
        };
        if !netns_exists(&ns) {
            ip_netns("add", &ns)?;
            self.created_namespace = true;
        }
        let here = Netlink::here()?;
        let inside = Netlink::in_ns(&ns)?;
        let ns_file = open_netns(&ns)?;
        if lb.port.adopt {
            if here.index(&port).await?.is_some() {
                here.move_to(&port, &ns_file).await?;
                self.moved_port = true;
            } else if inside.index(&port).await?.is_none() {
                return Err(port_err(format!(
                    "adopt = true but no device of that name in the node namespace or in {ns}"
                )));
            }
        } else {
            let bridge = &lb.port.bridge;
            let outer = outer_name(&port);
            if inside.index(&port).await?.is_some() && here.index(&outer).await?.is_some() {
                // Left by an lb run that never tore down (killed, crashed): take it over, so
                // the flows pinned in its maps carry on once the program is attached again.
                tracing::warn!(port = %port, namespace = %ns, "reusing the port a previous lb run left behind");
                self.outer = Some(outer.clone());
                self.created_namespace = true;
                set_tx_checksum(&outer, false).map_err(|e| {
                    port_err(format!(
                        "cannot turn TX checksum offload off on {outer}: {e}"
                    ))
                })?;
                here.set_controller(&outer, bridge).await?;
                here.up(&outer).await?;
                return self.finish(lb, &inside).await;
            }
            if here.index(&port).await?.is_some() || inside.index(&port).await?.is_some() {
                return Err(port_err(
                    "a device of that name already exists; set port.adopt = true to use it".into(),
                ));
            }
            if here.index(bridge).await?.is_none() {
                here.add_bridge(bridge).await?;
                self.created_bridge = Some(bridge.clone());
            }
            here.up(bridge).await?;
            if here.index(&outer).await?.is_some() {
                return Err(port_err(format!("the outer end's name {outer} is taken")));
            }
            here.add_veth(&outer, &port).await?;
            self.outer = Some(outer.clone());
            set_tx_checksum(&outer, false).map_err(|e| {
                port_err(format!(
                    "cannot turn TX checksum offload off on {outer}: {e}"
                ))
            })?;
            here.move_to(&port, &ns_file).await?;
            here.set_controller(&outer, bridge).await?;
            here.up(&outer).await?;
            if let Some(mac) = lb.port.mac.as_deref().and_then(parse_mac) {
                inside.set_mac(&port, mac).await?;
            }
        }
        self.finish(lb, &inside).await
    }

    /// Up, VIP and sysctls: the same for a created, adopted or recovered port.
    async fn finish(&mut self, lb: &LoadBalancer, inside: &Netlink) -> Result<()> {
        let (ns, port) = (self.namespace.clone(), self.port.clone());
        inside.up("lo").await?;
        inside.up(&port).await?;
        inside
            .replace_address(&port, lb.vip_address, lb.vip_prefixlen)
            .await?;
        if let Some(gw) = lb.port.gateway {
            inside.default_route(gw).await?;
        }
        sysctl(&ns, "net.ipv4.ip_local_port_range", LOCAL_PORT_RANGE)?;
        // bpf_fib_lookup answers FWD_DISABLED unless forwarding is on for the ingress device.
        sysctl(&ns, &format!("net.ipv4.conf.{port}.forwarding"), "1")?;
        // Members on the VIP's subnet are on-link: never send them ICMP redirects.
        sysctl(&ns, &format!("net.ipv4.conf.{port}.send_redirects"), "0")?;
        sysctl(&ns, "net.ipv4.conf.all.send_redirects", "0")?;
        Ok(())
    }

    /// Removes what setup created; an adopted port goes back where it came from.
    pub async fn teardown(&mut self) {
        let here = Netlink::here();
        if self.moved_port {
            let back = async {
                let inside = Netlink::in_ns(&self.namespace)?;
                let node_ns = self.node_ns.as_ref().expect("set in setup");
                inside.move_to(&self.port, node_ns).await
            };
            if let Err(e) = back.await {
                tracing::warn!(error = %e, port = %self.port, "cannot return the adopted port");
            }
            self.moved_port = false;
        }
        if let (Some(outer), Ok(here)) = (self.outer.take(), &here) {
            if let Err(e) = here.delete(&outer).await {
                tracing::warn!(error = %e, "cannot delete {outer}");
            }
        }
        if self.created_namespace {
            if let Err(e) = ip_netns("del", &self.namespace) {
                tracing::warn!(error = %e, "cannot delete namespace {}", self.namespace);
            }
            self.created_namespace = false;
        }
        if let (Some(br), Ok(here)) = (self.created_bridge.take(), &here) {
            if let Err(e) = here.delete(&br).await {
                tracing::warn!(error = %e, "cannot delete bridge {br}");
            }
        }
    }
}
