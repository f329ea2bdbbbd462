use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// The nightly the BPF side is built with: bpf-linker 0.10.3 needs its LLVM 22
/// (see ../shared/TOOLCHAIN.md). `cargo xtask` installs it.
const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = Package {
        name: name.as_str(),
        root_dir: manifest_path.parent().context("no parent")?.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(BPF_TOOLCHAIN))
}
