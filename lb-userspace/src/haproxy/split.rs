//! Which process serves what: a configuration without L7 is lb's; one whose L7 needs are
//! confined to some frontends (with the backends they use) is split, lb serving the `mode tcp`
//! listeners and the real haproxy, a child of lb in the same namespace, the L7 ones
//! (Octavia's load balancers with an HTTP and a TCP listener); anything else is the real
//! haproxy's, whole.
//!
//! The child's configuration is the original's lines, in order, without lb's proxies: every
//! `global`, `defaults` and other section stays as written, except that the child answers on
//! its own stats socket (lb's stats socket asks it for its rows and its servers' commands),
//! and the pid file and daemon mode are lb's.

use std::{collections::HashSet, path::Path};

use super::{
    config::{HaConfig, Kind, L7},
    tokens::Line,
};

/// A configuration split between lb and the real haproxy.
#[derive(Debug, Clone)]
pub struct Split {
    /// What lb serves: the configuration without the L7 proxies.
    pub lb: HaConfig,
    /// The proxies haproxy serves, in order.
    pub haproxy_proxies: Vec<String>,
    /// The first L7 need (why haproxy runs at all).
    pub why: L7,
    /// haproxy's part, as lines of the original configuration.
    lines: Vec<Line>,
}

#[derive(Debug, Clone)]
pub enum Serving {
    /// lb serves it all.
    Lb,
    /// The real haproxy serves it all, for this reason.
    Haproxy(L7),
    Split(Box<Split>),
}

/// Global lines that are lb's alone once split: its stats sockets, pid file, daemon mode.
fn lb_s_global_line(l: &Line) -> bool {
    let w: Vec<&str> = l.words.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["stats", "socket", ..] | ["pidfile", ..] | ["daemon"] | ["master-worker", ..]
    )
}

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "userlist",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
];

/// Decides who serves `cfg` (parsed from `lines`).
pub fn decide(cfg: &HaConfig, lines: &[Line]) -> Serving {
    let Some(first) = cfg.l7.clone() else {
        return Serving::Lb;
    };
    if cfg.outside_l7.is_some() || cfg.outside_refused.is_some() {
        return Serving::Haproxy(first);
    }
    let l7_proxy = |name: &str| cfg.proxy(name).is_some_and(|p| p.l7.is_some());
    // Frontends (and listen sections) by their own needs and their default backend's.
    let mut haproxy: HashSet<&str> = HashSet::new();
    let mut lb: HashSet<&str> = HashSet::new();
    for p in cfg.proxies.iter().filter(|p| p.kind.has_frontend()) {
        let l7 = p.l7.is_some()
            || (p.kind == Kind::Frontend && p.default_backend.as_deref().is_some_and(l7_proxy));
        let side = if l7 { &mut haproxy } else { &mut lb };
        side.insert(p.name.as_str());
        if let Some(b) = &p.default_backend {
            side.insert(b.as_str());
        }
    }
    // Backends no frontend names (`use_backend` targets are L7 frontends'): by their own.
    for p in cfg.proxies.iter().filter(|p| p.kind == Kind::Backend) {
        if !haproxy.contains(p.name.as_str()) && !lb.contains(p.name.as_str()) {
            if p.l7.is_some() {
                haproxy.insert(p.name.as_str());
            } else {
                lb.insert(p.name.as_str());
            }
        }
    }
    let lb_proxies: Vec<_> = cfg
        .proxies
        .iter()
        .filter(|p| lb.contains(p.name.as_str()))
        .collect();
    // lb serves its part whole or not at all: an L7 need or a refusal in it, or nothing
    // for it to listen on, gives the whole configuration to haproxy.
    let serves_something = lb_proxies
        .iter()
        .any(|p| p.kind.has_frontend() && !p.binds.is_empty() && !p.disabled);
    if haproxy.is_empty()
        || !serves_something
        || lb_proxies
            .iter()
            .any(|p| p.l7.is_some() || p.refused.is_some())
    {
        return Serving::Haproxy(first);
    }
    let mut lb_cfg = cfg.clone();
    lb_cfg.proxies.retain(|p| lb.contains(p.name.as_str()));
    lb_cfg.l7 = None;
    // haproxy's lines: every section but lb's proxies.
    let mut keep = Vec::new();
    let mut section_is_lb = false;
    let mut in_global = false;
    for l in lines {
        if SECTIONS.contains(&l.keyword()) {
            let name = l.args().first().map(String::as_str).unwrap_or("");
            section_is_lb = matches!(l.keyword(), "frontend" | "backend" | "listen")
                && lb.contains(name)
                && !haproxy.contains(name);
            in_global = l.keyword() == "global";
        }
        if section_is_lb || (in_global && lb_s_global_line(l)) {
            continue;
        }
        keep.push(l.clone());
    }
    Serving::Split(Box::new(Split {
        lb: lb_cfg,
        haproxy_proxies: cfg
            .proxies
            .iter()
            .filter(|p| haproxy.contains(p.name.as_str()))
            .map(|p| p.name.clone())
            .collect(),
        why: first,
        lines: keep,
    }))
}

impl Split {
    /// haproxy's configuration, answering on the stats socket `socket` (level admin, for lb
    /// only: mode 0600).
    pub fn haproxy_config(&self, socket: &Path) -> String {
        let mut out = format!(
            "# The L7 part of a configuration split by lb: lb serves its mode tcp listeners.\n\
             global\n    stats socket {} mode 600 level admin\n",
            socket.display()
        );
        let mut file = None;
        for l in &self.lines {
            if file != Some(&l.file) {
                out.push_str(&format!("# {}\n", l.file.display()));
                file = Some(&l.file);
            }
            out.push_str(&l.raw);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::{config::parse, tokens};

    fn decide_text(text: &str) -> Serving {
        let lines = tokens::lines(Path::new("c"), text).unwrap();
        decide(&parse(&lines).unwrap(), &lines)
    }

    const MIXED: &str = "global\n daemon\n stats socket /s mode 666 level user\n maxconn 100\n\
        defaults\n option http-keep-alive\n timeout connect 5s\n\
        frontend tcp\n bind 10.0.0.250:8080\n mode tcp\n default_backend p1\n\
        backend p1\n mode tcp\n server m 10.0.0.11:9000 check\n\
        frontend web\n bind 10.0.0.250:80\n mode http\n default_backend p2\n\
        backend p2\n mode http\n cookie SRV insert indirect nocache\n server m 10.0.0.11:8000 cookie m check\n";

    #[test]
    fn tcp_listeners_are_lb_s_and_http_ones_haproxy_s() {
        let Serving::Split(s) = decide_text(MIXED) else {
            panic!("split")
        };
        let names: Vec<&str> = s.lb.proxies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["tcp", "p1"]);
        assert_eq!(s.haproxy_proxies, ["web", "p2"]);
        let text = s.haproxy_config(Path::new("/run/lb/x.haproxy.sock"));
        assert!(text.contains("stats socket /run/lb/x.haproxy.sock mode 600 level admin"));
        assert!(
            !text.contains("/s mode 666"),
            "lb's stats socket stays lb's:\n{text}"
        );
        assert!(!text.contains(" daemon"), "{text}");
        assert!(!text.contains("8080") && !text.contains("p1"), "{text}");
        assert!(text.contains("frontend web") && text.contains("cookie SRV insert"));
        assert!(text.contains("maxconn 100") && text.contains("option http-keep-alive"));
    }

    #[test]
    fn what_cannot_be_split_is_haproxy_s_whole() {
        // An L7 need in defaults.
        let t = MIXED.replace(" option http-keep-alive\n", " cookie X insert\n");
        assert!(matches!(decide_text(&t), Serving::Haproxy(_)));
        // lb's part holds a line lb refuses.
        let t = MIXED.replace(
            " mode tcp\n default_backend p1",
            " mode tcp\n acl a src 10.0.0.1\n default_backend p1",
        );
        assert!(matches!(decide_text(&t), Serving::Haproxy(_)));
        // Nothing for lb to listen on.
        let t = MIXED.replace("frontend tcp\n bind 10.0.0.250:8080\n", "frontend tcp\n");
        assert!(matches!(decide_text(&t), Serving::Haproxy(_)));
        // No L7 at all.
        let t = "frontend tcp\n bind 10.0.0.250:8080\n default_backend p1\nbackend p1\n server m 10.0.0.11:9000\n";
        assert!(matches!(decide_text(t), Serving::Lb));
    }
}
