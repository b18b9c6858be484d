//! Snapshots: unpacked layers by chain id, overlay mounts, and diffs of overlay upper dirs.
//!
//! The flow of one RUN step, as the build executor drives it:
//! 1. [`Snapshots::ensure`] each base layer once (unpacked in overlay form by `layer::unpack`),
//!    keyed by its OCI chain id, and take [`Snapshots::lowers`] of the top-most one.
//! 2. [`OverlayMount::mount`] the lowers with a fresh upper and work dir onto a target dir.
//! 3. Run the command there (`sandbox::run`), then [`OverlayMount::unmount`].
//! 4. [`diff_upper`] turns the upper dir into layer entries: the upper dir IS the diff.
mod copy_fallback;
mod diff;
mod error;
mod overlay;
mod store;

pub use crate::image::chain_id;
pub use diff::{DEFAULT_MOUNT_POINTS, diff_upper, diff_upper_ignoring};
pub use error::SnapshotError;
pub use overlay::{MountKind, OverlayMount, detach_all_mounts};
pub use store::{Durability, ScratchDirs, Snapshots};
