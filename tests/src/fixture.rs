//! The environment of the BPF_PROG_TEST_RUN fixtures (and of `lb-perf`): the loaded program
//! with the seed's plan in its maps, run from a namespace of its own where the VIP's subnet is
//! on a veth and the members have permanent neighbour entries, so `bpf_fib_lookup` answers
//! deterministically.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use lb::{config::Config, dataplane::Dataplane, plan::Plan};
use lb_common::{reason, Flow, FlowKey, FLOW_DIR_FORWARD, IPPROTO_TCP, IPPROTO_UDP};

use crate::*;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PORT_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x68, 0x77, 0x37];
pub const M1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const M2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 250);
pub const M16: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const M26: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 4);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

pub struct Env {
    // Field order is drop order: the program and maps go before their pin directory.
    pub dp: Dataplane,
    pub ns: Netns,
    pub plan: Plan,
    _pin: PinDir,
}

/// A bpffs directory removed on drop, even when loading failed.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        // The slot in the program set first (the set goes with its last load balancer).
        let _ = lb::dataplane::release(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Env {
    pub fn new(config: &str) -> Option<Env> {
        Self::with_capacity(config, 1024)
    }

    /// As `new`, with a conntrack table of `flows` flows.
    pub fn with_capacity(config: &str, flows: u32) -> Option<Env> {
        Self::with_sizing(config, flows, false)
    }

    /// As `with_capacity`, with the connection log's ring (`config`'s `[daemon]
    /// connection_log` makes its listeners log); nothing reads the ring but the test.
    pub fn logging(config: &str, flows: u32) -> Option<Env> {
        Self::with_sizing(config, flows, true)
    }

    fn with_sizing(config: &str, flows: u32, connection_log: bool) -> Option<Env> {
        if !require_root() {
            return None;
        }
        let ns = Netns::new("fx");
        ns.ip("link add port0 type veth peer name port0p");
        ns.ip("link set port0 address fa:16:3e:68:77:37");
        ns.ip("link set port0 up");
        ns.ip("link set port0p up");
        ns.ip("addr add 10.0.0.250/24 dev port0");
        let cfg = Config::parse(config, "fixture").expect("fixture config");
        let plan = lb::plan::plan(&cfg.loadbalancer[0], None).unwrap();
        for a in [M1, M2] {
            neighbour(&ns, a);
        }
        ns.exec("sysctl -qw net.ipv4.conf.all.forwarding=1");
        let pin = PinDir(PathBuf::from("/sys/fs/bpf").join(unique("pin")));
        lb::daemon::ensure_bpffs(&pin.0).expect("bpffs");
        let sizing = lb::dataplane::Sizing {
            connection_log,
            ..lb::dataplane::Sizing::new(flows, 0, 0, false)
        };
        let mut dp = Dataplane::open(&pin.0, &sizing).expect("load BPF object");
        dp.write_plan(&plan, None).unwrap();
        dp.maps.set_port(PORT_MAC).unwrap();
        Some(Env {
            dp,
            ns,
            plan,
            _pin: pin,
        })
    }

    /// The fixture's world for an IPv6 load balancer (`config`'s VIP is `VIP6`): the
    /// VIP's /64 on the veth, permanent neighbour entries for `M16` and `M26`.
    pub fn new6(config: &str) -> Option<Env> {
        if !require_root() {
            return None;
        }
        let ns = Netns::new("fx6");
        ns.ip("link add port0 type veth peer name port0p");
        ns.ip("link set port0 address fa:16:3e:68:77:37");
        ns.ip("link set port0 up");
        ns.ip("link set port0p up");
        ns.ip(&format!("addr add {VIP6}/64 dev port0 nodad"));
        for a in [M16, M26] {
            let mac = mac_of6(a).map(|b| format!("{b:02x}")).join(":");
            ns.ip(&format!(
                "-6 neigh replace {a} lladdr {mac} nud permanent dev port0"
            ));
        }
        ns.exec("sysctl -qw net.ipv6.conf.all.forwarding=1");
        ns.exec("sysctl -qw net.ipv6.conf.port0.forwarding=1");
        let cfg = Config::parse(config, "fixture").expect("fixture config");
        let plan = lb::plan::plan(&cfg.loadbalancer[0], None).unwrap();
        let pin = PinDir(PathBuf::from("/sys/fs/bpf").join(unique("pin")));
        lb::daemon::ensure_bpffs(&pin.0).expect("bpffs");
        let mut dp = Dataplane::load6(&pin.0, 1024).expect("load BPF object");
        dp.write_plan(&plan, None).unwrap();
        dp.maps.set_port(PORT_MAC).unwrap();
        Some(Env {
            dp,
            ns,
            plan,
            _pin: pin,
        })
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self._pin.0
    }

    pub fn seed() -> Option<Env> {
        Env::new(include_str!("../../examples/seed.toml"))
    }

    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_program("lb", frame)
    }

    /// Runs program `name` of the object ("lb", "lb_tc", "lb_tc_fast") once on `frame`.
    pub fn run_program(&mut self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let Env { ns, dp, .. } = self;
        let (action, out, _) = in_netns(&ns.name, || dp.test_run_program(name, frame, 1))
            .unwrap()
            .expect("test_run");
        (action, out)
    }

    pub fn verdicts(&self) -> Vec<u64> {
        self.dp.maps.verdicts().unwrap().to_vec()
    }

    /// Runs `frame` and checks the verdict, that exactly one packet was counted under
    /// `why`, and (for PASS/DROP) that the frame left untouched.
    pub fn expect(&mut self, frame: &[u8], action: u32, why: u32) -> Vec<u8> {
        let before = self.verdicts();
        let (a, out) = self.run(frame);
        let after = self.verdicts();
        assert_eq!(
            a,
            action,
            "action for reason {}",
            reason::NAMES[why as usize]
        );
        for (i, (b, n)) in before.iter().zip(&after).enumerate() {
            let want = if i as u32 == why { b + 1 } else { *b };
            assert_eq!(*n, want, "verdict counter {}", reason::NAMES[i]);
        }
        if action != XDP_TX {
            assert_eq!(out, frame, "a passed or dropped frame is untouched");
        }
        out
    }

    /// Established connections counted on member slot `member`.
    pub fn active(&self, member: u32) -> i64 {
        self.dp.maps.member_live.get(member).active
    }

    /// Handshakes in progress counted on member slot `member`.
    pub fn half_open(&self, member: u32) -> i64 {
        self.dp.maps.member_live.get(member).half_open
    }

    pub fn member_index(&self, addr: Ipv4Addr) -> u32 {
        self.plan
            .members
            .iter()
            .find(|m| m.address == addr)
            .unwrap()
            .index
    }

    pub fn set_member_flags(&mut self, addr: Ipv4Addr, f: impl Fn(u32) -> u32) {
        let idx = self.member_index(addr);
        let mut c = self.dp.maps.member(idx).unwrap();
        c.flags = f(c.flags);
        self.dp.maps.set_member(idx, c).unwrap();
        // As the daemon does after every change of a member.
        let pool = c.pool;
        self.dp.maps.refresh_source_table(pool).unwrap();
    }

    pub fn flow(&self, client_port: u16) -> Option<Flow> {
        self.flow_on(client_port, 22)
    }

    /// The TCP flow from CLIENT:`client_port` to VIP:`listener_port`.
    pub fn flow_on(&self, client_port: u16, listener_port: u16) -> Option<Flow> {
        self.flow_proto(client_port, listener_port, IPPROTO_TCP)
    }

    /// The UDP flow from CLIENT:`client_port` to VIP:`listener_port`.
    pub fn flow_udp(&self, client_port: u16, listener_port: u16) -> Option<Flow> {
        self.flow_proto(client_port, listener_port, IPPROTO_UDP)
    }

    fn flow_proto(&self, client_port: u16, listener_port: u16, proto: u8) -> Option<Flow> {
        self.dp
            .maps
            .flow(&forward_key(client_port, listener_port, proto))
    }

    /// Moves the clock of the TCP flow from CLIENT:`client_port` to port 22 back by `ns`
    /// (its first SYN and its last packet), as if that time had passed since.
    pub fn age(&mut self, client_port: u16, ns: u64) {
        let key = forward_key(client_port, 22, IPPROTO_TCP);
        let mut f = self.dp.maps.flow(&key).expect("a flow to age");
        f.created_ns -= ns;
        f.last_seen_ns -= ns;
        self.dp.maps.set_flow(&key, f).unwrap();
    }

    /// Completes the handshake of the flow from CLIENT:`port` to VIP:`listener_port` (client
    /// ISN 1000): the member's SYN-ACK (ISN 5000, window 1000) and the client's ACK of it
    /// (window 2000). A connection from then on.
    pub fn establish_on(&mut self, port: u16, listener_port: u16) {
        let f = self
            .flow_on(port, listener_port)
            .expect("a flow to establish");
        let (member, snat) = (
            Ipv4Addr::from(u32::from_be(f.member_be)),
            u16::from_be(f.snat_port_be),
        );
        let mut synack = Tcp::new(
            member,
            u16::from_be(f.member_port_be),
            VIP,
            snat,
            TCP_SYN | TCP_ACK,
        )
        .macs(mac_of(member), PORT_MAC);
        (synack.seq, synack.ack, synack.win) = (5000, 1001, 1000);
        self.expect(&synack.build(), XDP_TX, reason::TX_TO_CLIENT);
        let mut ack =
            Tcp::new(CLIENT, port, VIP, listener_port, TCP_ACK).macs(CLIENT_MAC, PORT_MAC);
        (ack.seq, ack.ack, ack.win) = (1001, 5001, 2000);
        self.expect(&ack.build(), XDP_TX, reason::TX_TO_MEMBER);
    }

    /// A whole connection from CLIENT:`port`: `open`, then the handshake completed.
    pub fn connect(&mut self, port: u16) -> (Ipv4Addr, [u8; 6], u16) {
        let r = self.open(port);
        self.establish_on(port, 22);
        r
    }

    /// Opens a flow with a SYN from CLIENT:`port` (a handshake, not yet a connection);
    /// returns (member address, member mac, snat port).
    pub fn open(&mut self, port: u16) -> (Ipv4Addr, [u8; 6], u16) {
        let syn = Tcp::new(CLIENT, port, VIP, 22, TCP_SYN).macs(CLIENT_MAC, PORT_MAC);
        let out = self.expect(&syn.build(), XDP_TX, reason::TX_TO_MEMBER);
        let o = Tcp::parse(&out).unwrap();
        (o.dst, o.dst_mac, o.sport)
    }
}

/// The forward key of the flow from CLIENT:`client_port` to VIP:`listener_port`.
fn forward_key(client_port: u16, listener_port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_be: u32::from(CLIENT).to_be(),
        dst_be: u32::from(VIP).to_be(),
        sport_be: client_port.to_be(),
        dport_be: listener_port.to_be(),
        proto,
        dir: FLOW_DIR_FORWARD,
        _pad: [0; 2],
    }
}

/// A permanent neighbour entry for `addr` (MAC `mac_of(addr)`) in the fixture's namespace.
pub fn neighbour(ns: &Netns, addr: Ipv4Addr) {
    let mac = mac_of(addr).map(|b| format!("{b:02x}")).join(":");
    ns.ip(&format!(
        "neigh replace {addr} lladdr {mac} nud permanent dev port0"
    ));
}

/// The MAC of the fixture's neighbour at `addr`: 02:00:00:00:00:<last octet> (M1_MAC, M2_MAC).
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr.octets()[3]]
}

/// An IPv6 load balancer: ssh (TCP 22) and DNS (UDP 53) on `VIP6`, members `M16` and `M26`.
pub fn ipv6_config(listener_extra: &str) -> String {
    format!(
        r#"
[[loadbalancer]]
id = "v6"
vip_address = "{VIP6}"
[loadbalancer.port]
name = "port0"
adopt = true

[[loadbalancer.listener]]
id = "ssh"
protocol = "TCP"
protocol_port = 22
default_pool_id = "ssh-pool"
{listener_extra}

[[loadbalancer.listener]]
id = "dns"
protocol = "UDP"
protocol_port = 53
default_pool_id = "dns-pool"

[[loadbalancer.pool]]
id = "ssh-pool"
protocol = "TCP"
lb_algorithm = "LEAST_CONNECTIONS"
[[loadbalancer.pool.member]]
id = "s1"
address = "{M16}"
protocol_port = 22
[[loadbalancer.pool.member]]
id = "s2"
address = "{M26}"
protocol_port = 22

[[loadbalancer.pool]]
id = "dns-pool"
protocol = "UDP"
lb_algorithm = "LEAST_CONNECTIONS"
[[loadbalancer.pool.member]]
id = "d1"
address = "{M16}"
protocol_port = 53
[[loadbalancer.pool.member]]
id = "d2"
address = "{M26}"
protocol_port = 53
"#
    )
}

/// A neighbour solicitation (ICMPv6 135, its body left zero) from the client to the VIP: not
/// lb's to balance, the kernel's.
pub fn neighbour_solicitation6() -> Vec<u8> {
    crate::ipv6_frame(
        CLIENT_MAC,
        PORT_MAC,
        crate::CLIENT6,
        crate::VIP6,
        &[],
        58,
        &[135, 0, 0, 0, 0, 0, 0, 0],
    )
}

/// The MAC of the IPv6 neighbour at `addr`: 02:00:00:00:06:<last byte>.
pub fn mac_of6(addr: Ipv6Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 6, addr.octets()[15]]
}

/// The frame lb should emit for client segment `t` towards `member` with SNAT port `snat`.
pub fn to_member(t: &Tcp, member: Ipv4Addr, snat: u16) -> Tcp {
    Tcp {
        src_mac: PORT_MAC,
        dst_mac: mac_of(member),
        src: VIP,
        dst: member,
        sport: snat,
        ..t.clone()
    }
}

/// The frame lb should emit for member segment `t` towards the client's port `client_port`.
pub fn to_client(t: &Tcp, client_port: u16) -> Tcp {
    Tcp {
        src_mac: PORT_MAC,
        dst_mac: CLIENT_MAC,
        src: VIP,
        sport: 22,
        dst: CLIENT,
        dport: client_port,
        ..t.clone()
    }
}
