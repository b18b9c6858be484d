//! Layer tarballs: deterministic tar writing, gzip/zstd compression, and safe unpacking.
//!
//! CONTRACT (shared with build/, snapshot/, context/): the types in `entry.rs` are the
//! vocabulary every producer of layer content uses. Implementation is owned by the storage work.
//!
//! - `write.rs`: `write_layer` — entries -> deterministic tar -> compressor -> store blob.
//! - `pgzip.rs`: deterministic multi-core gzip (concatenated members of fixed-size chunks).
//! - `unpack.rs`: `unpack` — safe extraction confined to a directory (openat2 RESOLVE_IN_ROOT).
//! - `archive.rs`: compression sniffing, `open_archive` for `ADD local.tar.gz`.
pub mod archive;
pub mod entry;
pub mod pgzip;
pub(crate) mod tar_header;
pub mod unpack;
pub mod write;

use std::path::PathBuf;

pub use archive::{Compressed, decompress, detect_compression, open_archive};
pub use entry::{Entry, EntryKind, FileSource};
pub use unpack::{ReusableFiles, UnpackMode, UnpackStats, unpack};
pub use write::{
    LayerInfo, LayerOptions, PendingLayer, write_layer, write_layer_deferred,
    write_layer_unpacking, write_layer_with_threads,
};

use crate::image::media_types;
use crate::store::StoreError;

/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = media_types::OCI_LAYER_GZIP;
/// Media type of a zstd-compressed OCI layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = media_types::OCI_LAYER_ZSTD;
/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_TAR: &str = media_types::OCI_LAYER_TAR;
/// Docker schema2's gzip layer media type (accepted when reading).
pub const DOCKER_MEDIA_TYPE_TAR_GZIP: &str = media_types::DOCKER_LAYER_GZIP;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (deflate level 0-9), in parallel members (see `pgzip`).
    Gzip {
        level: u32,
    },
    Zstd {
        level: i32,
    },
    Uncompressed,
}

impl Compression {
    /// The default: gzip at level 5. With zlib-rs, level 5 deflates source code about twice as
    /// fast as level 6 for about 8% more bytes, and a Debian root file system at almost the
    /// same size (benches/README.md). `gzip:6` or `gzip:9` trade that time for smaller layers.
    pub const DEFAULT_GZIP: Compression = Compression::Gzip { level: 5 };

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip { .. } => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd { .. } => MEDIA_TYPE_TAR_ZSTD,
            Compression::Uncompressed => MEDIA_TYPE_TAR,
        }
    }
}

/// Errors from writing, reading and unpacking layers.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading {path}: {source}")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} changed while being added to the layer: expected {expected} bytes, found {actual}"
    )]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("invalid layer entry {path:?}: {message}")]
    InvalidEntry { path: String, message: String },
    #[error("writing the layer stream: {0}")]
    WriteStream(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the layer tar stream: {0}")]
    ReadTar(#[source] std::io::Error),
    #[error("unsafe layer entry {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },
    #[error("unpacking {path:?} into {dest}: {source}")]
    Unpack {
        path: String,
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported layer entry {path:?}: {message}")]
    Unsupported { path: String, message: String },
    #[error("opening archive {path}: {source}")]
    OpenArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
