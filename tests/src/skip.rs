//! Skips that are results, not passes. A test that cannot run here (no root, a program the
//! machine lacks, one CPU) calls [`skip`] and returns. Where a run must be complete (CI, where
//! `CI=true`, and `cargo xtask vm-test`, where `LB_VM_TEST` is set), a skip fails the test
//! unless the run names it in `LB_TEST_SKIPPABLE`; every skip is written to the file
//! `LB_TEST_SKIPS` names, from which `cargo xtask test` and `vm-test` print the run's skips
//! with their reasons.

use std::io::Write;

/// The environment variable naming the tests a run allows to skip: test names (or their
/// last `::` part), separated by commas or white space.
pub const SKIPPABLE: &str = "LB_TEST_SKIPPABLE";
/// The environment variable naming the file every skip is appended to, a line each:
/// `<test binary> <test>: <reason>`.
pub const RECORD: &str = "LB_TEST_SKIPS";

/// Whether this run must run every test: in CI or in the VM.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os("LB_VM_TEST").is_some()
}

/// Whether `declared` (the value of `LB_TEST_SKIPPABLE`) names `test`.
pub fn declared(declared: &str, test: &str) -> bool {
    declared
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
        .any(|n| n == test || test.rsplit("::").next() == Some(n))
}

/// The current test cannot run here, for `reason` (what is missing and where it comes
/// from). Prints and records it; panics (the test fails) when the run is [`strict`] and does
/// not declare the test skippable.
pub fn skip(reason: &str) {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.into(),
            _ => s,
        })
        .unwrap_or_default();
    let allowed = declared(&std::env::var(SKIPPABLE).unwrap_or_default(), test);
    eprintln!("SKIPPED {test}: {reason}");
    if strict() && !allowed {
        panic!(
            "{test} cannot run here ({reason}); in CI and in the VM a skip fails unless the run \
             declares it in {SKIPPABLE}"
        );
    }
    if let Some(path) = std::env::var_os(RECORD) {
        let line = format!("{binary} {test}: {reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording a skip in {}: {e}", path.to_string_lossy());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::declared;

    #[test]
    fn declared_by_full_name_or_last_part() {
        assert!(declared("a, tls_check b", "tls_check"));
        assert!(declared("tls_check", "haproxy::tls_check"));
        assert!(declared("haproxy::tls_check", "haproxy::tls_check"));
        assert!(!declared("tls", "tls_check"));
        assert!(!declared("", "tls_check"));
    }
}
