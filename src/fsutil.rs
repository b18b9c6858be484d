//! Atomic file replacement: write to a temp file on the same file system, fsync it, rename it
//! over the target, fsync the directory. Readers see the old file or the new one, never a
//! partial write; a failed write leaves the target untouched and removes the temp file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically (temp file in the same directory). `mode` sets the
/// permission bits (e.g. `0o600` for credentials); `None` keeps the temp file's 0600.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    if let Some(mode) = mode {
        file.set_mode(mode)?;
    }
    file.write_all(bytes)?;
    file.commit()
}

/// A file being written that appears at its target path only on [`commit`](Self::commit);
/// dropped without committing, it vanishes. Writes go straight to the file: wrap it in a
/// `BufWriter` for many small writes.
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl AtomicFile {
    /// Starts replacing `target`, with the temp file in the target's directory.
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        AtomicFile::create_in(parent_dir(target), target)
    }

    /// Starts replacing `target`, with the temp file in `temp_dir`, which must be on the same
    /// file system as the target (for example a directory swept of stale temp files).
    pub fn create_in(temp_dir: &Path, target: &Path) -> io::Result<AtomicFile> {
        let temp = tempfile::Builder::new()
            .prefix(".tmp-write-")
            .tempfile_in(temp_dir)?;
        Ok(AtomicFile {
            temp,
            target: target.to_path_buf(),
        })
    }

    /// Sets the permission bits the target will have.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        self.temp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// The path this file will have once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the content durable and puts it at the target path: fsync, rename, fsync the
    /// target's directory.
    pub fn commit(self) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp.persist(&self.target).map_err(|e| e.error)?;
        File::open(parent_dir(&self.target))?.sync_all()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_file_atomic_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, b"old").unwrap();
        write_file_atomic(&path, b"new", Some(0o640)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            names_in(dir.path()),
            vec!["config.json"],
            "no temp file left"
        );
    }

    #[test]
    fn an_uncommitted_file_leaves_the_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.tar");
        std::fs::write(&path, b"old").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"partial").unwrap();
        assert_eq!(file.target(), path);
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names_in(dir.path()), vec!["archive.tar"]);
    }

    #[test]
    fn create_in_uses_the_given_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let path = dir.path().join("index.json");
        let mut file = AtomicFile::create_in(&tmp, &path).unwrap();
        file.write_all(b"{}").unwrap();
        assert_eq!(names_in(&tmp).len(), 1, "the temp file is in tmp/");
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert!(names_in(&tmp).is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("f");
        assert!(write_file_atomic(&path, b"x", None).is_err());
    }
}
