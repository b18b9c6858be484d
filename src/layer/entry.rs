//! The in-memory description of one tar entry of a layer, before it is written.

use std::path::PathBuf;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Read from this path on the host when the layer is written (streamed, never loaded whole).
    Path(PathBuf),
    /// Small in-memory content (heredocs, generated files).
    Bytes(Vec<u8>),
}

/// What kind of file system object an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        source: FileSource,
        size: u64,
    },
    Dir,
    Symlink {
        target: String,
    },
    /// A hard link to another entry of the same layer (path relative to the layer root, no leading `/`).
    Hardlink {
        target: String,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// An OCI whiteout: deletes `path` from lower layers (written as `dir/.wh.name`).
    Whiteout,
    /// An OCI opaque-dir marker: hides all lower content of directory `path` (written as `path/.wh..wh..opq`).
    OpaqueDir,
}

/// One entry of a layer. `path` is relative to the layer root, without a leading `/`,
/// normalized (no `.`/`..` components, no trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits plus setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch; clamped to SOURCE_DATE_EPOCH by the writer when that is set.
    pub mtime: u64,
    /// Extended attributes (e.g. `security.capability`), written as PAX `SCHILY.xattr.*` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}
