//! A SockJS server (protocol 0.3.3, as sockjs-protocol and Spring define
//! it) at `compat.sockjs_path`, for the Spring service's tablets: the same
//! STOMP connection as `/ws` (`stomp::connection`), carried over SockJS's
//! transports.
//!
//! - `GET <base>` greets, `GET|OPTIONS <base>/info` describes the server.
//! - `<base>/<server>/<session>/websocket`: one WebSocket per session
//!   ([`websocket`]).
//! - `<base>/<server>/<session>/xhr`, `xhr_streaming` and `xhr_send`:
//!   sessions that outlive requests ([`session`]).
//! - `<base>/websocket`: raw WebSocket, exactly `/ws`.
//! - Other transports (eventsource, htmlfile, jsonp, iframe) answer 404
//!   at once, so clients fall through to the next.

pub mod frame;
pub mod session;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use chrono::Utc;

use self::frame::Close;
pub use self::session::Service;
use self::session::{Attach, Next, ReceiverGuard, Refused, Registry, STREAMING_LIMIT};
use crate::app::App;
use crate::http::conn::Conn;
use crate::stomp::session::Handshake;

/// Largest `xhr_send` body: a STOMP frame of `stomp.max_frame` escaped by
/// the client fits several times over.
const MAX_SEND_BODY: usize = 512 * 1024;
/// The `h` prelude that makes browsers hand `xhr_streaming` data over at once.
const PRELUDE_LEN: usize = 2048;
const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const ONE_YEAR: u32 = 31_536_000;

/// State of the SockJS routes.
#[derive(Clone)]
pub struct SockJs {
    app: App,
    sessions: Arc<Registry>,
    /// What runs inside sessions: STOMP, except for the test services.
    service: Service,
    /// Whether the websocket transports are offered.
    websocket: bool,
    /// Bytes after which an `xhr_streaming` response ends.
    streaming_limit: usize,
}

impl FromRef<SockJs> for App {
    fn from_ref(s: &SockJs) -> App {
        s.app.clone()
    }
}

/// Set to `1` in the environment, `serve` also mounts the services the
/// sockjs-protocol test suite expects (`/echo`, `/close`,
/// `/disabled_websocket_echo`). For running that suite only; never in
/// production, and no tablet data is reachable through them.
pub const PROTOCOL_TEST_ENV: &str = "BIZCALL_SOCKJS_PROTOCOL_TEST";

/// The SockJS routes under `base` (`compat.sockjs_path`, not empty), and
/// the protocol suite's services when `PROTOCOL_TEST_ENV` asks for them.
/// `sessions` holds the tablets' HTTP-transport sessions: the server keeps
/// it too, and waits for them when it stops.
pub fn router(app: App, base: &str, sessions: Arc<Registry>) -> Router {
    let mut router = mount(
        app.clone(),
        base,
        Service::Stomp,
        true,
        STREAMING_LIMIT,
        Some(sessions),
    );
    if std::env::var(PROTOCOL_TEST_ENV).as_deref() == Ok("1") {
        tracing::warn!("{PROTOCOL_TEST_ENV}=1: SockJS test services /echo, /close and /disabled_websocket_echo are mounted");
        // The suite expects a 4 KiB streaming limit on its services.
        for (path, service, websocket) in [
            ("/echo", Service::Echo, true),
            ("/close", Service::Close, true),
            ("/disabled_websocket_echo", Service::Echo, false),
        ] {
            router = router.merge(mount(app.clone(), path, service, websocket, 4096, None));
        }
    }
    router
}

fn mount(
    app: App,
    base: &str,
    service: Service,
    websocket: bool,
    streaming_limit: usize,
    sessions: Option<Arc<Registry>>,
) -> Router {
    // Tablets' sessions are the instance's (passed in: it waits for them
    // on stop); the test services keep their own.
    let sessions =
        sessions.unwrap_or_else(|| Arc::new(Registry::new(app.config.server.address_group())));
    let state = SockJs {
        app,
        sessions,
        service,
        websocket,
        streaming_limit,
    };
    let raw = if service == Service::Stomp {
        get(crate::http::ws::upgrade)
    } else {
        get(raw_test_websocket)
    };
    let mut router = Router::new()
        .route(base, get(greeting))
        .route(&format!("{base}/"), get(greeting))
        .route(&format!("{base}/info"), get(info).options(info_options))
        .route(
            &format!("{base}/{{server}}/{{session}}/{{transport}}"),
            any(transport),
        );
    if websocket {
        router = router.route(&format!("{base}/websocket"), raw);
    }
    router.with_state(state)
}

/// The raw WebSocket of the test services: echo, or close with 3000.
async fn raw_test_websocket(State(s): State<SockJs>, ws: WebSocketUpgrade) -> Response {
    use axum::extract::ws::{CloseFrame, Message};
    let service = s.service;
    ws.on_upgrade(move |mut socket| async move {
        if service == Service::Close {
            let close = CloseFrame {
                code: Close::GoAway.code(),
                reason: Close::GoAway.reason().into(),
            };
            let _ = socket.send(Message::Close(Some(close))).await;
            // Let the client answer the close before the socket goes.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                while let Some(Ok(_)) = socket.recv().await {}
            })
            .await;
            return;
        }
        while let Some(Ok(m)) = socket.recv().await {
            let reply = match m {
                Message::Text(_) | Message::Binary(_) => m,
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

async fn greeting() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        "Welcome to SockJS!\n",
    )
        .into_response()
}

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// A browser `Origin` outside `stomp.allowed_origins` gets 403.
fn forbidden_origin(app: &App, headers: &HeaderMap) -> Option<Response> {
    let origin = origin(headers);
    if app.config.stomp.origin_allowed(origin) {
        return None;
    }
    tracing::info!(
        origin,
        "SockJS request from an origin not in stomp.allowed_origins"
    );
    Some(text(StatusCode::FORBIDDEN, "forbidden: origin not allowed"))
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

/// CORS for XHR transports: the (allowed) `Origin` echoed with
/// credentials, `*` without one.
fn cors(headers: &HeaderMap, resp: &mut Response) {
    let h = resp.headers_mut();
    match headers.get(header::ORIGIN) {
        Some(o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        None => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn no_cache(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
}

/// A CORS preflight, cacheable for a year.
fn preflight(headers: &HeaderMap, methods: &'static str) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    cors(headers, &mut resp);
    let expires = (Utc::now() + chrono::Duration::seconds(i64::from(ONE_YEAR)))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    if let Ok(v) = HeaderValue::from_str(&expires) {
        h.insert(header::EXPIRES, v);
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(ONE_YEAR));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    if let Some(asked) = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| !v.is_empty())
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    resp
}

async fn info(State(s): State<SockJs>, headers: HeaderMap) -> Response {
    if let Some(r) = forbidden_origin(&s.app, &headers) {
        return r;
    }
    let body = serde_json::json!({
        "websocket": s.websocket,
        "cookie_needed": false,
        "origins": ["*:*"],
        "entropy": rand::random::<u32>(),
    });
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response();
    cors(&headers, &mut resp);
    no_cache(&mut resp);
    resp
}

async fn info_options(State(s): State<SockJs>, headers: HeaderMap) -> Response {
    if let Some(r) = forbidden_origin(&s.app, &headers) {
        return r;
    }
    preflight(&headers, "OPTIONS, GET")
}

/// A server or session id: any text but empty, without dots, and short.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.contains('.')
}

fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `<base>/<server>/<session>/<transport>`.
async fn transport(
    State(s): State<SockJs>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((server, session, transport)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Response {
    if !valid_id(&server) || !valid_id(&session) {
        return not_found();
    }
    let kind = match transport.as_str() {
        "websocket" => Kind::WebSocket,
        "xhr" => Kind::Polling,
        "xhr_streaming" => Kind::Streaming,
        "xhr_send" => Kind::Send,
        // eventsource, htmlfile, jsonp, jsonp_send and anything else.
        _ => return not_found(),
    };
    if let Some(r) = forbidden_origin(&s.app, &headers) {
        return r;
    }
    let handshake = Handshake {
        subprotocol: None,
        url_token: query.get("access_token").cloned(),
        header_token: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer_token)
            .map(str::to_string),
        origin: origin(&headers).map(str::to_string),
        client: Some(crate::http::client_ip::client_address(
            &s.app.config.server.trusted_proxies,
            peer.ip(),
            &headers,
        )),
        logins: Some(s.app.logins.clone()),
    };
    let client = crate::http::client_ip::client_address(
        &s.app.config.server.trusted_proxies,
        peer.ip(),
        &headers,
    );
    match (kind, method) {
        (Kind::WebSocket, _) if !s.websocket => not_found(),
        (Kind::WebSocket, Method::GET) => {
            let (mut parts, _) = request.into_parts();
            match WebSocketUpgrade::from_request_parts(&mut parts, &s).await {
                Ok(ws) => {
                    // The connection's accounting (`/ws` reads it the same way).
                    let conn = parts.extensions.get::<Arc<Conn>>().cloned();
                    websocket_session(ws, s.app, handshake, s.service, conn)
                }
                Err(rejection) => {
                    let mut r = rejection.into_response();
                    if r.status() == StatusCode::UPGRADE_REQUIRED {
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                    }
                    r
                }
            }
        }
        (Kind::WebSocket, _) => method_not_allowed("GET"),
        (_, Method::OPTIONS) => preflight(&headers, "OPTIONS, POST"),
        (Kind::Send, Method::POST) => {
            let body = request.into_body();
            xhr_send(&s, &session, client, &headers, body).await
        }
        (Kind::Polling | Kind::Streaming, Method::POST) => {
            receive(
                &s,
                &session,
                client,
                &headers,
                handshake,
                kind == Kind::Streaming,
            )
            .await
        }
        _ => method_not_allowed("OPTIONS, POST"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    WebSocket,
    Polling,
    Streaming,
    Send,
}

/// What a tablet's STOMP connection needs of the instance.
fn tablet_parts(app: &App) -> crate::stomp::connection::Parts {
    crate::stomp::connection::Parts {
        hub: app.hub.clone(),
        delivery: app.delivery.clone(),
        stop: app.shutdown.clone(),
    }
}

fn websocket_session(
    ws: WebSocketUpgrade,
    app: App,
    handshake: Handshake,
    service: Service,
    conn: Option<Arc<Conn>>,
) -> Response {
    ws.read_buffer_size(crate::http::ws::READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_SEND_BODY)
        .on_upgrade(move |socket| async move {
            if let Some(transport) = websocket::SockJsWs::open(socket, conn).await {
                match service {
                    Service::Stomp => {
                        crate::stomp::connection::run(transport, tablet_parts(&app), handshake)
                            .await
                    }
                    other => transport.serve_test(other).await,
                }
            }
        })
}

fn xhr_headers(headers: &HeaderMap, resp: &mut Response, content_type: &'static str) {
    cors(headers, resp);
    no_cache(resp);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

/// `xhr` and `xhr_streaming`: opens the session if new, else becomes its
/// receiver; polling answers one frame, streaming keeps writing frames
/// until `STREAMING_LIMIT` bytes or the close.
async fn receive(
    s: &SockJs,
    id: &str,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    handshake: Handshake,
    streaming: bool,
) -> Response {
    let (session, new) =
        match s
            .sessions
            .open(id, client, tablet_parts(&s.app), handshake, s.service)
        {
            Ok(found) => found,
            Err(why) => {
                crate::metrics::connection_refused(match why {
                    Refused::TooManyFromAddress => "sockjs_sessions_per_address",
                    Refused::TooMany => "sockjs_sessions",
                });
                static LOG: crate::log_budget::LogBudget =
                    crate::log_budget::LogBudget::new("SockJS session refused");
                if LOG.admit() {
                    tracing::warn!(%client, ?why, "SockJS session refused");
                }
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    match why {
                        Refused::TooManyFromAddress => "too many sessions from this address",
                        Refused::TooMany => "too many sessions",
                    },
                );
                cors(headers, &mut r);
                return r;
            }
        };
    if session.peer != client {
        return not_found();
    }
    let (guard, refused) = match session.attach().await {
        Attach::Receiver(guard) => (Some(guard), None),
        Attach::Refused(why) => (None, Some(why)),
    };
    let body = receiver_body(guard, refused, new, streaming, s.streaming_limit);
    let mut resp = Response::new(body);
    xhr_headers(headers, &mut resp, "application/javascript; charset=UTF-8");
    resp
}

/// The body of a receiver request, written as frames become ready.
fn receiver_body(
    guard: Option<ReceiverGuard>,
    refused: Option<Close>,
    new: bool,
    streaming: bool,
    limit: usize,
) -> Body {
    enum Phase {
        Prelude,
        Open,
        Frames,
        Done,
    }
    struct St {
        guard: Option<ReceiverGuard>,
        refused: Option<Close>,
        new: bool,
        streaming: bool,
        phase: Phase,
        written: usize,
        limit: usize,
    }
    let start = St {
        guard,
        refused,
        new,
        streaming,
        phase: if streaming {
            Phase::Prelude
        } else {
            Phase::Open
        },
        written: 0,
        limit,
    };
    let stream = futures::stream::unfold(start, |mut st| async move {
        loop {
            match st.phase {
                Phase::Prelude => {
                    st.phase = Phase::Open;
                    let mut prelude = "h".repeat(PRELUDE_LEN);
                    prelude.push('\n');
                    return Some((
                        Ok::<Bytes, std::convert::Infallible>(Bytes::from(prelude)),
                        st,
                    ));
                }
                Phase::Open => {
                    st.phase = Phase::Frames;
                    if let Some(why) = st.refused {
                        st.phase = Phase::Done;
                        return Some((Ok(line(why.frame())), st));
                    }
                    if st.new {
                        if !st.streaming {
                            st.phase = Phase::Done;
                            if let Some(g) = st.guard.take() {
                                g.finish();
                            }
                        }
                        return Some((Ok(line(frame::OPEN.to_string())), st));
                    }
                }
                Phase::Frames => {
                    let guard = st.guard.as_ref()?;
                    let out = match guard.next().await {
                        Next::Messages(m) => m,
                        Next::Heartbeat => frame::HEARTBEAT.to_string(),
                        Next::Closed(why) => {
                            st.phase = Phase::Done;
                            why.frame()
                        }
                    };
                    st.written += out.len() + 1;
                    if !st.streaming || st.written >= st.limit {
                        st.phase = Phase::Done;
                    }
                    if matches!(st.phase, Phase::Done) {
                        if let Some(g) = st.guard.take() {
                            g.finish();
                        }
                    }
                    return Some((Ok(line(out)), st));
                }
                Phase::Done => {
                    if let Some(g) = st.guard.take() {
                        g.finish();
                    }
                    return None;
                }
            }
        }
    });
    Body::from_stream(stream)
}

fn line(mut frame: String) -> Bytes {
    frame.push('\n');
    Bytes::from(frame)
}

/// `xhr_send`: the client's messages, a JSON array of strings.
async fn xhr_send(
    s: &SockJs,
    id: &str,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let reply = |status: StatusCode, body: &'static str| {
        let mut r = text(status, body);
        xhr_headers(headers, &mut r, "text/plain; charset=UTF-8");
        r
    };
    let Some(session) = s.sessions.get(id).filter(|x| x.peer == client) else {
        return reply(StatusCode::NOT_FOUND, "");
    };
    let bytes = match axum::body::to_bytes(body, MAX_SEND_BODY).await {
        Ok(b) => b,
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large."),
    };
    let messages = match frame::parse_array(&bytes) {
        Ok(m) => m,
        Err(e) => {
            let body = match e {
                frame::PayloadError::Empty => "Payload expected.",
                frame::PayloadError::BrokenJson => "Broken JSON encoding.",
            };
            return reply(StatusCode::INTERNAL_SERVER_ERROR, body);
        }
    };
    if !messages.is_empty() && !session.deliver(messages).await {
        return reply(StatusCode::NOT_FOUND, "");
    }
    reply(StatusCode::NO_CONTENT, "")
}
