//! Mounting a stack of snapshot dirs as an overlayfs with a fresh upper dir, and unmounting it.
//!
//! Lowers are added one by one with the new mount API (`fsconfig` key `lowerdir+`, Linux 6.8+),
//! so there is no limit from the one-page `lowerdir=a:b:c` option string. Older kernels get the
//! classic `mount(2)` option string when it fits in a page. `redirect_dir`, `metacopy` and
//! `index` are turned off so the upper dir always holds whole files and whole directories,
//! which is what makes it a layer diff (see `diff.rs`).
//!
//! Overlays with an upper dir are mounted `volatile` (with the new mount API; skipped where the
//! kernel does not know it): the
//! upper dir is either thrown away or adopted as a snapshot, whose durability the snapshot
//! store decides, so neither unmount nor the container's own fsyncs flush the file system.
//! [`OverlayMount::mount_read_only`] has no upper dir at all, so unmounting it syncs nothing.
//!
//! Where overlayfs is unavailable (no `overlay` file system, or not permitted), the lowers are
//! merged by copying into the target and the mount is of kind [`MountKind::Copy`]; on unmount
//! the changes found by comparing stat data with the state after the copy are written into the
//! upper dir in overlay form (whiteout devices, opaque xattrs), so `diff_upper` works the same.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use super::copy_fallback::{self, Baseline};
use super::error::SnapshotError;

/// How the merged view was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A real overlayfs mount.
    Overlay,
    /// Lowers copied into the target; changes are moved into the upper dir at unmount.
    Copy,
}

/// A mounted merged view of lowers + upper at `target`; unmounted on drop.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    /// None for a read-only view.
    upper: Option<PathBuf>,
    kind: MountKind,
    mounted: bool,
    /// The empty lower added when the caller gave too few; removed after unmount.
    _empty_lower: Option<tempfile::TempDir>,
    /// For [`MountKind::Copy`]: the stat data of the merged copy right after it was made.
    baseline: Option<Baseline>,
}

/// Overlay options that keep the upper dir a plain, self-contained diff.
const DIFF_FRIENDLY_OPTIONS: [(&str, &str); 3] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
];

static COPY_FALLBACK_WARNING: Once = Once::new();

/// Targets of the overlay mounts of this process that are still mounted.
static LIVE_MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_mounts() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE_MOUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lazily detaches every overlay this process mounted and has not unmounted: for a program
/// about to exit on Ctrl-C, whose `OverlayMount`s will not be dropped.
pub fn detach_all_mounts() {
    for target in live_mounts().drain(..) {
        if let Err(error) = rustix::mount::unmount(&target, UnmountFlags::DETACH) {
            tracing::warn!(
                "detaching overlay {}: {}",
                target.display(),
                io::Error::from(error)
            );
        }
    }
}

impl OverlayMount {
    /// Mounts `lowers` (top-most first) with `upper` and `work` (same file system, `work` empty)
    /// on `target`. With no lowers, an empty dir is the only lower.
    pub fn mount(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<OverlayMount, SnapshotError> {
        Self::mount_with(lowers, Some(Writable { upper, work }), target, false)
    }

    /// Mounts `lowers` (top-most first) read-only on `target`: no upper dir, nothing to sync
    /// at unmount. With fewer than two lowers, an empty dir is added (overlayfs needs two).
    pub fn mount_read_only(
        lowers: &[PathBuf],
        target: &Path,
    ) -> Result<OverlayMount, SnapshotError> {
        Self::mount_with(lowers, None, target, false)
    }

    /// Makes the merged view by copying, as where overlayfs is unavailable (slow; for tests and
    /// for debugging file systems that misbehave under overlayfs).
    pub fn mount_copy(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<OverlayMount, SnapshotError> {
        Self::mount_with(lowers, Some(Writable { upper, work }), target, true)
    }

    fn mount_with(
        lowers: &[PathBuf],
        writable: Option<Writable<'_>>,
        target: &Path,
        force_copy: bool,
    ) -> Result<OverlayMount, SnapshotError> {
        let mut empty_lower = None;
        let mut lowers = lowers.to_vec();
        let lowers_needed = if writable.is_some() { 1 } else { 2 };
        if lowers.len() < lowers_needed {
            let dir = tempfile::Builder::new()
                .prefix("imgbuild-empty-lower-")
                .tempdir()
                .map_err(|e| {
                    SnapshotError::io("creating empty lower dir", std::env::temp_dir(), e)
                })?;
            lowers.push(dir.path().to_path_buf());
            empty_lower = Some(dir);
        }
        let mut mount = OverlayMount {
            target: target.to_path_buf(),
            upper: writable.as_ref().map(|w| w.upper.to_path_buf()),
            kind: MountKind::Overlay,
            mounted: false,
            _empty_lower: empty_lower,
            baseline: None,
        };
        let attempt = if force_copy {
            Err(OverlayAttempt::Unavailable("copy requested".to_string()))
        } else {
            mount_overlay(&lowers, writable.as_ref(), target)
        };
        match attempt {
            Ok(()) => {}
            Err(OverlayAttempt::Unavailable(reason)) => {
                COPY_FALLBACK_WARNING.call_once(|| {
                    tracing::warn!(
                        "overlayfs is unavailable ({reason}); RUN steps copy their base file \
                         system instead, which is much slower"
                    )
                });
                mount.baseline = Some(copy_fallback::merge_lowers(&lowers, target)?);
                mount.kind = MountKind::Copy;
            }
            Err(OverlayAttempt::Failed(message)) => {
                return Err(SnapshotError::Mount {
                    target: target.to_path_buf(),
                    message,
                });
            }
        }
        mount.mounted = true;
        if mount.kind == MountKind::Overlay {
            live_mounts().push(mount.target.clone());
        }
        Ok(mount)
    }

    /// Where the merged view is.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The upper dir holding the changes (complete only after unmount for [`MountKind::Copy`]);
    /// None for a read-only mount.
    pub fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    pub fn kind(&self) -> MountKind {
        self.kind
    }

    /// Unmounts, reporting failure (dropping unmounts too, but can only log failures).
    pub fn unmount(mut self) -> Result<(), SnapshotError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), SnapshotError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        live_mounts().retain(|target| *target != self.target);
        match self.kind {
            MountKind::Overlay => rustix::mount::unmount(&self.target, UnmountFlags::empty())
                .map_err(|e| SnapshotError::Unmount {
                    target: self.target.clone(),
                    source: e.into(),
                }),
            MountKind::Copy => match (self.baseline.take(), &self.upper) {
                (Some(baseline), Some(upper)) => {
                    copy_fallback::move_changes_to_upper(&baseline, &self.target, upper)
                }
                _ => Ok(()),
            },
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if let Err(error) = self.unmount_inner() {
            tracing::warn!("{error}; detaching it lazily");
            if self.kind == MountKind::Overlay {
                let _ = rustix::mount::unmount(&self.target, UnmountFlags::DETACH);
            }
        }
    }
}

/// The upper and work dirs of a writable overlay.
#[derive(Debug)]
struct Writable<'a> {
    upper: &'a Path,
    work: &'a Path,
}

/// Why the overlay could not be mounted: unavailable here (fall back) or a real error.
enum OverlayAttempt {
    Unavailable(String),
    Failed(String),
}

fn mount_overlay(
    lowers: &[PathBuf],
    writable: Option<&Writable<'_>>,
    target: &Path,
) -> Result<(), OverlayAttempt> {
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(e) if e == rustix::io::Errno::NODEV || e == rustix::io::Errno::PERM => {
            return Err(OverlayAttempt::Unavailable(format!(
                "fsopen(overlay): {}",
                io::Error::from(e)
            )));
        }
        // ENOSYS: no new mount API; try the classic mount(2).
        Err(e) if e == rustix::io::Errno::NOSYS => {
            return mount_overlay_classic(lowers, writable, target);
        }
        Err(e) => {
            return Err(OverlayAttempt::Failed(format!(
                "fsopen(overlay): {}",
                io::Error::from(e)
            )));
        }
    };
    for (index, lower) in lowers.iter().enumerate() {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower) {
            if index == 0 && e == rustix::io::Errno::INVAL && fs_messages(&fs).contains("lowerdir+")
            {
                // Kernel before 6.8: no `lowerdir+` key.
                return mount_overlay_classic(lowers, writable, target);
            }
            return Err(config_error(&fs, &format!("lower {}", lower.display()), e));
        }
    }
    if let Some(writable) = writable {
        set_option(&fs, "upperdir", writable.upper)?;
        set_option(&fs, "workdir", writable.work)?;
        // Kernels before 5.10 do not know `volatile`; they just sync as before.
        if rustix::mount::fsconfig_set_flag(&fs, "volatile").is_err() {
            let _ = fs_messages(&fs);
        }
    }
    for (key, value) in DIFF_FRIENDLY_OPTIONS {
        set_option(&fs, key, Path::new(value))?;
    }
    rustix::mount::fsconfig_create(&fs)
        .map_err(|e| config_error(&fs, "creating the overlay", e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| config_error(&fs, "fsmount", e))?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| OverlayAttempt::Failed(format!("move_mount: {}", io::Error::from(e))))
}

fn set_option(fs: &OwnedFd, key: &str, value: &Path) -> Result<(), OverlayAttempt> {
    rustix::mount::fsconfig_set_string(fs, key, value)
        .map_err(|e| config_error(fs, &format!("{key}={}", value.display()), e))
}

fn config_error(fs: &OwnedFd, what: &str, errno: rustix::io::Errno) -> OverlayAttempt {
    let messages = fs_messages(fs);
    let detail = if messages.is_empty() {
        String::new()
    } else {
        format!(" ({messages})")
    };
    OverlayAttempt::Failed(format!("{what}: {}{detail}", io::Error::from(errno)))
}

/// The kernel's messages queued on an fs context fd (the reason behind an EINVAL), joined.
fn fs_messages(fs: &OwnedFd) -> String {
    let mut messages = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read returns one message; the queue holds at most 8, and reading a drained queue fails.
    for _ in 0..8 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => messages.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    messages.join("; ")
}

/// `mount(2)` with a `lowerdir=` option string; only for kernels without `lowerdir+`.
fn mount_overlay_classic(
    lowers: &[PathBuf],
    writable: Option<&Writable<'_>>,
    target: &Path,
) -> Result<(), OverlayAttempt> {
    let mut lower_list = Vec::with_capacity(lowers.len());
    for lower in lowers {
        let text = lower
            .to_str()
            .filter(|t| !t.contains([':', ',', '\\']))
            .ok_or_else(|| {
                OverlayAttempt::Failed(format!(
                    "lower dir {} has characters the option string cannot hold",
                    lower.display()
                ))
            })?;
        lower_list.push(text);
    }
    let mut options = format!("lowerdir={}", lower_list.join(":"));
    if let Some(writable) = writable {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            writable.upper.display(),
            writable.work.display()
        ));
    }
    for (key, value) in DIFF_FRIENDLY_OPTIONS {
        options.push_str(&format!(",{key}={value}"));
    }
    // The kernel copies mount options into one page.
    let page_size = 4096;
    if options.len() >= page_size {
        return Err(OverlayAttempt::Failed(format!(
            "{} lowers need a {}-byte option string, over the {page_size}-byte limit; \
             this kernel lacks `lowerdir+` (Linux 6.8+)",
            lowers.len(),
            options.len()
        )));
    }
    let options = std::ffi::CString::new(options)
        .map_err(|_| OverlayAttempt::Failed("a lower dir path contains a NUL byte".to_string()))?;
    match rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(options.as_c_str()),
    ) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NODEV || e == rustix::io::Errno::PERM => Err(
            OverlayAttempt::Unavailable(format!("mount(overlay): {}", io::Error::from(e))),
        ),
        Err(e) => Err(OverlayAttempt::Failed(format!(
            "mount(overlay): {}",
            io::Error::from(e)
        ))),
    }
}
