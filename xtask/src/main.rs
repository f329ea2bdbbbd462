//! `cargo xtask`: everything that is more than one cargo command. Every subcommand first
//! installs what is missing (pinned nightly with rust-src, bpf-linker, Debian packages) and
//! says what it installs; nothing else builds the BPF side.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod summary;
mod vm;

/// Keep in sync with lb-userspace/build.rs (bpf-linker 0.10.3 needs this nightly's LLVM 22).
const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.10.3";
/// What the tests and the demo run: ip, ethtool (checksum offload off on test veths),
/// sysctl, nsenter; the real haproxy, which the drop-in hands L7 configurations to.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "procps",
    "util-linux",
    "haproxy",
    "openssl",
    "hping3",
    // promtool, which checks the metrics endpoint's output
    "prometheus",
    // DNS through a UDP listener: dnsmasq members (the binary alone, no service), dig
    "dnsmasq-base",
    "bind9-dnsutils",
    // ssh over an IPv6 VIP: sshd in the members' namespaces (its service is not started:
    // see `setup`), the ssh client
    "openssh-server",
    "openssh-client",
    // Octavia's keepalived check script (tests/corpus), run on the drop-in's stats socket
    "python3",
    // nftables' full NAT as the stack that served a VIP before lb (end_to_end)
    "nftables",
];
/// What the benchmark drives and compares against, besides the test packages.
const BENCH_PACKAGES: &[&str] = &["wrk", "nginx-light", "iperf3"];

#[derive(Parser)]
#[command(name = "xtask", about = "Build, test and demo lb")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pin, bpf-linker and Debian packages the tests need
    Setup,
    /// Build the `lb` binary (release) with its embedded BPF object
    Build,
    /// Run every test tier: host unit tests, BPF_PROG_TEST_RUN fixtures, namespace end-to-end
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter)
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Measure test_run ns/packet per path and native vs generic XDP throughput (reports only)
    Perf {
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// lb side by side with direct, the seed's HAProxy and nftables full NAT (real traffic),
    /// and test_run ns/packet over conntrack and pool sizes; writes BENCHMARKS.md and a plot
    Bench {
        /// Seconds per wrk / iperf3 run
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Repetitions of every measurement (median and spread are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// More arguments for lb-bench (e.g. --no-grid, --paths lb,haproxy, --flows 1000)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Run the BPF and namespace test tiers inside a VM (qemu; KVM when usable), no root needed
    VmTest {
        /// Kernel: a Debian version or package (6.1, 6.12, linux-image-6.12.100+deb12-amd64) or
        /// a path to a vmlinuz; repeat for a matrix. Default: Debian's current linux-image-amd64
        #[arg(long)]
        kernel: Vec<String>,
        /// Give up on a VM after this many minutes
        #[arg(long, default_value_t = 30)]
        timeout_min: u64,
        /// VM memory in MiB
        #[arg(long, default_value_t = 3072)]
        memory: u32,
        /// Arguments for every test binary in the VM (e.g. a test name filter)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A spoofed SYN flood (hping3, random sources) against the seed's load balancer while a
    /// real client connects and an established session talks, then the same over IPv6 (an
    /// AF_PACKET sender: hping3 has no IPv6); prints a FLOOD and a FLOOD6 line (`cargo xtask
    /// test` runs the same for 10 s)
    Flood {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// hping3 interval (u100 = 10k SYN/s) or "flood" (as fast as it can send); the IPv6
        /// sender always sends as fast as it can
        #[arg(long, default_value = "flood")]
        rate: String,
        /// The listener's half_open_limit (-1: no cookies, to compare)
        #[arg(long)]
        half_open_limit: Option<i64>,
    },
    /// Mutated and random frames through the data path under BPF_PROG_TEST_RUN (the same
    /// harness `cargo xtask test` runs with 1M frames), from a seed, for reproduction
    Fuzz {
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// PRNG seed, hex (default: the one CI uses)
        #[arg(long)]
        seed: Option<String>,
    },
    /// The seed's scenario in namespaces: node with br-int, client, two members, lb in between
    Demo {
        /// XDP mode for lb: auto, native or generic
        #[arg(long, default_value = "auto")]
        xdp_mode: String,
        /// Keep running (Ctrl-C to stop) instead of exiting after the scripted traffic
        #[arg(long)]
        hold: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs the tests of `c` (a `cargo test`), its output passed through, then says how many
/// passed and which were skipped, and why (from what the tests' `skip::skip` recorded).
fn run_tests(c: &mut Command) -> Result<()> {
    let record = root().join("target/test-skips.txt");
    let _ = std::fs::remove_file(&record);
    c.env(summary::SKIPS_ENV, &record).stdout(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("running {c:?}"))?;
    let mut results = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading the tests' output")?;
        println!("{line}");
        if line.trim_start().starts_with("test result:") {
            results.push(line.trim().to_string());
        }
    }
    let status = child.wait()?;
    let skips: Vec<String> = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    eprintln!("\nxtask test: {}", summary::line(&results, &skips));
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn setup(packages: &[&str]) -> Result<()> {
    let have_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is needed (it installs the pinned nightly)")?;
    if !String::from_utf8_lossy(&have_nightly.stdout).contains(BPF_TOOLCHAIN) {
        eprintln!(
            "xtask: installing Rust toolchain {BPF_TOOLCHAIN} with rust-src (builds the BPF side)"
        );
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            BPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    } else {
        let comps = Command::new("rustup")
            .args([
                "component",
                "list",
                "--installed",
                "--toolchain",
                BPF_TOOLCHAIN,
            ])
            .output()
            .context("rustup component list")?;
        if !String::from_utf8_lossy(&comps.stdout).contains("rust-src") {
            eprintln!("xtask: adding rust-src to {BPF_TOOLCHAIN}");
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                BPF_TOOLCHAIN,
            ]))?;
        }
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if !linker_ok {
        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (cargo install, about a minute)"
        );
        run(cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !nix_is_root() {
            bail!(
                "missing Debian packages: {0}; install them as root: apt-get install {0}",
                missing.join(" ")
            );
        }
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        // The tests run servers (sshd) inside namespaces of their own; the packages' services
        // are not started on the machine itself: Debian's policy-rc.d says no while apt runs
        // (only when the machine has none of its own).
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let ours = !policy.exists();
        if ours {
            std::fs::write(policy, "#!/bin/sh\n# cargo xtask: no service starts while it installs packages\nexit 101\n")?;
            run(Command::new("chmod").args(["755", "/usr/sbin/policy-rc.d"]))?;
        }
        let r = run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing));
        if ours {
            let _ = std::fs::remove_file(policy);
        }
        r?;
    }
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf if nothing is there, once, before tests and demo start many
/// processes that would otherwise race to mount it (stacked mounts hide each other's pins).
fn ensure_bpffs() -> Result<()> {
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .context("stat")?;
    if String::from_utf8_lossy(&fs.stdout).trim() != "bpf_fs" {
        eprintln!("xtask: mounting bpffs on /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

fn build_lb(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--package", "lb-userspace", "--bin", "lb"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("lb"))
}

/// Builds the BPF object with the `upgrade-variant` feature (same maps, different code) for
/// the upgrade tests, the way aya-build builds the default one; returns its path.
fn build_variant_object() -> Result<PathBuf> {
    let target_dir = root().join("target/bpf-variant");
    let mut c = Command::new("rustup");
    c.current_dir(root())
        .args(["run", BPF_TOOLCHAIN, "cargo", "build", "--quiet"])
        .args(["--package", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--features", "upgrade-variant", "--target-dir"])
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO");
    run(&mut c)?;
    Ok(target_dir.join("bpfel-unknown-none/release/lb"))
}

/// Where the upgrade tests find the variant object.
const VARIANT_ENV: &str = "LB_TEST_VARIANT_OBJECT";

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(TEST_PACKAGES),
        Cmd::Build => {
            setup(TEST_PACKAGES)?;
            let bin = build_lb(true)?;
            eprintln!("xtask: built {}", bin.display());
            Ok(())
        }
        Cmd::Test { args } => {
            if !nix_is_root() {
                bail!(
                    "cargo xtask test needs root: most tests load BPF programs and make network \
                     namespaces, and would only be skipped; run it as root, or run \
                     `cargo xtask vm-test`, which needs no root"
                );
            }
            setup(TEST_PACKAGES)?;
            let bin = build_lb(false)?;
            let variant = build_variant_object()?;
            ensure_bpffs()?;
            // Unit tests of every host crate, then the integration tiers. One cargo
            // invocation so the build is shared.
            let mut c = cargo();
            c.args(["test", "--workspace", "--exclude", "lb-ebpf"])
                .env("LB_BIN", &bin)
                .env(VARIANT_ENV, &variant);
            if !args.is_empty() {
                c.arg("--").args(&args);
            }
            run_tests(&mut c)
        }
        Cmd::Perf { seconds, runs } => {
            let (s, r) = (seconds.to_string(), runs.to_string());
            run_tool("lb-perf", &["--seconds", &s, "--runs", &r])
        }
        Cmd::Bench {
            seconds,
            runs,
            rest,
        } => {
            let (s, r) = (seconds.to_string(), runs.to_string());
            let out = root().join("BENCHMARKS.md");
            let plot = root().join("docs/benchmarks.svg");
            let mut args = vec!["--seconds", &s, "--runs", &r];
            let (out, plot) = (out.to_string_lossy(), plot.to_string_lossy());
            if !rest.iter().any(|a| a == "--out") {
                args.extend(["--out", &out]);
            }
            if !rest.iter().any(|a| a == "--plot") {
                args.extend(["--plot", &plot]);
            }
            let mut command = format!("cargo xtask bench --seconds {s} --runs {r}");
            for a in &rest {
                command.push(' ');
                command.push_str(a);
            }
            args.extend(["--command", &command]);
            args.extend(rest.iter().map(String::as_str));
            let packages: Vec<&str> = TEST_PACKAGES
                .iter()
                .chain(BENCH_PACKAGES)
                .copied()
                .collect();
            run_tool_with("lb-bench", &args, &packages)
        }
        Cmd::VmTest {
            kernel,
            timeout_min,
            memory,
            args,
        } => vm_test(&kernel, timeout_min, memory, &args),
        Cmd::Flood {
            seconds,
            rate,
            half_open_limit,
        } => {
            setup(TEST_PACKAGES)?;
            let bin = build_lb(false)?;
            ensure_bpffs()?;
            let mut c = cargo();
            c.args(["test", "--package", "integration-tests", "--test", "flood"])
                .args(["--", "spoofed", "--nocapture"])
                .env("LB_BIN", &bin)
                .env("LB_FLOOD_SECONDS", seconds.to_string())
                .env("LB_FLOOD_RATE", rate);
            if let Some(l) = half_open_limit {
                c.env("LB_FLOOD_HALF_OPEN_LIMIT", l.to_string());
            }
            run(&mut c)
        }
        Cmd::Fuzz { frames, seed } => {
            setup(TEST_PACKAGES)?;
            let bin = build_lb(false)?;
            ensure_bpffs()?;
            let mut c = cargo();
            c.args(["test", "--package", "integration-tests", "--test", "fuzz"])
                .args(["--", "--nocapture"])
                .env("LB_BIN", &bin)
                .env("LB_FUZZ_FRAMES", frames.to_string());
            if let Some(s) = seed {
                c.env("LB_FUZZ_SEED", s);
            }
            run(&mut c)
        }
        Cmd::Demo { xdp_mode, hold } => {
            let mut args = vec!["--xdp-mode", xdp_mode.as_str()];
            if hold {
                args.push("--hold");
            }
            run_tool("lb-demo", &args)
        }
    }
}

/// Runs one of the tests package's programs (lb-demo, lb-perf) against a release `lb`.
fn run_tool(name: &str, args: &[&str]) -> Result<()> {
    run_tool_with(name, args, TEST_PACKAGES)
}

fn run_tool_with(name: &str, args: &[&str], packages: &[&str]) -> Result<()> {
    setup(packages)?;
    ensure_bpffs()?;
    let bin = build_lb(true)?;
    run(cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "integration-tests",
            "--bin",
            name,
            "--",
        ])
        .arg("--lb")
        .arg(&bin)
        .args(args))
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// Builds `lb` and every test binary, then runs them in a VM per kernel; one summary line per
/// kernel; fails if any kernel failed.
fn vm_test(kernels: &[String], timeout_min: u64, memory: u32, args: &[String]) -> Result<()> {
    let packages: Vec<&str> = TEST_PACKAGES
        .iter()
        .chain(vm::VM_PACKAGES)
        .copied()
        .collect();
    setup(&packages)?;
    let lb = build_lb(false)?;
    let variant = build_variant_object()?;
    let mut tests = build_tests()?;
    tests.retain(|(name, _)| !vm::HOST_ONLY.contains(&name.as_str()));
    let work = root().join("target/vm");
    std::fs::create_dir_all(&work)?;
    let specs: Vec<String> = if kernels.is_empty() {
        vec![String::new()]
    } else {
        kernels.to_vec()
    };
    let mut results = Vec::new();
    for spec in &specs {
        let label = if spec.is_empty() {
            "debian-current"
        } else {
            spec
        };
        let r = vm::get_kernel(spec, &work.join("kernels")).and_then(|k| {
            let image = vm::initramfs(&k, &lb, &variant, &tests, args, &work)?;
            let r = vm::boot(
                &k,
                &image,
                std::time::Duration::from_secs(timeout_min * 60),
                memory,
            );
            let _ = std::fs::remove_file(&image);
            r.map(|o| (k.label, o))
        });
        results.push((label.to_string(), r));
    }
    eprintln!("\nvm-test summary:");
    let mut ok = true;
    for (label, r) in &results {
        match r {
            Ok((version, o)) => {
                ok &= o.passed;
                eprintln!(
                    "  {version:<28} {}  {} ({:.0} s)",
                    if o.passed { "PASS" } else { "FAIL" },
                    o.detail,
                    o.seconds
                );
                for s in &o.skips {
                    eprintln!("      skipped: {s}");
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("  {label:<28} ERROR {e:#}");
            }
        }
    }
    if !ok {
        bail!("vm-test failed");
    }
    Ok(())
}

/// `cargo test --no-run` of the workspace: (unique name, executable) of every test binary.
fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--exclude",
            "xtask",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let name = format!(
            "{}-{}",
            v["target"]["name"].as_str().unwrap_or("test"),
            v["target"]["kind"][0].as_str().unwrap_or("")
        );
        tests.push((name, PathBuf::from(exe)));
    }
    if tests.is_empty() {
        bail!("cargo test --no-run reported no test binaries");
    }
    Ok(tests)
}
