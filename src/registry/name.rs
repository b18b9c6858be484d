//! Validation of the names that arrive in request paths: repository names (distribution-spec
//! grammar), tags, and upload session ids. A validated name is safe to use as a path below the
//! data directory: it cannot contain `..`, empty components, or characters outside the grammar.

use std::fmt;

use crate::digest::Digest;

/// Longest repository name accepted (the spec suggests clients keep names under 256 bytes).
pub const MAX_REPOSITORY_NAME_LEN: usize = 255;
/// Longest tag accepted (the spec grammar allows 128 characters).
pub const MAX_TAG_LEN: usize = 128;

/// A repository name such as `team/app`, matching
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    /// Validates `text` against the distribution-spec repository name grammar.
    pub fn parse(text: &str) -> Option<RepositoryName> {
        if text.is_empty() || text.len() > MAX_REPOSITORY_NAME_LEN {
            return None;
        }
        if text.split('/').all(is_valid_path_component) {
            Some(RepositoryName(text.to_string()))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryName({})", self.0)
    }
}

/// One `/`-separated component: alphanumeric runs joined by `.`, `_`, `__` or one or more `-`.
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // An alphanumeric run.
        let run_start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // A separator: ".", "_", "__", or "-"+.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Whether `text` is a valid tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    let tail_ok = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    bytes.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == b'_')
        && rest.iter().all(tail_ok)
}

/// The `<reference>` of a manifest path: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Why a manifest reference was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    /// Looks like a digest (contains `:`) but is not a valid supported one.
    BadDigest(String),
    /// Neither a tag nor a digest.
    BadTag(String),
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        if text.contains(':') {
            Digest::parse(text)
                .map(Reference::Digest)
                .map_err(|e| ReferenceError::BadDigest(e.to_string()))
        } else if is_valid_tag(text) {
            Ok(Reference::Tag(text.to_string()))
        } else {
            Err(ReferenceError::BadTag(text.to_string()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => write!(f, "{digest}"),
        }
    }
}

/// An upload session id: 32 lowercase hex characters (128 random bits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// A fresh random id.
    pub fn random() -> Result<UploadId, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(UploadId(hex::encode(bytes)))
    }

    pub fn parse(text: &str) -> Option<UploadId> {
        let valid = text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| UploadId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_repository_names() {
        for name in [
            "a",
            "team/app",
            "a.b_c__d---e/f0",
            "library/busybox",
            "x/y/z",
        ] {
            assert!(RepositoryName::parse(name).is_some(), "{name}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_bad_repository_names() {
        for name in [
            "",
            "..",
            "a/../b",
            "a//b",
            "/a",
            "a/",
            "A",
            "a__-b",
            "a___b",
            "_a",
            "a.",
            "a/.b",
            "a/_manifests",
            "a b",
            "a%2fb",
            "a\\b",
        ] {
            assert!(RepositoryName::parse(name).is_none(), "{name:?}");
        }
        assert!(RepositoryName::parse(&"a".repeat(256)).is_none());
    }

    #[test]
    fn validates_tags() {
        assert!(is_valid_tag("latest"));
        assert!(is_valid_tag("_v1.0-rc"));
        assert!(!is_valid_tag(".hidden"));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag("a/b"));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(is_valid_tag(&"a".repeat(128)));
    }

    #[test]
    fn parses_references_and_upload_ids() {
        assert_eq!(Reference::parse("v1"), Ok(Reference::Tag("v1".into())));
        assert!(matches!(
            Reference::parse("sha256:abc"),
            Err(ReferenceError::BadDigest(_))
        ));
        assert!(matches!(
            Reference::parse("..."),
            Err(ReferenceError::BadTag(_))
        ));
        let id = UploadId::random().unwrap();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        assert!(UploadId::parse("../../etc/passwd").is_none());
    }
}
