//! Image references: parsing and normalization (`busybox` -> `docker.io/library/busybox:latest`).
//!
//! Follows Docker's rules (distribution/reference): the first path component is a registry only
//! if it contains `.` or `:`, is `localhost`, or has uppercase letters; Docker Hub names with a
//! single component get `library/`; repository components are lowercase
//! `[a-z0-9]+(?:[._-][a-z0-9]+|__)*`; tags are `[\w][\w.-]{0,127}`; the whole name is at most
//! 255 characters; `name:tag@digest` keeps both.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest allowed `registry/repository` name, as in Docker.
pub const NAME_MAX_LEN: usize = 255;
/// Longest allowed tag.
pub const TAG_MAX_LEN: usize = 128;

/// Why a string is not a valid image reference. Every variant carries the whole input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference format: reference is empty")]
    Empty,
    #[error("invalid reference {input:?}: repository name must be lowercase")]
    Uppercase { input: String },
    #[error(
        "invalid reference {input:?}: path component {component:?} is invalid (components are \
         lowercase letters and digits, separated by '.', '_', '__' or '-')"
    )]
    BadComponent { input: String, component: String },
    #[error("invalid reference {input:?}: registry host {registry:?} is invalid")]
    BadRegistry { input: String, registry: String },
    #[error(
        "invalid reference {input:?}: tag {tag:?} is invalid (1 to 128 of [A-Za-z0-9_.-], not \
         starting with '.' or '-')"
    )]
    BadTag { input: String, tag: String },
    #[error("invalid reference {input:?}: {source}")]
    BadDigest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error("invalid reference {input:?}: repository name is longer than 255 characters")]
    NameTooLong { input: String },
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, e.g. `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]` with Docker's normalization.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest_text)) => {
                let digest =
                    Digest::parse(digest_text).map_err(|source| ReferenceError::BadDigest {
                        input: input.to_string(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag is the text after the last ':' that comes after the last '/'
        // (a ':' before a '/' is a registry port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(ReferenceError::BadTag {
                input: input.to_string(),
                tag: tag.to_string(),
            });
        }

        let (registry, path) = split_registry(name);
        if let Some(registry) = registry
            && !is_valid_registry(registry)
        {
            return Err(ReferenceError::BadRegistry {
                input: input.to_string(),
                registry: registry.to_string(),
            });
        }
        let registry = match registry {
            None | Some("index.docker.io") => DOCKER_HUB.to_string(),
            Some(other) => other.to_string(),
        };
        if path.is_empty() {
            return Err(ReferenceError::BadComponent {
                input: input.to_string(),
                component: String::new(),
            });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                input: input.to_string(),
            });
        }
        for component in path.split('/') {
            if !is_valid_path_component(component) {
                return Err(ReferenceError::BadComponent {
                    input: input.to_string(),
                    component: component.to_string(),
                });
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX_LEN {
            return Err(ReferenceError::NameTooLong {
                input: input.to_string(),
            });
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// Adds the tag `latest` when the reference names neither a tag nor a digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry's manifest endpoint for: the digest when there is one, else
    /// the tag, else `latest`.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The short form Docker shows: `busybox:latest`, `user/app:1`, `127.0.0.1:5000/app:1`.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        let mut out = name;
        push_tag_and_digest(&mut out, self);
        out
    }

    /// The registry host without its port (IPv6 brackets removed).
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }

    /// Whether Docker would talk plain HTTP to this registry without configuration:
    /// `localhost`, `127.0.0.0/8` and `::1`.
    pub fn is_plain_http_default(&self) -> bool {
        is_loopback_host(self.host())
    }

    /// The `host[:port]` that serves the registry API (`docker.io` -> `registry-1.docker.io`).
    pub fn api_host(&self) -> String {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST.to_string()
        } else {
            self.registry.clone()
        }
    }
}

/// Whether `host` (no port, no brackets) is a loopback name or address.
pub fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host == "::1" {
        return true;
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host part of `host[:port]` or `[v6]:port`, without brackets.
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

fn push_tag_and_digest(out: &mut String, reference: &Reference) {
    if let Some(tag) = &reference.tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = &reference.digest {
        out.push('@');
        out.push_str(&digest.to_string());
    }
}

/// Splits `name` into (registry, path) by Docker's rule for the first component.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, Docker's path component grammar.
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX_LEN
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// A host name (dot-separated labels of letters, digits and inner '-'), or a bracketed IPv6
/// address, with an optional numeric port.
fn is_valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => (None, Some(port)),
            None if after.is_empty() => (None, None),
            None => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    match host {
        None => true,
        Some(host) => {
            !host.is_empty()
                && host.split('.').all(|label| {
                    let b = label.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                })
        }
    }
}

impl fmt::Display for Reference {
    /// The full normalized form, e.g. `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        push_tag_and_digest(&mut out, self);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn single_component_docker_hub_names_get_library() {
        let r = parse("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, None);
        assert_eq!(
            r.clone().with_default_tag().to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(parse("docker.io/busybox").repository, "library/busybox");
        assert_eq!(parse("index.docker.io/busybox").registry, "docker.io");
    }

    #[test]
    fn multi_component_docker_hub_names_keep_their_path() {
        let r = parse("user/app:1.0");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "user/app");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.familiar(), "user/app:1.0");
    }

    #[test]
    fn first_component_is_a_registry_only_with_dot_colon_or_localhost() {
        assert_eq!(parse("127.0.0.1:5000/app:1").registry, "127.0.0.1:5000");
        assert_eq!(parse("example.com/app").registry, "example.com");
        assert_eq!(parse("localhost/app").registry, "localhost");
        assert_eq!(parse("localhost:5000/a/b/c").repository, "a/b/c");
        let r = parse("myhost/app");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "myhost/app");
        assert_eq!(parse("[::1]:5000/app").registry, "[::1]:5000");
    }

    #[test]
    fn registry_port_is_not_mistaken_for_a_tag() {
        let r = parse("127.0.0.1:5000/app");
        assert_eq!(r.tag, None);
        assert_eq!(r.repository, "app");
        assert_eq!(
            r.with_default_tag().to_string(),
            "127.0.0.1:5000/app:latest"
        );
    }

    #[test]
    fn tag_and_digest_are_both_kept() {
        let r = parse(&format!("busybox:1.36@{DIGEST}"));
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        assert_eq!(r.digest.as_ref().unwrap().to_string(), DIGEST);
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox:1.36@{DIGEST}")
        );
        assert_eq!(r.familiar(), format!("busybox:1.36@{DIGEST}"));
        assert_eq!(r.tag_or_digest(), DIGEST);
        let by_digest = parse(&format!("127.0.0.1:5000/x@{DIGEST}"));
        assert_eq!(by_digest.tag, None);
        assert_eq!(
            by_digest.clone().with_default_tag().tag,
            None,
            "digest refs get no tag"
        );
    }

    #[test]
    fn uppercase_repository_is_a_clear_error() {
        let err = Reference::parse("Busybox").unwrap_err();
        assert!(matches!(err, ReferenceError::Uppercase { .. }));
        assert!(err.to_string().contains("must be lowercase"), "{err}");
        // An uppercase first component of several is a registry host (Docker's rule).
        assert_eq!(parse("MyRegistry/app").registry, "MyRegistry");
        assert!(matches!(
            Reference::parse("example.com/App"),
            Err(ReferenceError::Uppercase { .. })
        ));
    }

    #[test]
    fn path_components_follow_the_grammar() {
        for good in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "a0.b1-c2__d3"] {
            assert!(Reference::parse(good).is_ok(), "{good} should parse");
        }
        for bad in [
            "-a", "a-", "a..b", "a___b", "a._b", ".a", "a/", "a//b", "a b", "a$",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(
                matches!(err, ReferenceError::BadComponent { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains("path component"), "{err}");
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(Reference::parse("a:v1.0-rc_2").is_ok());
        assert!(Reference::parse(&format!("a:{}", "t".repeat(128))).is_ok());
        for bad in [
            "a:",
            "a:.x",
            "a:-x",
            "a:x+y",
            &format!("a:{}", "t".repeat(129)),
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(
                matches!(err, ReferenceError::BadTag { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains("tag"), "{err}");
        }
    }

    #[test]
    fn bad_digest_bad_registry_and_empty_are_errors() {
        let err = Reference::parse("a@sha256:abc").unwrap_err();
        assert!(matches!(err, ReferenceError::BadDigest { .. }));
        assert!(err.to_string().contains("sha256:abc"), "{err}");
        assert!(matches!(
            Reference::parse("host.com:port/a"),
            Err(ReferenceError::BadRegistry { .. })
        ));
        assert!(matches!(
            Reference::parse("-bad.com/a"),
            Err(ReferenceError::BadRegistry { .. })
        ));
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
    }

    #[test]
    fn names_longer_than_255_characters_are_rejected() {
        let long = format!("example.com/{}", "a".repeat(255 - "example.com/".len()));
        assert!(Reference::parse(&long).is_ok());
        let err = Reference::parse(&format!("{long}b")).unwrap_err();
        assert!(matches!(err, ReferenceError::NameTooLong { .. }), "{err:?}");
    }

    #[test]
    fn familiar_form_matches_docker() {
        assert_eq!(
            parse("busybox").with_default_tag().familiar(),
            "busybox:latest"
        );
        assert_eq!(parse("docker.io/library/busybox:1").familiar(), "busybox:1");
        assert_eq!(
            parse("127.0.0.1:5000/app:1").familiar(),
            "127.0.0.1:5000/app:1"
        );
        assert_eq!(parse("docker.io/library/a/b").familiar(), "library/a/b");
    }

    #[test]
    fn plain_http_default_is_loopback_only() {
        assert!(parse("localhost:5000/a").is_plain_http_default());
        assert!(parse("127.0.0.1:5000/a").is_plain_http_default());
        assert!(parse("127.255.3.4/a").is_plain_http_default());
        assert!(parse("[::1]:5000/a").is_plain_http_default());
        assert!(!parse("128.0.0.1/a").is_plain_http_default());
        assert!(!parse("busybox").is_plain_http_default());
        assert!(!parse("example.com/a").is_plain_http_default());
    }

    #[test]
    fn api_host_maps_docker_hub() {
        assert_eq!(parse("busybox").api_host(), "registry-1.docker.io");
        assert_eq!(parse("127.0.0.1:5000/a").api_host(), "127.0.0.1:5000");
    }

    #[test]
    fn from_str_and_display_round_trip() {
        let text = "127.0.0.1:5000/test/busybox:latest";
        let r: Reference = text.parse().unwrap();
        assert_eq!(r.to_string(), text);
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
    }
}
