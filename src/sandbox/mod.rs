//! RUN sandbox: OCI runtime bundles run with runc or crun.
//!
//! [`Runtime::detect`] finds a runtime that works on this machine once and remembers it.
//! [`run`] writes a bundle (`config.json` from oci-spec's runtime types, plus host-made
//! `/etc/hosts` and `/etc/resolv.conf`) for a [`RunSpec`], runs it with output streamed live,
//! and always removes the container afterwards. [`Cancel`] and [`kill_all_containers`] stop
//! running containers (for Ctrl-C handlers).
//!
//! The rootfs is usually an overlay mount from `snapshot`; see `snapshot::diff_upper` for how
//! the mount points the runtime creates are kept out of layers ([`RunSpec::mount_points`]).
mod error;
mod run;
mod runtime;
mod spec;

pub use error::SandboxError;
pub use run::{
    Cancel, RunOutcome, install_ctrl_c_handler, kill_all_containers, run, run_cancellable,
};
pub use runtime::Runtime;
pub use spec::{BindMount, Network, RunSpec, oci_spec_for};
