//! imgbuild: a daemonless container image builder and an OCI registry.
//!
//! See ARCHITECTURE.md for the code map and invariants.
pub mod build;
pub mod cli;
pub mod client;
pub mod context;
pub mod digest;
pub mod dockerfile;
pub mod fsutil;
pub mod image;
pub mod inode_placement;
pub mod layer;
pub mod reference;
pub mod registry;
pub mod sandbox;
pub mod snapshot;
pub mod store;
