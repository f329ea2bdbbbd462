//! `lb haproxy <haproxy's arguments>`, also run when lb is invoked under the name `haproxy`:
//! a drop-in for the haproxy that OpenStack's LBaaS agent runs in each `qlbaas-<id>`
//! namespace. It reads haproxy's command line (`args`) and configuration (`tokens`,
//! `config`), maps a `mode tcp` configuration onto one of lb's load balancers (`convert`),
//! and runs it in the namespace it was started in; a configuration that needs an L7 proxy
//! is handed to the real haproxy.

pub mod args;
pub mod config;
pub mod convert;
pub mod namespace;
pub mod privileges;
pub mod run;
pub mod stats_socket;
pub mod syslog;
pub mod tokens;

use std::path::PathBuf;

pub use config::{HaConfig, Refusal};

/// The haproxy version whose command line, configuration and stats socket the drop-in speaks.
pub const STANDS_IN_FOR: &str = "2.6";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Syntax(#[from] tokens::SyntaxError),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Reads and parses the configuration files, in order, as one configuration.
pub fn load(files: &[PathBuf]) -> Result<HaConfig, LoadError> {
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|source| LoadError::Read {
            path: f.clone(),
            source,
        })?;
        lines.extend(tokens::lines(f, &text)?);
    }
    Ok(config::parse(&lines)?)
}

/// What `-v` / `-vv` print.
pub fn version(verbose: bool) -> String {
    let mut s = format!(
        "HAProxy version {STANDS_IN_FOR} compatible: lb {} (an eBPF L4 load balancer standing in for haproxy)\n",
        env!("CARGO_PKG_VERSION")
    );
    if verbose {
        s.push_str(
            "lb serves mode tcp configurations itself (TC/XDP data path, full NAT, leastconn, \
             roundrobin, source, TCP/HTTP/TLS-hello checks, stats socket); configurations that \
             need an L7 proxy (mode http, ssl crt, cookies, redirect, option forwardfor) run the \
             real haproxy ($LB_HAPROXY_BIN or /usr/sbin/haproxy).\n",
        );
    }
    s
}
