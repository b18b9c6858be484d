//! Layer tarballs: deterministic tar writing, gzip/zstd compression, and safe unpacking.
//!
//! CONTRACT (shared with build/, snapshot/, context/): the types in `entry.rs` are the
//! vocabulary every producer of layer content uses. Implementation is owned by the storage work.
pub mod entry;

pub use entry::{Entry, EntryKind, FileSource};
