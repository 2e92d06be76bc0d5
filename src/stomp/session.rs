//! One tablet's STOMP session: CONNECT with a tablet token, SUBSCRIBE to
//! its own store only, ACK/NACK, RECEIPT, DISCONNECT, and ERROR-then-close
//! for everything else. Independent of the transport: the WebSocket task
//! feeds it decoded frames and writes what it answers.

use std::sync::Arc;
use std::time::Duration;

use super::close::Close;
use super::frame::{Command, Frame, Item, Version};
use crate::auth::{bearer_token, Surface};
use crate::call::EventKind;
use crate::delivery::Delivery;
use crate::hub::{Hub, Tablet};
use crate::metrics as m;
use crate::prepared::Prepared;
use crate::subscription::{AckKind, Subscription};

/// Popups with less time than this left are not sent: by the time they
/// reach the tablet they would be past `expiresAt`.
const STALE_MARGIN: chrono::Duration = chrono::Duration::milliseconds(250);

/// The destination prefix of a store's calls.
pub const DESTINATION_PREFIX: &str = "/topic/call-store/";

/// The Spring service's destination prefix: the same calls, in its body
/// shape (`fromNumber`, `stardDate`), call popups only.
pub const LEGACY_PREFIX: &str = "/ws/v1/topic/call-store/";

/// End-of-lines accepted before CONNECT; a client has no reason to send
/// any, so more than a few end the connection.
pub const MAX_EOLS_BEFORE_CONNECT: usize = 8;

/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 16;

/// Who acknowledged a popup, when a tablet without a token did.
const ANONYMOUS: &str = "anonymous";

/// The store a destination names, and whether it is the legacy one.
fn parse_destination(destination: &str) -> Option<(&str, bool)> {
    let (store, legacy) = if let Some(s) = destination.strip_prefix(LEGACY_PREFIX) {
        (s, true)
    } else {
        (destination.strip_prefix(DESTINATION_PREFIX)?, false)
    };
    crate::slug::is_valid(store).then_some((store, legacy))
}

/// What the transport should do after a step.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<Frame>,
    /// Close the connection, for this reason, once `send` is written.
    pub close: Option<Close>,
}

impl Step {
    fn send(frame: Frame) -> Self {
        Step {
            send: vec![frame],
            close: None,
        }
    }

    /// ERROR naming `why` (when it sends one), then close.
    pub fn end(why: Close, receipt: Option<&str>) -> Self {
        Step {
            send: error_frame(&why, receipt).into_iter().collect(),
            close: Some(why),
        }
    }
}

/// The ERROR frame for an ending (`message` header, plain-text detail as
/// the body); none for a client that left by itself.
pub fn error_frame(why: &Close, receipt: Option<&str>) -> Option<Frame> {
    let message = why.message()?;
    let mut f = Frame::new(Command::Error)
        .header("message", message)
        .header("content-type", "text/plain");
    if let Some(r) = receipt {
        f = f.header("receipt-id", r);
    }
    if *why == Close::UnsupportedVersion {
        f = f.header("version", "1.0,1.1,1.2");
    }
    Some(f.with_body(why.detail().into_bytes()))
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
    /// The browser's `Origin`, for token-less tablets (`compat.anonymous`).
    pub origin: Option<String>,
    /// The client's address (behind trusted proxies), for failed sign-ins.
    pub client: Option<std::net::IpAddr>,
    /// Counts failed sign-ins and refuses an address that fails too often.
    pub logins: Option<Arc<crate::auth::LoginGuard>>,
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

/// A session's id, `s-` and 32 hex digits (CONNECTED's `session` header,
/// and logs); kept as a number, not a string, for each tablet's whole life.
#[derive(Debug, Clone, Copy)]
struct SessionId([u64; 2]);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s-{:016x}{:016x}", self.0[0], self.0[1])
    }
}

pub struct Session {
    hub: Arc<Hub>,
    /// Where this tablet's "I took it" goes to the store's other tablets.
    delivery: Arc<Delivery>,
    /// The token's label: who took a call, as the other tablets see it.
    label: String,
    /// Until connected: then it is dropped, secret and all (and it costs
    /// an idle tablet nothing).
    handshake: Option<Box<Handshake>>,
    id: SessionId,
    version: Version,
    tablet: Option<Arc<Tablet>>,
    heartbeat: Heartbeat,
    next_message: u64,
    /// End-of-lines received before CONNECT.
    eols_before_connect: usize,
}

impl Session {
    pub fn new(hub: Arc<Hub>, delivery: Arc<Delivery>, handshake: Handshake) -> Self {
        Session {
            hub,
            delivery,
            label: String::new(),
            handshake: Some(Box::new(handshake)),
            id: SessionId(uuid::Uuid::new_v4().as_u64_pair().into()),
            version: Version::V1_2,
            tablet: None,
            heartbeat: Heartbeat::default(),
            next_message: 0,
            eols_before_connect: 0,
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

    pub async fn handle(&mut self, item: Item) -> Step {
        let frame = match item {
            Item::Heartbeat if self.tablet.is_none() => {
                self.eols_before_connect += 1;
                if self.eols_before_connect > MAX_EOLS_BEFORE_CONNECT {
                    return Step::end(
                        Close::NoiseBeforeConnect {
                            limit: MAX_EOLS_BEFORE_CONNECT,
                        },
                        None,
                    );
                }
                return Step::default();
            }
            Item::Heartbeat => return Step::default(),
            Item::Frame(f) => f,
        };
        let receipt = frame.get("receipt").map(str::to_string);
        let mut step = match (&self.tablet, frame.command) {
            (None, Command::Connect | Command::Stomp) => return self.connect(&frame).await,
            (None, _) => return Step::end(Close::NotConnected, receipt.as_deref()),
            (Some(_), Command::Connect | Command::Stomp) => {
                Step::end(Close::AlreadyConnected, receipt.as_deref())
            }
            (Some(_), Command::Subscribe) => self.subscribe(&frame).await,
            (Some(_), Command::Unsubscribe) => self.unsubscribe(&frame),
            (Some(_), Command::Ack) => self.ack(&frame, true).await,
            (Some(_), Command::Nack) => self.ack(&frame, false).await,
            (Some(_), Command::Disconnect) => Step {
                send: Vec::new(),
                close: Some(Close::Disconnected),
            },
            (Some(_), Command::Send) => Step::end(Close::SendRefused, receipt.as_deref()),
            (Some(_), Command::Begin | Command::Commit | Command::Abort) => {
                Step::end(Close::TransactionsRefused, receipt.as_deref())
            }
            (Some(_), other) => Step::end(Close::ServerFrame(other), receipt.as_deref()),
        };
        let failed = step.close.as_ref().is_some_and(|c| c.message().is_some());
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
                None => return Step::end(Close::UnsupportedVersion, None),
            },
            None => self.handshake().subprotocol.unwrap_or(Version::V1_0),
        };
        self.version = version;

        let client = self
            .handshake()
            .client
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let logins = self.handshake().logins.clone();
        let failed = |why: &str| {
            if let Some(g) = &logins {
                g.failed(Surface::Stomp, client, why);
            }
        };
        if let Some(Err(wait)) = logins.as_ref().map(|g| g.check(Surface::Stomp, client)) {
            return Step::end(
                Close::SignInsHeld {
                    wait_secs: wait.as_secs().max(1),
                },
                None,
            );
        }
        let bearer = frame
            .get("Authorization")
            .or_else(|| frame.get("authorization"))
            .and_then(bearer_token);
        let token = frame
            .get("passcode")
            .filter(|p| !p.is_empty())
            .or(bearer)
            .or(self.handshake().url_token.as_deref())
            .or(self.handshake().header_token.as_deref())
            .map(str::trim)
            .map(str::to_string);
        let Some(token) = token else {
            let step = self.connect_anonymous(frame, version);
            if self.tablet.is_none() {
                failed("no tablet token");
            }
            return step;
        };
        let info = match self.delivery.verify_token(&token).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                failed("unknown or revoked token");
                return Step::end(Close::BadToken, None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "token check failed");
                return Step::end(Close::Unavailable, None);
            }
        };
        self.heartbeat =
            negotiate_heartbeat(frame.get("heart-beat"), self.hub.config().stomp.heartbeat);
        let tablet = match self
            .hub
            .register(&info.store, &info.id, self.handshake().client)
        {
            Ok(tablet) => tablet,
            Err(crowded) => return Step::end(crowded_close(crowded, &info.id), None),
        };
        self.label = info.label.clone();
        tracing::info!(store = %info.store, token = %info.id, session = %self.id, version = version.as_str(), "tablet connected");
        self.tablet = Some(tablet);
        self.forget_credentials();
        Step::send(self.connected(version, &info.store))
    }

    /// Once connected, the handshake's token and origin are not needed:
    /// the secret is not kept in memory for the tablet's whole life, nor
    /// the bytes.
    fn forget_credentials(&mut self) {
        self.handshake = None;
    }

    /// The upgrade request's part of the sign-in (empty once connected).
    fn handshake(&self) -> &Handshake {
        static FORGOTTEN: Handshake = Handshake {
            subprotocol: None,
            url_token: None,
            header_token: None,
            origin: None,
            client: None,
            logins: None,
        };
        self.handshake.as_deref().unwrap_or(&FORGOTTEN)
    }

    /// A CONNECT without credentials: accepted only with `compat.anonymous`
    /// from a browser on `stomp.allowed_origins`.
    fn connect_anonymous(&mut self, frame: &Frame, version: Version) -> Step {
        let config = self.hub.config();
        if !config.compat.anonymous {
            return Step::end(Close::NoToken, None);
        }
        let listed = self
            .handshake()
            .origin
            .as_deref()
            .is_some_and(|o| config.stomp.origin_listed(o));
        if !listed {
            tracing::warn!(origin = ?self.handshake().origin, "token-less CONNECT from an origin not in stomp.allowed_origins");
            return Step::end(Close::OriginNotListed, None);
        }
        self.heartbeat = negotiate_heartbeat(frame.get("heart-beat"), config.stomp.heartbeat);
        let tablet = match self.hub.register_anonymous(self.handshake().client) {
            Ok(tablet) => tablet,
            Err(crowded) => return Step::end(crowded_close(crowded, ANONYMOUS), None),
        };
        tracing::info!(origin = ?self.handshake().origin, session = %self.id, version = version.as_str(), "anonymous tablet connected");
        self.tablet = Some(tablet);
        self.forget_credentials();
        Step::send(self.connected(version, ANONYMOUS))
    }

    fn connected(&self, version: Version, user: &str) -> Frame {
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
            .header("session", self.id.to_string())
            .header("server", format!("bizcall/{}", env!("CARGO_PKG_VERSION")))
            .header("user-name", user)
    }

    async fn subscribe(&mut self, frame: &Frame) -> Step {
        let Some(tablet) = self.tablet.clone() else {
            return Step::default();
        };
        let receipt = frame.get("receipt");
        let destination = frame.get("destination").unwrap_or("");
        let parsed = parse_destination(destination);
        let allowed = match parsed {
            // Anonymous tablets follow, in the Spring service's shape only,
            // stores that exist and that the operator opted in.
            Some((store, legacy)) if tablet.anonymous => {
                if !legacy {
                    false
                } else {
                    match self.delivery.store_takes_anonymous(store).await {
                        Ok(Some(true)) => true,
                        Ok(_) => {
                            tracing::warn!(destination, "token-less tablet asked for a store that is not opted in for tablets without a token");
                            let detail = format!(
                                "store {store:?} does not take tablets without a token (the operator opts a store in)"
                            );
                            return Step::end(Close::ForbiddenDestination { detail }, receipt);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not check a store for token-less tablets");
                            return Step::end(Close::Unavailable, receipt);
                        }
                    }
                }
            }
            Some((store, _)) => store == tablet.store,
            None => false,
        };
        let Some((store, legacy)) = parsed.filter(|_| allowed) else {
            tracing::warn!(store = %tablet.store, destination, "tablet asked for another destination");
            let detail = if tablet.anonymous {
                format!("a tablet without a token may subscribe to {LEGACY_PREFIX}<store> only")
            } else {
                format!(
                    "this tablet may subscribe to {DESTINATION_PREFIX}{0} or {LEGACY_PREFIX}{0} only",
                    tablet.store
                )
            };
            return Step::end(Close::ForbiddenDestination { detail }, receipt);
        };
        let id = match frame.get("id").filter(|i| !i.is_empty()) {
            Some(id) => id.to_string(),
            // 1.0 made the id optional: one subscription per destination.
            None if self.version == Version::V1_0 => destination.to_string(),
            None => return Step::end(Close::SubscribeWithoutId, receipt),
        };
        let store = store.to_string();
        self.add_subscription(id, store, legacy, frame)
    }

    fn add_subscription(&mut self, id: String, store: String, legacy: bool, frame: &Frame) -> Step {
        let Some(tablet) = self.tablet.clone() else {
            return Step::default();
        };
        let receipt = frame.get("receipt");
        let Some(kind) = AckKind::parse(frame.get("ack").unwrap_or("auto")) else {
            return Step::end(Close::BadAckMode, receipt);
        };
        let mut subs = tablet.subscriptions();
        if subs.contains_key(&id) {
            return Step::end(Close::DuplicateSubscription { id }, receipt);
        }
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return Step::end(
                Close::TooManySubscriptions {
                    limit: MAX_SUBSCRIPTIONS,
                },
                receipt,
            );
        }
        if tablet.anonymous {
            self.hub.join(&tablet, &store);
        }
        subs.insert(
            id,
            Subscription {
                ack: kind,
                store,
                legacy,
            },
        );
        Step::default()
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Step {
        let Some(tablet) = &self.tablet else {
            return Step::default();
        };
        let id = frame.get("id").or(frame.get("destination")).unwrap_or("");
        if tablet.subscriptions().remove(id).is_none() {
            return Step::end(
                Close::UnknownSubscription { id: id.to_string() },
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
            return Step::end(Close::AckWithoutId, frame.get("receipt"));
        };
        let settled = {
            let subs = tablet.subscriptions().clone();
            tablet
                .ack_book()
                .settle(ack_id, &subs)
                .and_then(|(sub, calls)| Some((subs.get(&sub)?.store.clone(), calls)))
        };
        let Some((store, calls)) = settled.filter(|_| positive) else {
            return Step::default();
        };
        if tablet.anonymous {
            // Read-only: the bus may forget the message, but the call is not
            // marked acknowledged and no other tablet hears of it.
            for call in calls.into_iter().filter(|c| !c.is_empty()) {
                self.delivery.popup_acked(&call);
            }
            return Step::default();
        }
        for call in calls.into_iter().filter(|c| !c.is_empty()) {
            if self
                .delivery
                .acknowledge(&call, &store, &tablet.token_id, &self.label)
                .await
            {
                tablet.took(&call);
            }
        }
        Step::default()
    }

    /// The MESSAGE frames for one popup, one per subscription; none when it
    /// has expired.
    pub fn popup(&mut self, event: &Prepared) -> Vec<Frame> {
        let Some(tablet) = self.tablet.clone() else {
            return Vec::new();
        };
        let now = crate::clock::now();
        // A popup about to expire would reach the tablet after it: drop it.
        if !event.is_live(now + STALE_MARGIN) {
            m::popup_expired();
            return Vec::new();
        }
        let subs: Vec<(String, Subscription)> = tablet
            .subscriptions()
            .iter()
            .filter(|(_, s)| s.store == event.store())
            // The Spring service's tablets know only call popups.
            .filter(|(_, s)| !s.legacy || event.kind() == EventKind::Call)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut frames = Vec::with_capacity(subs.len());
        for (sub, Subscription { ack, store, legacy }) in subs {
            self.next_message += 1;
            let message_id = format!("{}-{}", event.call_id(), self.next_message);
            // The legacy body is written only for a tablet that needs it.
            let (prefix, body) = match legacy {
                true => match event.legacy_json() {
                    Some(body) => (LEGACY_PREFIX, body),
                    None => continue,
                },
                false => (DESTINATION_PREFIX, event.json.as_str()),
            };
            let mut f = Frame::new(Command::Message)
                .header("destination", format!("{prefix}{store}"))
                .header("subscription", sub.clone())
                .header("message-id", message_id.clone())
                .header("content-type", "application/json");
            if ack != AckKind::Auto {
                if self.version == Version::V1_2 {
                    f = f.header("ack", message_id.clone());
                }
                // Acknowledging a handled event takes nothing: it is
                // booked without a call.
                let call = match event.kind() {
                    EventKind::Call => event.call_id().to_string(),
                    EventKind::Handled => String::new(),
                };
                tablet.ack_book().record(&sub, message_id, call);
            }
            frames.push(f.with_body(body.as_bytes().to_vec()));
        }
        if event.kind() == EventKind::Call {
            let latency = (now - event.published_at()).to_std().unwrap_or_default();
            // The bus leg, from the publish header's microseconds.
            let leg = event.published_us().map(|us| {
                let us = now.timestamp_micros().saturating_sub(us).max(0);
                std::time::Duration::from_micros(us as u64)
            });
            for _ in &frames {
                m::popup_sent(latency);
                if let Some(leg) = leg {
                    m::bus_leg(leg);
                }
            }
        }
        frames
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

/// The ending for a tablet the hub refused, counted and logged within a
/// budget (a client that retries in a loop must not fill the log).
fn crowded_close(crowded: crate::hub::Crowded, token: &str) -> Close {
    use crate::hub::Crowded;
    static LOG: crate::log_budget::LogBudget =
        crate::log_budget::LogBudget::new("tablet refused: too many connections");
    let (per, limit, reason) = match crowded {
        Crowded::Token { limit } => ("token", limit, "tablets_per_token"),
        Crowded::Address { limit } => ("address", limit, "tablets_per_address"),
    };
    m::connection_refused(reason);
    if LOG.admit() {
        tracing::warn!(token, per, limit, "tablet refused: too many connections");
    }
    Close::TooManyConnections { per, limit }
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
