//! Filesystem `Storage`: one global content-addressed blob store plus per-repository links,
//! laid out under the data directory as
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                                   blob content
//! repositories/<name>/_layers/<alg>/<hex>                        blob link (empty file)
//! repositories/<name>/_manifests/revisions/<alg>/<hex>           manifest link (media type)
//! repositories/<name>/_manifests/tags/<tag>                      tag -> digest
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>.json    referrer descriptor
//! uploads/<id>/data, uploads/<id>/state.json                     upload session
//! ```
//!
//! Crash safety: every file becomes visible by an atomic rename after fsync, and the directory is
//! fsynced after. An upload's `state.json` records the acknowledged offset only after the data is
//! fsynced, and a reopened session cuts the data file back to that offset, so kill -9 at any
//! moment keeps every acknowledged byte and never shows a partial blob.
//!
//! Garbage collection: a blob's mtime is its last use. Blobs are immutable, so the mtime only
//! changes when [`Storage::blob_touch`] stamps it (with the precise clock, not the kernel's coarse
//! one). [`Storage::blob_delete_unused`] first renames the blob into `blobs/.trash/`, then
//! re-reads its mtime: a touch that reached the file before the rename is seen and the blob is
//! renamed back; a touch after the rename finds no file. So no touch that found the blob is
//! ever lost (see `registry::gc` for the whole argument).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{
    BlobInfo, ByteStream, ManifestInfo, Storage, StorageError, StorageResult, StoredManifest,
    UploadInfo,
};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::registry::name::{RepositoryName, UploadId};

/// Read buffer used when streaming blobs out and when re-hashing an upload.
const READ_CHUNK: usize = 256 * 1024;
/// Upload bytes are written to disk in batches of this size.
const WRITE_BATCH: usize = 1024 * 1024;
/// Blob reads up to this size are done in one inline read (see [`inline`]).
const SMALL_BLOB: u64 = 64 * 1024;

/// Runs a small file-system operation (a stat, a link file, a manifest of at most 4 MiB, a
/// small blob, a blob's use stamp) right on the runtime thread. These read metadata-sized files that sit in the
/// page cache, and a trip to the blocking pool (two thread wake-ups) costs several times the
/// read itself: it halved manifest GET throughput. Anything that can be large or slow (blob
/// streams, uploads, fsyncs, directory walks) goes through [`blocking`].
fn inline<T>(operation: impl FnOnce() -> T) -> T {
    operation()
}

/// The on-disk state of an upload session.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UploadState {
    repository: String,
    /// Bytes acknowledged to the client (fsynced in `data`).
    offset: u64,
}

/// An open upload session: its acknowledged offset and a SHA-256 of the first `offset` bytes
/// (absent after a restart until the data is re-hashed at the end).
struct Session {
    repository: String,
    offset: u64,
    sha256: Option<Hasher>,
}

/// Registry storage in a local directory.
pub struct FilesystemStorage {
    root: PathBuf,
    sessions: StdMutex<HashMap<UploadId, Arc<Mutex<Session>>>>,
    /// Manifest bytes by digest, so a manifest GET reads only its tag and link files. Content
    /// is addressed by digest and never changes; whether a repository may see it is still
    /// decided by its link file on every read. Emptied when it would pass [`MANIFEST_CACHE_BYTES`].
    manifest_bytes: StdMutex<HashMap<Digest, Bytes>>,
}

/// Most manifest bytes kept in memory by [`FilesystemStorage`].
const MANIFEST_CACHE_BYTES: usize = 8 * 1024 * 1024;

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

fn sync_dir(dir: &Path) -> StorageResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

fn create_dir_all(dir: &Path) -> StorageResult<()> {
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> StorageResult<()> {
    let dir = path.parent().ok_or_else(|| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail: "path has no parent directory".into(),
    })?;
    create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_error("create temp file in", dir))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io_error("write temp file for", path))?;
    temp.persist(path).map_err(|e| StorageError::Io {
        action: "rename temp file to",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Removes a file, treating "already gone" as success; returns whether it existed.
fn remove_file_if_exists(path: &Path) -> StorageResult<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

/// Sorted names of the entries of `dir` that do not start with `.`; empty if `dir` is missing.
fn list_names(dir: &Path) -> StorageResult<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Hashes the first `len` bytes of `path` with `algorithm`, streaming.
fn hash_file(path: &Path, algorithm: Algorithm, len: u64) -> StorageResult<Digest> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let mut reader = file.take(len);
    let mut hasher = Hasher::new(algorithm);
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let n = reader.read(&mut buffer).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finish())
}

/// Sets the file's mtime to now (precise clock); returns whether the file exists.
fn touch_file(path: &Path) -> StorageResult<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("open", path)(e)),
    };
    file.set_modified(SystemTime::now())
        .map_err(io_error("set modification time of", path))?;
    Ok(true)
}

/// A blob stays in the trash only for the instant between its move there and its removal or
/// return; one older than this was left by a crash and is removed.
const STALE_TRASH: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes trash entries moved there (ctime) longer than [`STALE_TRASH`] ago.
fn remove_stale_trash(trash: &Path) -> StorageResult<()> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(limit) = SystemTime::now().checked_sub(STALE_TRASH) else {
        return Ok(());
    };
    let limit_secs = limit
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for name in list_names(trash)? {
        let path = trash.join(name);
        match fs::metadata(&path) {
            Ok(meta) if meta.ctime() < limit_secs => {
                remove_file_if_exists(&path)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("stat", &path)(e)),
        }
    }
    Ok(())
}

/// The mtime of `path`, or `None` if it does not exist.
fn modified(path: &Path) -> StorageResult<Option<(u64, SystemTime)>> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mtime = meta.modified().map_err(io_error("stat", path))?;
            Ok(Some((meta.len(), mtime)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("stat", path)(e)),
    }
}

/// Digests named by `<dir>/<alg>/<hex>` (or with `fan_out`, `<dir>/<alg>/<xx>/<hex>`), each with
/// its file path. Stray names are skipped.
fn list_digest_files(dir: &Path, fan_out: bool) -> StorageResult<Vec<(Digest, PathBuf)>> {
    let mut found = Vec::new();
    for alg in list_names(dir)? {
        let alg_dir = dir.join(&alg);
        let leaf_dirs = if fan_out {
            list_names(&alg_dir)?
                .into_iter()
                .map(|prefix| alg_dir.join(prefix))
                .collect()
        } else {
            vec![alg_dir]
        };
        for leaf_dir in leaf_dirs {
            if !leaf_dir.is_dir() {
                continue;
            }
            for hex in list_names(&leaf_dir)? {
                match Digest::parse(&format!("{alg}:{hex}")) {
                    Ok(digest) => found.push((digest, leaf_dir.join(hex))),
                    Err(_) => {
                        tracing::debug!(path = %leaf_dir.join(&hex).display(), "stray file skipped")
                    }
                }
            }
        }
    }
    Ok(found)
}

fn alg_dir(digest: &Digest) -> &'static str {
    digest.algorithm().name()
}

impl FilesystemStorage {
    /// Opens (creating if needed) a data directory.
    pub fn open(root: impl Into<PathBuf>) -> StorageResult<FilesystemStorage> {
        let root = root.into();
        for sub in ["blobs", "repositories", "uploads"] {
            create_dir_all(&root.join(sub))?;
        }
        Ok(FilesystemStorage {
            root,
            sessions: StdMutex::new(HashMap::new()),
            manifest_bytes: StdMutex::new(HashMap::new()),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(alg_dir(digest))
            .join(&digest.hex()[..2])
            .join(digest.hex())
    }

    fn cached_manifest(&self, digest: &Digest) -> Option<Bytes> {
        let cache = self.manifest_bytes.lock().ok()?;
        cache.get(digest).cloned()
    }

    fn cache_manifest(&self, digest: &Digest, bytes: &Bytes) {
        let Ok(mut cache) = self.manifest_bytes.lock() else {
            return;
        };
        let held: usize = cache.values().map(Bytes::len).sum();
        if held + bytes.len() > MANIFEST_CACHE_BYTES {
            cache.clear();
        }
        cache.insert(digest.clone(), bytes.clone());
    }

    fn forget_manifest(&self, digest: &Digest) {
        if let Ok(mut cache) = self.manifest_bytes.lock() {
            cache.remove(digest);
        }
    }

    fn repo_dir(&self, repo: &RepositoryName) -> PathBuf {
        self.root.join("repositories").join(repo.as_str())
    }

    fn layer_link_path(&self, repo: &RepositoryName, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_layers")
            .join(alg_dir(digest))
            .join(digest.hex())
    }

    fn revision_path(&self, repo: &RepositoryName, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/revisions")
            .join(alg_dir(digest))
            .join(digest.hex())
    }

    fn tags_dir(&self, repo: &RepositoryName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn referrers_dir(&self, repo: &RepositoryName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers")
            .join(alg_dir(subject))
            .join(subject.hex())
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    /// Locks the session `id` of `repo`, loading it from disk after a restart. Fails with
    /// `UploadUnknown` when there is no such session, it belongs to another repository, or it
    /// finished while this request waited for the lock.
    async fn lock_session(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
    ) -> StorageResult<tokio::sync::OwnedMutexGuard<Session>> {
        let existing = self.lock_sessions().get(id).cloned();
        let session = match existing {
            Some(session) => session,
            None => {
                let dir = self.upload_dir(id);
                let loaded = blocking(move || load_session(&dir)).await?;
                let Some(loaded) = loaded else {
                    return Err(StorageError::UploadUnknown(id.to_string()));
                };
                self.lock_sessions()
                    .entry(id.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(loaded)))
                    .clone()
            }
        };
        let guard = session.lock_owned().await;
        // A finished or cancelled session has its repository cleared.
        if guard.repository != repo.as_str() {
            return Err(StorageError::UploadUnknown(id.to_string()));
        }
        // Expired by a garbage collection (possibly `imgbuild registry gc` in another process).
        let state_path = self.upload_dir(id).join("state.json");
        if !tokio::fs::try_exists(&state_path).await.unwrap_or(false) {
            self.lock_sessions().remove(id);
            return Err(StorageError::UploadUnknown(id.to_string()));
        }
        Ok(guard)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Arc<Mutex<Session>>>> {
        // A poisoned map only means another request panicked mid-update of a HashMap insert or
        // remove, which leaves the map itself consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a session whose lock the caller holds: marks it finished (requests waiting for the
    /// lock then see it as unknown), forgets it, and removes its directory.
    async fn end_session(&self, session: &mut Session, id: &UploadId) -> StorageResult<()> {
        session.repository.clear();
        self.lock_sessions().remove(id);
        self.remove_upload_dir(id).await
    }

    async fn remove_upload_dir(&self, id: &UploadId) -> StorageResult<()> {
        let dir = self.upload_dir(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove upload", &dir)(e)),
        }
    }
}

/// Reads an upload session from disk, cutting its data back to the acknowledged offset.
fn load_session(dir: &Path) -> StorageResult<Option<Session>> {
    let state_path = dir.join("state.json");
    let text = match fs::read(&state_path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &state_path)(e)),
    };
    let state: UploadState = serde_json::from_slice(&text).map_err(|e| StorageError::Corrupt {
        path: state_path.clone(),
        detail: e.to_string(),
    })?;
    let data_path = dir.join("data");
    let data = match OpenOptions::new().write(true).open(&data_path) {
        Ok(data) => data,
        // The data was already moved into the blob store by a finish that crashed before
        // removing the session: the session is over.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::remove_dir_all(dir).map_err(io_error("remove finished upload", dir))?;
            return Ok(None);
        }
        Err(e) => return Err(io_error("open", &data_path)(e)),
    };
    let len = data.metadata().map_err(io_error("stat", &data_path))?.len();
    if len < state.offset {
        return Err(StorageError::Corrupt {
            path: data_path,
            detail: format!("holds {len} bytes but {} were acknowledged", state.offset),
        });
    }
    if len > state.offset {
        data.set_len(state.offset)
            .and_then(|()| data.sync_all())
            .map_err(io_error("truncate", &data_path))?;
    }
    Ok(Some(Session {
        repository: state.repository,
        offset: state.offset,
        sha256: None,
    }))
}

fn write_upload_state(dir: &Path, repository: &str, offset: u64) -> StorageResult<()> {
    let state = UploadState {
        repository: repository.to_string(),
        offset,
    };
    let bytes = serde_json::to_vec(&state).map_err(|e| StorageError::Corrupt {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_atomic(&dir.join("state.json"), &bytes)
}

/// Moves the first `size` bytes of a verified upload into the blob store (or drops it if
/// the blob is already there). Anything past `size` is an unacknowledged leftover and is cut.
fn install_blob(source: &Path, target: &Path, size: u64) -> StorageResult<()> {
    // Already stored: mark it used, so a collection in progress keeps it. A collection that
    // moved it away meanwhile makes the touch miss, and the upload is installed instead.
    if touch_file(target)? {
        return Ok(());
    }
    let dir = target.parent().ok_or_else(|| StorageError::Corrupt {
        path: target.to_path_buf(),
        detail: "blob path has no parent".into(),
    })?;
    create_dir_all(dir)?;
    OpenOptions::new()
        .write(true)
        .open(source)
        .and_then(|f| f.set_len(size).and_then(|()| f.sync_all()))
        .map_err(io_error("truncate and fsync", source))?;
    fs::rename(source, target).map_err(io_error("rename upload to", target))?;
    sync_dir(dir)
}

#[async_trait]
impl Storage for FilesystemStorage {
    async fn blob_size(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        let path = self.blob_path(digest);
        match inline(|| fs::metadata(&path)) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat", &path)(e)),
        }
    }

    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream> {
        let open_path = self.blob_path(digest);
        if len <= SMALL_BLOB {
            let bytes = inline(|| {
                let mut file = File::open(&open_path)?;
                file.seek(SeekFrom::Start(start))?;
                let mut buffer = Vec::with_capacity(len as usize);
                file.take(len).read_to_end(&mut buffer)?;
                Ok::<_, io::Error>(buffer)
            })
            .map_err(io_error("read", &open_path))?;
            if (bytes.len() as u64) < len {
                return Err(StorageError::Corrupt {
                    path: open_path,
                    detail: "blob is shorter than its recorded size".into(),
                });
            }
            return Ok(futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed());
        }
        let file = blocking(move || {
            let mut file = File::open(&open_path).map_err(io_error("open", &open_path))?;
            file.seek(SeekFrom::Start(start))
                .map_err(io_error("seek", &open_path))?;
            Ok(file)
        })
        .await?;
        // Each step reads one chunk straight into a fresh buffer on the blocking pool; no
        // thread is held between chunks, so slow clients cost no threads.
        let state = Some((file, len));
        let stream = futures::stream::unfold(state, |state| async move {
            let (file, remaining) = state?;
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(READ_CHUNK as u64);
            let read = tokio::task::spawn_blocking(move || {
                let mut buffer = Vec::with_capacity(want as usize);
                let result = (&file).take(want).read_to_end(&mut buffer);
                (file, buffer, result)
            })
            .await;
            match read {
                Ok((file, buffer, Ok(n))) if n > 0 => {
                    Some((Ok(Bytes::from(buffer)), Some((file, remaining - n as u64))))
                }
                Ok((_, _, Ok(_))) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob is shorter than its recorded size",
                    )),
                    None,
                )),
                Ok((_, _, Err(e))) => Some((Err(e), None)),
                Err(e) => Some((Err(io::Error::other(e)), None)),
            }
        });
        Ok(stream.boxed())
    }

    async fn blob_put(&self, digest: &Digest, bytes: Bytes) -> StorageResult<()> {
        let path = self.blob_path(digest);
        blocking(move || {
            if path.exists() {
                return Ok(());
            }
            write_atomic(&path, &bytes)
        })
        .await
    }

    async fn repository_exists(&self, repo: &RepositoryName) -> StorageResult<bool> {
        let dir = self.repo_dir(repo);
        Ok(inline(|| {
            dir.join("_layers").exists() || dir.join("_manifests").exists()
        }))
    }

    async fn repositories(&self) -> StorageResult<Vec<String>> {
        let root = self.root.join("repositories");
        blocking(move || {
            let mut found = Vec::new();
            let mut pending = vec![(root.clone(), String::new())];
            while let Some((dir, name)) = pending.pop() {
                let children = list_names(&dir)?;
                if !name.is_empty() && children.iter().any(|c| c == "_layers" || c == "_manifests")
                {
                    found.push(name.clone());
                }
                for child in children.into_iter().filter(|c| !c.starts_with('_')) {
                    let child_dir = dir.join(&child);
                    if child_dir.is_dir() {
                        let child_name = if name.is_empty() {
                            child
                        } else {
                            format!("{name}/{child}")
                        };
                        pending.push((child_dir, child_name));
                    }
                }
            }
            found.sort();
            Ok(found)
        })
        .await
    }

    async fn link_blob(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<()> {
        let path = self.layer_link_path(repo, digest);
        blocking(move || {
            if path.exists() {
                return Ok(());
            }
            write_atomic(&path, b"")
        })
        .await
    }

    async fn blob_linked(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool> {
        let path = self.layer_link_path(repo, digest);
        Ok(inline(|| path.exists()))
    }

    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool> {
        let path = self.layer_link_path(repo, digest);
        blocking(move || remove_file_if_exists(&path)).await
    }

    async fn upload_start(&self, repo: &RepositoryName) -> StorageResult<UploadId> {
        let id = UploadId::random().map_err(|e| StorageError::Task(e.to_string()))?;
        let dir = self.upload_dir(&id);
        let repository = repo.to_string();
        let session_repository = repository.clone();
        blocking(move || {
            create_dir_all(&dir)?;
            let data = dir.join("data");
            File::create(&data)
                .and_then(|f| f.sync_all())
                .map_err(io_error("create", &data))?;
            write_upload_state(&dir, &repository, 0)
        })
        .await?;
        let session = Session {
            repository: session_repository,
            offset: 0,
            sha256: Some(Hasher::new(Algorithm::Sha256)),
        };
        self.lock_sessions()
            .insert(id.clone(), Arc::new(Mutex::new(session)));
        Ok(id)
    }

    async fn upload_offset(&self, repo: &RepositoryName, id: &UploadId) -> StorageResult<u64> {
        Ok(self.lock_session(repo, id).await?.offset)
    }

    async fn upload_append(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        expected_len: Option<u64>,
        mut body: ByteStream,
    ) -> StorageResult<u64> {
        let mut session = self.lock_session(repo, id).await?;
        if let Some(start) = start
            && start != session.offset
        {
            return Err(StorageError::UploadOutOfOrder {
                expected: session.offset,
                got: start,
            });
        }
        let dir = self.upload_dir(id);
        let data_path = dir.join("data");
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&data_path)
            .await
            .map_err(io_error("open", &data_path))?;
        file.seek(SeekFrom::Start(session.offset))
            .await
            .map_err(io_error("seek", &data_path))?;
        let mut hasher = session.sha256.clone();
        let mut received: u64 = 0;
        let mut failure = None;
        // Small network chunks are gathered into WRITE_BATCH-sized writes: far fewer trips to
        // the blocking pool, and memory stays bounded by one batch.
        let mut batch = BytesMut::with_capacity(WRITE_BATCH);
        loop {
            let chunk = match body.next().await {
                None => None,
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(e)) => {
                    failure = Some(StorageError::BodyRead(e.to_string()));
                    break;
                }
            };
            if let Some(chunk) = &chunk {
                if let Some(expected) = expected_len
                    && received + chunk.len() as u64 > expected
                {
                    // More than the client announced: stop before writing it to disk.
                    failure = Some(StorageError::SizeMismatch {
                        expected,
                        actual: received + chunk.len() as u64,
                    });
                    break;
                }
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(chunk);
                }
                received += chunk.len() as u64;
                batch.extend_from_slice(chunk);
            }
            let last = chunk.is_none();
            if (last && !batch.is_empty()) || batch.len() >= WRITE_BATCH {
                if let Err(e) = file.write_all(&batch).await {
                    failure = Some(io_error("write", &data_path)(e));
                    break;
                }
                batch.clear();
            }
            if last {
                break;
            }
        }
        if failure.is_none()
            && let Err(e) = file.flush().await
        {
            failure = Some(io_error("write", &data_path)(e));
        }
        if failure.is_none()
            && let Some(expected) = expected_len
            && expected != received
        {
            failure = Some(StorageError::SizeMismatch {
                expected,
                actual: received,
            });
        }
        if let Some(failure) = failure {
            // Drop the unacknowledged tail so the session stays at its previous offset.
            let _ = file.set_len(session.offset).await;
            return Err(failure);
        }
        file.sync_data()
            .await
            .map_err(io_error("fsync", &data_path))?;
        drop(file);
        let new_offset = session.offset + received;
        let repository = session.repository.clone();
        blocking(move || write_upload_state(&dir, &repository, new_offset)).await?;
        session.offset = new_offset;
        session.sha256 = hasher;
        Ok(new_offset)
    }

    async fn upload_finish(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
    ) -> StorageResult<u64> {
        let mut session = self.lock_session(repo, id).await?;
        let size = session.offset;
        let data_path = self.upload_dir(id).join("data");
        let actual = match (digest.algorithm(), session.sha256.take()) {
            (Algorithm::Sha256, Some(hasher)) => hasher.finish(),
            (algorithm, _) => {
                let path = data_path.clone();
                blocking(move || hash_file(&path, algorithm, size)).await?
            }
        };
        if &actual != digest {
            self.end_session(&mut session, id).await?;
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let target = self.blob_path(digest);
        blocking(move || install_blob(&data_path, &target, size)).await?;
        self.link_blob(repo, digest).await?;
        self.end_session(&mut session, id).await?;
        Ok(size)
    }

    async fn upload_cancel(&self, repo: &RepositoryName, id: &UploadId) -> StorageResult<()> {
        let mut session = self.lock_session(repo, id).await?;
        self.end_session(&mut session, id).await
    }

    async fn upload_count(&self) -> StorageResult<u64> {
        let dir = self.root.join("uploads");
        blocking(move || Ok(list_names(&dir)?.len() as u64)).await
    }

    async fn manifest_put(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> StorageResult<()> {
        self.blob_put(digest, bytes).await?;
        let link = self.revision_path(repo, digest);
        let media_type = media_type.to_string();
        blocking(move || write_atomic(&link, media_type.as_bytes())).await
    }

    async fn manifest_get(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> StorageResult<Option<StoredManifest>> {
        let link = self.revision_path(repo, digest);
        let media_type = match inline(|| fs::read_to_string(&link)) {
            Ok(media_type) => media_type,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &link)(e)),
        };
        let cached = self.cached_manifest(digest);
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let path = self.blob_path(digest);
                let bytes =
                    inline(|| fs::read(&path)).map_err(io_error("read manifest blob", &path))?;
                let bytes = Bytes::from(bytes);
                self.cache_manifest(digest, &bytes);
                bytes
            }
        };
        Ok(Some(StoredManifest { media_type, bytes }))
    }

    async fn manifest_delete(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool> {
        let link = self.revision_path(repo, digest);
        let tags_dir = self.tags_dir(repo);
        let digest_text = digest.to_string();
        blocking(move || {
            let existed = remove_file_if_exists(&link)?;
            for tag in list_names(&tags_dir)? {
                let tag_path = tags_dir.join(&tag);
                let points_here = fs::read_to_string(&tag_path)
                    .map(|target| target.trim() == digest_text)
                    .unwrap_or(false);
                if points_here {
                    remove_file_if_exists(&tag_path)?;
                }
            }
            Ok(existed)
        })
        .await
    }

    async fn tag_set(
        &self,
        repo: &RepositoryName,
        tag: &str,
        digest: &Digest,
    ) -> StorageResult<()> {
        let path = self.tags_dir(repo).join(tag);
        let text = digest.to_string();
        blocking(move || write_atomic(&path, text.as_bytes())).await
    }

    async fn tag_get(&self, repo: &RepositoryName, tag: &str) -> StorageResult<Option<Digest>> {
        let path = self.tags_dir(repo).join(tag);
        let text = match inline(|| fs::read_to_string(&path)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read tag", &path)(e)),
        };
        Digest::parse(text.trim())
            .map(Some)
            .map_err(|e| StorageError::Corrupt {
                path,
                detail: e.to_string(),
            })
    }

    async fn tag_delete(&self, repo: &RepositoryName, tag: &str) -> StorageResult<bool> {
        let path = self.tags_dir(repo).join(tag);
        blocking(move || remove_file_if_exists(&path)).await
    }

    async fn tags(&self, repo: &RepositoryName) -> StorageResult<Vec<String>> {
        let dir = self.tags_dir(repo);
        blocking(move || list_names(&dir)).await
    }

    async fn referrer_add(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &serde_json::Value,
    ) -> StorageResult<()> {
        let path = self.referrers_dir(repo, subject).join(format!(
            "{}-{}.json",
            referrer.algorithm().name(),
            referrer.hex()
        ));
        let bytes = serde_json::to_vec(descriptor).map_err(|e| StorageError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        blocking(move || write_atomic(&path, &bytes)).await
    }

    async fn referrer_remove(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<()> {
        let path = self.referrers_dir(repo, subject).join(format!(
            "{}-{}.json",
            referrer.algorithm().name(),
            referrer.hex()
        ));
        blocking(move || remove_file_if_exists(&path).map(|_| ())).await
    }

    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> StorageResult<Vec<serde_json::Value>> {
        let dir = self.referrers_dir(repo, subject);
        blocking(move || {
            let mut descriptors = Vec::new();
            for name in list_names(&dir)? {
                let path = dir.join(&name);
                let bytes = fs::read(&path).map_err(io_error("read referrer", &path))?;
                let descriptor =
                    serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                descriptors.push(descriptor);
            }
            Ok(descriptors)
        })
        .await
    }
    async fn blob_list(&self) -> StorageResult<Vec<BlobInfo>> {
        let dir = self.root.join("blobs");
        blocking(move || {
            remove_stale_trash(&dir.join(".trash"))?;
            let mut blobs = Vec::new();
            for (digest, path) in list_digest_files(&dir, true)? {
                // Gone meanwhile (collected or in the trash): not listed.
                if let Some((size, last_used)) = modified(&path)? {
                    blobs.push(BlobInfo {
                        digest,
                        size,
                        last_used,
                    });
                }
            }
            Ok(blobs)
        })
        .await
    }

    async fn blob_touch(&self, digest: &Digest) -> StorageResult<()> {
        let path = self.blob_path(digest);
        inline(|| touch_file(&path).map(|_| ()))
    }

    async fn blob_delete(&self, digest: &Digest) -> StorageResult<bool> {
        self.forget_manifest(digest);
        let path = self.blob_path(digest);
        blocking(move || {
            let existed = remove_file_if_exists(&path)?;
            if existed && let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(existed)
        })
        .await
    }

    async fn blob_delete_unused(
        &self,
        digest: &Digest,
        unused_since: SystemTime,
    ) -> StorageResult<bool> {
        self.forget_manifest(digest);
        let path = self.blob_path(digest);
        let trash_dir = self.root.join("blobs/.trash");
        let name = format!(
            "{}-{}-{}",
            digest.algorithm().name(),
            digest.hex(),
            UploadId::random().map_err(|e| StorageError::Task(e.to_string()))?
        );
        blocking(move || {
            match modified(&path)? {
                Some((_, last_used)) if last_used < unused_since => {}
                _ => return Ok(false),
            }
            create_dir_all(&trash_dir)?;
            let trash = trash_dir.join(name);
            match fs::rename(&path, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_error("move to the trash", &path)(e)),
            }
            // A touch that found the file before the rename shows here: put it back.
            let touched = match modified(&trash)? {
                Some((_, last_used)) => last_used >= unused_since,
                None => false,
            };
            if touched {
                fs::rename(&trash, &path).map_err(io_error("restore from the trash", &path))?;
                return Ok(false);
            }
            remove_file_if_exists(&trash)?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        })
        .await
    }

    async fn linked_blobs(&self, repo: &RepositoryName) -> StorageResult<Vec<Digest>> {
        let dir = self.repo_dir(repo).join("_layers");
        blocking(move || {
            Ok(list_digest_files(&dir, false)?
                .into_iter()
                .map(|(digest, _)| digest)
                .collect())
        })
        .await
    }

    async fn manifest_list(&self, repo: &RepositoryName) -> StorageResult<Vec<ManifestInfo>> {
        let dir = self.repo_dir(repo).join("_manifests/revisions");
        blocking(move || {
            let mut manifests = Vec::new();
            for (digest, path) in list_digest_files(&dir, false)? {
                if let Some((_, linked_at)) = modified(&path)? {
                    manifests.push(ManifestInfo { digest, linked_at });
                }
            }
            Ok(manifests)
        })
        .await
    }

    async fn upload_list(&self) -> StorageResult<Vec<UploadInfo>> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let mut uploads = Vec::new();
            for name in list_names(&dir)? {
                let Some(id) = UploadId::parse(&name) else {
                    continue;
                };
                let session_dir = dir.join(&name);
                let state_path = session_dir.join("state.json");
                let text = match fs::read(&state_path) {
                    Ok(text) => text,
                    // Finished or cancelled meanwhile, or not yet written.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error("read", &state_path)(e)),
                };
                let state: UploadState =
                    serde_json::from_slice(&text).map_err(|e| StorageError::Corrupt {
                        path: state_path.clone(),
                        detail: e.to_string(),
                    })?;
                let Some(repo) = RepositoryName::parse(&state.repository) else {
                    continue;
                };
                let times = [modified(&state_path)?, modified(&session_dir.join("data"))?];
                let Some(last_activity) = times.iter().flatten().map(|(_, t)| *t).max() else {
                    continue;
                };
                uploads.push(UploadInfo {
                    repo,
                    id,
                    last_activity,
                });
            }
            Ok(uploads)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let parts: Vec<Result<Bytes, io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(parts).boxed()
    }

    #[tokio::test]
    async fn upload_resumes_after_restart_and_drops_unacknowledged_tail() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepositoryName::parse("team/app").unwrap();
        let id = {
            let storage = FilesystemStorage::open(dir.path()).unwrap();
            let id = storage.upload_start(&repo).await.unwrap();
            let offset = storage
                .upload_append(&repo, &id, Some(0), None, stream_of(&[b"hello ", b"world"]))
                .await
                .unwrap();
            assert_eq!(offset, 11);
            id
        };
        // Simulate a crash mid-append: bytes beyond the acknowledged offset.
        let data = dir.path().join("uploads").join(id.as_str()).join("data");
        OpenOptions::new()
            .append(true)
            .open(&data)
            .unwrap()
            .write_all(b"garbage")
            .unwrap();

        let storage = FilesystemStorage::open(dir.path()).unwrap();
        assert_eq!(storage.upload_offset(&repo, &id).await.unwrap(), 11);
        let other = RepositoryName::parse("other").unwrap();
        assert!(matches!(
            storage.upload_offset(&other, &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        storage
            .upload_append(&repo, &id, Some(11), None, stream_of(&[b"!"]))
            .await
            .unwrap();
        let digest = Digest::sha256_of(b"hello world!");
        assert_eq!(
            storage.upload_finish(&repo, &id, &digest).await.unwrap(),
            12
        );
        assert!(storage.blob_linked(&repo, &digest).await.unwrap());
        assert_eq!(storage.blob_size(&digest).await.unwrap(), Some(12));
        assert!(!storage.blob_linked(&other, &digest).await.unwrap());
    }

    #[tokio::test]
    async fn session_whose_data_was_already_installed_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepositoryName::parse("a").unwrap();
        let id = {
            let storage = FilesystemStorage::open(dir.path()).unwrap();
            storage.upload_start(&repo).await.unwrap()
        };
        // A crash between the rename into the blob store and the session cleanup.
        fs::remove_file(dir.path().join("uploads").join(id.as_str()).join("data")).unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        assert!(matches!(
            storage.upload_offset(&repo, &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert_eq!(storage.upload_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn leftover_bytes_past_the_offset_never_reach_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("a").unwrap();
        let id = storage.upload_start(&repo).await.unwrap();
        storage
            .upload_append(&repo, &id, Some(0), None, stream_of(&[b"abc"]))
            .await
            .unwrap();
        // Bytes written but never acknowledged (e.g. a failed state update).
        let data = dir.path().join("uploads").join(id.as_str()).join("data");
        OpenOptions::new()
            .append(true)
            .open(&data)
            .unwrap()
            .write_all(b"leftover")
            .unwrap();
        let digest = Digest::sha256_of(b"abc");
        assert_eq!(storage.upload_finish(&repo, &id, &digest).await.unwrap(), 3);
        let blob = fs::read(storage.blob_path(&digest)).unwrap();
        assert_eq!(blob, b"abc");
    }

    #[tokio::test]
    async fn wrong_digest_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("a").unwrap();
        let id = storage.upload_start(&repo).await.unwrap();
        storage
            .upload_append(&repo, &id, None, Some(3), stream_of(&[b"abc"]))
            .await
            .unwrap();
        let wrong = Digest::sha256_of(b"xyz");
        assert!(matches!(
            storage.upload_finish(&repo, &id, &wrong).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(storage.blob_size(&wrong).await.unwrap(), None);
        assert_eq!(
            storage.blob_size(&Digest::sha256_of(b"abc")).await.unwrap(),
            None
        );
        assert_eq!(storage.upload_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn size_mismatch_leaves_offset_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("a").unwrap();
        let id = storage.upload_start(&repo).await.unwrap();
        assert!(matches!(
            storage
                .upload_append(&repo, &id, Some(0), Some(5), stream_of(&[b"abc"]))
                .await,
            Err(StorageError::SizeMismatch {
                expected: 5,
                actual: 3
            })
        ));
        assert_eq!(storage.upload_offset(&repo, &id).await.unwrap(), 0);
        let sha512 = Digest::of(Algorithm::Sha512, b"abc");
        storage
            .upload_append(&repo, &id, Some(0), Some(3), stream_of(&[b"abc"]))
            .await
            .unwrap();
        assert_eq!(storage.upload_finish(&repo, &id, &sha512).await.unwrap(), 3);
        assert_eq!(storage.blob_size(&sha512).await.unwrap(), Some(3));
    }
}
