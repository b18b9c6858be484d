//! Snapshots: unpacked layers by chain id, overlay mounts, and diffs of overlay upper dirs.
