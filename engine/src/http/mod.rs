//! A small HTTP/1.1 client and server over the injected network seam
//! ([`crate::net`]). One connection per request: simple, and deterministic
//! under simulation (no pool whose reuse depends on timing).

mod client;
mod lines;
mod server;

pub use client::{BodyStream, HttpClient, HttpError, Response, DEFAULT_CONNECT_TIMEOUT};
pub use lines::{lines, LineStream};
pub use server::{serve, serve_until};
