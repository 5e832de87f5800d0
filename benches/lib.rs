//! Shared helpers for the criterion benches live in each bench file; this crate is only their host.
