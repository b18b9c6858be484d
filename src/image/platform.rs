//! The one platform type (`linux/amd64`, `linux/arm/v7`, ...): parsing `os/arch[/variant]`,
//! the host's platform, containerd-style normalization, matching against index entries, and
//! the serde shape of a descriptor's `platform` object.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a platform string is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(pub String);

/// A platform: what an index entry is for, or what a pull or build wants.
/// Field order is the serialized order (it fixes the bytes of indexes we write).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// A platform with no OS version or features, normalized.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_string(),
            os: os.to_string(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(str::to_string),
        }
        .normalized()
    }

    /// Parses `os/arch[/variant]` (TARGETPLATFORM style): two or three non-empty parts of
    /// lowercase letters, digits and `_`. The result is normalized.
    pub fn parse(text: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid_part(p)) {
            return Err(PlatformError(text.to_string()));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// The platform this program runs on, in OCI/Go terms (`x86_64` -> `amd64`, ...).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        Platform::new(os, architecture, variant)
    }

    /// Applies the containerd defaults: an empty variant is none, `arm64/v8` is plain `arm64`,
    /// and `arm` without a variant is `arm/v7`.
    pub fn normalized(mut self) -> Platform {
        if self.variant.as_deref() == Some("") {
            self.variant = None;
        }
        if self.architecture == "arm64" && self.variant.as_deref() == Some("v8") {
            self.variant = None;
        }
        if self.architecture == "arm" && self.variant.is_none() {
            self.variant = Some("v7".to_string());
        }
        self
    }

    /// Whether `candidate` (e.g. an index entry's platform) provides this wanted platform:
    /// same OS and architecture after normalization, and the same variant unless this one
    /// names none.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let wanted = self.clone().normalized();
        let candidate = candidate.clone().normalized();
        candidate.os == wanted.os
            && candidate.architecture == wanted.architecture
            && (wanted.variant.is_none() || candidate.variant == wanted.variant)
    }
}

impl fmt::Display for Platform {
    /// `os/arch[/variant]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_os_arch_variant_normalizes_and_rejects_garbage() {
        let p = Platform::parse("linux/arm/v6").unwrap();
        assert_eq!(p.variant.as_deref(), Some("v6"));
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        assert!(Platform::parse("Linux/AMD64").is_err());
        let err = Platform::parse("a/b/c/d").unwrap_err().to_string();
        assert!(
            err.contains("\"a/b/c/d\"") && err.contains("OS/ARCH"),
            "{err}"
        );
    }

    #[test]
    fn host_is_named_in_oci_terms() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_ne!(host.architecture, "x86_64");
        assert_ne!(host.architecture, "aarch64");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
    }

    #[test]
    fn matching_uses_normalized_variants() {
        let parse = |t: &str| Platform::parse(t).unwrap();
        let raw = |os: &str, arch: &str, variant: Option<&str>| Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
            ..Platform::default()
        };
        assert!(parse("linux/amd64").matches(&raw("linux", "amd64", None)));
        assert!(!parse("linux/amd64").matches(&raw("linux", "arm64", None)));
        assert!(parse("linux/arm64").matches(&raw("linux", "arm64", Some("v8"))));
        assert!(parse("linux/arm64/v8").matches(&raw("linux", "arm64", None)));
        assert!(parse("linux/arm").matches(&raw("linux", "arm", None)));
        assert!(!parse("linux/arm/v6").matches(&raw("linux", "arm", Some("v7"))));
        assert!(!parse("linux/amd64/v2").matches(&raw("linux", "amd64", None)));
        assert!(raw("linux", "amd64", None).matches(&raw("linux", "amd64", Some("v2"))));
    }

    #[test]
    fn serde_keeps_os_version_and_features() {
        let json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0","os.features":["win32k"]}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p.os_version.as_deref(), Some("10.0"));
        assert_eq!(p.os_features, vec!["win32k"]);
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
    }
}
