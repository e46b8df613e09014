//! RFC 6455 pieces the proxy needs: the frame header codec and masking ([`frame`]), close
//! codes ([`close`]) and the per-direction validation state machine ([`stream`]).

pub mod close;
pub mod frame;
pub mod peer;
pub mod stream;

pub use close::CloseCode;
pub use frame::{apply_mask, FrameHeader, Opcode};
