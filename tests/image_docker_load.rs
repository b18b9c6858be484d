//! Real-client checks of image export: an image built with the store/layer/image APIs is
//! `docker load`ed into the real engine and run, and its OCI archive is read by skopeo.
//! Needs the Docker engine and skopeo that `scripts/test` sets up.

use std::path::Path;
use std::process::Command;

use imgbuild::image::{
    ContainerConfig, Descriptor, History, ImageConfig, RootFs, host_architecture, rfc3339,
    write_docker_archive, write_image, write_oci_archive,
};
use imgbuild::layer::{Compression, Entry, EntryKind, FileSource, LayerOptions, write_layer};
use imgbuild::store::Store;

fn require_tool(tool: &str, args: &[&str]) {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool} {}` failed: this test needs the real {tool}; run it via scripts/test",
        args.join(" ")
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        xattrs: Vec::new(),
    }
}

/// One layer with /bin/busybox (copied from the host's static busybox) and a /bin/sh link.
fn busybox_image(store: &Store, compression: Compression) -> Descriptor {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: run this test via scripts/test"
    );
    let size = std::fs::metadata(busybox).unwrap().len();
    let entries = vec![
        entry("bin", EntryKind::Dir, 0o755),
        entry(
            "bin/busybox",
            EntryKind::File {
                source: FileSource::Path(busybox.to_path_buf()),
                size,
            },
            0o755,
        ),
        entry(
            "bin/sh",
            EntryKind::Symlink {
                target: "busybox".into(),
            },
            0o777,
        ),
    ];
    let opts = LayerOptions {
        compression,
        source_date_epoch: Some(1_700_000_000),
    };
    let layer = write_layer(store, entries, &opts).unwrap();
    let config = ImageConfig {
        architecture: host_architecture().to_string(),
        os: "linux".to_string(),
        created: Some(rfc3339(1_700_000_000)),
        config: ContainerConfig {
            env: vec!["PATH=/bin".to_string()],
            cmd: vec!["/bin/sh".to_string()],
            ..ContainerConfig::default()
        },
        rootfs: RootFs {
            diff_ids: vec![layer.diff_id.clone()],
            ..RootFs::default()
        },
        history: vec![History {
            created: Some(rfc3339(1_700_000_000)),
            created_by: Some("COPY /bin/busybox /bin/busybox".to_string()),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    write_image(store, &config, &[Descriptor::from(&layer)]).unwrap()
}

#[test]
fn docker_loads_and_runs_an_exported_image() {
    require_tool("docker", &["info"]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let manifest = busybox_image(&store, Compression::DEFAULT_GZIP);
    let tag = format!("imgbuild-test/storage-load:{}", std::process::id());
    let archive_path = dir.path().join("image.tar");
    let file = std::fs::File::create(&archive_path).unwrap();
    write_docker_archive(
        &store,
        &[(manifest.digest.clone(), vec![tag.clone()])],
        file,
    )
    .unwrap();

    let loaded = run(Command::new("docker")
        .arg("load")
        .arg("-i")
        .arg(&archive_path));
    assert!(loaded.contains(&tag), "docker load output: {loaded}");
    let output = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "/bin/busybox",
        "echo",
        "hi",
    ]));
    let config =
        run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &tag]));
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert_eq!(output, "hi\n");
    let image = imgbuild::image::load_image(&store, &manifest.digest).unwrap();
    assert_eq!(
        config.trim(),
        image.config_digest.to_string(),
        "docker's image id is our config digest"
    );
}

#[test]
fn skopeo_reads_the_oci_archive() {
    require_tool("skopeo", &["--version"]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let manifest = busybox_image(&store, Compression::Zstd { level: 3 });
    let archive_path = dir.path().join("image-oci.tar");
    let file = std::fs::File::create(&archive_path).unwrap();
    write_oci_archive(&store, &manifest.digest, "latest", file).unwrap();

    let location = format!("oci-archive:{}", archive_path.display());
    let inspected = run(Command::new("skopeo").args(["inspect", &location]));
    let json: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(json["Digest"], manifest.digest.to_string());
    assert_eq!(json["Architecture"], host_architecture());
    assert_eq!(json["Os"], "linux");
    let image = imgbuild::image::load_image(&store, &manifest.digest).unwrap();
    assert_eq!(
        json["Layers"][0],
        image.manifest.layers[0].digest.to_string()
    );
    assert_eq!(json["Env"][0], "PATH=/bin");

    // The layer decodes back (skopeo copies it out of the archive into a directory).
    let out_dir = dir.path().join("copied");
    run(Command::new("skopeo").args(["copy", &location, &format!("dir:{}", out_dir.display())]));
    let layer_copy = out_dir.join(image.manifest.layers[0].digest.hex());
    let dest = dir.path().join("rootfs");
    imgbuild::layer::unpack(
        std::fs::File::open(layer_copy).unwrap(),
        &dest,
        imgbuild::layer::UnpackMode::Flatten,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(dest.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
}
