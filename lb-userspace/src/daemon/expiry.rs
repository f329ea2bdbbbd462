//! The expiry thread: one per daemon, off the control loop, running every load balancer's
//! expiry cycles (`crate::expiry::Sweeper`) in turn. A cycle reads its table a chunk at a
//! time and rests as long as the chunk took before the next one, so it never holds a CPU for
//! more than a chunk (a few milliseconds) nor takes more than half of one; cycles repeat at an
//! interval that grows with the table (`crate::expiry::interval`: every second up to 100,000
//! flows, every 10 s from a million).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info};

use crate::expiry::{self, Census, Sweeper};

/// A cycle's news for the control loop: retired member slots no flow names any more.
#[derive(Debug)]
pub struct Freed {
    pub loadbalancer: String,
    pub slots: Vec<u32>,
}

struct Job {
    sweeper: Sweeper,
    census: Census,
    next: Instant,
    /// Set when the load balancer goes: the cycle in progress stops at its next chunk.
    cancelled: Arc<AtomicBool>,
}

type Jobs = Arc<Mutex<HashMap<String, Arc<Mutex<Job>>>>>;

/// The expiry thread and the load balancers it serves.
pub struct Expiry {
    jobs: Jobs,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Expiry {
    pub fn start(freed: UnboundedSender<Freed>) -> anyhow::Result<Expiry> {
        let jobs: Jobs = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (j, s) = (jobs.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("expiry".into())
            .spawn(move || run(j, s, freed))?;
        Ok(Expiry {
            jobs,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts cycling over load balancer `lb`'s table.
    pub fn add(&self, lb: &str, sweeper: Sweeper, census: Census) {
        let job = Job {
            sweeper,
            census,
            next: Instant::now(),
            cancelled: Arc::default(),
        };
        self.jobs
            .lock()
            .unwrap()
            .insert(lb.into(), Arc::new(Mutex::new(job)));
    }

    /// The counters the next cycles census (after a reload).
    pub fn set_census(&self, lb: &str, census: Census) {
        let job = self.jobs.lock().unwrap().get(lb).cloned();
        if let Some(job) = job {
            job.lock().unwrap().census = census;
        }
    }

    /// Stops cycling over `lb`'s table; once this returns no cycle of it runs.
    pub fn remove(&self, lb: &str) {
        let job = self.jobs.lock().unwrap().remove(lb);
        if let Some(job) = job {
            let cancelled = job.lock().map(|j| j.cancelled.clone());
            if let Ok(c) = cancelled {
                c.store(true, Ordering::Relaxed);
            }
            // Waits for a cycle in progress to notice (one chunk at most).
            drop(job.lock());
        }
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(jobs: Jobs, stop: Arc<AtomicBool>, freed: UnboundedSender<Freed>) {
    while !stop.load(Ordering::Relaxed) {
        let due: Vec<(String, Arc<Mutex<Job>>)> = jobs
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut ran = false;
        for (lb, job) in due {
            let Ok(mut job) = job.try_lock() else {
                continue;
            };
            if job.next > Instant::now() || job.cancelled.load(Ordering::Relaxed) {
                continue;
            }
            ran = true;
            let started = Instant::now();
            let cancelled = job.cancelled.clone();
            let census = job.census.clone();
            let stopping = stop.clone();
            let r = job.sweeper.cycle(&census, &mut |took| {
                if cancelled.load(Ordering::Relaxed) || stopping.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(took.max(Duration::from_micros(200)));
                true
            });
            match r {
                Ok(o) => {
                    job.next = started + expiry::interval(o.entries);
                    if o.expired > 0 || o.corrected > 0 || o.orphans > 0 {
                        info!(
                            loadbalancer = %lb, flows = o.flows, expired = o.expired,
                            orphans = o.orphans, corrected = o.corrected,
                            cycle_ms = o.duration.as_millis() as u64,
                            longest_chunk_us = o.longest_chunk.as_micros() as u64,
                            "conntrack expiry"
                        );
                    }
                    if !o.freed.is_empty() {
                        let _ = freed.send(Freed {
                            loadbalancer: lb.clone(),
                            slots: o.freed,
                        });
                    }
                }
                Err(e) => {
                    job.next = started + Duration::from_secs(1);
                    if !job.cancelled.load(Ordering::Relaxed) {
                        error!(loadbalancer = %lb, error = format!("{e:#}"), "conntrack expiry failed");
                    }
                }
            }
        }
        if !ran {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
