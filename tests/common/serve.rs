//! An `imgbuild serve` process for tests that need our registry as a separate process, and
//! test data helpers that go with it.

use std::process::{Child, Command};

use super::temp_dir;

/// An `imgbuild serve` on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    pub address: String,
    _data: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let data = temp_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["serve", "--addr", &address, "--data"])
            .arg(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start imgbuild serve");
        let registry = Registry {
            child,
            address,
            _data: data,
        };
        for _ in 0..100 {
            if registry
                .metric("imgbuild_registry_bytes_received_total")
                .is_some()
            {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("imgbuild serve did not start on {}", registry.address);
    }

    /// The value of an unlabelled counter from /metrics.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let output = Command::new("curl")
            .args(["-fsS", &format!("http://{}/metrics", self.address)])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    pub fn received(&self) -> u64 {
        self.metric("imgbuild_registry_bytes_received_total")
            .unwrap()
    }

    pub fn sent(&self) -> u64 {
        self.metric("imgbuild_registry_bytes_sent_total").unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `len` bytes that gzip cannot shrink (xorshift), different per `seed`.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
