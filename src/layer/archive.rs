//! Recognizes compressed streams by their magic bytes and decompresses them, and decides (like
//! Docker's `ADD`) whether a local file is a tar archive to auto-extract.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::Path;

use super::LayerError;
use super::tar_header::BLOCK;

/// A compression format recognized by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressed {
    Gzip,
    Zstd,
    Bzip2,
    Xz,
    None,
}

/// Identifies the compression of a stream from its first bytes.
pub fn detect_compression(head: &[u8]) -> Compressed {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compressed::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compressed::Zstd
    } else if head.starts_with(b"BZh") {
        Compressed::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compressed::Xz
    } else {
        Compressed::None
    }
}

/// Fills `reader`'s buffer with at least `want` bytes when the stream has them.
fn peek<R: Read>(reader: &mut BufReader<R>, want: usize) -> io::Result<Vec<u8>> {
    // BufReader only refills when empty, so a short first read is accepted as is; magic
    // numbers are at most 6 bytes, which any real first read covers.
    let buf = reader.fill_buf()?;
    Ok(buf[..buf.len().min(want)].to_vec())
}

/// Wraps `reader` in the decompressor its magic bytes call for (gzip, zstd, bzip2, xz or none).
/// Multi-member gzip streams are read whole.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let head = peek(&mut buffered, 8)?;
    Ok(match detect_compression(&head) {
        Compressed::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compressed::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Compressed::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(buffered)),
        Compressed::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(buffered)),
        Compressed::None => Box::new(buffered),
    })
}

/// Whether `block` is a valid tar header: a correct checksum and not an all-zero end block.
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < BLOCK || block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let text = digits.trim();
    let Ok(stored) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = block[..BLOCK]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == sum
}

/// For `ADD local-file`: if `path` is a tar archive (plain, or gzip/bzip2/xz/zstd compressed),
/// returns its decompressed tar stream; otherwise None (the file is copied as is).
pub fn open_archive(path: &Path) -> Result<Option<Box<dyn Read>>, LayerError> {
    let open_err = |source| LayerError::OpenArchive {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let mut stream = match decompress(file) {
        Ok(stream) => stream,
        Err(_) => return Ok(None),
    };
    let mut first = vec![0u8; BLOCK];
    let mut filled = 0;
    while filled < BLOCK {
        match stream.read(&mut first[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Corrupt compressed data, or not what the magic bytes promised: not an archive.
            Err(_) => return Ok(None),
        }
    }
    if filled < BLOCK || !is_tar_header(&first) {
        return Ok(None);
    }
    Ok(Some(Box::new(Cursor::new(first).chain(stream))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tiny_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hi.txt", &b"hi"[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn read_first_name(mut stream: Box<dyn Read>) -> String {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        entry.path().unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn open_archive_recognizes_every_supported_compression() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tiny_tar();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&tar).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&tar).unwrap();
        let cases = [
            ("plain.tar", tar.clone()),
            ("a.tar.gz", gz.finish().unwrap()),
            ("a.tar.bz2", bz.finish().unwrap()),
            ("a.tar.xz", xz.finish().unwrap()),
            ("a.tar.zst", zstd::encode_all(&tar[..], 3).unwrap()),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let stream = open_archive(&path)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(read_first_name(stream), "hi.txt", "{name}");
        }
    }

    #[test]
    fn open_archive_returns_none_for_non_archives() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"just some text, not a tar").unwrap();
        let cases = [
            ("text.txt", b"hello world".to_vec()),
            ("empty", Vec::new()),
            ("zeros.tar", vec![0u8; 2048]),
            ("text.gz", gz.finish().unwrap()),
            ("fake.gz", vec![0x1f, 0x8b, 1, 2, 3]),
            ("noise", vec![0x55u8; 4096]),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert!(open_archive(&path).unwrap().is_none(), "{name}");
        }
        assert!(matches!(
            open_archive(&dir.path().join("missing")),
            Err(LayerError::OpenArchive { .. })
        ));
    }

    #[test]
    fn detects_magic_bytes() {
        assert_eq!(detect_compression(&[0x1f, 0x8b, 8]), Compressed::Gzip);
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compressed::Zstd
        );
        assert_eq!(detect_compression(b"BZh9"), Compressed::Bzip2);
        assert_eq!(detect_compression(b"\xfd7zXZ\0"), Compressed::Xz);
        assert_eq!(detect_compression(b"usr/"), Compressed::None);
    }
}
