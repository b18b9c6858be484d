//! COPY and ADD: turns the selected sources (context files, another stage's files, heredocs,
//! downloaded URLs, auto-extracted local archives) into layer entries with Docker's ownership,
//! mode, and parent-directory rules.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::chmod::Chmod;
use super::rootfs;
use crate::context::{self, CopyItem, CopyOptions, CopyPlan};
use crate::digest::{Digest, Hasher};
use crate::dockerfile::IgnoreMatcher;
use crate::layer::{self, Entry, EntryKind, FileSource, UnpackMode};
use crate::store::Store;

/// Everything one COPY/ADD needs, already expanded.
pub(crate) struct CopyJob<'a> {
    pub sources: &'a [String],
    /// (file name, content) of heredoc sources.
    pub heredocs: &'a [(String, String)],
    pub dest: &'a str,
    pub workdir: &'a str,
    /// The build context, or another stage's/image's mounted root file system.
    pub source_root: &'a Path,
    pub ignore: Option<&'a IgnoreMatcher>,
    pub excludes: &'a [String],
    pub parents: bool,
    /// Keep the source's uid/gid (COPY --from); context files become 0:0.
    pub preserve_owner: bool,
    pub owner: Option<(u32, u32)>,
    pub chmod: Option<&'a Chmod>,
    /// ADD semantics: URLs are downloaded and local archives extracted.
    pub is_add: bool,
    pub unpack: bool,
    pub checksum: Option<&'a str>,
    /// The stage's current root file system, to see which parent directories exist.
    pub target_root: &'a Path,
    /// mtime for directories and files the build creates (not copied from anywhere).
    pub created_mtime: u64,
    pub store: &'a Store,
    /// For downloading ADD URLs (present whenever a source is a URL).
    pub runtime: Option<&'a tokio::runtime::Runtime>,
    /// URLs already downloaded (to key the build cache), by URL.
    pub downloads: &'a BTreeMap<String, Downloaded>,
    /// A COPY's sources as already planned with [`plan_local`] (to key the cache).
    pub planned: Option<CopyPlan>,
}

/// Where a COPY/ADD with `source_count` sources (heredocs included) puts its local sources:
/// `dest` itself, or `dest/` when it must be a directory.
fn local_dest(dest: &str, source_count: usize) -> String {
    if source_count > 1 && !dest.ends_with('/') {
        format!("{dest}/")
    } else {
        dest.to_string()
    }
}

/// Plans the `local` sources of a COPY/ADD with `source_count` sources in all (URLs and
/// heredocs included) from `root`, as the step itself does, so the plan made to key the cache
/// can be handed to the step.
pub(crate) fn plan_local(
    root: &Path,
    local: &[String],
    source_count: usize,
    dest: &str,
    workdir: &str,
    options: &CopyOptions,
) -> Result<CopyPlan, context::ContextError> {
    let dest = local_dest(dest, source_count);
    context::plan_copy_full(root, local, &dest, workdir, options)
}

/// An ADD URL fetched into a scratch file.
#[derive(Debug, Clone)]
pub(crate) struct Downloaded {
    pub path: PathBuf,
    /// sha256 of the content (or the --checksum algorithm's digest).
    pub digest: Digest,
    pub size: u64,
    /// Last-Modified, in seconds since the epoch.
    pub mtime: Option<u64>,
}

/// Downloads `url` into a new file in `dir` (streamed, hashed with `algorithm`).
pub(crate) fn prefetch(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    dir: &Path,
    algorithm: crate::digest::Algorithm,
) -> Result<Downloaded, String> {
    let path = dir.join(format!(
        "download-{}",
        Digest::sha256_of(url.as_bytes()).short()
    ));
    let (digest, size, mtime) = runtime.block_on(fetch_url(url, &path, Some(algorithm)))?;
    Ok(Downloaded {
        path,
        digest,
        size,
        mtime,
    })
}

/// Whether an ADD source is a remote URL.
pub(crate) fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The layer entries of a COPY/ADD, plus a scratch directory (downloads, extracted archives)
/// that must outlive the layer write.
pub(crate) fn entries(mut job: CopyJob<'_>) -> Result<(Vec<Entry>, tempfile::TempDir), String> {
    let scratch = tempfile::Builder::new()
        .prefix("copy-")
        .tempdir_in(job.store.tmp_dir())
        .map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let source_count = job.sources.len() + job.heredocs.len();
    let dest_is_dir = job.dest.ends_with('/') || source_count > 1;
    let dest_abs = rootfs::join_clean(job.workdir, job.dest);
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();

    let mut local_sources = Vec::new();
    let mut fresh_dirs = Vec::new();
    for source in job.sources {
        if job.is_add && is_url(source) {
            let entry = download(&job, source, &dest_abs, dest_is_dir, scratch.path())?;
            entries.insert(entry.path.clone(), entry);
        } else if job.is_add && job.unpack && !has_glob(source) {
            let items = plan(&job, std::slice::from_ref(source), job.dest, false)?.items;
            let archive = match items.as_slice() {
                [item] if item.metadata.is_file() => {
                    layer::open_archive(&item.host_path).map_err(|e| e.to_string())?
                }
                _ => None,
            };
            match archive {
                Some(reader) => {
                    let extract_dir = scratch.path().join(format!("extract-{}", entries.len()));
                    std::fs::create_dir(&extract_dir)
                        .map_err(|e| format!("cannot extract {source}: {e}"))?;
                    layer::unpack(reader, &extract_dir, UnpackMode::Flatten)
                        .map_err(|e| format!("cannot extract {source}: {e}"))?;
                    let into = format!("{}/", dest_abs.trim_end_matches('/'));
                    let options = CopyOptions {
                        ignore: None,
                        excludes: &[],
                        parents: false,
                    };
                    let extracted =
                        context::plan_copy(&extract_dir, &[".".to_string()], &into, "/", &options)
                            .map_err(|e| e.to_string())?;
                    add_items(&job, &extracted, true, &mut entries)?;
                }
                None => local_sources.push(source.clone()),
            }
        } else {
            local_sources.push(source.clone());
        }
    }
    if !local_sources.is_empty() {
        let planned = match job.planned.take() {
            // Planned from exactly these sources when the cache was keyed.
            Some(planned) if !job.is_add => planned,
            _ => plan(
                &job,
                &local_sources,
                &local_dest(job.dest, source_count),
                job.parents,
            )?,
        };
        add_items(&job, &planned.items, job.preserve_owner, &mut entries)?;
        fresh_dirs = planned.fresh_dirs;
    }
    for (name, content) in job.heredocs {
        let path = if dest_is_dir {
            rootfs::join_clean(&dest_abs, name)
        } else {
            dest_abs.clone()
        };
        let (uid, gid) = job.owner.unwrap_or((0, 0));
        let mode = job.chmod.map_or(0o644, |c| c.apply(0o644, false));
        let relative = path.trim_start_matches('/').to_string();
        let bytes = content.as_bytes().to_vec();
        entries.insert(
            relative.clone(),
            Entry {
                path: relative,
                kind: EntryKind::File {
                    size: bytes.len() as u64,
                    source: FileSource::Bytes(bytes),
                },
                mode,
                uid: uid.into(),
                gid: gid.into(),
                mtime: job.created_mtime,
                xattrs: Vec::new(),
            },
        );
    }
    add_missing_dirs(&job, &fresh_dirs, &mut entries);
    Ok((entries.into_values().collect(), scratch))
}

fn has_glob(source: &str) -> bool {
    source.contains(['*', '?', '['])
}

fn plan(
    job: &CopyJob<'_>,
    sources: &[String],
    dest: &str,
    parents: bool,
) -> Result<CopyPlan, String> {
    let options = CopyOptions {
        ignore: job.ignore,
        excludes: job.excludes,
        parents,
    };
    context::plan_copy_full(job.source_root, sources, dest, job.workdir, &options)
        .map_err(|e| e.to_string())
}

/// Turns planned items into entries: ownership, chmod, symlink targets, hard links, xattrs.
fn add_items(
    job: &CopyJob<'_>,
    items: &[CopyItem],
    preserve_owner: bool,
    entries: &mut BTreeMap<String, Entry>,
) -> Result<(), String> {
    let mut seen_inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for item in items {
        let relative = item.image_path.trim_start_matches('/').to_string();
        if relative.is_empty() {
            continue;
        }
        let meta = &item.metadata;
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&item.host_path)
                .map_err(|e| format!("cannot read link {}: {e}", item.host_path.display()))?;
            EntryKind::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else if file_type.is_file() {
            let key = (meta.dev(), meta.ino());
            match seen_inodes.get(&key) {
                Some(first) if preserve_owner && meta.nlink() > 1 => EntryKind::Hardlink {
                    target: first.clone(),
                },
                _ => {
                    seen_inodes.insert(key, relative.clone());
                    EntryKind::File {
                        source: FileSource::Path(item.host_path.clone()),
                        size: meta.len(),
                    }
                }
            }
        } else if file_type.is_fifo() {
            EntryKind::Fifo
        } else if file_type.is_char_device() || file_type.is_block_device() {
            let rdev = meta.rdev();
            let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            if file_type.is_char_device() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }
        } else {
            continue;
        };
        let is_dir = file_type.is_dir();
        let base_mode = meta.mode() & 0o7777;
        let mode = match job.chmod {
            Some(chmod) if !file_type.is_symlink() => chmod.apply(base_mode, is_dir),
            _ => base_mode,
        };
        let (uid, gid) = match (job.owner, preserve_owner) {
            (Some((uid, gid)), _) => (uid.into(), gid.into()),
            (None, true) => (meta.uid().into(), meta.gid().into()),
            (None, false) => (0, 0),
        };
        let xattrs = if preserve_owner {
            read_xattrs(&item.host_path)
        } else {
            Vec::new()
        };
        entries.insert(
            relative.clone(),
            Entry {
                path: relative,
                kind,
                mode,
                uid,
                gid,
                mtime: u64::try_from(meta.mtime()).unwrap_or(0),
                xattrs,
            },
        );
    }
    Ok(())
}

/// Extended attributes worth keeping on a copied file (security.capability and user.*).
fn read_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !(name == "security.capability" || name.starts_with("user.")) {
            continue;
        }
        let mut value = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut value) {
            value.truncate(n);
            out.push((name.to_string(), value));
        }
    }
    out
}

/// Adds directory entries for every parent of a new entry that the image does not have yet.
/// Adds a directory entry for every missing parent of an entry and for every directory-source
/// destination in `fresh_dirs` (so `COPY emptydir /d/` creates `/d`, as Docker does).
fn add_missing_dirs(
    job: &CopyJob<'_>,
    fresh_dirs: &[String],
    entries: &mut BTreeMap<String, Entry>,
) {
    let mut parents: BTreeSet<String> = fresh_dirs
        .iter()
        .map(|dir| dir.trim_matches('/').to_string())
        .filter(|dir| !dir.is_empty())
        .collect();
    let fresh: Vec<String> = parents.iter().cloned().collect();
    for path in entries.keys().chain(fresh.iter()) {
        let mut current = path.as_str();
        while let Some((parent, _)) = current.rsplit_once('/') {
            parents.insert(parent.to_string());
            current = parent;
        }
    }
    let (uid, gid) = job.owner.unwrap_or((0, 0));
    for parent in parents {
        if entries.contains_key(&parent) || rootfs::dir_exists_in_root(job.target_root, &parent) {
            continue;
        }
        entries.insert(
            parent.clone(),
            Entry {
                path: parent,
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: uid.into(),
                gid: gid.into(),
                mtime: job.created_mtime,
                xattrs: Vec::new(),
            },
        );
    }
}

/// Downloads an ADD URL into the scratch dir (streamed, checksum verified) and returns its entry.
fn download(
    job: &CopyJob<'_>,
    url: &str,
    dest_abs: &str,
    dest_is_dir: bool,
    scratch: &Path,
) -> Result<Entry, String> {
    let expected = job
        .checksum
        .map(|c| Digest::parse(c).map_err(|e| format!("invalid --checksum: {e}")))
        .transpose()?;
    let algorithm = expected
        .as_ref()
        .map_or(crate::digest::Algorithm::Sha256, |d| d.algorithm());
    let Downloaded {
        path: file_path,
        digest,
        size,
        mtime,
    } = match job.downloads.get(url) {
        Some(done) if done.digest.algorithm() == algorithm => done.clone(),
        _ => {
            let runtime = job
                .runtime
                .ok_or_else(|| "internal error: no async runtime for ADD URL".to_string())?;
            prefetch(runtime, url, scratch, algorithm)?
        }
    };
    if let Some(expected) = &expected
        && *expected != digest
    {
        return Err(format!(
            "checksum mismatch for {url}: expected {expected}, got {digest}"
        ));
    }
    let name = url_file_name(url);
    let path = if dest_is_dir {
        rootfs::join_clean(dest_abs, &name)
    } else {
        dest_abs.to_string()
    };
    let (uid, gid) = job.owner.unwrap_or((0, 0));
    let relative = path.trim_start_matches('/').to_string();
    Ok(Entry {
        path: relative,
        kind: EntryKind::File {
            source: FileSource::Path(file_path),
            size,
        },
        mode: job.chmod.map_or(0o600, |c| c.apply(0o600, false)),
        uid: uid.into(),
        gid: gid.into(),
        mtime: mtime.unwrap_or(job.created_mtime),
        xattrs: Vec::new(),
    })
}

/// The file name Docker gives a downloaded URL: the last path segment.
fn url_file_name(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = without_query
        .split_once("://")
        .map_or(without_query, |(_, r)| r);
    match after_scheme.split_once('/') {
        Some((_, path)) => path
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or("__unnamed__")
            .to_string(),
        None => "__unnamed__".to_string(),
    }
}

/// Streams `url` into `path` while hashing; returns (digest, size, Last-Modified seconds).
async fn fetch_url(
    url: &str,
    path: &PathBuf,
    algorithm: Option<crate::digest::Algorithm>,
) -> Result<(Digest, u64, Option<u64>), String> {
    use futures::StreamExt;
    let response = reqwest::get(url)
        .await
        .map_err(|e| format!("cannot download {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("cannot download {url}: HTTP {}", response.status()));
    }
    let mtime = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_to_secs);
    let mut file = std::fs::File::create(path).map_err(|e| format!("cannot save {url}: {e}"))?;
    let mut hasher = Hasher::new(algorithm.unwrap_or(crate::digest::Algorithm::Sha256));
    let mut size = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("cannot download {url}: {e}"))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk)
            .map_err(|e| format!("cannot save {url}: {e}"))?;
    }
    Ok((hasher.finish(), size, mtime))
}

fn httpdate_to_secs(text: &str) -> Option<u64> {
    httpdate::parse_http_date(text)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_file_names_follow_docker() {
        assert_eq!(
            url_file_name("http://127.0.0.1:8000/dir/file.txt"),
            "file.txt"
        );
        assert_eq!(
            url_file_name("http://127.0.0.1:8000/dir/file.txt?x=1"),
            "file.txt"
        );
        assert_eq!(url_file_name("http://127.0.0.1:8000/"), "__unnamed__");
        assert_eq!(url_file_name("http://127.0.0.1:8000"), "__unnamed__");
    }
}
