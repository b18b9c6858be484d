//! placeholder
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct ExpandError;
pub struct Lexer;
