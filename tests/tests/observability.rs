//! Tier 3: what lb shows of its traffic, checked against real connections through the seed's
//! topology: the connection log (haproxy's tcplog lines, as syslog datagrams), the Prometheus
//! endpoint, `lb explain`.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

use integration_tests::{topology::*, unique};

const M1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const M2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const LISTENER: &str = "df25900f-53b1-4aab-8436-8411ec710445";
const MEMBER_IDS: [(Ipv4Addr, &str); 2] = [
    (M1, "45481748-3104-462c-ae4b-fae0f4b08c20"),
    (M2, "227b69fe-8685-4df6-b2a5-2f964c74886c"),
];

/// Adds `keys` to the test config's `[daemon]` section.
fn daemon_keys(cfg: &TestConfig, keys: &str) {
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let anchor = "conntrack_flows = 4096\n";
    assert!(text.contains(anchor));
    std::fs::write(
        &cfg.path,
        text.replacen(anchor, &format!("{anchor}{keys}\n"), 1),
    )
    .unwrap();
}

/// A syslog socket (what `/dev/log` is) the test reads.
struct Syslog {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Syslog {
    fn bind() -> Syslog {
        let path = std::env::temp_dir().join(format!("{}.log", unique("syslog")));
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Syslog { sock, path }
    }

    /// Datagrams until `n` arrived or `within` passed.
    fn read(&self, n: usize, within: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < n && start.elapsed() < within {
            if let Ok(k) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
            }
        }
        got
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One parsed tcplog line.
#[derive(Debug)]
struct Line {
    client_port: u16,
    frontend: String,
    backend: String,
    server: String,
    connect_ms: i64,
    total_ms: u64,
    bytes: u64,
    state: String,
    counts: Vec<String>,
}

fn parse(datagram: &str) -> Line {
    let re = regex::Regex::new(concat!(
        r"^<134>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} lb\[[0-9]+\]: ",
        r"10\.0\.0\.1:([0-9]+) \[[0-9]{2}/[A-Z][a-z]{2}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}\] ",
        r"([^ ]+) ([^ /]+)/([^ ]+) 0/(-?[0-9]+)/([0-9]+) ([0-9]+) ([^ ]{2}) ",
        r"([0-9]+/[0-9]+/[0-9]+/[0-9]+/\+?[0-9]+) 0/0$"
    ))
    .unwrap();
    let c = re
        .captures(datagram)
        .unwrap_or_else(|| panic!("not a tcplog datagram: {datagram:?}"));
    Line {
        client_port: c[1].parse().unwrap(),
        frontend: c[2].into(),
        backend: c[3].into(),
        server: c[4].into(),
        connect_ms: c[5].parse().unwrap(),
        total_ms: c[6].parse().unwrap(),
        bytes: c[7].parse().unwrap(),
        state: c[8].into(),
        counts: c[9].split('/').map(Into::into).collect(),
    }
}

/// Every connection made is one line when it ends, with its member, the bytes the member
/// sent it and how it ended: closed by both sides (`--`), reset by the client (`CD`), idle
/// past the listener's data timeout (`cD`, written by the expiry).
#[test]
fn connection_log_lines_match_the_connections_made() {
    let Some(setup) = Setup::new(
        |t| t.replace("timeout_client_data = 50000", "timeout_client_data = 2000"),
        &[M1, M2],
    ) else {
        return;
    };
    let syslog = Syslog::bind();
    daemon_keys(
        &setup.cfg,
        &format!("connection_log = \"{} local0\"", syslog.path.display()),
    );
    let mut daemon = setup.start(&[]);
    let client = setup.topo.client.name.clone();
    // client port -> (member, bytes from the member, how it ends)
    let mut want: HashMap<u16, (Ipv4Addr, u64, &str)> = HashMap::new();
    for i in 0..4 {
        let mut c = connect(&client, VIP, 22).expect("connect");
        let msg = vec![b'a' + i as u8; 100 * (i + 1)];
        c.echo(&msg).unwrap();
        let port = c.stream.local_addr().unwrap().port();
        want.insert(
            port,
            (c.member(), (c.greeting.len() + msg.len()) as u64, "--"),
        );
        // Closed both ways before the next one opens (the counts on each line are then 1).
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut c.stream, &mut rest).unwrap();
        assert!(rest.is_empty());
    }
    {
        let mut c = connect(&client, VIP, 22).expect("connect");
        c.echo(b"reset me\n").unwrap();
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let port = c.stream.local_addr().unwrap().port();
        want.insert(port, (c.member(), (c.greeting.len() + 9) as u64, "CD"));
    }
    let mut idle = connect(&client, VIP, 22).expect("connect");
    idle.echo(b"idle\n").unwrap();
    let port = idle.stream.local_addr().unwrap().port();
    want.insert(
        port,
        (idle.member(), (idle.greeting.len() + 5) as u64, "cD"),
    );

    // The idle one goes at its 2 s timeout, at the expiry's next cycle (every second).
    let got = syslog.read(want.len() + 1, Duration::from_secs(8));
    drop(idle);
    eprintln!("{}", got.join("\n"));
    let lines: Vec<Line> = got.iter().map(|d| parse(d)).collect();
    assert_eq!(
        lines.len(),
        want.len(),
        "one line per connection, no more: {got:#?}"
    );
    let ids: HashMap<Ipv4Addr, &str> = MEMBER_IDS.into_iter().collect();
    for l in &lines {
        let (member, bytes, state) = want
            .get(&l.client_port)
            .unwrap_or_else(|| panic!("a line for a connection not made: {l:?}"));
        assert_eq!(l.frontend, LISTENER);
        assert_eq!(l.backend, setup.cfg.lb_id, "the seed's pool shares the id");
        assert_eq!(l.server, ids[member], "{l:?}");
        assert_eq!(l.bytes, *bytes, "bytes from the member: {l:?}");
        assert_eq!(l.state, *state, "{l:?}");
        assert!(
            l.connect_ms >= 0 && l.total_ms >= l.connect_ms as u64,
            "{l:?}"
        );
        // One connection at a time: each line counts itself only (actconn/feconn/beconn/
        // srv_conn), and no retries.
        assert_eq!(l.counts, ["1", "1", "1", "1", "0"], "{l:?}");
        if *state == "cD" {
            assert!(l.total_ms >= 2000, "idle past 2 s: {l:?}");
        }
    }
    let s = stats(&setup.bin, &setup.cfg.state_dir);
    assert_eq!(s[0]["connection_log_lost"], 0, "{s}");
    daemon.stop();
}
