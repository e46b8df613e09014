//! Plain HTTP mechanics for the proxy's second path (requests without `Upgrade:
//! websocket`): the keep-alive client pool to backends ([`client`]), the body wrappers
//! that bound and count what streams through ([`body`]), and the header rewriting of a
//! forwarded request or response ([`headers`]). The per-request decisions (route, pick,
//! errors) are in `server/plain.rs`; hyper does every byte of HTTP framing.

pub mod body;
pub mod client;
pub mod floods;
pub mod headers;
mod io;

pub use client::ClientPool;
pub use io::ClientIo;

use bytes::Bytes;

/// Error type of the bodies the proxy streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body in either direction.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
