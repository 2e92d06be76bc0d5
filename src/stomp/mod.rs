//! STOMP for tablets: the frame codec, one tablet's session, and the
//! connection loop that runs a session over any transport.

pub mod close;
pub mod connection;
pub mod frame;
pub mod session;
