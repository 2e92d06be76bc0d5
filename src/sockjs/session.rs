//! SockJS sessions of the HTTP transports (`xhr`, `xhr_streaming`,
//! `xhr_send`): a session outlives each request, so it lives here, keyed
//! by the client's session id, and carries one STOMP connection
//! (`stomp::connection`) as its [`Transport`].
//!
//! Everything is bounded: sessions per client address and in all,
//! messages queued for a session (a full queue holds the STOMP side back,
//! and the tablet's own queue then applies the slow-consumer rule), and a
//! session's life without a receiver (`DISCONNECT_DELAY`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Close};
use crate::stomp::connection::{self, Inbound, Transport};
use crate::stomp::session::Handshake;

/// A session without a receiver for this long is closed; a closed one is
/// forgotten this long after it ended.
pub const DISCONNECT_DELAY: Duration = Duration::from_secs(5);
/// A receiver with nothing to say for this long sends `h`.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(25);
/// An `xhr_streaming` response ends after this many bytes, so the
/// browser can free what it has buffered; the client opens another.
pub const STREAMING_LIMIT: usize = 128 * 1024;
/// STOMP frames waiting for a receiver; when full, the STOMP side waits.
const MAX_QUEUED: usize = 64;
/// `xhr_send` batches waiting for the STOMP side.
const MAX_INBOUND: usize = 8;
/// Sessions one client address may hold at once.
pub const MAX_SESSIONS_PER_ADDRESS: usize = 256;
/// Sessions in all on this instance.
pub const MAX_SESSIONS: usize = 100_000;
/// How long a second receiver waits for the first to go before it is
/// refused with 2010: a client that aborts a request and opens the next at
/// once must not lose the race with the server noticing the abort.
const RECEIVER_GRACE: Duration = Duration::from_millis(250);

/// Every live HTTP-transport session of this instance.
pub struct Registry {
    sessions: Mutex<Sessions>,
    /// How client addresses are grouped for the per-address cap.
    group: crate::address::AddressGroup,
}

/// The sessions, and how many each address group holds (kept as sessions
/// come and go, so opening one costs the same at 10 or 100,000).
#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, Arc<XhrSession>>,
    per_address: HashMap<IpAddr, usize>,
}

impl Sessions {
    fn remove(&mut self, session: &Arc<XhrSession>, group: IpAddr) {
        if !self
            .by_id
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            return;
        }
        self.by_id.remove(&session.id);
        if let Some(n) = self.per_address.get_mut(&group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&group);
            }
        }
    }
}

/// Ends its session and forgets it when dropped: normally once the
/// session's close has been served for `DISCONNECT_DELAY`, but also when
/// its task unwinds from a panic or is aborted, so no session outlives its
/// task and counts against the caps.
struct Forget {
    registry: Arc<Registry>,
    session: Arc<XhrSession>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.session.close(Close::GoAway);
        let group = self.registry.group.of(self.session.peer);
        let mut sessions = self.registry.lock();
        sessions.remove(&self.session, group);
        crate::metrics::sockjs_sessions(sessions.by_id.len());
    }
}

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyFromAddress,
    TooMany,
}

impl Registry {
    pub fn new(group: crate::address::AddressGroup) -> Self {
        Registry {
            sessions: Mutex::new(Sessions::default()),
            group,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<XhrSession>> {
        self.lock().by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions holding frames no receiver has fetched yet (a stopping
    /// instance waits for these: a polling tablet between two polls gets
    /// its ERROR on the next one).
    pub fn undelivered(&self) -> usize {
        self.lock()
            .by_id
            .values()
            .filter(|s| !s.state().queue.is_empty())
            .count()
    }

    /// Sessions whose STOMP side has not finished. A stopping instance
    /// waits for these too: a tablet leaves the hub just before its ERROR
    /// is queued, and in between neither count above would hold it.
    pub fn running(&self) -> usize {
        self.lock()
            .by_id
            .values()
            .filter(|s| s.state().closed.is_none())
            .count()
    }

    /// The session `id`, or a new one whose STOMP connection starts now.
    /// The bool says whether it is new.
    pub fn open(
        self: &Arc<Self>,
        id: &str,
        peer: IpAddr,
        parts: connection::Parts,
        handshake: Handshake,
        service: Service,
    ) -> Result<(Arc<XhrSession>, bool), Refused> {
        let group = self.group.of(peer);
        let mut sessions = self.lock();
        if let Some(s) = sessions.by_id.get(id) {
            return Ok((s.clone(), false));
        }
        if sessions.by_id.len() >= MAX_SESSIONS {
            return Err(Refused::TooMany);
        }
        if sessions.per_address.get(&group).copied().unwrap_or(0) >= MAX_SESSIONS_PER_ADDRESS {
            return Err(Refused::TooManyFromAddress);
        }
        let (tx, rx) = mpsc::channel(MAX_INBOUND);
        let session = Arc::new(XhrSession {
            id: id.to_string(),
            peer,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: None,
                receiver: false,
                detached_at: Instant::now(),
            }),
            ready: Notify::new(),
            room: Notify::new(),
            detached: Notify::new(),
            ended: CancellationToken::new(),
            inbound: tx,
        });
        sessions.by_id.insert(id.to_string(), session.clone());
        *sessions.per_address.entry(group).or_insert(0) += 1;
        crate::metrics::sockjs_sessions(sessions.by_id.len());
        drop(sessions);

        let transport = XhrTransport {
            session: session.clone(),
            inbound: rx,
        };
        let forget = Forget {
            registry: self.clone(),
            session: session.clone(),
        };
        tokio::spawn(async move {
            let session = transport.session.clone();
            match service {
                Service::Stomp => connection::run(transport, parts, handshake).await,
                Service::Echo => echo(transport).await,
                Service::Close => {}
            }
            session.close(Close::GoAway);
            // Later requests get the close frame until the session is forgotten.
            tokio::time::sleep(DISCONNECT_DELAY).await;
            drop(forget);
        });
        Ok((session, true))
    }
}

/// One HTTP-transport session.
pub struct XhrSession {
    id: String,
    /// The client address that opened it; requests from another are
    /// treated as for an unknown session, so a leaked id is useless.
    pub peer: IpAddr,
    state: Mutex<State>,
    /// Wakes the receiver: messages queued, or the session closed.
    ready: Notify,
    /// Wakes the STOMP side: the receiver took messages.
    room: Notify,
    /// Wakes requests waiting to become the receiver: the receiver went.
    detached: Notify,
    /// Cancelled when the session closes (the STOMP side stops reading).
    ended: CancellationToken,
    /// Client messages for the STOMP side.
    inbound: mpsc::Sender<Vec<String>>,
}

struct State {
    /// STOMP frames (text) not yet handed to a receiver.
    queue: VecDeque<String>,
    /// Set once the session has ended: every receiver gets this.
    closed: Option<Close>,
    /// Whether a receiver is attached.
    receiver: bool,
    /// Since when no receiver is attached.
    detached_at: Instant,
}

/// What a receiver request gets right away.
pub enum Attach {
    /// This request is the session's receiver now.
    Receiver(ReceiverGuard),
    /// The session already has a receiver, or has closed: send this close
    /// frame and end the request.
    Refused(Close),
}

impl XhrSession {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, why: Close) {
        let mut st = self.state();
        if st.closed.is_none() {
            st.closed = Some(why);
        }
        drop(st);
        self.ended.cancel();
        self.ready.notify_one();
    }

    /// Makes the calling request the session's receiver; while another
    /// request is, waits `RECEIVER_GRACE` for it to go first.
    pub async fn attach(self: &Arc<Self>) -> Attach {
        let deadline = Instant::now() + RECEIVER_GRACE;
        loop {
            // Created before the check, so a detach in between wakes it.
            let gone = self.detached.notified();
            if !self.state().receiver {
                break;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                return Attach::Refused(Close::AnotherConnection);
            }
        }
        let mut st = self.state();
        if st.receiver {
            return Attach::Refused(Close::AnotherConnection);
        }
        // What the session said before it closed (its last ERROR) is
        // delivered first; the close frame comes on the next request.
        if let (Some(why), true) = (st.closed, st.queue.is_empty()) {
            return Attach::Refused(why);
        }
        st.receiver = true;
        Attach::Receiver(ReceiverGuard {
            session: self.clone(),
            finished: false,
        })
    }

    /// Hands a batch of client messages to the STOMP side; false when the
    /// session is gone or its side does not keep up.
    pub async fn deliver(&self, messages: Vec<String>) -> bool {
        if self.ended.is_cancelled() {
            return false;
        }
        matches!(
            tokio::time::timeout(DISCONNECT_DELAY * 2, self.inbound.send(messages)).await,
            Ok(Ok(()))
        )
    }
}

/// The attached receiver; when dropped before `finish`, the request was
/// cut off mid-way and the session closes as interrupted.
pub struct ReceiverGuard {
    session: Arc<XhrSession>,
    finished: bool,
}

/// What a receiver waits for next.
pub enum Next {
    /// A message frame `a[…]`.
    Messages(String),
    /// Nothing for `HEARTBEAT_EVERY`.
    Heartbeat,
    /// The session closed.
    Closed(Close),
}

impl ReceiverGuard {
    /// Waits for the next frame to write.
    pub async fn next(&self) -> Next {
        let deadline = Instant::now() + HEARTBEAT_EVERY;
        loop {
            {
                let mut st = self.session.state();
                if !st.queue.is_empty() {
                    let batch: Vec<String> = st.queue.drain(..).collect();
                    drop(st);
                    self.session.room.notify_one();
                    return Next::Messages(frame::messages(&batch));
                }
                if let Some(why) = st.closed {
                    return Next::Closed(why);
                }
            }
            tokio::select! {
                _ = self.session.ready.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Next::Heartbeat,
            }
        }
    }

    /// The request ends normally (its frame was written or its byte limit
    /// reached): the session waits for the next receiver.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for ReceiverGuard {
    fn drop(&mut self) {
        let mut st = self.session.state();
        st.receiver = false;
        st.detached_at = Instant::now();
        drop(st);
        self.session.detached.notify_waiters();
        if !self.finished {
            tracing::debug!(session = %self.session.id, "SockJS receiver cut off");
            self.session.close(Close::Interrupted);
        }
    }
}

/// The STOMP connection's side of a session.
struct XhrTransport {
    session: Arc<XhrSession>,
    inbound: mpsc::Receiver<Vec<String>>,
}

/// What runs inside a session: tablets' STOMP, or the protocol test
/// suite's services (test builds only, see `sockjs::router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Stomp,
    /// Sends every message back.
    Echo,
    /// Closes every session at once with 3000 "Go away!".
    Close,
}

async fn echo(mut transport: XhrTransport) {
    while let Some(messages) = transport.messages().await {
        for m in messages {
            if !transport.send(m).await {
                return;
            }
        }
    }
}

impl XhrTransport {
    /// The next batch of client messages; `None` once the session is over.
    async fn messages(&mut self) -> Option<Vec<String>> {
        loop {
            // Without a receiver the session lives `DISCONNECT_DELAY` more.
            let (receiver, since) = {
                let st = self.session.state();
                (st.receiver, st.detached_at)
            };
            let now = Instant::now();
            if !receiver && now >= since + DISCONNECT_DELAY {
                return None;
            }
            let check_at = if receiver {
                now + DISCONNECT_DELAY
            } else {
                since + DISCONNECT_DELAY
            };
            tokio::select! {
                m = self.inbound.recv() => return m,
                _ = self.session.ended.cancelled() => return None,
                _ = tokio::time::sleep_until(check_at) => {}
            }
        }
    }
}

impl Transport for XhrTransport {
    async fn recv(&mut self) -> Inbound {
        match self.messages().await {
            Some(m) => Inbound::Data(m.concat().into_bytes()),
            None => Inbound::Closed,
        }
    }

    async fn send(&mut self, text: String) -> bool {
        loop {
            {
                let mut st = self.session.state();
                if st.closed.is_some() {
                    return false;
                }
                if st.queue.len() < MAX_QUEUED {
                    st.queue.push_back(text);
                    drop(st);
                    self.session.ready.notify_one();
                    return true;
                }
            }
            tokio::select! {
                _ = self.session.room.notified() => {}
                _ = self.session.ended.cancelled() => return false,
            }
        }
    }

    async fn close(&mut self) {
        self.session.close(Close::GoAway);
    }
}
