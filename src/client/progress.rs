//! Progress callbacks for pull and push. The CLI renders them (bars on a TTY, lines otherwise);
//! every method has a no-op default so a renderer implements only what it shows.

use crate::digest::Digest;

/// A size as Docker prints it: decimal units, up to three decimals, no space (`999B`,
/// `1kB`, `4.2MB`, `45.123MB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[unit]
    }
}

/// Events of a pull, in order: `resolved`, then per blob either `blob_present` or
/// `blob_started` / `blob_progress`* / `blob_finished`.
pub trait PullProgress: Sync {
    /// The manifest was fetched: `blobs` config and layer blobs make up the image.
    fn resolved(&self, _manifest_digest: &Digest, _blobs: usize) {}
    /// The blob is already in the local store and is not fetched.
    fn blob_present(&self, _digest: &Digest, _size: u64) {}
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    /// `done` of `size` bytes have arrived.
    fn blob_progress(&self, _digest: &Digest, _done: u64, _size: u64) {}
    fn blob_finished(&self, _digest: &Digest, _size: u64) {}
}

/// Events of a push: per blob one of `blob_present`, `blob_mounted`, or
/// `blob_started` / `blob_progress`* / `blob_finished`; then `manifest_pushed` per manifest.
pub trait PushProgress: Sync {
    fn blob_present(&self, _digest: &Digest, _size: u64) {}
    fn blob_mounted(&self, _digest: &Digest, _size: u64, _from_repository: &str) {}
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    /// `done` of `size` bytes have been sent.
    fn blob_progress(&self, _digest: &Digest, _done: u64, _size: u64) {}
    fn blob_finished(&self, _digest: &Digest, _size: u64) {}
    fn manifest_pushed(&self, _digest: &Digest, _tag_or_digest: &str) {}
}

/// Ignores all progress events.
pub struct NoProgress;

impl PullProgress for NoProgress {}
impl PushProgress for NoProgress {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1_000), "1kB");
        assert_eq!(human_bytes(4_200_000), "4.2MB");
        assert_eq!(human_bytes(45_123_456), "45.123MB");
        assert_eq!(human_bytes(3_000_000_000_000_000), "3000TB");
    }
}
