//! Prometheus metrics of the registry: requests by route, method and status; bytes in and out;
//! upload sessions; garbage collection runs and what they reclaimed. Rendered in the Prometheus text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by every request.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    uploads_started: AtomicU64,
    uploads_completed: AtomicU64,
    gc_runs: AtomicU64,
    gc_failures: AtomicU64,
    gc_bytes_reclaimed: AtomicU64,
    gc_blobs_deleted: AtomicU64,
    gc_manifests_deleted: AtomicU64,
    gc_tags_deleted: AtomicU64,
    gc_uploads_expired: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, route: &'static str, method: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests
            .entry((route, method.to_string(), status))
            .or_insert(0) += 1;
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn upload_started(&self) {
        self.uploads_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upload_completed(&self) {
        self.uploads_completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished garbage collection (a dry run counts nothing).
    pub fn gc_finished(&self, report: &crate::registry::gc::GcReport) {
        if report.dry_run {
            return;
        }
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.gc_bytes_reclaimed
            .fetch_add(report.bytes_reclaimed(), Ordering::Relaxed);
        let counts = [
            (&self.gc_blobs_deleted, report.blobs.len()),
            (&self.gc_manifests_deleted, report.manifests.len()),
            (&self.gc_tags_deleted, report.tags.len()),
            (&self.gc_uploads_expired, report.uploads.len()),
        ];
        for (counter, n) in counts {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub fn gc_failed(&self) {
        self.gc_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format; `open_uploads` is the current number of upload sessions.
    pub fn render(&self, open_uploads: u64) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP imgbuild_registry_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE imgbuild_registry_requests_total counter\n");
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for ((route, method, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "imgbuild_registry_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let counters = [
            (
                "imgbuild_registry_bytes_received_total",
                "Request body bytes received.",
                &self.bytes_in,
            ),
            (
                "imgbuild_registry_bytes_sent_total",
                "Response body bytes sent.",
                &self.bytes_out,
            ),
            (
                "imgbuild_registry_uploads_started_total",
                "Blob upload sessions started.",
                &self.uploads_started,
            ),
            (
                "imgbuild_registry_uploads_completed_total",
                "Blob uploads completed and verified.",
                &self.uploads_completed,
            ),
            (
                "imgbuild_registry_gc_runs_total",
                "Garbage collections completed.",
                &self.gc_runs,
            ),
            (
                "imgbuild_registry_gc_failures_total",
                "Garbage collections that stopped with an error.",
                &self.gc_failures,
            ),
            (
                "imgbuild_registry_gc_bytes_reclaimed_total",
                "Bytes of blobs removed by garbage collection.",
                &self.gc_bytes_reclaimed,
            ),
            (
                "imgbuild_registry_gc_blobs_deleted_total",
                "Blobs removed by garbage collection.",
                &self.gc_blobs_deleted,
            ),
            (
                "imgbuild_registry_gc_manifests_deleted_total",
                "Manifests removed by retention rules.",
                &self.gc_manifests_deleted,
            ),
            (
                "imgbuild_registry_gc_tags_deleted_total",
                "Tags removed by retention rules.",
                &self.gc_tags_deleted,
            ),
            (
                "imgbuild_registry_gc_uploads_expired_total",
                "Abandoned upload sessions removed.",
                &self.gc_uploads_expired,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP imgbuild_registry_upload_sessions Upload sessions open now.\n# TYPE imgbuild_registry_upload_sessions gauge\nimgbuild_registry_upload_sessions {open_uploads}"
        );
        out
    }
}
