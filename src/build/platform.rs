//! The predefined platform build args (BUILDPLATFORM, TARGETPLATFORM, TARGETOS, ...) that
//! Docker provides. The platform type itself is [`crate::image::Platform`].

use std::collections::BTreeMap;

pub use crate::image::Platform;

/// The predefined build args for building on and for `platform`.
pub fn predefined_args(platform: &Platform) -> BTreeMap<String, String> {
    let variant = platform.variant.clone().unwrap_or_default();
    let mut args = BTreeMap::new();
    for prefix in ["BUILD", "TARGET"] {
        args.insert(format!("{prefix}PLATFORM"), platform.to_string());
        args.insert(format!("{prefix}OS"), platform.os.clone());
        args.insert(format!("{prefix}ARCH"), platform.architecture.clone());
        args.insert(format!("{prefix}VARIANT"), variant.clone());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_args_name_the_platform() {
        let args = predefined_args(&Platform::parse("linux/amd64").unwrap());
        assert_eq!(args["TARGETPLATFORM"], "linux/amd64");
        assert_eq!(args["TARGETARCH"], "amd64");
        assert_eq!(args["BUILDOS"], "linux");
        assert_eq!(args["TARGETVARIANT"], "");
        let arm = predefined_args(&Platform::parse("linux/arm").unwrap());
        assert_eq!(arm["TARGETPLATFORM"], "linux/arm/v7");
        assert_eq!(arm["TARGETVARIANT"], "v7");
    }
}
