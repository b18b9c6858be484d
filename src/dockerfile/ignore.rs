//! placeholder
pub struct IgnoreMatcher;
