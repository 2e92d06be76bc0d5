//! How long one request may hold its connection's attention: its body must
//! arrive within `server.body_timeout` (a trickle of one byte every few
//! seconds cannot hold a connection slot), and it counts as being served
//! until its answer's body has been sent, not just its head (a streaming
//! answer is not an idle connection).
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Frame;
use tokio::time::{Instant, Sleep};

use super::conn::Conn;

/// A request body that fails once its deadline passes before it ends, and
/// says so in `expired`, so the server can answer 408 whatever the handler
/// made of the failed read.
pub struct TimedBody<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
    ended: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, within: Duration, expired: Arc<AtomicBool>) -> Self {
        TimedBody {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + within)),
            expired,
            ended: false,
        }
    }
}

/// The body did not arrive within `server.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within server.body_timeout")]
pub struct BodyTimedOut;

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.ended {
            if let Poll::Ready(()) = this.sleep.as_mut().poll(cx) {
                this.expired.store(true, Ordering::Release);
                this.ended = true;
                return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|f| f.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body that tells its connection the request is done when it
/// has been sent (or dropped, if the client went first).
pub struct ServedBody {
    inner: Body,
    conn: Option<Arc<Conn>>,
}

impl ServedBody {
    pub fn new(inner: Body, conn: Arc<Conn>) -> Self {
        ServedBody {
            inner,
            conn: Some(conn),
        }
    }

    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.request_done();
        }
    }
}

impl Drop for ServedBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl HttpBody for ServedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future;
