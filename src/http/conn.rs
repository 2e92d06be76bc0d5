//! What one accepted TCP connection may hold, and for how long: the cap on
//! open connections per listener, the cap per client address on
//! connections that have not (yet) become a connected tablet, and the
//! header-read and idle keep-alive timeouts of HTTP.
//!
//! A connection holds an [`OpenSlot`] for as long as its socket lives (a
//! WebSocket included) and, until its STOMP CONNECT succeeds, a
//! [`PendingSlot`] for its client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The caps of one listener.
#[derive(Debug)]
pub struct Limits {
    open: AtomicUsize,
    /// Requests whose handler is running, on every connection.
    requests: AtomicUsize,
    max_open: usize,
    pending: Mutex<HashMap<IpAddr, usize>>,
    /// 0 turns the per-address cap off.
    max_pending_per_address: usize,
}

impl Limits {
    pub fn new(max_open: usize, max_pending_per_address: usize) -> Arc<Self> {
        Arc::new(Limits {
            open: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            max_open,
            pending: Mutex::new(HashMap::new()),
            max_pending_per_address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests being handled now (a long poll counts until it answers).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// A slot for one more connection, unless the cap is reached.
    pub fn try_open(self: &Arc<Self>) -> Option<OpenSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_open).then_some(n + 1)
            });
        taken.ok().map(|_| OpenSlot(self.clone()))
    }

    /// A slot for one more not-yet-connected connection from `addr`, unless
    /// that address holds its share already.
    pub fn try_pending(self: &Arc<Self>, addr: IpAddr) -> Option<PendingSlot> {
        let addr = canonical(addr);
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(addr).or_insert(0);
        if self.max_pending_per_address != 0 && *n >= self.max_pending_per_address {
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            limits: self.clone(),
            addr,
        })
    }

    /// Not-yet-connected connections from `addr` now.
    pub fn pending(&self, addr: IpAddr) -> usize {
        let map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&canonical(addr)).copied().unwrap_or(0)
    }
}

/// IPv4 addresses mapped into IPv6 count as the IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// One open connection; released when dropped.
#[derive(Debug)]
pub struct OpenSlot(Arc<Limits>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One not-yet-connected connection of an address; released when dropped.
#[derive(Debug)]
pub struct PendingSlot {
    limits: Arc<Limits>,
    addr: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// HTTP timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the connection's start, or from the first byte of a request,
    /// until its headers are complete.
    pub header: Duration,
    /// Between the end of one response and the first byte of the next
    /// request on a kept-alive connection.
    pub idle: Duration,
    /// From a request's headers to the end of its body.
    pub body: Duration,
}

/// One accepted connection as its requests see it (a request extension).
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    limits: Arc<Limits>,
    pending: Mutex<Option<PendingSlot>>,
    state: Mutex<Phase>,
    in_flight: AtomicUsize,
    /// Bytes have arrived since the last request's headers.
    reading_head: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    /// No request yet: the header timeout runs from the start.
    first: bool,
    /// When the connection last became idle (its start, or a response).
    idle_since: Instant,
    /// When the first byte of the current request arrived.
    head_since: Option<Instant>,
}

impl Conn {
    pub fn new(peer: SocketAddr, limits: Arc<Limits>, pending: Option<PendingSlot>) -> Arc<Self> {
        Arc::new(Conn {
            peer,
            limits,
            pending: Mutex::new(pending),
            state: Mutex::new(Phase {
                first: true,
                idle_since: Instant::now(),
                head_since: None,
            }),
            in_flight: AtomicUsize::new(0),
            reading_head: AtomicBool::new(false),
        })
    }

    /// The connection became a connected tablet: it no longer counts
    /// against its address's share of not-yet-connected connections.
    pub fn connected(&self) {
        drop(self.lock_pending().take());
    }

    /// Counts the connection against `client`'s share (the address found
    /// behind a trusted proxy). False when that share is used up. A
    /// connection counted already (by its peer address) stays as it is.
    pub fn pend_as(&self, client: IpAddr) -> bool {
        let mut pending = self.lock_pending();
        if pending.is_some() {
            return true;
        }
        match self.limits.try_pending(client) {
            Some(slot) => {
                *pending = Some(slot);
                true
            }
            None => false,
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<PendingSlot>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived on the socket.
    pub(crate) fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.phase().head_since = Some(Instant::now());
        }
    }

    /// A request's headers are complete and its handler starts.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.limits.requests.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        let mut p = self.phase();
        p.first = false;
        p.head_since = None;
    }

    /// A request's handler has answered.
    pub(crate) fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.limits.requests.fetch_sub(1, Ordering::AcqRel);
        self.phase().idle_since = Instant::now();
    }

    /// When the connection must be closed if nothing changes; `None` while a
    /// request is being handled.
    pub(crate) fn deadline(&self, t: Timeouts) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let p = *self.phase();
        Some(match p.head_since {
            Some(since) => since + t.header,
            None if p.first => p.idle_since + t.header,
            None => p.idle_since + t.idle,
        })
    }
}

/// The socket of one connection, telling its [`Conn`] when bytes arrive,
/// and holding its open slot for as long as it lives.
pub struct Tracked<IO> {
    io: IO,
    conn: Arc<Conn>,
    _slot: OpenSlot,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, conn: Arc<Conn>, slot: OpenSlot) -> Self {
        Tracked {
            io,
            conn,
            _slot: slot,
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.bytes_read();
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_pending_caps_release_on_drop() {
        let l = Limits::new(2, 1);
        let a = l.try_open().unwrap();
        let _b = l.try_open().unwrap();
        assert!(l.try_open().is_none());
        drop(a);
        assert!(l.try_open().is_some());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let p = l.try_pending(ip).unwrap();
        assert!(
            l.try_pending(mapped).is_none(),
            "mapped IPv4 is the same address"
        );
        assert!(l.try_pending("127.0.0.3".parse().unwrap()).is_some());
        drop(p);
        assert_eq!(l.pending(ip), 0);
        assert!(l.try_pending(ip).is_some());
    }

    #[test]
    fn deadlines_follow_the_request_cycle() {
        let t = Timeouts {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(600),
            body: Duration::from_secs(10),
        };
        let before = Instant::now();
        let c = Conn::new("127.0.0.1:1".parse().unwrap(), Limits::new(1, 0), None);
        let first = c.deadline(t).unwrap();
        assert!(first <= Instant::now() + t.header && first >= before + t.header);
        c.bytes_read();
        c.request_started();
        assert_eq!(c.deadline(t), None, "no timeout while a request is handled");
        let done = Instant::now();
        c.request_done();
        let idle = c.deadline(t).unwrap();
        assert!(idle >= done + t.idle, "kept alive: the idle timeout");
        c.bytes_read();
        let head = c.deadline(t).unwrap();
        assert!(
            head <= Instant::now() + t.header,
            "a request began: the header timeout"
        );
    }
}
