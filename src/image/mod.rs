//! Image configs, manifests and indexes (OCI with Docker compatibility), and docker/OCI archive export.
