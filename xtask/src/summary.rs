//! A test run's result in one line: how many tests ran and passed, and each skip by name with
//! its reason. libtest counts a skipped test as passed (it returned); the tests' `skip::skip`
//! records each skip (`LB_TEST_SKIPS`), so the two are told apart here.

/// The environment variable the tests record their skips in (tests/src/skip.rs).
pub const SKIPS_ENV: &str = "LB_TEST_SKIPS";
/// The environment variable naming the tests a run allows to skip.
pub const SKIPPABLE_ENV: &str = "LB_TEST_SKIPPABLE";

/// The sum of `<n> <what>` over libtest's "test result: ok. 13 passed; 0 failed; ..." lines.
pub fn count(results: &[String], what: &str) -> u64 {
    results
        .iter()
        .flat_map(|s| {
            let w: Vec<&str> = s.split_whitespace().collect();
            (1..w.len())
                .filter(|&i| w[i].trim_end_matches(';') == what)
                .filter_map(|i| w[i - 1].parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// "N passed, M failed, K skipped, in B test binaries" from libtest's result lines and the
/// number of recorded skips (which libtest counted as passed).
pub fn head(results: &[String], skipped: usize) -> String {
    format!(
        "{} passed, {} failed, {skipped} skipped, in {} test binaries",
        count(results, "passed").saturating_sub(skipped as u64),
        count(results, "failed"),
        results.len()
    )
}

/// [`head`], then each recorded skip (`<binary> <test>: <reason>`).
pub fn line(results: &[String], skips: &[String]) -> String {
    let mut s = head(results, skips.len());
    if !skips.is_empty() {
        s.push_str(": ");
        s.push_str(&skips.join("; "));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_skip_is_not_a_pass() {
        let results = vec![
            "test result: ok. 13 passed; 0 failed; 1 ignored; 0 measured".to_string(),
            "test result: FAILED. 4 passed; 2 failed; 0 ignored".to_string(),
        ];
        let skips = vec!["udp dns_through: no dnsmasq".to_string()];
        assert_eq!(
            super::line(&results, &skips),
            "16 passed, 2 failed, 1 skipped, in 2 test binaries: udp dns_through: no dnsmasq"
        );
        assert_eq!(
            super::line(&results[..1], &[]),
            "13 passed, 0 failed, 0 skipped, in 1 test binaries"
        );
    }
}
