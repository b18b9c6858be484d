//! `imgbuild push` when the registry goes away mid-push: a clear one-line error, a non-zero
//! exit, and no manifest on the registry (the manifest goes last, after every blob), so a
//! half-pushed image is never visible. A later push of the same image completes.
//!
//! The registry "goes down" through a TCP proxy on loopback that forwards to a real
//! `imgbuild serve` and, after a set number of request bytes, cuts every connection and stops
//! listening.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::serve::{Registry, incompressible};
use common::*;

/// Forwards 127.0.0.1:<port> to `upstream` until `cut_after` bytes went upstream, then closes
/// every connection and the listener.
struct CuttingProxy {
    address: String,
    down: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: &str, cut_after: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let upstream = upstream.to_string();
        let proxy_down = down.clone();
        std::thread::spawn(move || {
            while !proxy_down.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(&upstream).unwrap();
                live.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                // Client -> registry, counted; cuts everything once past the limit.
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (sent, live, down) = (sent.clone(), live.clone(), proxy_down.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > cut_after {
                            down.store(true, Ordering::SeqCst);
                            for stream in live.lock().unwrap().iter() {
                                let _ = stream.shutdown(Shutdown::Both);
                            }
                            break;
                        }
                    }
                });
                // Registry -> client.
                let (mut from, mut to) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
            // Dropping the listener: new connections are refused from here on.
        });
        CuttingProxy { address, down }
    }
}

/// The HTTP status of a GET on our registry.
fn http_status(url: &str) -> String {
    run(
        "curl",
        &["-s", "-o", "/dev/null", "-w", "%{http_code}", url],
    )
}

#[test]
fn registry_down_mid_push_fails_in_one_line_and_leaves_no_manifest() {
    let registry = Registry::start();
    let proxy = CuttingProxy::start(&registry.address, 2 << 20);
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("big.bin"), incompressible(12 << 20, 3)).unwrap();
    write_files(
        &ctx,
        &[("Dockerfile", "FROM scratch\nCOPY big.bin /big.bin\n")],
    );
    let through_proxy = format!("{}/team/app:1", proxy.address);
    ok(imgbuild(
        &root,
        &["build", "-q", "-t", &through_proxy, ctx.to_str().unwrap()],
    ));

    let stderr = fails(imgbuild(&root, &["push", "-q", &through_proxy]));
    assert!(proxy.down.load(Ordering::SeqCst), "the proxy cut the push");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!("error: push {through_proxy}: ")),
        "{stderr}"
    );
    assert!(
        lines[0].contains(&format!("registry {}", proxy.address)),
        "names the registry: {stderr}"
    );
    assert_eq!(
        http_status(&format!(
            "http://{}/v2/team/app/manifests/1",
            registry.address
        )),
        "404",
        "no manifest for a half-pushed image"
    );

    // The same image, pushed again straight to the registry, completes.
    let direct = format!("{}/team/app:1", registry.address);
    ok(imgbuild(&root, &["tag", &through_proxy, &direct]));
    let digest = ok(imgbuild(&root, &["push", "-q", &direct]));
    let inspected = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{direct}"),
        ],
    );
    assert_eq!(inspected.trim(), digest.trim());
}
