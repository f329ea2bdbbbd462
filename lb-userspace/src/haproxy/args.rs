//! haproxy's command line, as the LBaaS agent, Octavia's amphora and operators write it:
//! `-f FILE` (repeatable; a directory means its `*.cfg` files in order), `-p PIDFILE`,
//! `-sf PID...` and `-st PID...` (the pid lists end at the next option), `-D`, `-db`, `-W`,
//! `-Ws`, `-L NAME`, `-q`, `-c`, `-v`, `-vv`. Anything else is refused, naming the option.

use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub files: Vec<PathBuf>,
    pub pidfile: Option<PathBuf>,
    /// Old processes to hand over from: `-sf` (soft stop, SIGUSR1) or `-st` (SIGTERM).
    pub finish: Vec<u32>,
    pub terminate: Vec<u32>,
    pub daemon: bool,
    /// `-db`: stay in the foreground whatever `daemon` says.
    pub foreground: bool,
    /// `-W` / `-Ws`: master-worker, the master in the foreground; `-Ws` also tells systemd
    /// (`$NOTIFY_SOCKET`) when it serves and reloads.
    pub master_worker: bool,
    pub systemd: bool,
    /// `-L NAME`: this process's name in a `peers` section.
    pub local_peer: Option<String>,
    pub quiet: bool,
    pub check: bool,
    /// 1 for `-v`, 2 for `-vv`.
    pub version: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("option '{0}' is not supported by lb's haproxy drop-in (it accepts -f, -p, -sf, -st, -D, -db, -W, -Ws, -L, -q, -c, -v, -vv)")]
    Unsupported(String),
    #[error("option '{0}' needs a value")]
    Missing(String),
    #[error("'{value}' after {option} is not a pid")]
    BadPid { option: String, value: String },
    #[error("no configuration file (-f)")]
    NoConfig,
}

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, ArgsError> {
        let mut a = Args::default();
        let mut it = args.into_iter().peekable();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "-f" => a.files.push(
                    it.next()
                        .ok_or_else(|| ArgsError::Missing(arg.clone()))?
                        .into(),
                ),
                "-p" => {
                    a.pidfile = Some(
                        it.next()
                            .ok_or_else(|| ArgsError::Missing(arg.clone()))?
                            .into(),
                    )
                }
                "-sf" | "-st" => {
                    while let Some(p) = it.peek() {
                        if p.starts_with('-') {
                            break;
                        }
                        let v = it.next().expect("peeked");
                        let pid: u32 = v.parse().map_err(|_| ArgsError::BadPid {
                            option: arg.clone(),
                            value: v.clone(),
                        })?;
                        if arg == "-sf" {
                            a.finish.push(pid);
                        } else {
                            a.terminate.push(pid);
                        }
                    }
                }
                "-D" => a.daemon = true,
                "-db" => a.foreground = true,
                "-W" => a.master_worker = true,
                "-Ws" => {
                    a.master_worker = true;
                    a.systemd = true;
                }
                "-L" => {
                    a.local_peer = Some(it.next().ok_or_else(|| ArgsError::Missing(arg.clone()))?)
                }
                "-q" => a.quiet = true,
                "-c" => a.check = true,
                "-v" | "-V" => a.version = a.version.max(1),
                "-vv" => a.version = 2,
                "--" => {
                    for f in it.by_ref() {
                        a.files.push(f.into());
                    }
                }
                other => return Err(ArgsError::Unsupported(other.into())),
            }
        }
        if a.files.is_empty() && a.version == 0 {
            return Err(ArgsError::NoConfig);
        }
        Ok(a)
    }

    /// The configuration files to read, in order: each `-f`, a directory as its `*.cfg` files
    /// in alphabetical order (as haproxy reads them).
    pub fn config_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for f in &self.files {
            if f.is_dir() {
                let mut cfgs: Vec<PathBuf> = std::fs::read_dir(f)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "cfg") && p.is_file())
                    .collect();
                cfgs.sort();
                out.extend(cfgs);
            } else {
                out.push(f.clone());
            }
        }
        Ok(out)
    }

    /// The command line of a master's worker: the same files, in the foreground, without the
    /// master's own options (its pid file, `-W`/`-Ws`, `-D`), handing over from `old`.
    pub fn worker(&self, old: Option<u32>) -> Vec<String> {
        let mut v = Vec::new();
        for f in &self.files {
            v.push("-f".into());
            v.push(f.to_string_lossy().into_owned());
        }
        if let Some(l) = &self.local_peer {
            v.push("-L".into());
            v.push(l.clone());
        }
        v.push("-db".into());
        if let Some(pid) = old {
            v.push("-sf".into());
            v.push(pid.to_string());
        }
        v
    }

    /// Every old pid, whichever way it is to be stopped.
    pub fn old_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.finish.iter().chain(&self.terminate).copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, ArgsError> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_agent_s_command_lines() {
        let a = p("-f /s/lb1/haproxy.conf -p /s/lb1/haproxy.pid").unwrap();
        assert_eq!(a.files, [PathBuf::from("/s/lb1/haproxy.conf")]);
        assert_eq!(a.pidfile, Some(PathBuf::from("/s/lb1/haproxy.pid")));
        let a = p("-f /c -p /p -sf 12 34").unwrap();
        assert_eq!(a.finish, [12, 34]);
        let a = p("-f /c -sf -p /p").unwrap();
        assert!(a.finish.is_empty(), "an empty pid list is fine");
        let a = p("-f a -f b -st 7 -D -q").unwrap();
        assert_eq!(
            (a.files.len(), a.terminate.clone(), a.daemon, a.quiet),
            (2, vec![7], true, true)
        );
    }

    /// Octavia's amphora unit: ExecStartPre, ExecStart (in the namespace), ExecReload.
    #[test]
    fn the_amphora_s_command_lines() {
        let a = p("-f /var/lib/octavia/x/haproxy.cfg -f /var/lib/octavia/haproxy-default-user-group.conf -c -q -L aB3").unwrap();
        assert_eq!((a.files.len(), a.check, a.quiet), (2, true, true));
        assert_eq!(a.local_peer.as_deref(), Some("aB3"));
        let a = p("-Ws -f /c -f /u -p /run/x.pid -L aB3").unwrap();
        assert!(a.master_worker && a.systemd && !a.foreground);
        assert_eq!(
            a.worker(Some(42)).join(" "),
            "-f /c -f /u -L aB3 -db -sf 42"
        );
        let w = Args::parse(a.worker(None)).unwrap();
        assert!(w.foreground && !w.master_worker && w.pidfile.is_none());
    }

    #[test]
    fn everything_else_is_refused_naming_it() {
        assert_eq!(
            p("-f c -S /m").unwrap_err(),
            ArgsError::Unsupported("-S".into())
        );
        assert_eq!(
            p("-f c -x /sock").unwrap_err().to_string(),
            "option '-x' is not supported by lb's haproxy drop-in (it accepts -f, -p, -sf, -st, -D, -db, -W, -Ws, -L, -q, -c, -v, -vv)"
        );
        assert_eq!(p("-f c -L").unwrap_err(), ArgsError::Missing("-L".into()));
        assert_eq!(p("-p").unwrap_err(), ArgsError::Missing("-p".into()));
        assert!(matches!(
            p("-f c -sf 12 x1").unwrap_err(),
            ArgsError::BadPid { .. }
        ));
        assert_eq!(p("-q").unwrap_err(), ArgsError::NoConfig);
        assert_eq!(p("-vv").unwrap().version, 2);
    }
}
