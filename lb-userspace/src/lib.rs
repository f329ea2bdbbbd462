//! lb's userspace: the daemon (`lb run`), the CLI (`lb stats`), and the library the
//! integration tests drive (loading the XDP program, writing and reading its maps).

pub mod batch;
pub mod config;
pub mod connlog;
pub mod daemon;
pub mod dataplane;
pub mod expiry;
pub mod explain;
pub mod flows;
pub mod haproxy;
pub mod health;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod state;
pub mod stats;
pub mod syslog;
