//! Switchyard: a WebSocket-aware layer-7 load balancer.
//!
//! A connection flows accept → limits → tls → handshake → route → balance → upstream →
//! relay → close; the modules are laid out in that order.

pub mod admin;
pub mod backend;
pub mod balance;
pub mod blame;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod conns;
pub mod demo;
pub mod discovered;
pub mod discovery;
pub mod handshake;
pub mod health;
pub mod http;
pub mod limits;
pub mod listeners;
pub mod memory;
pub mod metrics;
pub mod passive;
pub mod proxy_protocol;
pub mod rebalance;
pub mod relay;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod server;
pub mod shared;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod ws;

pub use reload::reload;
pub use server::Server;
