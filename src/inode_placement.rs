//! Where the file system puts the inodes of the trees imgbuild writes (snapshots, RUN upper
//! dirs): the directories those trees are made in are marked as top directories.
//!
//! ext4 places a new subdirectory near its parent, and a new file in its directory's block
//! group. Without a journal, ext4 also avoids reusing an inode freed in the last minutes: for
//! each allocation it scans the group's free inodes from the start, with a buffer lookup for
//! every recently freed one it skips. Near a tree that was just deleted (by a prune, or by
//! another tool storing next to us), every file an unpack creates pays for all of those
//! inodes; `perf` showed a 5,000-file COPY spending seconds in ext4's `recently_deleted`.
//! Under a top directory (`FS_TOPDIR_FL`), ext4 puts each new subdirectory in the group with
//! the fewest directories among those with above-average free space, and the tree below it
//! follows, so each unpack fills a lightly used group instead.

use std::path::Path;

use rustix::fs::{IFlags, Mode, OFlags};

/// Sets the top-directory flag on `dir` where the file system supports it (ext4); elsewhere,
/// or when it cannot be set, leaves `dir` as it is, since placement is only a hint.
pub fn mark_top_directory(dir: &Path) {
    let open_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let result = rustix::fs::open(dir, open_flags, Mode::empty()).and_then(|fd| {
        let flags = rustix::fs::ioctl_getflags(&fd)?;
        if flags.contains(IFlags::TOPDIR) {
            return Ok(());
        }
        rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR)
    });
    if let Err(e) = result {
        tracing::debug!("{} keeps default inode placement: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ext4's superblock magic, as `statfs` reports it.
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;

    #[test]
    fn a_store_marks_its_temp_dir_as_a_top_directory_on_ext4() {
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(root.path()).unwrap();
        let tmp = store.tmp_dir();
        let fd = rustix::fs::open(&tmp, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let on_ext4 = rustix::fs::fstatfs(&fd).unwrap().f_type as i64 == EXT4_SUPER_MAGIC;
        if on_ext4 {
            assert!(
                rustix::fs::ioctl_getflags(&fd)
                    .unwrap()
                    .contains(IFlags::TOPDIR)
            );
        }
        // Marking twice is harmless, and the directory stays usable either way.
        mark_top_directory(&tmp);
        std::fs::write(tmp.join("file"), b"x").unwrap();
        std::fs::create_dir(tmp.join("sub")).unwrap();
    }
}
