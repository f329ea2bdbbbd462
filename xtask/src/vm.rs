//! `cargo xtask vm-test`: the BPF_PROG_TEST_RUN and namespace test tiers inside a virtual
//! machine, on a chosen kernel, without root on the host.
//!
//! 1. Kernel: a Debian package fetched with `apt-get download` (default: what
//!    `linux-image-amd64` depends on) and unpacked with `dpkg-deb -x`, or a vmlinuz given by
//!    path (modules from `/lib/modules/<version>` when they exist).
//! 2. Initramfs (cpio newc): busybox, the host's `ip`, `nsenter`, `ethtool` and the libraries
//!    they load, the test binaries `cargo test --no-run` built, `lb`, and the kernel modules the
//!    tests need with their dependencies (decompressed, loaded in order by /init).
//! 3. qemu-system-x86_64 with KVM when /dev/kvm can be opened, software emulation otherwise;
//!    the console is streamed to the terminal; /init prints the tests' status and powers off.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// What the tests load at run time (veth ports, the node's bridge, TC attach).
const MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf", "virtio_rng"];
/// Host programs the tests and lb run, copied with their libraries. `sh` too: busybox's shell
/// runs its own applets (a reduced `ip`) before anything on PATH.
const HOST_PROGRAMS: &[&str] = &["ip", "tc", "nsenter", "ethtool", "sh"];
/// The tests the VM may skip, and why: they need programs its image does not carry. Any
/// other skip fails the VM run (`skip::skip` in tests/src/skip.rs).
pub const SKIPPABLE: &[(&str, &str)] = &[
    (
        "a_fresh_start_after_another_stack_keeps_off_its_time_wait_tuples",
        "no nft in the image (the daemon's SNAT range: nothing of a kernel's own)",
    ),
    (
        "ssh_over_an_ipv6_vip_beside_an_ipv4_load_balancer",
        "no sshd/ssh in the image",
    ),
    ("ssh_through_ipv6_syn_cookies", "no sshd/ssh in the image"),
    ("tls_hello_check_over_ipv6", "no openssl in the image"),
    (
        "packet_too_big_reaches_the_client_through_the_ipv6_vip",
        "no sshd/ssh in the image",
    ),
    (
        "dns_through_a_udp_listener_with_a_member_going_down",
        "no dnsmasq/dig in the image",
    ),
    (
        "spoofed_syn_flood_leaves_real_clients_and_counts_alone",
        "no hping3 in the image",
    ),
    (
        "a_tls_hello_check_tells_a_tls_member_from_a_plain_one",
        "no openssl in the image",
    ),
    (
        "a_mode_http_config_runs_the_real_haproxy_and_updates_move_between_them",
        "no haproxy in the image",
    ),
    (
        "switching_from_haproxy_to_lb_under_load_does_not_stall_new_connections",
        "no haproxy in the image",
    ),
    (
        "metrics_pass_promtool_and_count_the_connections_made",
        "no promtool in the image (the counters are checked)",
    ),
    ("syn_rst_pairs_leave_real_clients_alone", FLOOD_VARIANT),
    (
        "syn_rst_pairs_leave_real_clients_alone_in_a_small_table",
        FLOOD_VARIANT,
    ),
    (
        "syns_with_ip_options_leave_real_clients_alone_in_a_small_table",
        FLOOD_VARIANT,
    ),
    ("a_udp_flood_leaves_the_tcp_listener_alone", FLOOD_VARIANT),
    (
        "a_udp_flood_leaves_the_tcp_listener_alone_in_the_default_table",
        FLOOD_VARIANT,
    ),
    ("a_blind_rst_sweep_closes_no_session", FLOOD_VARIANT),
    (
        "ipv6_syns_with_extension_headers_leave_real_clients_alone",
        FLOOD_VARIANT,
    ),
];
/// Why the flood variants (tests/tests/flood.rs) are the host's: under software emulation
/// the test's own sender makes a few thousand frames a second, below the rates they assert,
/// and what they test needs no kernel of its own (their fixtures run on both kernels).
const FLOOD_VARIANT: &str = "host only: the VM's emulation sends too few spoofed frames";
/// Test binaries the VM does not run: they exercise nothing a kernel of its own would change
/// (the corpus of generator configs: parsing, and the same namespaces the host tier runs), and
/// need programs its image does not carry (haproxy, python3, openssl).
pub const HOST_ONLY: &[&str] = &["generators-test"];
/// What /init prints before each recorded skip.
const SKIP_MARK: &str = "LB-VM-SKIP ";
/// Debian packages vm-test needs on the host.
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
];
const EXIT_MARK: &str = "LB-VM-TEST-EXIT=";

pub struct Kernel {
    pub label: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of that kernel, if there is one.
    pub modules: Option<PathBuf>,
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}

/// A Debian kernel package that holds a vmlinuz: follows meta-packages (linux-image-amd64,
/// linux-image-6.12-amd64) to the versioned image they depend on.
fn resolve_package(name: &str) -> Result<String> {
    let mut name = name.to_string();
    for _ in 0..4 {
        let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", &name]))
            .with_context(|| {
                format!(
                    "no Debian package {name} (see `apt-cache search linux-image`; \
                     `apt-get update` may be needed)"
                )
            })?;
        let field = |f: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(f))
                .map(|v| v.trim().to_string())
        };
        // apt-cache also answers for names that packages merely provide.
        if field("Package:").as_deref() != Some(name.as_str()) {
            bail!("no Debian package is called {name}");
        }
        // A versioned image has a large Installed-Size; a meta-package depends on one.
        let size: u64 = field("Installed-Size:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if size > 10_000 {
            return Ok(name);
        }
        let dep = field("Depends:")
            .and_then(|d| {
                d.split(',')
                    .map(|x| x.trim().split(' ').next().unwrap_or("").to_string())
                    .find(|x| x.starts_with("linux-image-"))
            })
            .with_context(|| format!("{name} depends on no linux-image package"))?;
        name = dep;
    }
    bail!("{name}: meta-packages nest too deep")
}

/// `spec`: empty (Debian's current kernel), a path to a vmlinuz, or a Debian package / version
/// (`6.12`, `6.1.0-50-amd64`, `linux-image-6.12.100+deb12-amd64`).
pub fn get_kernel(spec: &str, cache: &Path) -> Result<Kernel> {
    let as_path = Path::new(spec);
    if !spec.is_empty() && as_path.is_file() {
        let version = as_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .map(str::to_string);
        let modules = version
            .as_ref()
            .map(|v| PathBuf::from("/lib/modules").join(v))
            .filter(|p| p.is_dir());
        if modules.is_none() {
            eprintln!(
                "vm-test: no /lib/modules for {spec}: the kernel must have veth and bridge built in"
            );
        }
        return Ok(Kernel {
            label: version.unwrap_or_else(|| spec.to_string()),
            vmlinuz: as_path.to_path_buf(),
            modules,
        });
    }
    if spec.contains('/') {
        bail!("kernel {spec}: no such file");
    }
    which("apt-get").context(
        "a kernel by version needs apt-get and dpkg-deb (Debian); or pass --kernel /path/to/vmlinuz",
    )?;
    let candidates: Vec<String> = if spec.is_empty() {
        vec!["linux-image-amd64".into()]
    } else if spec.starts_with("linux-image-") {
        vec![spec.into()]
    } else {
        vec![
            format!("linux-image-{spec}-amd64"),
            format!("linux-image-{spec}"),
        ]
    };
    let mut last = None;
    let mut package = None;
    for c in &candidates {
        match resolve_package(c) {
            Ok(p) => {
                package = Some(p);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    // "6.1": no meta-package by that name; the newest versioned image that starts with it.
    if package.is_none() && !spec.is_empty() && !spec.starts_with("linux-image-") {
        let names =
            output(Command::new("apt-cache").args(["pkgnames", &format!("linux-image-{spec}")]))
                .unwrap_or_default();
        let mut found: Vec<&str> = names
            .lines()
            .filter(|n| {
                n.ends_with("-amd64")
                    && !["cloud", "-rt-", "dbg", "unsigned"]
                        .iter()
                        .any(|x| n.contains(x))
                    && n[format!("linux-image-{spec}").len()..].starts_with(['.', '-'])
            })
            .collect();
        found.sort_by_key(|n| {
            n.split(|c: char| !c.is_ascii_digit())
                .filter_map(|x| x.parse::<u64>().ok())
                .collect::<Vec<_>>()
        });
        if let Some(n) = found.last() {
            package = resolve_package(n).ok();
        }
    }
    let package = match package {
        Some(p) => p,
        None => return Err(last.unwrap()),
    };
    let dir = cache.join(&package);
    let root = dir.join("root");
    if !root.join("boot").is_dir() {
        std::fs::create_dir_all(&dir)?;
        eprintln!("vm-test: fetching {package} (apt-get download)");
        let st = Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&dir)
            .status()
            .context("apt-get download")?;
        if !st.success() {
            bail!("apt-get download {package} failed: check the network and `apt-get update`");
        }
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let tmp = dir.join("root.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        std::fs::rename(&tmp, &root)?;
        std::fs::remove_file(&deb)?;
    }
    let vmlinuz = std::fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} holds no /boot/vmlinuz-*"))?;
    let version = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    let modules = root.join("lib/modules").join(&version);
    if modules.is_dir() && !modules.join("modules.dep").exists() {
        // Packages leave modules.dep to the installing system's depmod.
        let depmod = ["/sbin/depmod", "/usr/sbin/depmod"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("no depmod: install the Debian package kmod")?;
        output(Command::new(depmod).arg("-b").arg(&root).arg(&version))?;
    }
    Ok(Kernel {
        label: version,
        vmlinuz,
        modules: modules.is_dir().then_some(modules),
    })
}

/// The modules in `wanted` and what they depend on, dependencies first, as paths relative to
/// the modules directory. Built-in or absent modules are left out (absent ones reported).
fn module_order(dir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| {
        let f = path.rsplit('/').next().unwrap_or(path);
        f.split(".ko").next().unwrap_or(f).replace('-', "_")
    };
    let deps_of = |path: &str| -> Vec<String> {
        dep.lines()
            .find_map(|l| {
                let (m, d) = l.split_once(':')?;
                (m == path).then(|| d.split_whitespace().map(str::to_string).collect())
            })
            .unwrap_or_default()
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for w in wanted {
        let found = dep.lines().find_map(|l| {
            let (m, _) = l.split_once(':')?;
            (name_of(m) == w.replace('-', "_")).then(|| m.to_string())
        });
        let Some(path) = found else {
            if !builtin.lines().any(|l| name_of(l) == w.replace('-', "_")) {
                eprintln!(
                    "vm-test: module {w} is neither built in nor in {}",
                    dir.display()
                );
            }
            continue;
        };
        // modules.dep lists every (transitive) dependency; load them in reverse.
        let mut chain = deps_of(&path);
        chain.reverse();
        chain.push(path);
        for m in chain {
            if seen.insert(m.clone()) {
                order.push(m);
            }
        }
    }
    Ok(order)
}

/// Copies `src` to `dst`, decompressing .ko.xz / .ko.zst / .ko.gz modules.
fn copy_module(src: &Path, dst: &Path) -> Result<()> {
    let s = src.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        Some("xz")
    } else if s.ends_with(".zst") {
        Some("zstd")
    } else if s.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => {
            std::fs::copy(src, dst)?;
        }
        Some(t) => {
            let out = Command::new(t)
                .args(["-d", "-c"])
                .arg(src)
                .output()
                .with_context(|| format!("{t} (to decompress {s})"))?;
            if !out.status.success() {
                bail!("{t} -d {s} failed");
            }
            std::fs::write(dst, out.stdout)?;
        }
    }
    Ok(())
}

/// Copies a dynamically linked program and every library `ldd` names into `root`.
fn copy_with_libs(program: &Path, root: &Path, into: &str) -> Result<()> {
    let dst = root.join(into).join(program.file_name().unwrap());
    std::fs::copy(program, &dst).with_context(|| format!("copying {}", program.display()))?;
    let ldd = Command::new("ldd").arg(program).output();
    let Ok(ldd) = ldd else { return Ok(()) };
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let lib = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let to = root.join(lib.trim_start_matches('/'));
        if !to.exists() {
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

fn init_script(test_args: &[String]) -> String {
    let args = test_args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(" ");
    let skippable = SKIPPABLE
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" ");
    let (skips_env, skippable_env) = (crate::summary::SKIPS_ENV, crate::summary::SKIPPABLE_ENV);
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
ln -sf /usr/sbin/sh /bin/sh
# The host run fuzzes a million frames; under emulation a quarter keeps the VM suite short.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp RUST_BACKTRACE=1 LB_BIN=/lbtest/lb LB_VM_TEST=1 LB_FUZZ_FRAMES=250000
export LB_TEST_VARIANT_OBJECT=/lbtest/lb-variant.o
export {skips_env}=/tmp/lb-skips {skippable_env}='{skippable}'
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
mkdir -p /var && ln -s /run /var/run
for m in $(cat /modules/order); do
  insmod "/modules/$m" 2>/dev/null || echo "vm-test: insmod $m failed"
done
ip link set lo up
# Keeps the kernel's TC ingress/egress static keys on for the whole run. Every first tcx or
# clsact attachment (and every last detachment) flips them, which patches kernel text under
# running CPUs; QEMU's software emulation has been seen executing such a site half patched
# (6.12: "Oops: int3" in __dev_queue_xmit while streams ran through a takeover).
# iproute2's tc by its path: busybox's sh runs its own applets first, and its tc has no clsact.
/usr/sbin/tc qdisc add dev lo clsact || echo "vm-test: cannot add clsact to lo"
# The same hazard for the kernel's "once" keys (a hash secret drawn at first use, then a
# static branch patched off from a workqueue on any CPU): 6.12 once hit "Oops: int3" in
# fnhe_hashfun while the first path MTU exception was made. A warm-up with one CPU online
# draws them (TCP and UDP over both families, an IPv4 path MTU exception), so no patching
# races a running CPU; its result does not count.
if echo 0 > /sys/devices/system/cpu/cpu1/online; then
  {skips_env}=/tmp/warm-skips /lbtest/tests/end_to_end-test --exact fragmentation_needed_reaches_the_client_through_the_vip >/dev/null 2>&1 || echo "vm-test: warm-up (IPv4) failed"
  {skips_env}=/tmp/warm-skips /lbtest/tests/ipv6-test --exact health_checks_over_ipv6 >/dev/null 2>&1 || echo "vm-test: warm-up (IPv6) failed"
  sleep 1
  echo 1 > /sys/devices/system/cpu/cpu1/online || echo "vm-test: cannot bring CPU 1 back"
else
  echo "vm-test: cannot take CPU 1 offline for the warm-up"
fi
echo "vm-test: kernel $(uname -r), $(nproc) CPUs"
status=0
for t in /lbtest/tests/*; do
  echo "vm-test: === $(basename "$t")"
  "$t" --test-threads=2 {args} || status=1
done
[ -f /tmp/lb-skips ] && sed 's/^/{SKIP_MARK}/' /tmp/lb-skips
echo "{EXIT_MARK}$status"
poweroff -f
"#
    )
}

/// Builds the initramfs for `kernel` in `work`; returns its path.
pub fn initramfs(
    kernel: &Kernel,
    lb: &Path,
    variant: &Path,
    tests: &[(String, PathBuf)],
    test_args: &[String],
    work: &Path,
) -> Result<PathBuf> {
    let root = work.join(format!("initramfs-{}", kernel.label));
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "lbtest/tests",
        "modules",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox: install busybox-static")?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    for p in HOST_PROGRAMS {
        let path = which(p).with_context(|| {
            format!("{p} is not installed on the host (iproute2, util-linux, ethtool)")
        })?;
        copy_with_libs(&path, &root, "usr/sbin")?;
    }
    copy_with_libs(lb, &root, "lbtest")?;
    std::fs::copy(variant, root.join("lbtest/lb-variant.o"))
        .with_context(|| format!("copying {}", variant.display()))?;
    for (name, path) in tests {
        let dst = root.join("lbtest/tests").join(name);
        std::fs::copy(path, &dst)?;
        copy_with_libs(path, &root, "lbtest")?;
        // The copy with the test's own name is the one the init runs.
        let _ = std::fs::remove_file(root.join("lbtest").join(path.file_name().unwrap()));
    }
    // Debug info is most of a test binary's size: strip it when the host can.
    if which("strip").is_some() {
        let mut c = Command::new("strip");
        c.arg("--strip-debug").arg(root.join("lbtest/lb"));
        for (name, _) in tests {
            c.arg(root.join("lbtest/tests").join(name));
        }
        let _ = c.status();
    }
    let mut order = Vec::new();
    if let Some(dir) = &kernel.modules {
        for m in module_order(dir, MODULES)? {
            let file = m.rsplit('/').next().unwrap().to_string();
            let file = file
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .to_string();
            copy_module(&dir.join(&m), &root.join("modules").join(&file))?;
            order.push(file);
        }
    }
    std::fs::write(root.join("modules/order"), order.join("\n") + "\n")?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let init = root.join("init");
    std::fs::write(&init, init_script(test_args))?;
    output(Command::new("chmod").arg("755").arg(&init))?;
    let image = work.join(format!("initramfs-{}.cpio", kernel.label));
    let out = std::fs::File::create(&image)?;
    let st = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | cpio --null -o -H newc --quiet")
        .current_dir(&root)
        .stdout(out)
        .status()
        .context("cpio (install the cpio package)")?;
    if !st.success() {
        bail!("cpio failed");
    }
    std::fs::remove_dir_all(&root)?;
    Ok(image)
}

/// Whether KVM boots this kernel: /dev/kvm opens, and a bare boot (no initramfs, so it ends in
/// a quick panic) prints that panic within 20 s. Nested virtualisation often has a /dev/kvm
/// that fails (a CPU model qemu cannot set) or hangs; then software emulation it is.
/// `LB_VM_ACCEL=kvm|tcg` skips the probe.
pub fn kvm_usable(qemu: &Path, kernel: &Kernel) -> bool {
    match std::env::var("LB_VM_ACCEL").as_deref() {
        Ok("kvm") => return true,
        Ok("tcg") => return false,
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let child = Command::new(qemu)
        .args([
            "-nographic",
            "-no-reboot",
            "-m",
            "256",
            "-enable-kvm",
            "-cpu",
            "host",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Kernel panic") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let ok = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    ok
}

pub struct Outcome {
    pub passed: bool,
    pub detail: String,
    /// The skips the tests recorded: `<binary> <test>: <reason>`.
    pub skips: Vec<String>,
    pub seconds: f64,
}

/// Boots `kernel` with `initrd`, streams the console, returns what /init reported.
pub fn boot(kernel: &Kernel, initrd: &Path, timeout: Duration, memory_mb: u32) -> Result<Outcome> {
    let qemu = which("qemu-system-x86_64")
        .context("qemu-system-x86_64 not found: install the Debian package qemu-system-x86")?;
    let kvm = kvm_usable(&qemu, kernel);
    let mut c = Command::new(qemu);
    c.args(["-nographic", "-no-reboot", "-smp", "2"])
        .args(["-m", &memory_mb.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet random.trust_cpu=on",
        ])
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if kvm {
        c.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg", "-cpu", "max"]);
    }
    eprintln!(
        "vm-test: booting {} ({}, {} MiB)",
        kernel.label,
        if kvm {
            "KVM"
        } else {
            "software emulation: slow"
        },
        memory_mb
    );
    let start = Instant::now();
    let mut child = c.spawn().context("starting qemu")?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut status = None;
    let mut summary = Vec::new();
    let mut skips = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                println!("{line}");
                let l = line.trim();
                if let Some(s) = l.strip_prefix(EXIT_MARK) {
                    status = s.trim().parse::<i32>().ok();
                }
                if l.starts_with("test result:") {
                    summary.push(l.to_string());
                }
                if let Some(s) = l.strip_prefix(SKIP_MARK) {
                    skips.push(s.to_string());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{}: no result after {timeout:?}: killed", kernel.label);
        }
    }
    let _ = child.wait();
    let seconds = start.elapsed().as_secs_f64();
    let detail = match status {
        None => "the VM stopped without reporting a result (kernel panic? see above)".into(),
        Some(_) => crate::summary::head(&summary, skips.len()),
    };
    Ok(Outcome {
        passed: status == Some(0),
        detail,
        skips,
        seconds,
    })
}
