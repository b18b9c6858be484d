//! The build speed features end to end through the CLI: `pull` unpacking the base for builds,
//! `--compression gzip|zstd[:LEVEL]|uncompressed` (media types, layers that real tools decode,
//! images Docker loads and runs), and gzip output that does not depend on the core count.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn inspect(root: &Path, image: &str) -> Value {
    serde_json::from_str(&ok(imgbuild(root, &["inspect", image]))).expect("inspect JSON")
}

/// The blob file of the last layer of `image`, and its media type.
fn last_layer(root: &Path, image: &str) -> (PathBuf, String) {
    let info = inspect(root, image);
    let layers = info["Manifest"]["layers"].as_array().expect("layers");
    let last = layers.last().expect("a layer");
    let digest = last["digest"].as_str().expect("digest");
    let blob = root
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    (blob, last["mediaType"].as_str().expect("mediaType").into())
}

/// Deterministic pseudo-random bytes (xorshift): incompressible, so gzip stores them.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A context whose COPY layer has a 3 MiB random file and some text, on the busybox base.
fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    let text = "static int f(int x) { return x + 1; }\n".repeat(20_000);
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                &format!("FROM {}\nCOPY data/ /data/\n", base_image()),
            ),
            ("data/source.c", &text),
        ],
    );
    std::fs::write(ctx.join("data/random.bin"), noise(3 << 20)).unwrap();
    ctx
}

fn sha256_of_file(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Saves `image` as a docker archive, loads it into Docker, and returns what sha256sum prints
/// for `/data/random.bin` inside a container of it.
fn sha256_in_docker(root: &Path, dir: &Path, image: &str) -> String {
    let archive = dir.join(format!("{}.tar", image.replace([':', '/'], "-")));
    ok(imgbuild(
        root,
        &["save", image, "-o", archive.to_str().unwrap()],
    ));
    let loaded = docker_load(&archive);
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &loaded,
        "sha256sum",
        "/data/random.bin",
    ]);
    docker(&["rmi", "-f", &loaded]);
    out.split_whitespace()
        .next()
        .expect("sha256sum")
        .to_string()
}

#[test]
fn pull_unpacks_the_base_for_builds_unless_told_not_to() {
    let dir = temp_dir();
    let snapshot_count = |root: &Path| {
        std::fs::read_dir(root.join("snapshots/sha256"))
            .map(|dirs| dirs.count())
            .unwrap_or(0)
    };
    let unpacked = dir.path().join("unpacked");
    ok(imgbuild(&unpacked, &["pull", "-q", &base_image()]));
    let layers = inspect(&unpacked, &base_image())["Manifest"]["layers"]
        .as_array()
        .expect("layers")
        .len();
    assert_eq!(snapshot_count(&unpacked), layers, "one snapshot per layer");

    let blobs_only = dir.path().join("blobs-only");
    ok(imgbuild(
        &blobs_only,
        &["pull", "-q", "--no-unpack", &base_image()],
    ));
    assert_eq!(snapshot_count(&blobs_only), 0);

    // A build on the unpacked base uses those snapshots (and still works).
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            &format!("FROM {}\nRUN echo ran > /ran\n", base_image()),
        )],
    );
    ok(imgbuild(
        &unpacked,
        &[
            "build",
            "-q",
            "--network",
            "none",
            "-t",
            "ran:1",
            ctx.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        snapshot_count(&unpacked),
        layers + 1,
        "only the RUN layer is new"
    );
}

#[test]
fn gzip_layers_with_stored_chunks_pass_gzip_t_and_run_in_docker() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = context(dir.path());
    let tag = unique_name("speed-gzip");
    ok(imgbuild(
        &root,
        &["build", "-q", "-t", &tag, ctx.to_str().unwrap()],
    ));
    let (blob, media_type) = last_layer(&root, &tag);
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    run("gzip", &["-t", blob.to_str().unwrap()]);
    // The random file is stored, not deflated: the layer is not much smaller than it.
    let size = std::fs::metadata(&blob).unwrap().len();
    assert!(size > 3 << 20, "layer of {size} bytes");
    assert_eq!(
        sha256_in_docker(&root, dir.path(), &tag),
        sha256_of_file(&ctx.join("data/random.bin"))
    );
}

#[test]
fn zstd_and_uncompressed_layers_have_their_media_types_and_decode() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = context(dir.path());
    let expected = sha256_of_file(&ctx.join("data/random.bin"));

    let zstd_tag = unique_name("speed-zstd");
    ok(imgbuild(
        &root,
        &[
            "build",
            "-q",
            "--compression",
            "zstd:5",
            "-t",
            &zstd_tag,
            ctx.to_str().unwrap(),
        ],
    ));
    let (blob, media_type) = last_layer(&root, &zstd_tag);
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    run("zstd", &["-q", "-t", blob.to_str().unwrap()]);
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -tvf -", blob.display()))
        .output()
        .expect("zstd | tar");
    let listing = ok(listing);
    assert!(listing.contains("data/random.bin"), "{listing}");
    // The image config names the uncompressed tar, as for gzip.
    let info = inspect(&root, &zstd_tag);
    let diff_ids = info["Config"]["rootfs"]["diff_ids"].as_array().unwrap();
    let decompressed = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | sha256sum", blob.display()))
        .output()
        .expect("zstd | sha256sum");
    let decompressed = ok(decompressed);
    assert_eq!(
        diff_ids.last().unwrap().as_str().unwrap(),
        format!("sha256:{}", decompressed.split_whitespace().next().unwrap())
    );

    let plain_tag = unique_name("speed-plain");
    ok(imgbuild(
        &root,
        &[
            "build",
            "-q",
            "--compression",
            "uncompressed",
            "-t",
            &plain_tag,
            ctx.to_str().unwrap(),
        ],
    ));
    let (blob, media_type) = last_layer(&root, &plain_tag);
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar");
    let listing = run("tar", &["-tf", blob.to_str().unwrap()]);
    assert!(listing.contains("data/random.bin"), "{listing}");
    // Docker loads and runs an image with uncompressed layers.
    assert_eq!(sha256_in_docker(&root, dir.path(), &plain_tag), expected);

    // gzip levels: the same tar (diff_id), compressed faster or harder.
    let mut gzipped = Vec::new();
    for level in ["1", "9"] {
        let tag = unique_name(&format!("speed-gzip{level}"));
        ok(imgbuild(
            &root,
            &[
                "build",
                "-q",
                "--compression",
                &format!("gzip:{level}"),
                "-t",
                &tag,
                ctx.to_str().unwrap(),
            ],
        ));
        let (blob, media_type) = last_layer(&root, &tag);
        assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
        let info = inspect(&root, &tag);
        let diff_id = info["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .and_then(|ids| ids.last())
            .and_then(|id| id.as_str())
            .expect("a diff_id")
            .to_string();
        gzipped.push((std::fs::metadata(&blob).unwrap().len(), diff_id));
    }
    assert_eq!(
        gzipped[0].1, gzipped[1].1,
        "both levels compress the same tar"
    );
    assert!(
        gzipped[0].0 > gzipped[1].0,
        "gzip:9 must be smaller than gzip:1: {gzipped:?}"
    );

    for bad_value in ["brotli", "gzip:12", "gzip:fast"] {
        let bad = fails(imgbuild(
            &root,
            &["build", "--compression", bad_value, ctx.to_str().unwrap()],
        ));
        assert!(bad.contains("--compression"), "{bad_value}: {bad}");
    }
}

#[test]
fn gzip_output_is_the_same_on_one_core_as_on_all() {
    let dir = temp_dir();
    let ctx = context(dir.path());
    let build_digest = |root: &Path, pin_to_one_core: bool| {
        let mut command = if pin_to_one_core {
            let mut taskset = Command::new("taskset");
            taskset
                .args(["-c", "0"])
                .arg(env!("CARGO_BIN_EXE_imgbuild"));
            taskset
        } else {
            Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        };
        command
            .arg("--root")
            .arg(root)
            .args(["build", "-q", ctx.to_str().unwrap()])
            .env("SOURCE_DATE_EPOCH", "1700000000");
        ok(command.output().expect("run imgbuild"))
            .trim()
            .to_string()
    };
    let all_cores = build_digest(&dir.path().join("all"), false);
    let one_core = build_digest(&dir.path().join("one"), true);
    assert!(all_cores.starts_with("sha256:"), "{all_cores}");
    assert_eq!(one_core, all_cores);
}
