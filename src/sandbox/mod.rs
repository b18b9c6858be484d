//! RUN sandbox: OCI runtime bundles run with runc or crun.
