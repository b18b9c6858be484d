//! `write_layer`: turns layer entries into a deterministic tar, streamed through the diff_id
//! hasher and a compressor straight into a store blob. File contents are streamed from disk,
//! never held whole in memory. `write_layer_deferred` instead spools the tar to a temp file
//! and compresses it on a background thread, so a build can go on to its next step (which
//! needs only the unpacked files and the diff_id) while the blob is made.
//!
//! Determinism: entries are sorted component-wise by their tar path (parents before children,
//! an opaque-dir marker first among its directory's children); duplicate paths keep the last
//! entry; headers carry numeric ids only; mtimes are clamped to SOURCE_DATE_EPOCH when set;
//! hard links always point to an earlier entry (the first path of a link group carries the data).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::store::{BlobWriter, Store};

use super::pgzip::ParallelGzipWriter;
use super::tar_header::{self, HeaderFields, TypeFlag};
use super::unpack::{ChunkReader, ReusableFiles, unpack_tar_stream};
use super::{Compression, Entry, EntryKind, FileSource, LayerError, UnpackMode};

/// How to write a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// When set, every mtime later than this is clamped to it.
    pub source_date_epoch: Option<u64>,
}

/// The result of writing a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar (goes in the config's rootfs.diff_ids).
    pub diff_id: Digest,
    /// sha256 of the stored (compressed) blob (goes in the manifest).
    pub digest: Digest,
    /// Size of the stored blob.
    pub size: u64,
    pub media_type: String,
}

/// Writes `entries` as a layer blob into `store`, compressing with all cores.
pub fn write_layer(
    store: &Store,
    entries: Vec<Entry>,
    opts: &LayerOptions,
) -> Result<LayerInfo, LayerError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    write_layer_with_threads(store, entries, opts, threads)
}

/// `write_layer` with an explicit compression thread count (the output does not depend on it).
pub fn write_layer_with_threads(
    store: &Store,
    entries: Vec<Entry>,
    opts: &LayerOptions,
    threads: usize,
) -> Result<LayerInfo, LayerError> {
    let entries = order_entries(entries)?;
    let compressor = Compressor::new(store.blob_writer()?, opts.compression, threads)?;
    let (compressor, diff_id) = write_tar(
        TeeWriter {
            sink: compressor,
            copies: None,
        },
        &entries,
        opts.source_date_epoch,
    )?;
    commit(compressor, diff_id, opts)
}

/// `write_layer`, also unpacking the layer (in overlay form, as `unpack` would) into the empty
/// or missing directory `unpack_into` while it is written: a second thread turns the same tar
/// bytes into files, so the layer's snapshot costs no second read of the blob and no
/// decompression. On error `unpack_into` may hold part of the layer; the caller discards it.
pub fn write_layer_unpacking(
    store: &Store,
    entries: Vec<Entry>,
    opts: &LayerOptions,
    unpack_into: &Path,
) -> Result<LayerInfo, LayerError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let entries = order_entries(entries)?;
    let compressor = Compressor::new(store.blob_writer()?, opts.compression, threads)?;
    let (compressor, diff_id) = write_tar_unpacking(
        compressor,
        &entries,
        opts.source_date_epoch,
        unpack_into,
        None,
    )?;
    commit(compressor, diff_id, opts)
}

/// A layer whose tar is written, hashed (and unpacked), while its blob is still being
/// compressed on a background thread (see [`write_layer_deferred`]).
#[derive(Debug)]
pub struct PendingLayer {
    /// sha256 of the uncompressed tar, known as soon as the tar is written.
    pub diff_id: Digest,
    worker: std::thread::JoinHandle<Result<LayerInfo, LayerError>>,
}

impl PendingLayer {
    /// Waits for the blob; its `diff_id` is this layer's.
    pub fn wait(self) -> Result<LayerInfo, LayerError> {
        self.worker.join().unwrap_or_else(|_| {
            Err(LayerError::WriteStream(io::Error::other(
                "the thread compressing the layer panicked",
            )))
        })
    }
}

/// `write_layer` (or `write_layer_unpacking` when `unpack_into` is given), except that the
/// blob is compressed afterwards on a background thread: the tar goes to a temp file under the
/// store while it is hashed (and unpacked), and this returns once the diff_id is known (and
/// `unpack_into` complete). The blob's bytes are the same as `write_layer`'s. Dropping the
/// result without `wait` lets the thread finish alone. The unpack links files from `reuse`
/// where it can (see [`ReusableFiles`]).
pub fn write_layer_deferred(
    store: &Store,
    entries: Vec<Entry>,
    opts: &LayerOptions,
    unpack_into: Option<&Path>,
    reuse: Option<ReusableFiles>,
) -> Result<PendingLayer, LayerError> {
    // One core is left to the step that runs meanwhile (a RUN is often single-threaded).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1));
    let entries = order_entries(entries)?;
    let tmp_dir = store.tmp_dir();
    let spool = tempfile::tempfile_in(&tmp_dir).map_err(|source| {
        LayerError::WriteStream(io::Error::new(
            source.kind(),
            format!("creating a temp file in {}: {source}", tmp_dir.display()),
        ))
    })?;
    let spool = io::BufWriter::with_capacity(256 * 1024, spool);
    let (spool, diff_id) = match unpack_into {
        Some(dir) => write_tar_unpacking(spool, &entries, opts.source_date_epoch, dir, reuse)?,
        None => write_tar(
            TeeWriter {
                sink: spool,
                copies: None,
            },
            &entries,
            opts.source_date_epoch,
        )?,
    };
    let mut spool = spool.into_inner().map_err(|e| {
        LayerError::WriteStream(io::Error::new(e.error().kind(), e.error().to_string()))
    })?;
    let blob = store.blob_writer()?;
    let opts = opts.clone();
    let worker_diff_id = diff_id.clone();
    let worker = std::thread::Builder::new()
        .name("layer-compress".to_string())
        .spawn(move || {
            let mut compressor = Compressor::new(blob, opts.compression, threads)?;
            spool
                .seek(io::SeekFrom::Start(0))
                .and_then(|_| io::copy(&mut spool, &mut compressor))
                .map_err(LayerError::WriteStream)?;
            commit(compressor, worker_diff_id, &opts)
        })
        .map_err(LayerError::WriteStream)?;
    Ok(PendingLayer { diff_id, worker })
}

/// Writes the tar of `entries` into `sink` while a second thread unpacks the same bytes (in
/// overlay form) into the empty or missing directory `unpack_into`: the snapshot costs no
/// second read of the data. Returns the sink and the tar's sha256. On error `unpack_into` may
/// hold part of the layer; the caller discards it.
fn write_tar_unpacking<W: Write>(
    sink: W,
    entries: &[Entry],
    source_date_epoch: Option<u64>,
    unpack_into: &Path,
    reuse: Option<ReusableFiles>,
) -> Result<(W, Digest), LayerError> {
    std::thread::scope(|scope| {
        let (copies, received) = mpsc::sync_channel(TEE_CHUNKS);
        let unpacker = scope.spawn(move || {
            let stream = ChunkReader::new(received);
            unpack_tar_stream(stream, unpack_into, UnpackMode::Overlay, reuse)
        });
        let tee = TeeWriter {
            sink,
            copies: Some(copies),
        };
        // The tee (and with it the channel) is gone once write_tar returns: the unpacker
        // then sees the end of the tar.
        let written = write_tar(tee, entries, source_date_epoch);
        let unpacked = unpacker.join().unwrap_or_else(|_| {
            Err(LayerError::WriteStream(io::Error::other(
                "the thread unpacking the layer panicked",
            )))
        });
        match (written, unpacked) {
            (Ok(written), Ok(_)) => Ok(written),
            // A failed unpack stops the tee, so its error is the cause of any write error.
            (_, Err(unpack_error)) => Err(unpack_error),
            (Err(write_error), Ok(_)) => Err(write_error),
        }
    })
}

/// Bytes of tar in flight to the unpacking thread, in writes of up to 256 KiB (bounded memory).
const TEE_CHUNKS: usize = 8;

/// Writes the tar of `entries` into `sink`; returns the sink's writer and the tar's sha256.
fn write_tar<W: Write>(
    sink: TeeWriter<W>,
    entries: &[Entry],
    source_date_epoch: Option<u64>,
) -> Result<(W, Digest), LayerError> {
    let mut tar = HashingWriter::new(
        io::BufWriter::with_capacity(256 * 1024, sink),
        Algorithm::Sha256,
    );
    // One copy buffer for every file of the layer.
    let mut copy_buf = vec![0u8; COPY_BUFFER];
    for entry in entries {
        write_entry(&mut tar, entry, source_date_epoch, &mut copy_buf)?;
    }
    tar.write_all(&[0u8; 2 * tar_header::BLOCK])
        .map_err(LayerError::WriteStream)?;
    let (buffered, diff_id, _) = tar.finish();
    let tee = buffered.into_inner().map_err(|e| {
        LayerError::WriteStream(io::Error::new(e.error().kind(), e.error().to_string()))
    })?;
    Ok((tee.sink, diff_id))
}

/// Finishes the compressed stream and commits the blob.
fn commit(
    compressor: Compressor,
    diff_id: Digest,
    opts: &LayerOptions,
) -> Result<LayerInfo, LayerError> {
    let blob = compressor.finish().map_err(LayerError::WriteStream)?;
    let (digest, size) = blob.commit(None)?;
    Ok(LayerInfo {
        diff_id,
        digest,
        size,
        media_type: opts.compression.media_type().to_string(),
    })
}

/// Passes the tar to its sink (the compressor or a spool file) and, when unpacking too, a copy
/// to the unpacking thread.
struct TeeWriter<W: Write> {
    sink: W,
    copies: Option<SyncSender<io::Result<Vec<u8>>>>,
}

impl<W: Write> Write for TeeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sink.write(buf)?;
        if let Some(copies) = &self.copies
            && copies.send(Ok(buf[..n].to_vec())).is_err()
        {
            return Err(io::Error::other("unpacking the layer stopped"));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

/// The compression stage between the tar hasher and the blob.
enum Compressor {
    Gzip(ParallelGzipWriter<BlobWriter>),
    Zstd(zstd::stream::write::Encoder<'static, BlobWriter>),
    None(BlobWriter),
}

impl Compressor {
    /// A compressor into `blob` on `threads` threads.
    fn new(blob: BlobWriter, compression: Compression, threads: usize) -> Result<Self, LayerError> {
        Ok(match compression {
            Compression::Gzip { level } => Compressor::Gzip(ParallelGzipWriter::new(
                blob,
                flate2::Compression::new(level.min(9)),
                threads,
            )),
            Compression::Zstd { level } => {
                let mut encoder = zstd::stream::write::Encoder::new(blob, level)
                    .map_err(LayerError::WriteStream)?;
                // Streaming multi-threaded zstd writes the same bytes for any number of workers
                // >= 1 (but not for 0, the single-threaded mode), so never 0.
                encoder
                    .multithread(threads.max(1) as u32)
                    .map_err(LayerError::WriteStream)?;
                Compressor::Zstd(encoder)
            }
            Compression::Uncompressed => Compressor::None(blob),
        })
    }

    fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
            Compressor::None(w) => Ok(w),
        }
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

/// The path an entry has inside the tar (whiteouts become `.wh.` names; dirs get no slash here).
fn tar_path(entry: &Entry) -> String {
    match entry.kind {
        EntryKind::Whiteout => match entry.path.rsplit_once('/') {
            Some((parent, name)) => format!("{parent}/.wh.{name}"),
            None => format!(".wh.{}", entry.path),
        },
        EntryKind::OpaqueDir if entry.path.is_empty() => ".wh..wh..opq".to_string(),
        EntryKind::OpaqueDir => format!("{}/.wh..wh..opq", entry.path),
        _ => entry.path.clone(),
    }
}

/// Sort key giving tar order: by path components, with the opaque marker sorting before its
/// siblings. The components are joined with a NUL byte, which sorts below every byte a
/// component can hold, so comparing keys compares the component lists.
fn tar_order_key(path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(path.len());
    for (i, component) in path.split('/').enumerate() {
        if i > 0 {
            key.push(0);
        }
        if component != ".wh..wh..opq" {
            key.extend_from_slice(component.as_bytes());
        }
    }
    key
}

fn validate_path(entry: &Entry) -> Result<(), LayerError> {
    let bad = |message: &str| LayerError::InvalidEntry {
        path: entry.path.clone(),
        message: message.to_string(),
    };
    let p = &entry.path;
    if p.is_empty() && !matches!(entry.kind, EntryKind::Dir | EntryKind::OpaqueDir) {
        return Err(bad("empty path"));
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err(bad(
            "paths must be relative without a leading or trailing '/'",
        ));
    }
    if p.contains('\0') {
        return Err(bad("NUL byte in path"));
    }
    if !p.is_empty() && p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad(
            "paths must be normalized (no empty, '.' or '..' components)",
        ));
    }
    Ok(())
}

/// Validates, dedupes (last wins), sorts, and rewrites hard links to point backwards.
fn order_entries(entries: Vec<Entry>) -> Result<Vec<Entry>, LayerError> {
    let mut by_path: HashMap<String, Entry> = HashMap::with_capacity(entries.len());
    for entry in entries {
        validate_path(&entry)?;
        // The root directory itself is not written (it is the extraction target).
        if entry.path.is_empty() && entry.kind == EntryKind::Dir {
            continue;
        }
        by_path.insert(tar_path(&entry), entry);
    }
    let mut sorted: Vec<(String, Entry)> = by_path.into_iter().collect();
    sorted.sort_by_cached_key(|(path, _)| tar_order_key(path));
    let mut entries: Vec<Entry> = sorted.into_iter().map(|(_, e)| e).collect();
    relink_hardlinks(&mut entries)?;
    Ok(entries)
}

/// Makes every hard link group's first entry (in output order) carry the file, and every
/// other member a link to it, so readers always find the target before the link.
fn relink_hardlinks(entries: &mut [Entry]) -> Result<(), LayerError> {
    if !entries
        .iter()
        .any(|e| matches!(e.kind, EntryKind::Hardlink { .. }))
    {
        return Ok(());
    }
    let index: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    // Follow link chains to the file each link ultimately names.
    let mut root_of: Vec<Option<usize>> = vec![None; entries.len()];
    for i in 0..entries.len() {
        let mut current = i;
        let mut hops = 0;
        while let EntryKind::Hardlink { target } = &entries[current].kind {
            let Some(&next) = index.get(target) else {
                return Err(LayerError::InvalidEntry {
                    path: entries[i].path.clone(),
                    message: format!("hard link target {target:?} is not in the layer"),
                });
            };
            hops += 1;
            if hops > entries.len() {
                return Err(LayerError::InvalidEntry {
                    path: entries[i].path.clone(),
                    message: "hard link cycle".to_string(),
                });
            }
            current = next;
        }
        if current != i {
            if !matches!(entries[current].kind, EntryKind::File { .. }) {
                return Err(LayerError::InvalidEntry {
                    path: entries[i].path.clone(),
                    message: format!(
                        "hard link target {:?} is not a regular file",
                        entries[current].path
                    ),
                });
            }
            root_of[i] = Some(current);
        }
    }
    let mut first_of_group: HashMap<usize, usize> = HashMap::new();
    for (i, root) in root_of.iter().enumerate() {
        if let Some(root) = *root {
            let first = first_of_group.entry(root).or_insert(root);
            *first = (*first).min(i);
        }
    }
    for (root, first) in first_of_group {
        if first == root {
            for (i, r) in root_of.iter().enumerate() {
                if *r == Some(root) {
                    entries[i].kind = EntryKind::Hardlink {
                        target: entries[root].path.clone(),
                    };
                }
            }
            continue;
        }
        // Move the file (kind and inode metadata) to the earliest member.
        let file = entries[root].clone();
        let first_path = entries[first].path.clone();
        entries[first] = Entry {
            path: first_path.clone(),
            ..file
        };
        for (i, r) in root_of.iter().enumerate() {
            if (*r == Some(root) && i != first) || i == root {
                entries[i].kind = EntryKind::Hardlink {
                    target: first_path.clone(),
                };
            }
        }
    }
    Ok(())
}

/// Bytes read from a source file at a time.
const COPY_BUFFER: usize = 128 * 1024;

/// Writes one entry's header(s) and data, reading files through `copy_buf`.
fn write_entry(
    out: &mut impl Write,
    entry: &Entry,
    source_date_epoch: Option<u64>,
    copy_buf: &mut [u8],
) -> Result<(), LayerError> {
    let mtime = match source_date_epoch {
        Some(epoch) => entry.mtime.min(epoch),
        None => entry.mtime,
    };
    let mut name = tar_path(entry);
    let (type_flag, link_name, size, dev_major, dev_minor) = match &entry.kind {
        EntryKind::File { size, .. } => (TypeFlag::Regular, "", *size, 0, 0),
        EntryKind::Dir => {
            name.push('/');
            (TypeFlag::Dir, "", 0, 0, 0)
        }
        EntryKind::Symlink { target } => (TypeFlag::Symlink, target.as_str(), 0, 0, 0),
        EntryKind::Hardlink { target } => (TypeFlag::Hardlink, target.as_str(), 0, 0, 0),
        EntryKind::CharDevice { major, minor } => (TypeFlag::CharDevice, "", 0, *major, *minor),
        EntryKind::BlockDevice { major, minor } => (TypeFlag::BlockDevice, "", 0, *major, *minor),
        EntryKind::Fifo => (TypeFlag::Fifo, "", 0, 0, 0),
        EntryKind::Whiteout | EntryKind::OpaqueDir => (TypeFlag::Regular, "", 0, 0, 0),
    };
    let whiteout = matches!(entry.kind, EntryKind::Whiteout | EntryKind::OpaqueDir);
    let header = tar_header::encode(&HeaderFields {
        name: &name,
        link_name,
        type_flag,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        size,
        mtime,
        dev_major,
        dev_minor,
        xattrs: if whiteout { &[] } else { &entry.xattrs },
    });
    out.write_all(&header).map_err(LayerError::WriteStream)?;
    if let EntryKind::File { source, size } = &entry.kind {
        match source {
            FileSource::Bytes(bytes) => {
                if bytes.len() as u64 != *size {
                    return Err(LayerError::InvalidEntry {
                        path: entry.path.clone(),
                        message: format!(
                            "size is {size} but the content has {} bytes",
                            bytes.len()
                        ),
                    });
                }
                out.write_all(bytes).map_err(LayerError::WriteStream)?;
            }
            FileSource::Path(path) => {
                let read_err = |source| LayerError::ReadSource {
                    path: path.clone(),
                    source,
                };
                let mut file = File::open(path).map_err(read_err)?;
                let copied = copy_file_of_size(&mut file, *size, out, path, copy_buf)?;
                if copied != *size {
                    return Err(LayerError::SourceChanged {
                        path: path.clone(),
                        expected: *size,
                        actual: copied,
                    });
                }
            }
        }
        let pad = tar_header::padding(*size);
        out.write_all(&[0u8; tar_header::BLOCK][..pad])
            .map_err(LayerError::WriteStream)?;
    }
    Ok(())
}

/// Copies `file`, expected to hold `size` bytes, through `buf` into `out`. Returns the bytes it
/// found: `size`, fewer if the file shrank, or `size + 1` if it grew (nothing past `size` is
/// written). The last read asks for one byte more than is left, so a file of the expected size
/// takes no extra read to find its end. Read errors (the source file) and write errors (the
/// layer stream) are told apart.
fn copy_file_of_size(
    file: &mut File,
    size: u64,
    out: &mut impl Write,
    path: &std::path::Path,
    buf: &mut [u8],
) -> Result<u64, LayerError> {
    let mut copied = 0u64;
    loop {
        let left = size - copied;
        let want = usize::try_from(left.saturating_add(1)).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match file.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(LayerError::ReadSource {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if n as u64 > left {
            return Ok(size + 1);
        }
        out.write_all(&buf[..n]).map_err(LayerError::WriteStream)?;
        copied += n as u64;
        // A short read that completes the expected size is the end of the file.
        if n == 0 || (n < want && copied == size) {
            return Ok(copied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::archive::decompress;

    pub(crate) fn file(path: &str, content: &[u8]) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                source: FileSource::Bytes(content.to_vec()),
                size: content.len() as u64,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: Vec::new(),
        }
    }

    pub(crate) fn with_kind(path: &str, kind: EntryKind) -> Entry {
        Entry {
            kind,
            mode: 0o755,
            ..file(path, b"")
        }
    }

    fn sample_entries() -> Vec<Entry> {
        let long = format!("deep/{}", "n".repeat(150));
        vec![
            file("usr/bin/tool", b"#!/bin/sh\necho tool\n"),
            with_kind("usr", EntryKind::Dir),
            with_kind("usr/bin", EntryKind::Dir),
            with_kind("deep", EntryKind::Dir),
            file(&long, b"long name"),
            with_kind(
                "usr/bin/link",
                EntryKind::Hardlink {
                    target: "usr/bin/tool".into(),
                },
            ),
            with_kind(
                "usr/bin/sym",
                EntryKind::Symlink {
                    target: "tool".into(),
                },
            ),
            with_kind("dev", EntryKind::Dir),
            with_kind("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
            with_kind("gone", EntryKind::Whiteout),
            with_kind("usr/share", EntryKind::OpaqueDir),
            Entry {
                xattrs: vec![("security.capability".into(), vec![1, 0, 0, 2])],
                ..file("usr/bin/cap", b"cap")
            },
        ]
    }

    fn read_names(store: &Store, info: &LayerInfo) -> Vec<(String, tar::EntryType, String)> {
        let blob = store.open_blob(&info.digest).unwrap();
        let mut archive = tar::Archive::new(decompress(blob).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    link,
                )
            })
            .collect()
    }

    fn gzip_opts() -> LayerOptions {
        LayerOptions {
            compression: Compression::DEFAULT_GZIP,
            source_date_epoch: None,
        }
    }

    #[test]
    fn same_entries_give_the_same_digests_for_any_order_and_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = write_layer_with_threads(&store, sample_entries(), &gzip_opts(), 1).unwrap();
        let mut reversed = sample_entries();
        reversed.reverse();
        let b = write_layer_with_threads(&store, reversed, &gzip_opts(), 4).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");

        // Big content crossing several gzip chunks, from a file on disk.
        let big = dir.path().join("big");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        let entry = Entry {
            kind: EntryKind::File {
                source: FileSource::Path(big.clone()),
                size: data.len() as u64,
            },
            ..file("big", b"")
        };
        let one = write_layer_with_threads(&store, vec![entry.clone()], &gzip_opts(), 1).unwrap();
        let three = write_layer_with_threads(&store, vec![entry], &gzip_opts(), 3).unwrap();
        assert_eq!(one, three);
    }

    /// Every path under `root` with its kind, mode, owner, mtime (files and symlinks) and
    /// content digest.
    fn tree(root: &std::path::Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for item in std::fs::read_dir(&dir).unwrap() {
                let path = item.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let content = if meta.is_file() {
                    Digest::sha256_of(&std::fs::read(&path).unwrap()).to_string()
                } else if meta.file_type().is_symlink() {
                    std::fs::read_link(&path).unwrap().display().to_string()
                } else {
                    String::new()
                };
                // Directory times change as children arrive; whiteout devices get "now".
                let keeps_mtime = meta.is_file() || meta.file_type().is_symlink();
                let mtime = if keeps_mtime { meta.mtime() } else { 0 };
                out.push(format!(
                    "{rel} {:o} {}:{} {mtime} {content}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid()
                ));
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn unpacking_while_writing_gives_the_same_blob_and_the_same_tree_as_unpacking_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let big = dir.path().join("big");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        // (Without the invalid test capability, which a real file system rejects.)
        let mut entries: Vec<Entry> = sample_entries()
            .into_iter()
            .filter(|e| e.xattrs.is_empty())
            .collect();
        entries.push(Entry {
            kind: EntryKind::File {
                source: FileSource::Path(big),
                size: data.len() as u64,
            },
            ..file("usr/big", b"")
        });
        let plain = write_layer(&store, entries.clone(), &gzip_opts()).unwrap();
        let teed_dir = dir.path().join("teed");
        let teed = write_layer_unpacking(&store, entries.clone(), &gzip_opts(), &teed_dir).unwrap();
        assert_eq!(teed, plain);

        let unpacked_dir = dir.path().join("unpacked");
        crate::layer::unpack(
            store.open_blob(&plain.digest).unwrap(),
            &unpacked_dir,
            UnpackMode::Overlay,
        )
        .unwrap();
        let tree_teed = tree(&teed_dir);
        assert!(tree_teed.iter().any(|line| line.starts_with("usr/big ")));
        assert_eq!(tree_teed, tree(&unpacked_dir));

        // Deferred: the diff_id right away, then the same blob, and the same tree.
        let with = |compression| LayerOptions {
            compression,
            source_date_epoch: None,
        };
        for opts in [
            gzip_opts(),
            with(Compression::Zstd { level: 3 }),
            with(Compression::Uncompressed),
        ] {
            let now = write_layer(&store, entries.clone(), &opts).unwrap();
            let deferred_dir = dir.path().join(format!("deferred-{:?}", opts.compression));
            let pending =
                write_layer_deferred(&store, entries.clone(), &opts, Some(&deferred_dir), None)
                    .unwrap();
            assert_eq!(pending.diff_id, now.diff_id);
            assert_eq!(tree(&deferred_dir), tree_teed);
            assert_eq!(pending.wait().unwrap(), now);
            let without_unpack =
                write_layer_deferred(&store, entries.clone(), &opts, None, None).unwrap();
            assert_eq!(without_unpack.wait().unwrap(), now);
        }
        let leftovers = std::fs::read_dir(store.tmp_dir()).unwrap().count();
        assert_eq!(leftovers, 0, "spool files must not outlive their layers");
    }

    #[test]
    fn a_failing_unpack_fails_the_layer_with_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let err =
            write_layer_unpacking(&store, sample_entries(), &gzip_opts(), &not_a_dir).unwrap_err();
        assert!(matches!(err, LayerError::Unpack { .. }), "{err}");
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn tar_is_sorted_with_dirs_slashed_whiteouts_and_links_resolvable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let info = write_layer(&store, sample_entries(), &gzip_opts()).unwrap();
        let names = read_names(&store, &info);
        let paths: Vec<&str> = names.iter().map(|(p, _, _)| p.as_str()).collect();
        let long_dir_child = format!("deep/{}", "n".repeat(150));
        let expected = vec![
            ".wh.gone",
            "deep/",
            long_dir_child.as_str(),
            "dev/",
            "dev/null",
            "usr/",
            "usr/bin/",
            "usr/bin/cap",
            "usr/bin/link",
            "usr/bin/sym",
            "usr/bin/tool",
            "usr/share/.wh..wh..opq",
        ];
        assert_eq!(paths, expected);
        // The hard link group: "usr/bin/link" sorts first, so it carries the data.
        let link = names.iter().find(|(p, _, _)| p == "usr/bin/link").unwrap();
        assert_eq!(link.1, tar::EntryType::Regular);
        let tool = names.iter().find(|(p, _, _)| p == "usr/bin/tool").unwrap();
        assert_eq!(tool.1, tar::EntryType::Link);
        assert_eq!(tool.2, "usr/bin/link");
        let null = names.iter().find(|(p, _, _)| p == "dev/null").unwrap();
        assert_eq!(null.1, tar::EntryType::Char);
    }

    #[test]
    fn headers_are_numeric_clamped_and_carry_pax_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let opts = LayerOptions {
            compression: Compression::Uncompressed,
            source_date_epoch: Some(1000),
        };
        let mut early = file("early", b"e");
        early.mtime = 10;
        let info =
            write_layer(&store, vec![sample_entries().pop().unwrap(), early], &opts).unwrap();
        assert_eq!(info.media_type, "application/vnd.oci.image.layer.v1.tar");
        let blob = store.read_blob(&info.digest).unwrap();
        assert_eq!(
            info.diff_id, info.digest,
            "uncompressed: diff_id is the blob digest"
        );
        let mut archive = tar::Archive::new(&blob[..]);
        let mut seen = 0;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let header = e.header().clone();
            assert_eq!(header.username_bytes(), Some(&b""[..]));
            assert_eq!(header.groupname_bytes(), Some(&b""[..]));
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == "early" {
                assert_eq!(header.mtime().unwrap(), 10);
            } else {
                assert_eq!(header.mtime().unwrap(), 1000, "clamped");
                let pax: Vec<(String, Vec<u8>)> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                    })
                    .collect();
                assert_eq!(
                    pax,
                    vec![(
                        "SCHILY.xattr.security.capability".to_string(),
                        vec![1, 0, 0, 2]
                    )]
                );
                let mut content = String::new();
                e.read_to_string(&mut content).unwrap();
                assert_eq!(content, "cap");
            }
            seen += 1;
        }
        assert_eq!(seen, 2);
    }

    #[test]
    fn zstd_layers_decode_to_the_same_tar_as_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gz = write_layer(&store, sample_entries(), &gzip_opts()).unwrap();
        let zst = write_layer(
            &store,
            sample_entries(),
            &LayerOptions {
                compression: Compression::Zstd { level: 3 },
                source_date_epoch: None,
            },
        )
        .unwrap();
        assert_eq!(gz.diff_id, zst.diff_id);
        assert_ne!(gz.digest, zst.digest);
        assert_eq!(
            zst.media_type,
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let mut tar = Vec::new();
        decompress(store.open_blob(&zst.digest).unwrap())
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(Digest::sha256_of(&tar), zst.diff_id);
    }

    #[test]
    fn zstd_output_is_identical_for_any_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let big = dir.path().join("big");
        // Enough data for several zstd jobs, partly compressible.
        let data: Vec<u8> = (0..24_000_000u32)
            .map(|i| ((i / 7) % 251) as u8 ^ (i.wrapping_mul(2_654_435_761) >> 28) as u8)
            .collect();
        std::fs::write(&big, &data).unwrap();
        let entries = vec![Entry {
            kind: EntryKind::File {
                source: FileSource::Path(big),
                size: data.len() as u64,
            },
            ..file("big", b"")
        }];
        let opts = LayerOptions {
            compression: Compression::Zstd { level: 3 },
            source_date_epoch: None,
        };
        let one = write_layer_with_threads(&store, entries.clone(), &opts, 1).unwrap();
        let four = write_layer_with_threads(&store, entries, &opts, 4).unwrap();
        assert_eq!(one, four);
    }

    #[test]
    fn a_source_file_that_changed_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        let entry = Entry {
            kind: EntryKind::File {
                source: FileSource::Path(path.clone()),
                size: 3,
            },
            ..file("f", b"")
        };
        let err = write_layer(&store, vec![entry], &gzip_opts()).unwrap_err();
        assert!(matches!(err, LayerError::SourceChanged { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_copied_file_reports_growth_and_shrinking_without_writing_past_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        // A buffer smaller than the file, so the copy takes several reads.
        let mut buf = vec![0u8; 4096];
        for (expected, found) in [
            (10_000u64, 10_000u64),
            (9_999, 10_000),
            (4_096, 4_097),
            (10_001, 10_000),
            (20_000, 10_000),
        ] {
            let mut file = File::open(&path).unwrap();
            let mut out = Vec::new();
            let copied = copy_file_of_size(&mut file, expected, &mut out, &path, &mut buf).unwrap();
            assert_eq!(copied, found, "expected size {expected}");
            // Never more than the expected size, and all of the file when it did not grow.
            assert!(out.len() as u64 <= expected && content.starts_with(&out));
            if found <= expected {
                assert_eq!(out.len() as u64, found);
            }
        }
    }

    #[test]
    fn tar_order_compares_path_components_with_the_opaque_marker_first() {
        let mut paths = vec!["a-b", "a/b", "a/.wh..wh..opq", "a/0", "a", "a/b/c", "a.b"];
        paths.sort_by_cached_key(|p| tar_order_key(p));
        assert_eq!(
            paths,
            ["a", "a/.wh..wh..opq", "a/0", "a/b", "a/b/c", "a-b", "a.b"]
        );
    }

    #[test]
    fn an_opaque_root_is_written_without_a_leading_slash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entries = vec![with_kind("", EntryKind::OpaqueDir), file("a", b"a")];
        let info = write_layer(&store, entries, &gzip_opts()).unwrap();
        let names: Vec<String> = read_names(&store, &info).into_iter().map(|n| n.0).collect();
        assert_eq!(names, vec![".wh..wh..opq", "a"]);
    }

    #[test]
    fn invalid_entries_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for bad in ["/abs", "a/../b", "a//b", "trailing/"] {
            let err = write_layer(&store, vec![file(bad, b"")], &gzip_opts()).unwrap_err();
            assert!(
                matches!(err, LayerError::InvalidEntry { .. }),
                "{bad}: {err}"
            );
        }
        let dangling = with_kind(
            "l",
            EntryKind::Hardlink {
                target: "missing".into(),
            },
        );
        assert!(matches!(
            write_layer(&store, vec![dangling], &gzip_opts()),
            Err(LayerError::InvalidEntry { .. })
        ));
    }
}
