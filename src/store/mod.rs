//! Local content-addressed store: an OCI image layout (blobs/sha256, index.json) under the root, with atomic writes and a lock.
