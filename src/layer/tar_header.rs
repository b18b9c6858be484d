//! Encodes tar headers byte-for-byte deterministically: POSIX ustar blocks plus PAX extended
//! headers for what ustar cannot hold (long names and link targets, big numbers, xattrs).

/// Size of one tar block.
pub const BLOCK: usize = 512;

/// The ustar type flag of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFlag {
    Regular,
    Hardlink,
    Symlink,
    CharDevice,
    BlockDevice,
    Dir,
    Fifo,
    PaxExtended,
}

impl TypeFlag {
    fn byte(self) -> u8 {
        match self {
            TypeFlag::Regular => b'0',
            TypeFlag::Hardlink => b'1',
            TypeFlag::Symlink => b'2',
            TypeFlag::CharDevice => b'3',
            TypeFlag::BlockDevice => b'4',
            TypeFlag::Dir => b'5',
            TypeFlag::Fifo => b'6',
            TypeFlag::PaxExtended => b'x',
        }
    }
}

/// Everything one header describes.
pub struct HeaderFields<'a> {
    pub name: &'a str,
    pub link_name: &'a str,
    pub type_flag: TypeFlag,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: &'a [(String, Vec<u8>)],
}

/// Largest value an octal field of `width` bytes (with a NUL terminator) can hold.
fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

fn put_octal(block: &mut [u8], offset: usize, width: usize, value: u64) {
    let text = format!("{:0w$o}", value, w = width - 1);
    block[offset..offset + width - 1].copy_from_slice(text.as_bytes());
    block[offset + width - 1] = 0;
}

fn put_str(block: &mut [u8], offset: usize, width: usize, value: &str) {
    let bytes = value.as_bytes();
    let n = bytes.len().min(width);
    block[offset..offset + n].copy_from_slice(&bytes[..n]);
}

/// One PAX record `"<len> key=value\n"`, where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn ustar_block(fields: &HeaderFields<'_>, name: &str, link_name: &str, size: u64) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    put_str(&mut block, 0, 100, name);
    put_octal(&mut block, 100, 8, u64::from(fields.mode & 0o7777));
    put_octal(&mut block, 108, 8, fields.uid.min(octal_max(8)));
    put_octal(&mut block, 116, 8, fields.gid.min(octal_max(8)));
    put_octal(&mut block, 124, 12, size.min(octal_max(12)));
    put_octal(&mut block, 136, 12, fields.mtime.min(octal_max(12)));
    block[156] = fields.type_flag.byte();
    put_str(&mut block, 157, 100, link_name);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    let has_device = matches!(
        fields.type_flag,
        TypeFlag::CharDevice | TypeFlag::BlockDevice
    );
    if has_device {
        put_octal(&mut block, 329, 8, u64::from(fields.dev_major));
        put_octal(&mut block, 337, 8, u64::from(fields.dev_minor));
    }
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}");
    block[148..154].copy_from_slice(text.as_bytes());
    block[154] = 0;
    block[155] = b' ';
    block
}

/// Encodes the header blocks of one entry (a PAX header first when needed). The entry's data,
/// padded to a block, follows separately.
pub fn encode(fields: &HeaderFields<'_>) -> Vec<u8> {
    let mut pax = Vec::new();
    if fields.name.len() > 100 {
        pax_record(&mut pax, "path", fields.name.as_bytes());
    }
    if fields.link_name.len() > 100 {
        pax_record(&mut pax, "linkpath", fields.link_name.as_bytes());
    }
    if fields.uid > octal_max(8) {
        pax_record(&mut pax, "uid", fields.uid.to_string().as_bytes());
    }
    if fields.gid > octal_max(8) {
        pax_record(&mut pax, "gid", fields.gid.to_string().as_bytes());
    }
    if fields.size > octal_max(12) {
        pax_record(&mut pax, "size", fields.size.to_string().as_bytes());
    }
    if fields.mtime > octal_max(12) {
        pax_record(&mut pax, "mtime", fields.mtime.to_string().as_bytes());
    }
    let mut xattrs: Vec<&(String, Vec<u8>)> = fields.xattrs.iter().collect();
    xattrs.sort();
    for (key, value) in xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{key}"), value);
    }

    let mut out = Vec::with_capacity(3 * BLOCK + pax.len());
    if !pax.is_empty() {
        let pax_name = format!("PaxHeaders/{}", truncate_utf8(fields.name, 89));
        let pax_fields = HeaderFields {
            name: &pax_name,
            link_name: "",
            type_flag: TypeFlag::PaxExtended,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: pax.len() as u64,
            mtime: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: &[],
        };
        out.extend_from_slice(&ustar_block(&pax_fields, &pax_name, "", pax.len() as u64));
        out.extend_from_slice(&pax);
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    out.extend_from_slice(&ustar_block(
        fields,
        truncate_utf8(fields.name, 100),
        truncate_utf8(fields.link_name, 100),
        fields.size,
    ));
    out
}

/// Zero bytes needed after `len` data bytes to fill the last block.
pub fn padding(len: u64) -> usize {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", b"a");
        assert_eq!(out, b"9 path=a\n");
        let mut out = Vec::new();
        let value = vec![b'x'; 95]; // body 102 -> total 105 with a 3-digit length
        pax_record(&mut out, "path", &value);
        assert_eq!(out.len(), 105);
        assert!(out.starts_with(b"105 path="));
    }

    #[test]
    fn header_checksum_is_what_the_tar_crate_expects() {
        let fields = HeaderFields {
            name: "etc/passwd",
            link_name: "",
            type_flag: TypeFlag::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 5,
            mtime: 1,
            dev_major: 0,
            dev_minor: 0,
            xattrs: &[],
        };
        let block = encode(&fields);
        assert_eq!(block.len(), BLOCK);
        let header = tar::Header::from_byte_slice(&block);
        assert_eq!(header.cksum().unwrap(), {
            let mut copy = block.clone();
            copy[148..156].copy_from_slice(b"        ");
            copy.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(header.path().unwrap().to_str(), Some("etc/passwd"));
        assert_eq!(header.size().unwrap(), 5);
    }
}
