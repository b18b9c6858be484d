//! `imgbuild push` and `pull` move only what is missing: after a one-layer change, the bytes
//! the registry receives (its /metrics) are about the changed layer plus config and manifest.
//! The pushed image then pulls and runs in Docker and inspects with skopeo.

mod common;

use common::serve::{Registry, incompressible};
use common::*;
use std::path::Path;
use std::process::Command;

/// The compressed size of layer `index` of `image` in the store at `root`.
fn layer_size(root: &Path, image: &str, index: usize) -> u64 {
    let info: serde_json::Value =
        serde_json::from_str(&ok(imgbuild(root, &["inspect", image]))).unwrap();
    info["Manifest"]["layers"][index]["size"].as_u64().unwrap()
}

#[test]
fn second_push_and_pull_move_only_the_changed_layer() {
    let registry = Registry::start();
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("big.bin"), incompressible(3 << 20, 7)).unwrap();
    std::fs::write(ctx.join("app.bin"), incompressible(200 << 10, 1)).unwrap();
    let dockerfile = "ARG BASE\nFROM ${BASE}\nCOPY big.bin /data/big.bin\nCOPY app.bin /app/app.bin\nCMD [\"sh\", \"-c\", \"wc -c < /app/app.bin\"]\n";
    write_files(&ctx, &[("Dockerfile", dockerfile)]);
    let base_arg = format!("BASE={}", base_image());
    let image_a = format!("{}/team/app:a", registry.address);
    let image_b = format!("{}/team/app:b", registry.address);

    let build = |tag: &str| {
        ok(imgbuild(
            &root,
            &[
                "build",
                "-q",
                "-t",
                tag,
                "--build-arg",
                &base_arg,
                ctx.to_str().unwrap(),
            ],
        ))
    };
    build(&image_a);
    let before_first = registry.received();
    ok(imgbuild(&root, &["push", "-q", &image_a]));
    let first_push = registry.received() - before_first;
    let big = layer_size(&root, &image_a, 1);
    assert!(
        first_push > big,
        "first push sent {first_push} bytes, less than the big layer {big}"
    );

    std::fs::write(ctx.join("app.bin"), incompressible(300 << 10, 2)).unwrap();
    build(&image_b);
    let changed = layer_size(&root, &image_b, 2);
    let before_second = registry.received();
    let pushed = ok(imgbuild(&root, &["push", &image_b]));
    let second_push = registry.received() - before_second;
    // The changed layer, plus config and manifest (a few kB) and nothing else.
    assert!(
        second_push >= changed && second_push <= changed + 16 * 1024,
        "second push sent {second_push} bytes for a {changed}-byte changed layer: {pushed}"
    );

    // Pull: a store holding image A fetches only B's new layer, config and manifest.
    let other = dir.path().join("other");
    ok(imgbuild(&other, &["pull", "-q", &image_a]));
    let before_pull = registry.sent();
    ok(imgbuild(&other, &["pull", "-q", &image_b]));
    let pulled = registry.sent() - before_pull;
    assert!(
        pulled >= changed && pulled <= changed + 16 * 1024,
        "second pull fetched {pulled} bytes for a {changed}-byte changed layer"
    );

    eprintln!(
        "first push {first_push} B; changed layer {changed} B; second push {second_push} B; second pull {pulled} B"
    );

    // Real clients see the pushed image.
    let skopeo = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image_b}"),
        ],
    );
    let skopeo: serde_json::Value = serde_json::from_str(&skopeo).unwrap();
    assert_eq!(skopeo["Layers"].as_array().unwrap().len(), 3);
    docker(&["pull", "-q", &image_b]);
    let out = docker(&["run", "--rm", "--network", "none", &image_b]);
    assert_eq!(out.trim(), (300 << 10).to_string());
    let _ = Command::new("docker")
        .args(["rmi", "-f", &image_b])
        .output();
}
