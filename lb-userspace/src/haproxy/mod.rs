//! `lb haproxy <haproxy's arguments>`, also run when lb is invoked under the name `haproxy`:
//! a drop-in for the haproxy that OpenStack's LBaaS agent runs in each `qlbaas-<id>`
//! namespace. It reads haproxy's command line (`args`) and configuration (`tokens`,
//! `config`), maps a `mode tcp` configuration onto one of lb's load balancers (`convert`),
//! and runs it in the namespace it was started in; a configuration that needs an L7 proxy
//! is handed to the real haproxy.

pub mod args;
pub mod child;
pub mod config;
pub mod convert;
pub mod master;
pub mod namespace;
pub mod privileges;
pub mod run;
pub mod split;
pub mod stats_socket;
pub mod syslog;
pub mod tokens;

use std::path::PathBuf;

pub use config::{HaConfig, Refusal};

/// The haproxy version whose command line, configuration and stats socket the drop-in speaks
/// (`major.minor.patch`: Octavia's amphora agent reads major and minor from `-v`).
pub const STANDS_IN_FOR: &str = "2.6.0";

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

/// Reads the configuration files' lines, in order, as one configuration.
pub fn read(files: &[PathBuf]) -> Result<Vec<tokens::Line>, LoadError> {
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|source| LoadError::Read {
            path: f.clone(),
            source,
        })?;
        lines.extend(tokens::lines(f, &text)?);
    }
    Ok(lines)
}

/// Reads and parses the configuration files, in order, as one configuration.
pub fn load(files: &[PathBuf]) -> Result<HaConfig, LoadError> {
    Ok(config::parse(&read(files)?)?)
}

/// What `-v` / `-vv` print. The first line reads as haproxy's does to those who parse it
/// (Octavia: `.*version (.+?)\.(.+?)(\.|-dev).*`, major and minor as integers) and says it
/// is lb: `HAProxy version 2.6.0-lb-<lb's version> - lb, ...`.
pub fn version(verbose: bool) -> String {
    let mut s = format!(
        "HAProxy version {STANDS_IN_FOR}-lb-{v} - lb {v}, an eBPF L4 load balancer standing in for haproxy\n",
        v = env!("CARGO_PKG_VERSION")
    );
    if verbose {
        s.push_str(
            "lb serves mode tcp configurations itself (TC/XDP data path, full NAT, leastconn, \
             roundrobin, source, TCP/HTTP/TLS-hello/PING checks, stats socket); configurations that \
             need an L7 proxy (mode http, ssl crt, cookies, redirect, send-proxy) run the \
             real haproxy ($LB_HAPROXY_BIN or /usr/sbin/haproxy).\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    /// Octavia's amphora agent: `re.search(r'.*version (.+?)\.(.+?)(\.|-dev).*', out)`,
    /// then `int(group(1))`, `int(group(2))`. Its lazy groups, by hand: the first '.' after
    /// "version " ends the major, the next '.' or "-dev" ends the minor.
    #[test]
    fn octavia_reads_the_version() {
        let v = super::version(false);
        let first = v.lines().next().unwrap();
        assert_eq!(first.matches("version").count(), 1, "{first}");
        let rest = &first[first.find("version ").unwrap() + 8..];
        let (major, rest) = rest.split_once('.').unwrap();
        let end = rest
            .find('.')
            .into_iter()
            .chain(rest.find("-dev"))
            .min()
            .unwrap();
        assert_eq!(
            (major.parse::<u32>(), rest[..end].parse::<u32>()),
            (Ok(2), Ok(6))
        );
        assert!(first.contains("lb"), "{first}");
    }
}
