//! `imgbuild prune`: removes build cache records, then blobs and snapshots nothing needs.
