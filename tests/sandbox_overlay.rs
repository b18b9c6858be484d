//! Overlay mounts, upper-dir diffs and snapshot dirs, without a container runtime.
//! Needs root (mounts, device nodes, trusted xattrs): run through `scripts/test`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgbuild::digest::Digest;
use imgbuild::layer::{Entry, EntryKind, FileSource};
use imgbuild::snapshot::{
    Durability, MountKind, OverlayMount, Snapshots, chain_id, diff_upper, diff_upper_ignoring,
};

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests mount overlays and need root: run them through scripts/test as root"
    );
}

/// upper, work and merged dirs of one overlay, in a temp dir.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for name in ["upper", "work", "merged"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        Scratch { dir }
    }
    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

fn is_mounted(target: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target))
}

fn find<'a>(entries: &'a [Entry], path: &str) -> Vec<&'a Entry> {
    entries.iter().filter(|e| e.path == path).collect()
}

/// A lower with files, a dir to delete and re-create, a dir to delete, and a hard link pair.
fn make_lower(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/ls"), b"ls").unwrap();
    fs::write(root.join("bin/cat"), b"cat").unwrap();
    fs::create_dir_all(root.join("data/sub")).unwrap();
    fs::write(root.join("data/old"), b"old").unwrap();
    fs::write(root.join("data/sub/deep"), b"deep").unwrap();
    fs::create_dir_all(root.join("gone/inner")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
}

/// The same changes a RUN step might make, applied through the merged view.
fn apply_changes(merged: &Path) {
    fs::write(merged.join("new"), b"x\n").unwrap();
    fs::hard_link(merged.join("new"), merged.join("newlink")).unwrap();
    fs::remove_file(merged.join("bin/ls")).unwrap();
    fs::remove_dir_all(merged.join("data")).unwrap();
    fs::create_dir(merged.join("data")).unwrap();
    fs::write(merged.join("data/z"), b"z").unwrap();
    fs::remove_dir_all(merged.join("gone")).unwrap();
    fs::create_dir(merged.join("d")).unwrap();
    std::os::unix::fs::symlink("../new", merged.join("d/link")).unwrap();
    fs::set_permissions(merged.join("bin/cat"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(merged.join("new"), Some(1000), Some(1001)).unwrap();
    rustix::fs::lsetxattr(
        merged.join("new"),
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // security.capability v2 for cap_net_bind_service (bit 10), permitted+effective.
    let mut capability = vec![0u8; 20];
    capability[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    capability[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    rustix::fs::lsetxattr(
        merged.join("bin/cat"),
        "security.capability",
        &capability,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        merged.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        merged.join("nulldev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
}

/// What both the overlay and the copy path must report for `apply_changes` over `make_lower`.
fn assert_expected_diff(entries: &[Entry], upper: &Path) {
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();

    let new = find(entries, "new");
    assert_eq!(new.len(), 1, "{paths:?}");
    match &new[0].kind {
        EntryKind::File {
            source: FileSource::Path(path),
            size,
        } => {
            assert_eq!(*size, 2);
            assert_eq!(fs::read(path).unwrap(), b"x\n");
            assert!(
                path.starts_with(upper),
                "{} not in the upper dir",
                path.display()
            );
        }
        other => panic!("new is {other:?}"),
    }
    assert_eq!((new[0].uid, new[0].gid), (1000, 1001));
    assert_eq!(
        new[0].xattrs,
        vec![("user.note".to_string(), b"hello".to_vec())]
    );
    assert_eq!(
        find(entries, "newlink")[0].kind,
        EntryKind::Hardlink {
            target: "new".to_string()
        }
    );

    assert_eq!(find(entries, "bin/ls")[0].kind, EntryKind::Whiteout);
    assert_eq!(find(entries, "gone")[0].kind, EntryKind::Whiteout);
    assert!(find(entries, "gone/inner").is_empty(), "{paths:?}");

    let data = find(entries, "data");
    let kinds: Vec<&EntryKind> = data.iter().map(|e| &e.kind).collect();
    assert_eq!(
        kinds,
        vec![&EntryKind::Dir, &EntryKind::OpaqueDir],
        "{paths:?}"
    );
    assert!(matches!(
        find(entries, "data/z")[0].kind,
        EntryKind::File { size: 1, .. }
    ));
    assert!(
        find(entries, "data/old").is_empty() && find(entries, "data/sub").is_empty(),
        "{paths:?}"
    );

    assert_eq!(find(entries, "d")[0].kind, EntryKind::Dir);
    assert_eq!(
        find(entries, "d/link")[0].kind,
        EntryKind::Symlink {
            target: "../new".to_string()
        }
    );

    let cat = find(entries, "bin/cat")[0];
    assert_eq!(cat.mode, 0o4755);
    assert!(
        cat.xattrs
            .iter()
            .any(|(name, _)| name == "security.capability"),
        "{:?}",
        cat.xattrs
    );
    assert!(
        cat.xattrs
            .iter()
            .all(|(name, _)| !name.starts_with("trusted.overlay."))
    );

    assert_eq!(find(entries, "fifo")[0].kind, EntryKind::Fifo);
    assert_eq!(find(entries, "fifo")[0].mode, 0o600);
    assert_eq!(
        find(entries, "nulldev")[0].kind,
        EntryKind::CharDevice { major: 1, minor: 3 }
    );

    assert!(
        find(entries, "etc").is_empty() && find(entries, "bin/cat").len() == 1,
        "{paths:?}"
    );
    // bin itself was copied up as the parent of the changes.
    assert_eq!(find(entries, "bin")[0].kind, EntryKind::Dir);
}

#[test]
fn overlay_diff_reports_files_whiteouts_opaque_dirs_links_and_metadata() {
    require_root();
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let scratch = Scratch::new();
    let lowers = vec![lower.path().to_path_buf()];
    let mount = OverlayMount::mount(
        &lowers,
        &scratch.upper(),
        &scratch.work(),
        &scratch.merged(),
    )
    .unwrap();
    assert_eq!(mount.kind(), MountKind::Overlay);
    assert!(is_mounted(&scratch.merged()));
    apply_changes(&scratch.merged());
    mount.unmount().unwrap();
    assert!(!is_mounted(&scratch.merged()));
    let entries = diff_upper(&scratch.upper(), &lowers).unwrap();
    assert_expected_diff(&entries, &scratch.upper());
    assert_eq!(
        fs::read(lower.path().join("bin/ls")).unwrap(),
        b"ls",
        "the lower was changed"
    );
}

#[test]
fn copy_fallback_gives_the_same_diff_as_overlay() {
    require_root();
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let scratch = Scratch::new();
    let lowers = vec![lower.path().to_path_buf()];
    let mount = OverlayMount::mount_copy(
        &lowers,
        &scratch.upper(),
        &scratch.work(),
        &scratch.merged(),
    )
    .unwrap();
    assert_eq!(mount.kind(), MountKind::Copy);
    assert_eq!(
        fs::read(scratch.merged().join("data/sub/deep")).unwrap(),
        b"deep"
    );
    apply_changes(&scratch.merged());
    mount.unmount().unwrap();
    let entries = diff_upper(&scratch.upper(), &lowers).unwrap();
    assert_expected_diff(&entries, &scratch.upper());
    assert_eq!(
        fs::read_dir(scratch.merged()).unwrap().count(),
        0,
        "the copy was not removed"
    );
}

#[test]
fn copy_fallback_applies_whiteouts_and_opaque_dirs_of_lowers() {
    require_root();
    let base = tempfile::tempdir().unwrap();
    make_lower(base.path());
    // A second layer in overlay form: deletes bin/ls, replaces data with an opaque dir.
    let top = tempfile::tempdir().unwrap();
    fs::create_dir(top.path().join("bin")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        top.path().join("bin/ls"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir(top.path().join("data")).unwrap();
    fs::write(top.path().join("data/only"), b"only").unwrap();
    rustix::fs::lsetxattr(
        top.path().join("data"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let lowers = vec![top.path().to_path_buf(), base.path().to_path_buf()];
    for copy in [false, true] {
        let scratch = Scratch::new();
        let mount = if copy {
            OverlayMount::mount_copy(
                &lowers,
                &scratch.upper(),
                &scratch.work(),
                &scratch.merged(),
            )
        } else {
            OverlayMount::mount(
                &lowers,
                &scratch.upper(),
                &scratch.work(),
                &scratch.merged(),
            )
        }
        .unwrap();
        let merged = scratch.merged();
        assert!(!merged.join("bin/ls").exists(), "copy={copy}");
        assert!(merged.join("bin/cat").exists(), "copy={copy}");
        let data: Vec<_> = fs::read_dir(merged.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(data, vec![std::ffi::OsString::from("only")], "copy={copy}");
        mount.unmount().unwrap();
        assert!(
            diff_upper(&scratch.upper(), &lowers).unwrap().is_empty(),
            "copy={copy}: no change, no diff"
        );
    }
}

#[test]
fn sixty_layer_overlay_mounts_with_long_paths() {
    require_root();
    let layers_root = tempfile::tempdir().unwrap();
    let mut lowers = Vec::new();
    // Long dir names: 64 lowers * ~100 bytes is far over the 4 KiB mount option page.
    for index in 0..64 {
        let lower = layers_root.path().join(format!(
            "layer-{index:03}-with-a-rather-long-directory-name-to-overflow-the-option-page"
        ));
        fs::create_dir_all(lower.join("files")).unwrap();
        fs::write(lower.join(format!("files/from-{index}")), index.to_string()).unwrap();
        fs::write(lower.join("files/shared"), index.to_string()).unwrap();
        lowers.push(lower);
    }
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(
        total > 4096,
        "the test must exceed the option page ({total} bytes)"
    );
    lowers.reverse(); // top-most first: layer 63 is on top
    let scratch = Scratch::new();
    let mount = OverlayMount::mount(
        &lowers,
        &scratch.upper(),
        &scratch.work(),
        &scratch.merged(),
    )
    .unwrap();
    assert_eq!(mount.kind(), MountKind::Overlay);
    let files = scratch.merged().join("files");
    for index in 0..64 {
        assert_eq!(
            fs::read_to_string(files.join(format!("from-{index}"))).unwrap(),
            index.to_string()
        );
    }
    assert_eq!(
        fs::read_to_string(files.join("shared")).unwrap(),
        "63",
        "the top-most lower must win"
    );
    drop(mount);
    assert!(!is_mounted(&scratch.merged()), "drop must unmount");
}

#[test]
fn overlay_with_no_lowers_starts_empty() {
    require_root();
    let scratch = Scratch::new();
    let mount =
        OverlayMount::mount(&[], &scratch.upper(), &scratch.work(), &scratch.merged()).unwrap();
    assert_eq!(fs::read_dir(scratch.merged()).unwrap().count(), 0);
    fs::write(scratch.merged().join("hello"), b"hi").unwrap();
    mount.unmount().unwrap();
    let entries = diff_upper(&scratch.upper(), &[]).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, "hello");
}

#[test]
fn mount_point_placeholders_are_skipped_only_when_empty_and_new() {
    require_root();
    let lower = tempfile::tempdir().unwrap();
    fs::create_dir(lower.path().join("etc")).unwrap();
    fs::write(lower.path().join("etc/resolv.conf"), b"").unwrap();
    let lowers = vec![lower.path().to_path_buf()];
    let upper = tempfile::tempdir().unwrap();
    let u = upper.path();
    // What a runtime leaves: empty mount points that no lower has.
    for dir in ["proc", "sys", "dev", "run/secrets"] {
        fs::create_dir_all(u.join(dir)).unwrap();
    }
    fs::create_dir(u.join("etc")).unwrap();
    fs::write(u.join("etc/hosts"), b"").unwrap();
    // A RUN that created /mnt/cache content under a bind mount point: kept.
    fs::create_dir_all(u.join("sys/kept")).unwrap();
    // A mount point that exists in the lower appears in the upper only through a real change.
    fs::write(u.join("etc/resolv.conf"), b"").unwrap();
    let entries = diff_upper_ignoring(u, &lowers, &["/run/secrets".to_string()]).unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["etc", "etc/resolv.conf", "sys", "sys/kept"]);

    // Without the extra mount point, run/secrets is an ordinary new dir.
    let entries = diff_upper(u, &lowers).unwrap();
    assert!(entries.iter().any(|e| e.path == "run/secrets"));
}

#[test]
fn chain_id_follows_the_oci_rule() {
    let first = Digest::sha256_of(b"layer one");
    let second = Digest::sha256_of(b"layer two");
    assert_eq!(chain_id(None, &first), first);
    let expected = Digest::sha256_of(format!("{first} {second}").as_bytes());
    assert_eq!(chain_id(Some(&first), &second), expected);
    assert_ne!(chain_id(Some(&second), &first), expected);
}

#[test]
fn snapshots_unpack_once_atomically_and_list_lowers() {
    let root = tempfile::tempdir().unwrap();
    let snapshots = Snapshots::open(root.path(), Durability::Synced).unwrap();
    let base = chain_id(None, &Digest::sha256_of(b"base"));
    let top = chain_id(Some(&base), &Digest::sha256_of(b"top"));

    // A failed unpack leaves nothing behind.
    let failed = snapshots.ensure(&base, None, |dir: &Path| {
        fs::write(dir.join("half"), b"half").unwrap();
        Err::<(), _>(std::io::Error::other("disk on fire"))
    });
    let message = failed.unwrap_err().to_string();
    assert!(
        message.contains("disk on fire") && message.contains(&base.to_string()),
        "{message}"
    );
    assert!(snapshots.get(&base).is_none());
    assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);

    // The top cannot be made before its parent.
    let missing = snapshots.ensure(&top, Some(&base), |_: &Path| Ok::<(), std::io::Error>(()));
    assert!(missing.unwrap_err().to_string().contains("parent"));

    let mut unpacks = 0;
    for _ in 0..2 {
        let dir = snapshots
            .ensure(&base, None, |dir: &Path| {
                unpacks += 1;
                fs::write(dir.join("file"), b"base")
            })
            .unwrap();
        assert_eq!(fs::read(dir.join("file")).unwrap(), b"base");
    }
    assert_eq!(unpacks, 1, "the second ensure must reuse the snapshot");
    let top_dir = snapshots
        .ensure(&top, Some(&base), |dir: &Path| {
            fs::write(dir.join("file"), b"top")
        })
        .unwrap();
    let lowers = snapshots.lowers(&top).unwrap();
    assert_eq!(lowers, vec![top_dir, snapshots.get(&base).unwrap()]);
    assert_eq!(
        fs::metadata(&lowers[0]).unwrap().mode() & 0o170000,
        0o040000
    );
}

#[test]
fn unsynced_snapshots_are_trusted_in_their_boot_only() {
    let root = tempfile::tempdir().unwrap();
    let snapshots = Snapshots::open(root.path(), Durability::ThisBoot).unwrap();
    let base = chain_id(None, &Digest::sha256_of(b"unsynced base"));
    let mut unpacks = 0;
    let mut ensure = |snapshots: &Snapshots| {
        snapshots
            .ensure(&base, None, |dir: &Path| {
                unpacks += 1;
                fs::write(dir.join("file"), format!("unpack {unpacks}"))
            })
            .unwrap()
    };
    let dir = ensure(&snapshots);
    let snapshot_dir = dir.parent().unwrap().to_path_buf();
    let this_boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(
        fs::read_to_string(snapshot_dir.join("boot")).unwrap(),
        this_boot.trim(),
        "an unsynced snapshot records its boot"
    );
    assert_eq!(ensure(&snapshots), dir, "reused within the same boot");

    // As after a reboot: the snapshot is not trusted, and is unpacked again.
    fs::write(snapshot_dir.join("boot"), "an-earlier-boot").unwrap();
    assert!(snapshots.get(&base).is_none());
    let again = ensure(&snapshots);
    assert_eq!(fs::read_to_string(again.join("file")).unwrap(), "unpack 2");
    assert_eq!(
        fs::read_to_string(snapshot_dir.join("boot")).unwrap(),
        this_boot.trim()
    );

    // A synced snapshot carries no boot and is trusted in any boot.
    let synced = Snapshots::open(root.path(), Durability::Synced).unwrap();
    let other = chain_id(None, &Digest::sha256_of(b"synced base"));
    let dir = synced
        .ensure(&other, None, |dir: &Path| fs::write(dir.join("file"), "x"))
        .unwrap();
    assert!(!dir.parent().unwrap().join("boot").exists());
    assert_eq!(synced.get(&other), Some(dir));
}

#[test]
fn scratch_dirs_hold_an_overlay_and_are_removed_on_drop() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let snapshots = Snapshots::open(root.path(), Durability::Synced).unwrap();
    let base = chain_id(None, &Digest::sha256_of(b"base"));
    let lower = snapshots
        .ensure(&base, None, |dir: &Path| {
            fs::write(dir.join("file"), b"base")
        })
        .unwrap();
    let scratch = snapshots.scratch().unwrap();
    let kept = scratch.path().to_path_buf();
    let mount = OverlayMount::mount(
        &snapshots.lowers(&base).unwrap(),
        &scratch.upper(),
        &scratch.work(),
        &scratch.merged(),
    )
    .unwrap();
    fs::write(scratch.merged().join("file"), b"changed").unwrap();
    mount.unmount().unwrap();
    assert_eq!(fs::read(scratch.upper().join("file")).unwrap(), b"changed");
    assert_eq!(fs::read(lower.join("file")).unwrap(), b"base");
    drop(scratch);
    assert!(!kept.exists());
}
