//! One tablet's STOMP session: CONNECT with a tablet token, SUBSCRIBE to
//! its own store only, ACK/NACK, RECEIPT, DISCONNECT, and ERROR-then-close
//! for everything else. Independent of the transport: the WebSocket task
//! feeds it decoded frames and writes what it answers.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::frame::{Command, Frame, FrameError, Item, Version};
use crate::hub::{AckKind, CloseReason, Hub, Prepared, Tablet};
use crate::metrics as m;

/// Popups with less time than this left are not sent: by the time they
/// reach the tablet they would be past `expiresAt`.
const STALE_MARGIN: chrono::Duration = chrono::Duration::milliseconds(250);

/// The destination prefix of a store's calls.
pub const DESTINATION_PREFIX: &str = "/topic/call-store/";

/// What the transport should do after a step.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<Frame>,
    /// Close the connection once `send` is written.
    pub close: bool,
}

impl Step {
    fn send(frame: Frame) -> Self {
        Step {
            send: vec![frame],
            close: false,
        }
    }

    fn error(message: &str, detail: &str, receipt: Option<&str>) -> Self {
        Step {
            send: vec![error_frame(message, detail, receipt)],
            close: true,
        }
    }
}

/// An ERROR frame: `message` header, plain-text detail as the body.
pub fn error_frame(message: &str, detail: &str, receipt: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Error)
        .header("message", message)
        .header("content-type", "text/plain");
    if let Some(r) = receipt {
        f = f.header("receipt-id", r);
    }
    f.with_body(detail.as_bytes().to_vec())
}

/// Where the tablet's token may come from besides the CONNECT frame.
#[derive(Debug, Default, Clone)]
pub struct Handshake {
    /// Version named by the negotiated WebSocket subprotocol.
    pub subprotocol: Option<Version>,
    /// `?access_token=` on the WebSocket URL.
    pub url_token: Option<String>,
    /// `Authorization: Bearer` on the upgrade request.
    pub header_token: Option<String>,
}

/// Agreed heart-beat intervals, zero meaning none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often the server sends an EOL when otherwise silent.
    pub send_every: Duration,
    /// The client's interval; silence beyond twice this closes the connection.
    pub expect_every: Duration,
}

/// STOMP heart-beat negotiation: `client` is the CONNECT header `cx,cy`,
/// `server` our own interval for both directions.
pub fn negotiate_heartbeat(client: Option<&str>, server: Duration) -> Heartbeat {
    let (cx, cy) = client
        .and_then(|h| h.split_once(','))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .unwrap_or((0, 0));
    let s = server.as_millis() as u64;
    let pick = |ours: u64, theirs: u64| {
        if ours == 0 || theirs == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(ours.max(theirs))
        }
    };
    Heartbeat {
        send_every: pick(s, cy),
        expect_every: pick(s, cx),
    }
}

pub struct Session {
    hub: Arc<Hub>,
    handshake: Handshake,
    id: String,
    version: Version,
    tablet: Option<Arc<Tablet>>,
    heartbeat: Heartbeat,
    next_message: u64,
}

impl Session {
    pub fn new(hub: Arc<Hub>, handshake: Handshake) -> Self {
        Session {
            hub,
            handshake,
            id: format!("s-{}", uuid::Uuid::new_v4().simple()),
            version: Version::V1_2,
            tablet: None,
            heartbeat: Heartbeat::default(),
            next_message: 0,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat
    }

    pub fn tablet(&self) -> Option<&Arc<Tablet>> {
        self.tablet.as_ref()
    }

    /// A frame the decoder could not read: ERROR naming it, then close.
    pub fn bad_frame(&self, err: &FrameError) -> Step {
        Step::error(err.summary(), &err.to_string(), None)
    }

    pub async fn handle(&mut self, item: Item) -> Step {
        let frame = match item {
            Item::Heartbeat => return Step::default(),
            Item::Frame(f) => f,
        };
        let receipt = frame.get("receipt").map(str::to_string);
        let mut step = match (&self.tablet, frame.command) {
            (None, Command::Connect | Command::Stomp) => return self.connect(&frame).await,
            (None, _) => {
                return Step::error(
                    "not connected",
                    "the first frame must be CONNECT or STOMP",
                    receipt.as_deref(),
                )
            }
            (Some(_), Command::Connect | Command::Stomp) => Step::error(
                "already connected",
                "CONNECT was sent twice",
                receipt.as_deref(),
            ),
            (Some(_), Command::Subscribe) => self.subscribe(&frame),
            (Some(_), Command::Unsubscribe) => self.unsubscribe(&frame),
            (Some(_), Command::Ack) => self.ack(&frame, true).await,
            (Some(_), Command::Nack) => self.ack(&frame, false).await,
            (Some(_), Command::Disconnect) => Step {
                send: Vec::new(),
                close: true,
            },
            (Some(_), Command::Send) => Step::error(
                "SEND is not accepted",
                "tablets only receive; save reservations over the HTTP API",
                receipt.as_deref(),
            ),
            (Some(_), Command::Begin | Command::Commit | Command::Abort) => Step::error(
                "transactions are not supported",
                "BEGIN, COMMIT and ABORT are not accepted",
                receipt.as_deref(),
            ),
            (Some(_), other) => Step::error(
                "unexpected command",
                &format!("{} is a server frame", other.as_str()),
                receipt.as_deref(),
            ),
        };
        let failed = step.send.iter().any(|f| f.command == Command::Error);
        if let (Some(r), false) = (receipt, failed) {
            step.send
                .push(Frame::new(Command::Receipt).header("receipt-id", r));
        }
        step
    }

    async fn connect(&mut self, frame: &Frame) -> Step {
        let version = match frame.get("accept-version") {
            Some(list) => match list.split(',').filter_map(Version::parse).max() {
                Some(v) => v,
                None => {
                    let mut f = error_frame(
                        "unsupported version",
                        "supported versions are 1.0, 1.1 and 1.2",
                        None,
                    );
                    f.headers.push(("version".into(), "1.0,1.1,1.2".into()));
                    return Step {
                        send: vec![f],
                        close: true,
                    };
                }
            },
            None => self.handshake.subprotocol.unwrap_or(Version::V1_0),
        };
        self.version = version;

        let bearer = frame
            .get("Authorization")
            .or_else(|| frame.get("authorization"))
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = frame
            .get("passcode")
            .filter(|p| !p.is_empty())
            .or(bearer)
            .or(self.handshake.url_token.as_deref())
            .or(self.handshake.header_token.as_deref())
            .map(str::trim)
            .map(str::to_string);
        let Some(token) = token else {
            return Step::error("unauthorized", "a tablet token is required", None);
        };
        let info = match self.hub.db().token_verify(&token).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return Step::error("unauthorized", "unknown or revoked tablet token", None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "token check failed");
                return Step::error("unavailable", "try again shortly", None);
            }
        };
        self.heartbeat =
            negotiate_heartbeat(frame.get("heart-beat"), self.hub.config().stomp.heartbeat);
        let tablet = self.hub.register(&info.store, &info.id);
        tracing::info!(store = %info.store, token = %info.id, session = %self.id, version = version.as_str(), "tablet connected");
        self.tablet = Some(tablet);
        Step::send(
            Frame::new(Command::Connected)
                .header("version", version.as_str())
                .header(
                    "heart-beat",
                    format!(
                        "{},{}",
                        self.heartbeat.send_every.as_millis(),
                        self.heartbeat.expect_every.as_millis()
                    ),
                )
                .header("session", self.id.clone())
                .header("server", format!("bizcall/{}", env!("CARGO_PKG_VERSION")))
                .header("user-name", info.store),
        )
    }

    fn subscribe(&mut self, frame: &Frame) -> Step {
        let Some(tablet) = &self.tablet else {
            return Step::default();
        };
        let receipt = frame.get("receipt");
        let destination = frame.get("destination").unwrap_or("");
        let own = format!("{DESTINATION_PREFIX}{}", tablet.store);
        if destination != own {
            tracing::warn!(store = %tablet.store, destination, "tablet asked for another destination");
            return Step::error(
                "forbidden destination",
                &format!("this tablet may subscribe to {own} only"),
                receipt,
            );
        }
        let Some(id) = frame.get("id").filter(|i| !i.is_empty()) else {
            if self.version == Version::V1_0 {
                // 1.0 made the id optional: one subscription per destination.
                return self.add_subscription(destination.to_string(), frame);
            }
            return Step::error("missing id", "SUBSCRIBE needs an id header", receipt);
        };
        self.add_subscription(id.to_string(), frame)
    }

    fn add_subscription(&mut self, id: String, frame: &Frame) -> Step {
        let Some(tablet) = &self.tablet else {
            return Step::default();
        };
        let receipt = frame.get("receipt");
        let Some(kind) = AckKind::parse(frame.get("ack").unwrap_or("auto")) else {
            return Step::error(
                "bad ack mode",
                "ack must be auto, client or client-individual",
                receipt,
            );
        };
        let mut subs = tablet.subscriptions();
        if subs.contains_key(&id) {
            return Step::error(
                "duplicate subscription",
                &format!("id {id} is in use"),
                receipt,
            );
        }
        if subs.len() >= 16 {
            return Step::error(
                "too many subscriptions",
                "at most 16 per connection",
                receipt,
            );
        }
        subs.insert(id, kind);
        Step::default()
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Step {
        let Some(tablet) = &self.tablet else {
            return Step::default();
        };
        let id = frame.get("id").or(frame.get("destination")).unwrap_or("");
        if tablet.subscriptions().remove(id).is_none() {
            return Step::error(
                "unknown subscription",
                &format!("no subscription {id:?}"),
                frame.get("receipt"),
            );
        }
        tablet.ack_book().forget(id);
        Step::default()
    }

    async fn ack(&mut self, frame: &Frame, positive: bool) -> Step {
        let Some(tablet) = self.tablet.clone() else {
            return Step::default();
        };
        let Some(ack_id) = frame.get("id").or(frame.get("message-id")) else {
            return Step::error(
                "missing id",
                "ACK and NACK need an id header",
                frame.get("receipt"),
            );
        };
        let calls = {
            let kinds = tablet.subscriptions().clone();
            tablet.ack_book().settle(ack_id, &kinds)
        };
        if !positive {
            return Step::default();
        }
        for call in calls {
            m::popup_acked();
            match self
                .hub
                .db()
                .acknowledge_call(&call, &tablet.store, &tablet.token_id)
                .await
            {
                Ok(true) => {
                    tracing::info!(call = %call, store = %tablet.store, token = %tablet.token_id, "popup acknowledged")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(call = %call, error = %e, "could not store the acknowledgement")
                }
            }
            self.hub.popup_acked(&call);
        }
        Step::default()
    }

    /// The MESSAGE frames for one popup, one per subscription; none when it
    /// has expired.
    pub fn popup(&mut self, event: &Prepared) -> Vec<Frame> {
        let Some(tablet) = self.tablet.clone() else {
            return Vec::new();
        };
        let now = Utc::now();
        // A popup about to expire would reach the tablet after it: drop it.
        if !event.is_live(now + STALE_MARGIN) {
            m::popup_expired();
            return Vec::new();
        }
        let destination = format!("{DESTINATION_PREFIX}{}", tablet.store);
        let body = &event.json;
        let subs: Vec<(String, AckKind)> = tablet
            .subscriptions()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut frames = Vec::with_capacity(subs.len());
        for (sub, kind) in subs {
            self.next_message += 1;
            let message_id = format!("{}-{}", event.call_id, self.next_message);
            let mut f = Frame::new(Command::Message)
                .header("destination", destination.clone())
                .header("subscription", sub.clone())
                .header("message-id", message_id.clone())
                .header("content-type", "application/json");
            if kind != AckKind::Auto {
                if self.version == Version::V1_2 {
                    f = f.header("ack", message_id.clone());
                }
                tablet
                    .ack_book()
                    .record(&sub, message_id, event.call_id.clone());
            }
            frames.push(f.with_body(body.clone().into_bytes()));
        }
        let latency = (now - event.published_at).to_std().unwrap_or_default();
        for _ in &frames {
            m::popup_sent(latency);
        }
        frames
    }

    /// The ERROR frame for a server-side close.
    pub fn closing(&self, reason: &CloseReason) -> Frame {
        error_frame(reason.message(), reason.detail(), None)
    }

    /// Leaves the hub (the connection has ended).
    pub fn end(&mut self) {
        if let Some(t) = self.tablet.take() {
            self.hub.unregister(&t);
            tracing::info!(store = %t.store, session = %self.id, "tablet disconnected");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_negotiation_follows_the_spec() {
        let s = Duration::from_secs(10);
        let hb = negotiate_heartbeat(Some("4000,20000"), s);
        assert_eq!(hb.send_every, Duration::from_secs(20));
        assert_eq!(hb.expect_every, Duration::from_secs(10));
        let hb = negotiate_heartbeat(Some("0,0"), s);
        assert_eq!(hb, Heartbeat::default());
        let hb = negotiate_heartbeat(None, s);
        assert_eq!(hb, Heartbeat::default());
        let hb = negotiate_heartbeat(Some("junk"), s);
        assert_eq!(hb, Heartbeat::default());
        let hb = negotiate_heartbeat(Some("30000,0"), s);
        assert_eq!(hb.send_every, Duration::ZERO);
        assert_eq!(hb.expect_every, Duration::from_secs(30));
    }
}
