//! `imgbuild serve` over TLS, as a real process: a CA and server certificates made here, HTTP/2
//! negotiated by ALPN, `docker login` + `docker push` trusting the CA through
//! `/etc/docker/certs.d/HOST:PORT/ca.crt`, the certificate swapped on SIGHUP (a bad new file
//! keeps the old one), and a clear startup error naming a missing certificate file.
//!
//! Needs the parts `scripts/test` starts (Docker engine, peer registry, openssl, htpasswd);
//! without them these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests through scripts/test, which starts Docker and the peer registry")
    })
}

fn output(program: &str, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/test to install it): {e}"));
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn run(program: &str, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> String {
    let out = output(program, args, env, stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

fn sh(script: &str) -> String {
    run("sh", &["-c", script], &[], None)
}

/// A CA, and server certificates for 127.0.0.1 with serials 1001 and 1002.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make(dir: &Path) -> Certificates {
        let d = dir.display();
        sh(&format!(
            "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
             -keyout ca.key -out ca.crt -days 2 -subj /CN=imgbuild-test-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>&1 && \
             printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=serverAuth\\n' > ext.cnf"
        ));
        for serial in [1001, 1002] {
            sh(&format!(
                "cd {d} && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                 -keyout s{serial}.key -out s{serial}.csr -subj /CN=127.0.0.1 2>&1 && \
                 openssl x509 -req -in s{serial}.csr -CA ca.crt -CAkey ca.key -set_serial {serial} \
                 -days 2 -extfile ext.cnf -out s{serial}.crt 2>&1"
            ));
        }
        Certificates {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes `serial`'s certificate and key the ones the config names.
    fn install(&self, serial: u32) {
        std::fs::copy(
            self.path(&format!("s{serial}.crt")),
            self.path("server.crt"),
        )
        .unwrap();
        std::fs::copy(
            self.path(&format!("s{serial}.key")),
            self.path("server.key"),
        )
        .unwrap();
    }
}

/// The serial of the certificate the server at `port` presents, as openssl prints it.
fn served_serial(port: u16) -> String {
    sh(&format!(
        "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    ))
    .trim()
    .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process; killed (by its own pid) when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/etc/docker/certs.d/HOST:PORT`, removed when dropped.
struct DockerCertsDir(PathBuf);

impl Drop for DockerCertsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn https_client(ca: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_over_tls_http2_is_offered_and_sighup_swaps_the_certificate() {
    let base = required_env("IMGBUILD_TEST_BASE_IMAGE");
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::make(dir.path());
    certs.install(1001);
    let htpasswd = dir.path().join("htpasswd");
    run(
        "htpasswd",
        &[
            "-B",
            "-b",
            "-c",
            htpasswd.to_str().unwrap(),
            "alice",
            "alice-pw",
        ],
        &[],
        None,
    );
    sh(&format!(
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {}/token.key",
        dir.path().display()
    ));
    let port = free_port();
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:{port}\"\ndata = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\n\
             [auth.htpasswd]\npath = {:?}\n[auth.token]\nkey = {:?}\n",
            dir.path().join("data"),
            certs.path("server.crt"),
            certs.path("server.key"),
            htpasswd,
            dir.path().join("token.key"),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let server = ServerProcess(child);

    // Up, speaking TLS with our CA, HTTP/2 by ALPN.
    let client = https_client(&certs.path("ca.crt"));
    let url = format!("https://127.0.0.1:{port}/v2/");
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        match client.get(&url).send().await {
            Ok(response) => break response,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the TLS registry did not come up: {e:?}"),
        }
    };
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"https://127.0.0.1:{port}/token\"")),
        "{challenge}"
    );
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/v2/")).await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served"
    );
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        untrusting.get(&url).send().await.is_err(),
        "a client without the CA refuses the certificate"
    );
    assert_eq!(served_serial(port), "serial=03E9");

    // docker login + push over TLS, trusting the CA through certs.d.
    let host = format!("127.0.0.1:{port}");
    let certs_dir = DockerCertsDir(PathBuf::from("/etc/docker/certs.d").join(&host));
    std::fs::create_dir_all(&certs_dir.0).unwrap();
    std::fs::copy(certs.path("ca.crt"), certs_dir.0.join("ca.crt")).unwrap();
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = [("DOCKER_CONFIG", docker_config.as_path())];
    run("docker", &["pull", "-q", &base], &env, None);
    let login = run(
        "docker",
        &["login", &host, "-u", "alice", "--password-stdin"],
        &env,
        Some("alice-pw\n"),
    );
    assert!(login.contains("Login Succeeded"), "{login}");
    let image = format!("{host}/tls/busybox{}:v1", std::process::id());
    run("docker", &["tag", &base, &image], &env, None);
    let pushed = run("docker", &["push", &image], &env, None);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");

    // SIGHUP swaps in the new certificate; a broken one keeps the current.
    certs.install(1002);
    let pid = server.0.id().to_string();
    run("kill", &["-HUP", &pid], &[], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(port) != "serial=03EA" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not swap the certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(certs.path("server.crt"), "not a certificate\n").unwrap();
    run("kill", &["-HUP", &pid], &[], None);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served_serial(port), "serial=03EA");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);

    run("docker", &["logout", &host], &env, None);
    let _ = output("docker", &["rmi", &image], &[], None);
    drop(certs_dir);
    drop(server);
}

#[test]
fn a_missing_certificate_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    let missing = dir.path().join("nope.crt");
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:0\"\ndata = {:?}\n[tls]\ncert = {missing:?}\nkey = {:?}\n",
            dir.path().join("data"),
            dir.path().join("nope.key"),
        ),
    )
    .unwrap();
    let out = output(
        env!("CARGO_BIN_EXE_imgbuild"),
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS certificate file") && stderr.contains(missing.to_str().unwrap()),
        "{stderr}"
    );
}
