//! Layer tarballs: deterministic tar writing, gzip/zstd compression, and safe unpacking.
