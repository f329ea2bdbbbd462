//! `cargo xtask`: everything that is more than one cargo command. Every subcommand first
//! installs what is missing (pinned nightly with rust-src, bpf-linker, Debian packages) and
//! says what it installs; nothing else builds the BPF side.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// Keep in sync with lb-userspace/build.rs (bpf-linker 0.10.3 needs this nightly's LLVM 22).
const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.10.3";
/// What the tests and the demo run: ip, ethtool (checksum offload off on test veths),
/// sysctl, nsenter.
const TEST_PACKAGES: &[&str] = &["iproute2", "ethtool", "procps", "util-linux"];

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
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
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
            setup(TEST_PACKAGES)?;
            if !nix_is_root() {
                eprintln!("xtask: not root: BPF and namespace tests will report SKIPPED");
            }
            let bin = build_lb(false)?;
            if nix_is_root() {
                ensure_bpffs()?;
            }
            // Unit tests of every host crate, then the integration tiers. One cargo
            // invocation so the build is shared.
            let mut c = cargo();
            c.args(["test", "--workspace", "--exclude", "lb-ebpf"])
                .env("LB_BIN", &bin);
            if !args.is_empty() {
                c.arg("--").args(&args);
            }
            run(&mut c)
        }
        Cmd::Perf { seconds, runs } => {
            let (s, r) = (seconds.to_string(), runs.to_string());
            run_tool("lb-perf", &["--seconds", &s, "--runs", &r])
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
    setup(TEST_PACKAGES)?;
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
