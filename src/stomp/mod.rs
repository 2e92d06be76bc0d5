//! STOMP over WebSocket: the frame codec and one tablet's session.

pub mod frame;
pub mod session;
