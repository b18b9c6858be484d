//! HTTPS to a registry with a private CA: a `docker-registry` with a certificate signed by a CA
//! made here (openssl) is refused without the CA, accepted with `certs.d/HOST:PORT/ca.crt`,
//! and accepted with `tls_verify: false`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgbuild::client::{ConnectionOptions, RegistryClient};

fn required_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is not installed: run the tests through scripts/test"
    );
}

/// Makes `ca.crt` and a `server.crt`/`server.key` for IP 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    required_tool("openssl");
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout ca.key -out ca.crt -subj "/CN=imgbuild test CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext.cnf -out server.crt 2>/dev/null
"#;
    let status = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "openssl failed to make test certificates");
}

struct TlsRegistry {
    child: Child,
    address: String,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_registry(dir: &Path) -> TlsRegistry {
    required_tool("docker-registry");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
         http:\n  addr: {address}\n  tls:\n    certificate: {cert}\n    key: {key}\n",
        root = dir.join("data").display(),
        cert = dir.join("server.crt").display(),
        key = dir.join("server.key").display(),
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = TlsRegistry { child, address };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&registry.address).is_err() {
        assert!(
            Instant::now() < deadline,
            "docker-registry on {} did not start",
            registry.address
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    registry
}

#[tokio::test]
async fn https_registry_needs_its_ca_from_certs_d_or_tls_verify_off() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let registry = start_tls_registry(dir.path());
    let https = ConnectionOptions {
        plain_http: Some(false),
        certs_dirs: vec![dir.path().join("empty-certs.d")],
        ..ConnectionOptions::default()
    };

    let untrusted = RegistryClient::new(&registry.address, &https).unwrap();
    let err = untrusted.verify_login().await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot connect to registry {}:", registry.address))
            && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    let certs_d = dir.path().join("certs.d");
    std::fs::create_dir_all(certs_d.join(&registry.address)).unwrap();
    std::fs::copy(
        dir.path().join("ca.crt"),
        certs_d.join(&registry.address).join("ca.crt"),
    )
    .unwrap();
    let with_ca = ConnectionOptions {
        certs_dirs: vec![certs_d],
        ..https.clone()
    };
    RegistryClient::new(&registry.address, &with_ca)
        .unwrap()
        .verify_login()
        .await
        .unwrap();

    let no_verify = ConnectionOptions {
        tls_verify: false,
        ..https
    };
    RegistryClient::new(&registry.address, &no_verify)
        .unwrap()
        .verify_login()
        .await
        .unwrap();
}
