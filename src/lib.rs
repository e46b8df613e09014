//! Switchyard: a WebSocket-aware layer-7 load balancer.
//!
//! A connection flows accept → limits → tls → handshake → route → balance → upstream →
//! relay → close; the modules are laid out in that order.

pub mod backend;
pub mod balance;
pub mod clock;
pub mod config;
