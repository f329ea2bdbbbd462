//! Where the data path is attached, made to outlive the daemon.
//!
//! Every attachment is recorded in the load balancer's state file and survives the process:
//! - tcx (TC on kernels 6.6+) and XDP attachments are bpf_links pinned next to the maps
//!   (`<pin dir>/link_<program>_<device>`); a link lives while it is pinned;
//! - on kernels before 6.6, TC runs as a filter on the device's clsact qdisc, which holds its
//!   program without any process; its priority and handle are recorded.
//!
//! The next daemon (after a crash, a restart or a takeover) replaces the program under each
//! recorded attachment atomically: `BPF_LINK_UPDATE` for a link, a netlink filter replace at
//! the same priority and handle for clsact. Packets never meet a moment without a program.
//! Only teardown (SIGINT/SIGTERM) detaches: it unpins the links and deletes the filters.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    Link as _, ProgramError, TcAttachType, XdpMode,
};
use serde::{Deserialize, Serialize};

use crate::{dataplane::Dataplane, node};

/// The hook a program runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    XdpNative,
    XdpGeneric,
    TcIngress,
    TcEgress,
}

impl Hook {
    fn tc(self) -> Option<TcAttachType> {
        match self {
            Hook::TcIngress => Some(TcAttachType::Ingress),
            Hook::TcEgress => Some(TcAttachType::Egress),
            _ => None,
        }
    }

    fn xdp(self) -> Option<XdpMode> {
        match self {
            Hook::XdpNative => Some(XdpMode::Driver),
            Hook::XdpGeneric => Some(XdpMode::Skb),
            _ => None,
        }
    }
}

/// How an attachment holds its program without the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Holder {
    /// A bpf_link pinned at `pin` (tcx, XDP).
    Link { pin: PathBuf },
    /// A clsact filter (TC before kernel 6.6). `created_qdisc`: lb added the clsact qdisc.
    Clsact {
        priority: u16,
        handle: u32,
        created_qdisc: bool,
    },
}

/// One program attached to one device, as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub program: String,
    pub device: String,
    /// On the port inside the load balancer's namespace (else in the node's namespace).
    pub inside: bool,
    pub hook: Hook,
    pub holder: Holder,
}

/// Where a program should run.
#[derive(Debug, Clone)]
pub struct Target {
    pub program: &'static str,
    pub device: String,
    pub inside: bool,
    pub hook: Hook,
}

impl Target {
    /// Does `a` hold this target's program at this target's place?
    pub fn matches(&self, a: &Attachment) -> bool {
        a.program == self.program
            && a.device == self.device
            && a.inside == self.inside
            && a.hook == self.hook
    }

    fn pin(&self, pin_dir: &Path) -> PathBuf {
        pin_dir.join(format!("link_{}_{}", self.program, self.device))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("attaching {program} to {device}")]
    Attach {
        program: String,
        device: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinning the link of {program} at {path}")]
    Pin {
        program: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the link pinned at {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Node(#[from] node::NodeError),
}

type Result<T, E = AttachError> = std::result::Result<T, E>;

/// What `attach` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// A new attachment.
    Attached,
    /// The program under an existing attachment was replaced atomically.
    Replaced,
}

fn os_error(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::TcError(tc::TcError::NetlinkError(n)) => n.raw_os_error(),
        ProgramError::TcError(tc::TcError::IoError(e)) => e.raw_os_error(),
        _ => None,
    }
}

/// Runs `f` where the target's device is: on a thread inside namespace `ns` for the port,
/// here (the node's namespace) for the outer end.
fn at<T: Send>(inside: bool, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    if inside {
        Ok(node::in_netns(ns, f)?)
    } else {
        Ok(f())
    }
}

/// tcx links exist on kernels 6.6 and newer; before, TC programs are clsact filters.
pub fn tcx_supported() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// Attaches `t` (its program loaded in `dp`) so that it outlives this process. With `prev`,
/// the record of the same target from an earlier run, the program under it is replaced
/// atomically instead; a record whose attachment vanished meanwhile (its device was deleted
/// and made again) is attached anew.
pub fn attach(
    dp: &mut Dataplane,
    t: &Target,
    ns: &str,
    pin_dir: &Path,
    prev: Option<&Attachment>,
) -> Result<(Attachment, Done)> {
    let err = |source| AttachError::Attach {
        program: t.program.into(),
        device: t.device.clone(),
        source: Box::new(source),
    };
    if let Some(prev) = prev {
        if let Some(holder) = replace(dp, t, ns, prev)? {
            let a = Attachment {
                program: t.program.into(),
                device: t.device.clone(),
                inside: t.inside,
                hook: t.hook,
                holder,
            };
            return Ok((a, Done::Replaced));
        }
        tracing::warn!(program = t.program, device = %t.device, "the attachment recorded by the previous run is gone; attaching anew");
    }
    let holder = if let Some(mode) = t.hook.xdp() {
        let prog = dp.xdp(t.program);
        link_pinned(t, ns, pin_dir, |dev| {
            let id = prog.attach(dev, mode)?;
            prog.take_link(id)
        })?
    } else {
        let dir = t.hook.tc().expect("a TC hook");
        let prog = dp.tc(t.program);
        let dev = t.device.clone();
        if tcx_supported() {
            link_pinned(t, ns, pin_dir, |dev| {
                let id = prog.attach(dev, dir)?;
                prog.take_link(id)
            })?
        } else {
            at(t.inside, ns, || -> Result<Holder, ProgramError> {
                let created_qdisc = match tc::qdisc_add_clsact(&dev) {
                    Ok(()) => true,
                    Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                        false
                    }
                    Err(e) => return Err(e.into()),
                };
                let id = prog.attach_with_options(
                    &dev,
                    dir,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )?;
                let link = prog.take_link(id)?;
                let holder = Holder::Clsact {
                    priority: link.priority()?,
                    handle: link.handle()?.into(),
                    created_qdisc,
                };
                // The filter must stay when this process ends: dropping the link would
                // delete it.
                std::mem::forget(link);
                Ok(holder)
            })?
            .map_err(err)?
        }
    };
    Ok((
        Attachment {
            program: t.program.into(),
            device: t.device.clone(),
            inside: t.inside,
            hook: t.hook,
            holder,
        },
        Done::Attached,
    ))
}

/// Attaches with `attach` (given the device) where the target is, and pins the bpf_link it
/// makes.
fn link_pinned<L: Send>(
    t: &Target,
    ns: &str,
    pin_dir: &Path,
    attach: impl FnOnce(&str) -> Result<L, ProgramError> + Send,
) -> Result<Holder>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let pin = t.pin(pin_dir);
    let _ = std::fs::remove_file(&pin);
    let link = at(t.inside, ns, || attach(&t.device))?.map_err(|source| AttachError::Attach {
        program: t.program.into(),
        device: t.device.clone(),
        source: Box::new(source),
    })?;
    pin_link(FdLink::try_from(link), t.program, &pin)?;
    Ok(Holder::Link { pin })
}

/// Pins a new link. (A link that is no bpf_link, i.e. attached through netlink on a kernel
/// older than 5.9, cannot be pinned: lb needs 6.1 or newer.)
fn pin_link(
    link: Result<FdLink, aya::programs::links::LinkError>,
    program: &str,
    pin: &Path,
) -> Result<()> {
    let link = link.map_err(|source| AttachError::Link {
        path: pin.into(),
        source,
    })?;
    // Dropping the returned PinnedLink closes our descriptor; the pin keeps the link.
    link.pin(pin).map(drop).map_err(|source| AttachError::Pin {
        program: program.into(),
        path: pin.into(),
        source,
    })
}

/// Replaces the program under `prev`. None if there is nothing to replace any more.
fn replace(dp: &mut Dataplane, t: &Target, ns: &str, prev: &Attachment) -> Result<Option<Holder>> {
    let err = |source| AttachError::Attach {
        program: t.program.into(),
        device: t.device.clone(),
        source: Box::new(source),
    };
    match &prev.holder {
        Holder::Link { pin } => {
            let pinned = match PinnedLink::from_pin(pin) {
                Ok(p) => p,
                Err(aya::programs::links::LinkError::SyscallError(e))
                    if e.io_error.kind() == io::ErrorKind::NotFound =>
                {
                    return Ok(None);
                }
                Err(source) => {
                    return Err(AttachError::Link {
                        path: pin.clone(),
                        source,
                    })
                }
            };
            let fd = FdLink::from(pinned);
            let link_err = |source| AttachError::Link {
                path: pin.clone(),
                source,
            };
            let updated = if t.hook.xdp().is_some() {
                let link = aya::programs::xdp::XdpLink::try_from(fd).map_err(link_err)?;
                let prog = dp.xdp(t.program);
                prog.attach_to_link(link)
                    .and_then(|id| prog.take_link(id))
                    .map(drop)
            } else {
                let link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
                let prog = dp.tc(t.program);
                prog.attach_to_link(link)
                    .and_then(|id| prog.take_link(id))
                    .map(drop)
            };
            match updated {
                Ok(()) => Ok(Some(prev.holder.clone())),
                // The link outlived its device (deleted meanwhile): defunct, never to carry
                // packets again.
                Err(e) if os_error(&e) == Some(libc::ENOLINK) => {
                    let _ = std::fs::remove_file(pin);
                    Ok(None)
                }
                Err(e) => Err(err(e)),
            }
        }
        Holder::Clsact {
            priority, handle, ..
        } => {
            let dir = t.hook.tc().expect("a TC hook");
            let prog = dp.tc(t.program);
            let dev = t.device.clone();
            let (priority, handle) = (*priority, TcHandle::from(*handle));
            let r = at(t.inside, ns, || -> Result<(), ProgramError> {
                let link = SchedClassifierLink::attached(&dev, dir, priority, handle, None)
                    .map_err(|e| ProgramError::TcError(tc::TcError::IoError(e)))?;
                let id = prog.attach_to_link(link)?;
                std::mem::forget(prog.take_link(id)?);
                Ok(())
            })?;
            match r {
                Ok(()) => Ok(Some(prev.holder.clone())),
                // No such filter (or qdisc, or device) any more.
                Err(e)
                    if matches!(
                        os_error(&e),
                        Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENODEV)
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(err(e)),
            }
        }
    }
}

/// Detaches `a` for good: unpins the link (the last reference: the kernel detaches it), or
/// deletes the filter and the clsact qdisc lb added.
pub fn detach(a: &Attachment, ns: &str) -> Result<()> {
    match &a.holder {
        Holder::Link { pin } => match std::fs::remove_file(pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(AttachError::Io {
                what: format!("unpinning {}", pin.display()),
                source,
            }),
        },
        Holder::Clsact {
            priority,
            handle,
            created_qdisc,
        } => {
            let dir = a.hook.tc().expect("a TC hook");
            let (dev, priority, handle) = (a.device.clone(), *priority, TcHandle::from(*handle));
            let created = *created_qdisc;
            at(a.inside, ns, || {
                if let Ok(link) = SchedClassifierLink::attached(&dev, dir, priority, handle, None) {
                    let _ = link.detach();
                }
                if created {
                    remove_clsact(&dev);
                }
            })
        }
    }
}

/// Removes `dev`'s clsact qdisc (in the calling thread's namespace), if any.
pub fn remove_clsact(dev: &str) {
    let _ = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", dev, "clsact"])
        .stderr(std::process::Stdio::null())
        .status();
}
