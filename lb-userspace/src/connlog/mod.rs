//! The connection log: one line per connection when it ends, in haproxy's `option tcplog`
//! format (`tcplog`), sent to the targets of `[daemon] connection_log` (`crate::syslog`).
//!
//! Two sources, one `Logger` per load balancer:
//! - the data path: a connection of a logging listener that closes (both FINs or a RST) is
//!   a `ConnEvent` in the `CONN_LOG` ring buffer of the programs this daemon loaded; a
//!   `Reader` thread drains it (woken when a quarter of the ring is used, and every 100 ms)
//!   and formats each event;
//! - the expiry: a flow removed idle past its timeout (`crate::expiry::Sweeper`), formatted
//!   on the expiry thread.
//!
//! Names (listener, pool, member ids) come from the plan in force; the connection counts
//! from the shared `Live` arrays at the moment the line is made.

pub mod tcplog;

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use lb_common::{Address, ConnEvent, FlowG, CT_ESTABLISHED};
use serde::Serialize;

use self::tcplog::{End, Record};
use crate::{
    dataplane::{LiveArray, SharedLive},
    plan::Plan,
    syslog::Sender,
};

/// How often the reader drains the ring when nothing wakes it.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// A connection log's own counters.
#[derive(Debug, Default, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct LogCounters {
    /// Lines made (each sent to every target that takes it).
    pub lines: u64,
    /// Lines a target did not take (no syslog daemon on the socket, its buffer full).
    pub send_failures: u64,
}

struct ListenerName {
    id: Arc<str>,
    pool_id: Arc<str>,
    pool: u32,
}

#[derive(Default)]
struct Names {
    listeners: HashMap<u32, ListenerName>,
    members: HashMap<u32, Arc<str>>,
    /// pool index -> its members' indexes
    pools: HashMap<u32, Vec<u32>>,
    /// pool index -> listeners it serves
    pool_listeners: HashMap<u32, u32>,
}

impl Names {
    fn of(plan: &Plan) -> Names {
        let mut n = Names::default();
        for l in &plan.listeners {
            n.listeners.insert(
                l.index,
                ListenerName {
                    id: l.id.as_str().into(),
                    pool_id: l.pool_id.as_str().into(),
                    pool: l.conf.pool,
                },
            );
            *n.pool_listeners.entry(l.conf.pool).or_default() += 1;
        }
        for m in &plan.members {
            n.members.insert(m.index, m.id.as_str().into());
            if let Some(pool) = plan.pool_of(m.index) {
                n.pools.entry(pool).or_default().push(m.index);
            }
        }
        n
    }
}

/// One load balancer's connection log.
pub struct Logger {
    loadbalancer: String,
    sender: Arc<Sender>,
    names: RwLock<Names>,
    member_live: SharedLive,
    listener_live: LiveArray,
    lines: AtomicU64,
    send_failures: AtomicU64,
}

/// Every logger of this process, for the metrics endpoint.
static LOGGERS: Mutex<Vec<std::sync::Weak<Logger>>> = Mutex::new(Vec::new());

/// The counters of every connection log this process runs, by load balancer.
pub fn counters() -> Vec<(String, LogCounters)> {
    let mut all = LOGGERS.lock().unwrap();
    all.retain(|w| w.strong_count() > 0);
    all.iter()
        .filter_map(|w| w.upgrade())
        .map(|l| {
            (
                l.loadbalancer.clone(),
                LogCounters {
                    lines: l.lines.load(Ordering::Relaxed),
                    send_failures: l.send_failures.load(Ordering::Relaxed),
                },
            )
        })
        .collect()
}

/// Both clocks now: CLOCK_MONOTONIC (the data path's) in ns, the wall clock in ms.
fn clocks() -> (u64, i64) {
    let mono = crate::expiry::monotonic_ns();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (mono, wall)
}

/// Lines being made: a buffer and where each line ends in it.
#[derive(Default)]
struct Batch {
    text: String,
    ends: Vec<usize>,
    dates: tcplog::Dates,
}

impl Batch {
    fn lines(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&e| {
                let l = &self.text[start..e];
                start = e;
                l
            })
            .collect()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }
}

impl Logger {
    pub fn open(
        loadbalancer: &str,
        pin_dir: &Path,
        member_live: SharedLive,
        sender: Arc<Sender>,
        plan: &Plan,
    ) -> Result<Arc<Logger>, crate::dataplane::DataplaneError> {
        let l = Arc::new(Logger {
            loadbalancer: loadbalancer.into(),
            sender,
            names: RwLock::new(Names::of(plan)),
            member_live,
            listener_live: LiveArray::open(&pin_dir.join("LISTENER_LIVE"))?,
            lines: AtomicU64::new(0),
            send_failures: AtomicU64::new(0),
        });
        LOGGERS.lock().unwrap().push(Arc::downgrade(&l));
        Ok(l)
    }

    /// The plan in force changed (a reload): new names.
    pub fn set_plan(&self, plan: &Plan) {
        *self.names.write().unwrap() = Names::of(plan);
    }

    /// A flow the expiry removed at `now_ns` (monotonic), idle past its timeout (and no
    /// longer counted).
    pub fn expired<A: Address>(&self, f: &FlowG<A>, now_ns: u64) {
        let active = |l: &LiveArray, i: u32| l.get(i).active.max(0) as u32;
        let mut client_be = [0; 4];
        f.client_be.widen_to(&mut client_be);
        let ev = ConnEvent {
            accepted_ns: f.accepted_ns(),
            ended_ns: now_ns,
            member_bytes: f.member_bytes,
            state: f.state,
            client_be,
            member: f.member,
            listener: f.listener,
            connect_ms: f.connect_ms,
            feconn: active(&self.listener_live, f.listener),
            srv_conn: active(&self.member_live.get(), f.member),
            client_port_be: f.client_port_be,
            syn_retries: f.syn_retries,
            family: A::FAMILY,
        };
        let mut b = Batch::default();
        self.add(&mut b, &ev, End::Expired(f.state));
        self.flush(&mut b);
    }

    /// Formats `ev` into `b` (nothing if haproxy would not have logged it).
    fn add(&self, b: &mut Batch, ev: &ConnEvent, end: End) {
        if !tcplog::loggable(end) {
            return;
        }
        let names = self.names.read().unwrap();
        let listener = names.listeners.get(&ev.listener);
        let (frontend, backend, pool) = match listener {
            Some(l) => (&*l.id, &*l.pool_id, l.pool),
            None => ("-", "-", u32::MAX),
        };
        let server = names.members.get(&ev.member).map_or("-", |s| &**s);
        // The counts as the connection ended; as haproxy's, they include the connection
        // being logged. The load balancer's is its listener's when it has one (else summed
        // now); a pool behind one listener has that listener's (else summed now).
        let me = (ev.state & CT_ESTABLISHED != 0) as i64;
        let feconn = ev.feconn as i64 + me;
        let srv_conn = ev.srv_conn as i64 + me;
        let live = |l: &LiveArray, i: u32| l.get(i).active.max(0);
        let actconn = if names.listeners.len() <= 1 {
            feconn
        } else {
            names
                .listeners
                .keys()
                .map(|&i| live(&self.listener_live, i))
                .sum::<i64>()
                + me
        };
        let beconn = if names.pool_listeners.get(&pool) == Some(&1) {
            feconn
        } else {
            names.pools.get(&pool).map_or(0, |ms| {
                let members = self.member_live.get();
                ms.iter().map(|&m| live(&members, m)).sum()
            }) + me
        };
        let (now_mono, now_wall) = clocks();
        let (accepted_unix_ms, connect_ms, total_ms) = tcplog::times(ev, now_mono, now_wall);
        let (tries, moves) = ((ev.syn_retries & 0x0f) as u32, (ev.syn_retries >> 4) as u32);
        tcplog::write(
            &mut b.text,
            &mut b.dates,
            &Record {
                client: client_of(ev),
                client_port: u16::from_be(ev.client_port_be),
                accepted_unix_ms,
                frontend,
                backend,
                server,
                connect_ms,
                total_ms,
                bytes: ev.member_bytes,
                end,
                actconn,
                feconn,
                beconn,
                srv_conn,
                retries: tries + moves,
                redispatched: moves > 0,
            },
        );
        b.ends.push(b.text.len());
    }

    /// Sends the lines of `b` and empties it.
    fn flush(&self, b: &mut Batch) {
        if b.ends.is_empty() {
            return;
        }
        let lines = b.lines();
        self.lines.fetch_add(lines.len() as u64, Ordering::Relaxed);
        let failed = self.sender.send_all(crate::syslog::INFO, &lines);
        if failed > 0 {
            self.send_failures
                .fetch_add(failed as u64, Ordering::Relaxed);
        }
        b.clear();
    }
}

/// The thread that drains a load balancer's `CONN_LOG` ring.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start(mut ring: RingBuf<MapData>, logger: Arc<Logger>) -> std::io::Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let name = format!(
            "connlog-{}",
            &logger.loadbalancer[..logger.loadbalancer.len().min(7)]
        );
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let fd = ring.as_raw_fd();
            let mut batch = Batch::default();
            loop {
                let stopping = s.load(Ordering::Relaxed);
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<ConnEvent>() {
                        // SAFETY: the record is a ConnEvent the data path wrote.
                        let ev: ConnEvent =
                            unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        drop(item);
                        logger.add(&mut batch, &ev, End::Closed(ev.state));
                        if batch.ends.len() >= 256 {
                            logger.flush(&mut batch);
                        }
                    }
                }
                logger.flush(&mut batch);
                if stopping {
                    return;
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, DRAIN_EVERY.as_millis() as i32) };
            }
        })?;
        Ok(Reader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    /// Drains what the ring holds, then stops.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client's address of a record, by its family.
fn client_of(ev: &ConnEvent) -> std::net::IpAddr {
    if ev.family == 6 {
        std::net::Ipv6Addr::from(lb_common::ip6_octets(&ev.client_be)).into()
    } else {
        std::net::Ipv4Addr::from(u32::from_be(ev.client_be[0])).into()
    }
}
