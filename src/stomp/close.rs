//! Every way a tablet connection ends, in one place: the reason, the text of
//! the STOMP ERROR frame sent before closing (its `message` header and
//! plain-text body), and the close code the transport puts on its close.
//!
//! Transport-neutral: the WebSocket transport sends [`Close::code`] in its
//! close frame; another transport maps the same value to its own close.

use std::fmt;

use super::frame::{Command, FrameError};

/// WebSocket close codes (RFC 6455 section 7.4.1) used here.
pub mod code {
    /// The client asked to leave.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (restart): reconnect, perhaps elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol (bad frame, wrong order).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer broke a rule of this server (authentication, limits).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than the server accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server met a fault of its own (a bug): the connection ends,
    /// the process goes on.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// A passing failure on the server's side: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a tablet connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT or closed its side; no ERROR is sent.
    Disconnected,
    /// A frame the decoder could not read.
    BadFrame(FrameError),
    /// A transport message larger than the server reads.
    MessageTooLarge { limit: usize },
    /// More end-of-lines before CONNECT than a client needs.
    NoiseBeforeConnect { limit: usize },
    /// The first frame was neither CONNECT nor STOMP.
    NotConnected,
    /// No CONNECT frame within the allowed time.
    ConnectTimeout,
    /// Nothing from the client in twice the agreed heart-beat interval.
    HeartbeatTimeout,
    /// CONNECT named no version the server speaks.
    UnsupportedVersion,
    /// CONNECT carried no tablet token.
    NoToken,
    /// A token-less CONNECT (`compat.anonymous`) from a browser origin not
    /// in `stomp.allowed_origins`.
    OriginNotListed,
    /// The token is unknown or revoked.
    BadToken,
    /// Too many failed sign-ins from the client's address lately.
    SignInsHeld { wait_secs: u64 },
    /// The token could not be checked (database trouble).
    Unavailable,
    /// CONNECT sent on a connected session.
    AlreadyConnected,
    /// SUBSCRIBE to a destination the tablet may not follow; says which
    /// it may.
    ForbiddenDestination { detail: String },
    /// SUBSCRIBE without an id (STOMP 1.1 and 1.2).
    SubscribeWithoutId,
    /// ACK or NACK without an id.
    AckWithoutId,
    /// An `ack` header other than auto, client, client-individual.
    BadAckMode,
    /// A subscription id already in use.
    DuplicateSubscription { id: String },
    /// More subscriptions on one connection than allowed.
    TooManySubscriptions { limit: usize },
    /// UNSUBSCRIBE of an id that is not subscribed.
    UnknownSubscription { id: String },
    /// Tablets only receive.
    SendRefused,
    /// BEGIN, COMMIT, ABORT.
    TransactionsRefused,
    /// A frame only a server sends (CONNECTED, MESSAGE, …).
    ServerFrame(Command),
    /// The tablet fell too far behind its popups.
    SlowConsumer,
    /// The token, or the client's address, has its share of connected
    /// tablets on this instance (`stomp.max_connections_per_token`,
    /// `stomp.max_connections_per_address`).
    TooManyConnections { per: &'static str, limit: usize },
    /// The tablet's token was revoked (or its store removed) while connected.
    Revoked,
    /// The instance is stopping.
    ServerRestart,
    /// The connection's task panicked (a bug); logged within a budget.
    Internal,
}

impl Close {
    /// The ERROR frame's `message` header; `None` when no ERROR is sent.
    pub fn message(&self) -> Option<&'static str> {
        Some(match self {
            Close::Disconnected => return None,
            Close::BadFrame(e) => e.summary(),
            Close::MessageTooLarge { .. } => "message too large",
            Close::NoiseBeforeConnect { .. } => "not connected",
            Close::NotConnected => "not connected",
            Close::ConnectTimeout => "not connected",
            Close::HeartbeatTimeout => "heart-beat timeout",
            Close::UnsupportedVersion => "unsupported version",
            Close::NoToken
            | Close::OriginNotListed
            | Close::BadToken
            | Close::SignInsHeld { .. }
            | Close::Revoked => "unauthorized",
            Close::Unavailable => "unavailable",
            Close::AlreadyConnected => "already connected",
            Close::ForbiddenDestination { .. } => "forbidden destination",
            Close::SubscribeWithoutId | Close::AckWithoutId => "missing id",
            Close::BadAckMode => "bad ack mode",
            Close::DuplicateSubscription { .. } => "duplicate subscription",
            Close::TooManySubscriptions { .. } => "too many subscriptions",
            Close::UnknownSubscription { .. } => "unknown subscription",
            Close::SendRefused => "SEND is not accepted",
            Close::TransactionsRefused => "transactions are not supported",
            Close::ServerFrame(_) => "unexpected command",
            Close::SlowConsumer => "slow consumer",
            Close::TooManyConnections { .. } => "too many connections",
            Close::ServerRestart => "server restart",
            Close::Internal => "internal error",
        })
    }

    /// The ERROR frame's plain-text body.
    pub fn detail(&self) -> String {
        match self {
            Close::Disconnected => String::new(),
            Close::BadFrame(e) => e.to_string(),
            Close::MessageTooLarge { limit } => {
                format!("WebSocket messages are limited to {limit} bytes")
            }
            Close::NoiseBeforeConnect { limit } => {
                format!("more than {limit} end-of-lines before CONNECT")
            }
            Close::NotConnected => "the first frame must be CONNECT or STOMP".into(),
            Close::ConnectTimeout => "no CONNECT frame in time".into(),
            Close::HeartbeatTimeout => {
                "no frame or heart-beat from the client in twice the agreed interval".into()
            }
            Close::UnsupportedVersion => "supported versions are 1.0, 1.1 and 1.2".into(),
            Close::NoToken => "a tablet token is required".into(),
            Close::OriginNotListed => {
                "a tablet token is required (token-less tablets only from allowed origins)".into()
            }
            Close::BadToken => "unknown or revoked tablet token".into(),
            Close::SignInsHeld { wait_secs } => {
                format!("too many failed sign-ins from this address; try again in {wait_secs} s")
            }
            Close::Unavailable => "try again shortly".into(),
            Close::AlreadyConnected => "CONNECT was sent twice".into(),
            Close::ForbiddenDestination { detail } => detail.clone(),
            Close::SubscribeWithoutId => "SUBSCRIBE needs an id header".into(),
            Close::AckWithoutId => "ACK and NACK need an id header".into(),
            Close::BadAckMode => "ack must be auto, client or client-individual".into(),
            Close::DuplicateSubscription { id } => format!("id {id} is in use"),
            Close::TooManySubscriptions { limit } => format!("at most {limit} per connection"),
            Close::UnknownSubscription { id } => format!("no subscription {id:?}"),
            Close::SendRefused => {
                "tablets only receive; save reservations over the HTTP API".into()
            }
            Close::TransactionsRefused => "BEGIN, COMMIT and ABORT are not accepted".into(),
            Close::ServerFrame(c) => format!("{} is a server frame", c.as_str()),
            Close::SlowConsumer => {
                "the tablet fell too far behind; reconnect and fetch the call list".into()
            }
            Close::Revoked => "the tablet token was revoked".into(),
            Close::TooManyConnections { per, limit } => {
                format!("at most {limit} connected tablets per {per} on this server")
            }
            Close::ServerRestart => "the server is restarting; reconnect".into(),
            Close::Internal => "the server met an error of its own; reconnect".into(),
        }
    }

    /// The close code: 1000 when the client left, 1001 on restart, 1002 for
    /// a broken protocol, 1008 for a broken rule, 1009 for a message too
    /// large, 1013 when the server could not check the token.
    pub fn code(&self) -> u16 {
        match self {
            Close::Disconnected => code::NORMAL,
            Close::ServerRestart => code::GOING_AWAY,
            Close::MessageTooLarge { .. } | Close::BadFrame(FrameError::TooLarge { .. }) => {
                code::MESSAGE_TOO_BIG
            }
            Close::BadFrame(_)
            | Close::NotConnected
            | Close::UnsupportedVersion
            | Close::AlreadyConnected
            | Close::SubscribeWithoutId
            | Close::AckWithoutId
            | Close::BadAckMode
            | Close::DuplicateSubscription { .. }
            | Close::UnknownSubscription { .. }
            | Close::ServerFrame(_) => code::PROTOCOL_ERROR,
            Close::NoiseBeforeConnect { .. }
            | Close::ConnectTimeout
            | Close::HeartbeatTimeout
            | Close::NoToken
            | Close::OriginNotListed
            | Close::BadToken
            | Close::SignInsHeld { .. }
            | Close::Revoked
            | Close::ForbiddenDestination { .. }
            | Close::TooManySubscriptions { .. }
            | Close::SendRefused
            | Close::TransactionsRefused
            | Close::SlowConsumer
            | Close::TooManyConnections { .. } => code::POLICY_VIOLATION,
            Close::Unavailable => code::TRY_AGAIN_LATER,
            Close::Internal => code::INTERNAL_ERROR,
        }
    }

    /// A short reason for the transport's close frame (at most 123 bytes,
    /// as WebSocket allows).
    pub fn reason(&self) -> &'static str {
        self.message().unwrap_or("bye")
    }
}

impl From<crate::hub::Kick> for Close {
    fn from(kick: crate::hub::Kick) -> Self {
        use crate::hub::Kick;
        match kick {
            Kick::SlowConsumer => Close::SlowConsumer,
            Kick::Revoked => Close::Revoked,
            Kick::ServerRestart => Close::ServerRestart,
        }
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(m) => write!(f, "{m}: {}", self.detail()),
            None => f.write_str("client disconnected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_a_code_and_a_short_reason() {
        let all = [
            Close::Disconnected,
            Close::BadFrame(FrameError::MissingNul),
            Close::BadFrame(FrameError::TooLarge { limit: 10 }),
            Close::MessageTooLarge { limit: 10 },
            Close::NoiseBeforeConnect { limit: 4 },
            Close::NotConnected,
            Close::ConnectTimeout,
            Close::HeartbeatTimeout,
            Close::UnsupportedVersion,
            Close::NoToken,
            Close::OriginNotListed,
            Close::BadToken,
            Close::SignInsHeld { wait_secs: 3 },
            Close::Unavailable,
            Close::AlreadyConnected,
            Close::ForbiddenDestination {
                detail: "/x".into(),
            },
            Close::SubscribeWithoutId,
            Close::AckWithoutId,
            Close::BadAckMode,
            Close::DuplicateSubscription { id: "a".into() },
            Close::TooManySubscriptions { limit: 16 },
            Close::UnknownSubscription { id: "a".into() },
            Close::SendRefused,
            Close::TransactionsRefused,
            Close::ServerFrame(Command::Message),
            Close::SlowConsumer,
            Close::TooManyConnections {
                per: "token",
                limit: 8,
            },
            Close::Revoked,
            Close::ServerRestart,
            Close::Internal,
        ];
        for c in &all {
            assert!((1000..=1015).contains(&c.code()), "{c:?}");
            assert!(c.reason().len() <= 123, "{c:?}");
            assert_eq!(c.message().is_none(), *c == Close::Disconnected, "{c:?}");
        }
        assert_eq!(Close::ServerRestart.code(), 1001);
        assert_eq!(Close::BadFrame(FrameError::MissingNul).code(), 1002);
        assert_eq!(Close::BadToken.code(), 1008);
        assert_eq!(Close::MessageTooLarge { limit: 1 }.code(), 1009);
    }
}
