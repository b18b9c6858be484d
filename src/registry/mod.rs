//! The registry server (`imgbuild serve`): OCI distribution-spec v1.1 over a Storage trait.
