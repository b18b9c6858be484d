//! Deterministic multi-core gzip: the input is cut into fixed-size chunks, each compressed on a
//! worker thread into its own gzip member (header without name or mtime, OS byte 255), and the
//! members are written in input order. The output depends only on the input bytes and the
//! level, never on the number of threads. Any gzip reader that handles multi-member files
//! (Go's gzip, zlib's gunzip, flate2's MultiGzDecoder) reads it as one stream.
//!
//! Chunks that do not compress (already compressed assets, random data) are stored instead of
//! deflated: four 16 KiB samples of the chunk are trial-compressed at level 1 first, and when
//! together they shrink by less than 3% the member holds stored deflate blocks (a tar header
//! inside one sample of a gzip file does not make the whole chunk worth deflating). The decision
//! depends only on the chunk's bytes, so output stays deterministic, and it saves the full-level
//! deflate work on data that would come out no smaller anyway.
//!
//! Memory is bounded: at most `2 * threads` chunks are in flight.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Uncompressed bytes per gzip member.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The fixed OS byte of every member header ("unknown"), so output never varies by host.
const GZIP_OS_UNKNOWN: u8 = 255;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A writer that gzips into `inner` using worker threads. Call `finish` to get `inner` back;
/// dropping it without `finish` loses the tail (and the dropped job channel stops the workers).
pub struct ParallelGzipWriter<W: Write> {
    inner: W,
    level: flate2::Compression,
    pending: Vec<u8>,
    next_seq: u64,
    next_to_write: u64,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    reorder: BTreeMap<u64, Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
    /// Inline mode (threads == 1): no worker threads, chunks compressed on the caller's thread.
    inline: bool,
}

/// Bytes of each sample trial-compressed to decide whether a chunk is worth deflating.
const SAMPLE_SIZE: usize = 16 * 1024;
/// Samples per chunk, spread evenly over it.
const SAMPLES: usize = 4;
/// A sample "compresses" when its level-1 output is below this many 1/1000ths of its size.
const COMPRESSIBLE_PER_MILLE: usize = 970;

/// True when the samples of `chunk` together do not shrink under fast deflate: the chunk is
/// then stored. Chunks too small to sample are always deflated.
fn looks_incompressible(chunk: &[u8]) -> bool {
    if chunk.len() < SAMPLES * SAMPLE_SIZE {
        return false;
    }
    let stride = chunk.len() / SAMPLES;
    let mut out = Vec::with_capacity(SAMPLE_SIZE + SAMPLE_SIZE / 8);
    let compressed: usize = (0..SAMPLES)
        .map(|i| {
            let sample = &chunk[i * stride..i * stride + SAMPLE_SIZE];
            let mut deflate = flate2::Compress::new(flate2::Compression::fast(), false);
            out.clear();
            match deflate.compress_vec(sample, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => out.len(),
                // Output did not fit in 112% of the input, or an error: surely not
                // compressible, and an error here is harmless (the real compression reports it).
                _ => sample.len(),
            }
        })
        .sum();
    compressed * 1000 >= SAMPLES * SAMPLE_SIZE * COMPRESSIBLE_PER_MILLE
}

/// Compresses one chunk into a complete gzip member (stored blocks when it looks
/// incompressible).
fn compress_member(chunk: &[u8], level: flate2::Compression) -> io::Result<Vec<u8>> {
    let level = if level.level() > 0 && looks_incompressible(chunk) {
        flate2::Compression::none()
    } else {
        level
    };
    let mut encoder = flate2::GzBuilder::new()
        .operating_system(GZIP_OS_UNKNOWN)
        .mtime(0)
        .write(Vec::with_capacity(chunk.len() / 2 + 64), level);
    encoder.write_all(chunk)?;
    encoder.finish()
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>, done: Sender<Done>, level: flate2::Compression) {
    loop {
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok((seq, chunk)) = job else { return };
        if done.send((seq, compress_member(&chunk, level))).is_err() {
            return;
        }
    }
}

impl<W: Write> ParallelGzipWriter<W> {
    /// `threads` is clamped to at least 1; 1 compresses on the caller's thread.
    pub fn new(inner: W, level: flate2::Compression, threads: usize) -> Self {
        let threads = threads.max(1);
        let max_in_flight = 2 * threads;
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(max_in_flight);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let inline = threads == 1;
        let mut workers = Vec::new();
        if !inline {
            let job_rx = Arc::new(Mutex::new(job_rx));
            for _ in 0..threads {
                let jobs = Arc::clone(&job_rx);
                let done = done_tx.clone();
                workers.push(std::thread::spawn(move || worker(jobs, done, level)));
            }
        }
        ParallelGzipWriter {
            inner,
            level,
            pending: Vec::with_capacity(CHUNK_SIZE),
            next_seq: 0,
            next_to_write: 0,
            in_flight: 0,
            max_in_flight,
            jobs: Some(job_tx),
            done: done_rx,
            reorder: BTreeMap::new(),
            workers,
            inline,
        }
    }

    /// Hands the pending chunk to a worker (or compresses it inline).
    fn dispatch(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_SIZE));
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.inline {
            let member = compress_member(&chunk, self.level)?;
            self.next_to_write += 1;
            return self.inner.write_all(&member);
        }
        while self.in_flight >= self.max_in_flight {
            self.receive_one()?;
        }
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        jobs.send((seq, chunk))
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one compressed chunk, then writes every chunk that is next in order.
    fn receive_one(&mut self) -> io::Result<()> {
        let (seq, member) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.in_flight -= 1;
        self.reorder.insert(seq, member?);
        while let Some(member) = self.reorder.remove(&self.next_to_write) {
            self.inner.write_all(&member)?;
            self.next_to_write += 1;
        }
        Ok(())
    }

    /// Compresses what is left, waits for the workers, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() || self.next_seq == 0 {
            // An empty input still becomes one (empty) member, so the output is valid gzip.
            self.dispatch()?;
        }
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        self.jobs = None;
        for handle in self.workers.drain(..) {
            handle
                .join()
                .map_err(|_| io::Error::other("a gzip worker thread panicked"))?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.pending.len();
        let n = room.min(buf.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == CHUNK_SIZE {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunk boundaries must not depend on when callers flush, so nothing is cut early.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    fn gzip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut writer =
            ParallelGzipWriter::new(Vec::new(), flate2::Compression::default(), threads);
        for piece in data.chunks(100_000) {
            writer.write_all(piece).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn output_is_identical_for_any_thread_count_and_decodes_back() {
        let data = sample(3 * CHUNK_SIZE + 12345);
        let one = gzip(&data, 1);
        assert_eq!(gzip(&data, 2), one);
        assert_eq!(gzip(&data, 5), one);
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, data);
    }

    /// Deterministic pseudo-random bytes (xorshift), which deflate cannot shrink.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn incompressible_chunks_are_stored_and_compressible_ones_deflated() {
        let random = noise(CHUNK_SIZE, 7);
        assert!(looks_incompressible(&random));
        let stored = gzip(&random, 2);
        // Stored blocks: 5 bytes per 64 KiB block, plus the gzip header and trailer.
        assert!(stored.len() > random.len(), "stored, not deflated");
        assert!(stored.len() < random.len() + random.len() / 1000 + 64);

        // Random data with compressible text in one sampled spot is still deflated.
        let mut mixed = random.clone();
        let text = sample(SAMPLE_SIZE * 2);
        let spot = CHUNK_SIZE / SAMPLES * 2;
        mixed[spot..spot + text.len()].copy_from_slice(&text);
        assert!(!looks_incompressible(&mixed));
        assert!(!looks_incompressible(&sample(CHUNK_SIZE)));
        // A tar header's worth of zeros in one sample of random data is still stored.
        let mut with_header = random.clone();
        with_header[spot..spot + 1536].fill(0);
        assert!(looks_incompressible(&with_header));

        // Either way the output decodes back and is the same for any thread count.
        let data = [random.clone(), sample(CHUNK_SIZE), mixed, noise(1000, 3)].concat();
        let one = gzip(&data, 1);
        assert_eq!(gzip(&data, 3), one);
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, data);
    }

    #[test]
    fn member_headers_carry_no_name_no_mtime_and_a_fixed_os() {
        let out = gzip(b"hello", 3);
        assert_eq!(&out[..4], &[0x1f, 0x8b, 8, 0], "no FNAME flag");
        assert_eq!(&out[4..8], &[0, 0, 0, 0], "mtime zero");
        assert_eq!(out[9], GZIP_OS_UNKNOWN);
    }

    #[test]
    fn empty_input_is_a_valid_gzip_stream() {
        let out = gzip(b"", 2);
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert!(decoded.is_empty());
        assert!(!out.is_empty());
    }
}
