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

/// Whether the calling thread is in namespace `ns` already.
pub fn same_netns(ns: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let here = id(Path::new("/proc/thread-self/ns/net"));
    here.is_some() && here == id(&netns_path(ns))
}

/// Moves the calling thread into namespace `ns` (nothing to do if it is there already: a
/// drop-in daemon that gave up CAP_SYS_ADMIN runs in its load balancer's namespace). Only
/// call on a thread you own.
pub fn enter(ns: &str) -> Result<()> {
    if same_netns(ns) {
        return Ok(());
    }
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

/// Reads a sysctl of the namespace through /proc/sys from a thread inside it (trimmed).
pub fn read_sysctl(ns: &str, key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || std::fs::read_to_string(&path))?
        .map(|v| v.trim().to_string())
        .map_err(|source| NodeError::Sysctl {
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

    /// Those of `addrs` whose neighbour entry the kernel is still resolving (INCOMPLETE).
    pub async fn resolving(&self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourState,
        };
        let mut entries = self.handle.neighbours().get().execute();
        let mut found = Vec::new();
        while let Some(msg) = entries
            .try_next()
            .await
            .map_err(nl("listing the neighbour entries"))?
        {
            if msg.header.state != NeighbourState::Incomplete {
                continue;
            }
            for a in &msg.attributes {
                let ip = match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => IpAddr::V4(*v4),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => IpAddr::V6(*v6),
                    _ => continue,
                };
                if addrs.contains(&ip) {
                    found.push(ip);
                }
            }
        }
        Ok(found)
    }

    /// The L2 address of device `name`, if it has one of 6 bytes.
    pub async fn mac(&self, name: &str) -> Result<Option<[u8; 6]>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = links
            .try_next()
            .await
            .map_err(nl(format!("looking up {name}")))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::Address(a) => a.try_into().ok(),
                _ => None,
            })
        }))
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

    /// `ip addr replace <addr>/<prefix> dev <name>`; an IPv6 address `nodad`: the VIP is
    /// usable at once, as the LBaaS agent's wait for DAD would leave it.
    async fn replace_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
        let i = self.require(name).await?;
        let mut req = self.handle.address().add(i, addr, prefix).replace();
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(nl(format!("assigning {addr}/{prefix} to {name}")))
    }

    /// `ip route replace default via <gw>`.
    async fn default_route(&self, gw: IpAddr) -> Result<()> {
        let msg = match gw {
            IpAddr::V4(gw) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .build(),
            IpAddr::V6(gw) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .gateway(gw)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("default route via {gw}")))
    }

    /// Whether any device has bridge `bridge` as its controller.
    pub async fn has_ports(&self, bridge: &str) -> Result<bool> {
        let Some(b) = self.index(bridge).await? else {
            return Ok(false);
        };
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(nl(format!("listing the ports of {bridge}")))?
        {
            let on_it = msg.attributes.iter().any(|a| {
                matches!(a, rtnetlink::packet_route::link::LinkAttribute::Controller(c) if *c == b)
            });
            if on_it {
                return Ok(true);
            }
        }
        Ok(false)
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

/// What lb created for one load balancer, across every run since it was first brought up:
/// recorded in its state file *before* each creation (a crash right after still leaves it
/// recorded), so that teardown after any number of restarts and takeovers removes exactly
/// this, and returns an adopted port to the node's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owned {
    /// lb made namespace `qlbaas-<id>` (else Neutron or an operator did).
    pub namespace: bool,
    /// lb made the port as a veth; this is its outer end, in the node's namespace.
    pub veth: Option<String>,
    /// lb made this bridge.
    pub bridge: Option<String>,
    /// lb moved the adopted port from the node's namespace into the load balancer's.
    pub moved_port: bool,
    /// Sysctls lb changed in a namespace it did not make, with the values it found: put
    /// back on teardown (after the haproxy drop-in hands a namespace back to haproxy, its
    /// ephemeral ports and forwarding are as they were).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// The load balancer's namespace and port, and what of them lb owns.
pub struct Node {
    pub namespace: String,
    pub port: String,
    /// Outer end of a veth lb created (in the node namespace), if any.
    pub outer: Option<String>,
    pub owned: Owned,
    /// The port's L2 address once it is set up (only frames to it are balanced).
    pub port_mac: Option<[u8; 6]>,
    /// The node namespace (the daemon's), to hand an adopted port back on teardown.
    node_ns: OwnedFd,
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

/// Called with what lb is about to own, before it creates it.
pub type Record<'a> = dyn FnMut(&Owned) -> std::io::Result<()> + Send + 'a;

impl Node {
    /// Makes (or finds) the namespace and port of `lb`, with its VIP and sysctls. `inherited`
    /// is what earlier runs recorded as lb's; `record` persists every addition before it is
    /// made. On failure, what this call created is removed again; what it inherited is not.
    pub async fn setup(
        lb: &LoadBalancer,
        inherited: &Owned,
        record: &mut Record<'_>,
    ) -> Result<Node> {
        let node_ns =
            File::open("/proc/thread-self/ns/net").map_err(|source| NodeError::Enter {
                ns: "(node)".into(),
                source,
            })?;
        let mut node = Node {
            namespace: lb.namespace(),
            port: lb.port.name.clone(),
            outer: inherited.veth.clone(),
            owned: inherited.clone(),
            port_mac: None,
            node_ns: node_ns.into(),
        };
        if let Err(e) = node.setup_inner(lb, record).await {
            let mut created = Node {
                namespace: node.namespace.clone(),
                port: node.port.clone(),
                outer: None,
                owned: node.owned.added_since(inherited),
                port_mac: None,
                node_ns: node
                    .node_ns
                    .try_clone()
                    .map_err(|source| NodeError::Enter {
                        ns: "(node)".into(),
                        source,
                    })?,
            };
            created.teardown().await;
            let _ = record(inherited);
            return Err(e);
        }
        Ok(node)
    }

    /// The node of a load balancer as its state file records it, for teardown.
    pub fn from_record(namespace: &str, port: &str, owned: &Owned) -> Node {
        Node {
            namespace: namespace.into(),
            port: port.into(),
            outer: owned.veth.clone(),
            owned: owned.clone(),
            port_mac: None,
            node_ns: File::open("/proc/thread-self/ns/net")
                .expect("the node's namespace")
                .into(),
        }
    }

    /// Records `change` applied to what lb owns, then keeps it.
    fn own(&mut self, record: &mut Record<'_>, change: impl FnOnce(&mut Owned)) -> Result<()> {
        let mut next = self.owned.clone();
        change(&mut next);
        record(&next).map_err(|e| NodeError::Port {
            port: self.port.clone(),
            reason: format!("cannot record what lb creates in the state file: {e}"),
        })?;
        self.owned = next;
        Ok(())
    }

    async fn setup_inner(&mut self, lb: &LoadBalancer, record: &mut Record<'_>) -> Result<()> {
        let ns = self.namespace.clone();
        let port = self.port.clone();
        let port_err = |reason: String| NodeError::Port {
            port: port.clone(),
            reason,
        };
        if !netns_exists(&ns) {
            self.own(record, |o| o.namespace = true)?;
            ip_netns("add", &ns)?;
        }
        let here = Netlink::here()?;
        let inside = Netlink::in_ns(&ns)?;
        let ns_file = open_netns(&ns)?;
        // The haproxy drop-in runs inside the load balancer's namespace already: "here" is
        // "inside", and an adopted port there is simply used.
        let already_inside = same_netns(&ns);
        if lb.port.adopt && already_inside {
            if here.index(&port).await?.is_none() {
                return Err(port_err(format!("no device of that name in {ns}")));
            }
        } else if lb.port.adopt {
            if here.index(&port).await?.is_some() {
                self.own(record, |o| o.moved_port = true)?;
                here.move_to(&port, &ns_file).await?;
            } else if inside.index(&port).await?.is_none() {
                return Err(port_err(format!(
                    "adopt = true but no device of that name in the node namespace or in {ns}"
                )));
            }
        } else {
            let bridge = &lb.port.bridge;
            let outer = outer_name(&port);
            if inside.index(&port).await?.is_some() && here.index(&outer).await?.is_some() {
                // Left by an lb run that did not tear down (killed, crashed, or handed over):
                // its data path still runs on it.
                tracing::warn!(port = %port, namespace = %ns, "reusing the port a previous lb run left behind");
                if self.owned.veth.as_deref() != Some(outer.as_str()) {
                    self.own(record, |o| o.veth = Some(outer.clone()))?;
                }
                self.outer = Some(outer.clone());
                here.set_controller(&outer, bridge).await?;
                here.up(&outer).await?;
                return self.finish(lb, &inside, record).await;
            }
            if here.index(&port).await?.is_some() || inside.index(&port).await?.is_some() {
                return Err(port_err(
                    "a device of that name already exists; set port.adopt = true to use it".into(),
                ));
            }
            if here.index(bridge).await?.is_none() {
                self.own(record, |o| o.bridge = Some(bridge.clone()))?;
                here.add_bridge(bridge).await?;
            }
            here.up(bridge).await?;
            if here.index(&outer).await?.is_some() {
                return Err(port_err(format!("the outer end's name {outer} is taken")));
            }
            self.own(record, |o| o.veth = Some(outer.clone()))?;
            here.add_veth(&outer, &port).await?;
            self.outer = Some(outer.clone());
            here.move_to(&port, &ns_file).await?;
            here.set_controller(&outer, bridge).await?;
            here.up(&outer).await?;
            if let Some(mac) = lb.port.mac.as_deref().and_then(parse_mac) {
                inside.set_mac(&port, mac).await?;
            }
        }
        self.finish(lb, &inside, record).await
    }

    /// Up, VIP and sysctls: the same for a created, adopted or recovered port.
    async fn finish(
        &mut self,
        lb: &LoadBalancer,
        inside: &Netlink,
        record: &mut Record<'_>,
    ) -> Result<()> {
        let (ns, port) = (self.namespace.clone(), self.port.clone());
        inside.up("lo").await?;
        inside.up(&port).await?;
        self.port_mac = inside.mac(&port).await?;
        if lb.port.assign_vip {
            inside
                .replace_address(&port, lb.vip_address, lb.prefixlen())
                .await?;
        }
        if let Some(gw) = lb.port.gateway {
            inside.default_route(gw).await?;
        }
        let mut wanted = vec![
            // (IPv4's range is IPv6's too.)
            ("net.ipv4.ip_local_port_range".to_string(), LOCAL_PORT_RANGE),
            // bpf_fib_lookup answers FWD_DISABLED unless forwarding is on for the ingress
            // device.
            (format!("net.ipv4.conf.{port}.forwarding"), "1"),
            // Members on the VIP's subnet are on-link: never send them ICMP redirects.
            (format!("net.ipv4.conf.{port}.send_redirects"), "0"),
            ("net.ipv4.conf.all.send_redirects".to_string(), "0"),
        ];
        if lb.vip_address.is_ipv6() {
            // The same for IPv6's FIB lookup (which reads the device's own setting).
            wanted.push((format!("net.ipv6.conf.{port}.forwarding"), "1"));
        }
        for (key, value) in wanted {
            let found = read_sysctl(&ns, &key)?;
            if found.split_whitespace().eq(value.split_whitespace()) {
                continue;
            }
            let recorded = self.owned.sysctls.iter().any(|(k, _)| *k == key);
            if !self.owned.namespace && !recorded {
                self.own(record, |o| o.sysctls.push((key.clone(), found.clone())))?;
            }
            sysctl(&ns, &key, value)?;
        }
        Ok(())
    }

    /// Removes what lb owns; an adopted port goes back to the node's namespace. A bridge lb
    /// made stays while other ports (another load balancer's) are on it.
    pub async fn teardown(&mut self) {
        let here = Netlink::here();
        if self.owned.moved_port {
            let back = async {
                let inside = Netlink::in_ns(&self.namespace)?;
                inside.move_to(&self.port, &self.node_ns).await
            };
            if let Err(e) = back.await {
                tracing::warn!(error = %e, port = %self.port, "cannot return the adopted port");
            }
            self.owned.moved_port = false;
        }
        if let (Some(outer), Ok(here)) = (self.owned.veth.take(), &here) {
            if let Err(e) = here.delete(&outer).await {
                tracing::warn!(error = %e, "cannot delete {outer}");
            }
        }
        self.outer = None;
        if !self.owned.namespace {
            for (key, value) in std::mem::take(&mut self.owned.sysctls).into_iter().rev() {
                if let Err(e) = sysctl(&self.namespace, &key, &value) {
                    tracing::warn!(error = %e, "cannot put {key} back to {value}");
                }
            }
        }
        if self.owned.namespace {
            if let Err(e) = ip_netns("del", &self.namespace) {
                tracing::warn!(error = %e, "cannot delete namespace {}", self.namespace);
            }
            self.owned.namespace = false;
        }
        if let (Some(br), Ok(here)) = (self.owned.bridge.take(), &here) {
            match here.has_ports(&br).await {
                Ok(false) => {
                    if let Err(e) = here.delete(&br).await {
                        tracing::warn!(error = %e, "cannot delete bridge {br}");
                    }
                }
                Ok(true) => {
                    tracing::info!(bridge = %br, "leaving the bridge lb made: other ports are on it")
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the ports of bridge {br}"),
            }
        }
    }
}

impl Owned {
    /// What `self` owns that `before` did not.
    pub fn added_since(&self, before: &Owned) -> Owned {
        Owned {
            namespace: self.namespace && !before.namespace,
            veth: self
                .veth
                .clone()
                .filter(|v| before.veth.as_ref() != Some(v)),
            bridge: self
                .bridge
                .clone()
                .filter(|b| before.bridge.as_ref() != Some(b)),
            moved_port: self.moved_port && !before.moved_port,
            sysctls: self
                .sysctls
                .iter()
                .filter(|x| !before.sysctls.contains(x))
                .cloned()
                .collect(),
        }
    }
}
