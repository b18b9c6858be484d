//! Unpacks layers that real Docker/BuildKit produced (a hard link, a symlink, a whiteout and an
//! opaque directory), both flattened and in overlay form, and mounts the overlay form with the
//! kernel's overlayfs to check the whiteouts mean what Docker meant.
//! Needs the Docker engine, BuildKit (/usr/bin/docker) and the base image from `scripts/test`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::layer::{UnpackMode, open_archive, unpack};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}; run via scripts/test"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (run via scripts/test): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Builds the test image with BuildKit, `docker save`s it, and returns its layer tars in order.
fn docker_built_layers(work: &Path) -> Vec<PathBuf> {
    let base = std::env::var("IMGBUILD_TEST_BASE_IMAGE")
        .expect("IMGBUILD_TEST_BASE_IMAGE is not set: run this test via scripts/test");
    let context = work.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN mkdir -p /data/sub && echo old > /data/old && echo x > /data/sub/x \
                 && ln /data/old /data/hard && ln -s /data/old /data/sym\n\
             RUN rm /bin/ls && rm -rf /data && mkdir /data && echo new > /data/new\n"
        ),
    )
    .unwrap();
    let tag = format!("imgbuild-test/storage-compat:{}", std::process::id());
    run(Command::new("/usr/bin/docker")
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--network", "host", "-q", "-t", &tag])
        .arg(&context));
    let saved = work.join("saved.tar");
    run(Command::new("docker")
        .args(["save", "-o"])
        .arg(&saved)
        .arg(&tag));
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();

    let extracted = work.join("saved");
    std::fs::create_dir_all(&extracted).unwrap();
    // The saved archive is itself a plain tar: open_archive must recognize it.
    let stream = open_archive(&saved)
        .unwrap()
        .expect("docker save output is a tar");
    tar::Archive::new(stream).unpack(&extracted).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(extracted.join("manifest.json")).unwrap()).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| extracted.join(l.as_str().unwrap()))
        .collect()
}

#[test]
fn docker_layers_unpack_flattened_and_as_overlay_lowers() {
    let work = tempfile::tempdir().unwrap();
    let layers = docker_built_layers(work.path());
    assert_eq!(layers.len(), 3);

    // Flatten: one merged root file system.
    let rootfs = work.path().join("rootfs");
    for layer in &layers {
        unpack(
            std::fs::File::open(layer).unwrap(),
            &rootfs,
            UnpackMode::Flatten,
        )
        .unwrap();
    }
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(rootfs.join("bin/cat").symlink_metadata().is_ok());
    assert!(
        rootfs.join("bin/ls").symlink_metadata().is_err(),
        "whiteout applied"
    );
    assert_eq!(std::fs::read(rootfs.join("data/new")).unwrap(), b"new\n");
    assert!(
        !rootfs.join("data/old").exists(),
        "opaque dir hid the lower content"
    );
    assert!(!rootfs.join("data/sub").exists());

    // Layer 2 alone (flattened into a fresh dir) keeps its hard link and symlink.
    let second = work.path().join("second");
    unpack(
        std::fs::File::open(&layers[1]).unwrap(),
        &second,
        UnpackMode::Flatten,
    )
    .unwrap();
    let old = std::fs::metadata(second.join("data/old")).unwrap();
    let hard = std::fs::metadata(second.join("data/hard")).unwrap();
    assert_eq!(old.ino(), hard.ino());
    assert_eq!(
        std::fs::read_link(second.join("data/sym")).unwrap(),
        Path::new("/data/old")
    );

    // Overlay: one lowerdir per layer; whiteouts in overlayfs form.
    let lowers: Vec<PathBuf> = (0..layers.len())
        .map(|i| work.path().join(format!("lower{i}")))
        .collect();
    for (layer, lower) in layers.iter().zip(&lowers) {
        unpack(
            std::fs::File::open(layer).unwrap(),
            lower,
            UnpackMode::Overlay,
        )
        .unwrap();
    }
    let ls = std::fs::symlink_metadata(lowers[2].join("bin/ls")).unwrap();
    assert!(ls.file_type().is_char_device() && ls.rdev() == 0);

    let merged = work.path().join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lowerdir.join(":")))
        .arg(&merged));
    let seen = (
        merged.join("bin/busybox").is_file(),
        merged.join("bin/ls").symlink_metadata().is_ok(),
        std::fs::read(merged.join("data/new")).ok(),
        merged.join("data/old").exists(),
    );
    run(Command::new("umount").arg(&merged));
    assert_eq!(seen, (true, false, Some(b"new\n".to_vec()), false));
}
