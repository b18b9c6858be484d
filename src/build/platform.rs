//! The build platform: the host's OS/architecture and the predefined platform build args
//! (BUILDPLATFORM, TARGETPLATFORM, TARGETOS, ...) that Docker provides.

use std::collections::BTreeMap;

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI/Go naming.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let os = parts.next().filter(|s| !s.is_empty())?;
        let architecture = parts.next().filter(|s| !s.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant,
        })
    }

    /// Whether `other` names this platform (arm64's default variant v8 may be left out).
    pub fn matches(&self, other: &Platform) -> bool {
        let variant_matches = match (&self.variant, &other.variant) {
            (a, b) if a == b => true,
            (Some(v), None) | (None, Some(v)) => self.architecture == "arm64" && v == "v8",
            _ => false,
        };
        self.os == other.os && self.architecture == other.architecture && variant_matches
    }

    /// The predefined build args for building on and for this platform.
    pub fn predefined_args(&self) -> BTreeMap<String, String> {
        let variant = self.variant.clone().unwrap_or_default();
        let mut args = BTreeMap::new();
        for prefix in ["BUILD", "TARGET"] {
            args.insert(format!("{prefix}PLATFORM"), self.to_string());
            args.insert(format!("{prefix}OS"), self.os.clone());
            args.insert(format!("{prefix}ARCH"), self.architecture.clone());
            args.insert(format!("{prefix}VARIANT"), variant.clone());
        }
        args
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    fn parses_and_matches_platforms() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert_eq!(amd64.to_string(), "linux/amd64");
        assert!(amd64.matches(&Platform::parse("linux/amd64").unwrap()));
        assert!(!amd64.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm.matches(&Platform::parse("linux/arm64").unwrap()));
    }

    #[test]
    fn predefined_args_name_the_platform() {
        let args = Platform::parse("linux/amd64").unwrap().predefined_args();
        assert_eq!(args["TARGETPLATFORM"], "linux/amd64");
        assert_eq!(args["TARGETARCH"], "amd64");
        assert_eq!(args["BUILDOS"], "linux");
        assert_eq!(args["TARGETVARIANT"], "");
    }
}
