//! Progress callbacks for pull and push. The CLI renders them (bars on a TTY, lines otherwise);
//! every method has a no-op default so a renderer implements only what it shows.

use crate::digest::Digest;

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
