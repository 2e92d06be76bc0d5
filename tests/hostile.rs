//! Hostile input, round three: what a stranger on the network can send
//! without credentials must end only their own connection, cleanly, and
//! must not hold the service.

mod common;

use std::time::Duration;

use common::stomp::Client;
use common::Single;

/// A `content-length` near `usize::MAX`: the body offset overflowed in
/// the decoder and the connection's task panicked.
const HUGE: &str = "SEND\ndestination:/x\ncontent-length:18446744073709551577\n\nhello\0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_content_length_is_a_frame_too_large_not_a_panic() {
    let ctx = Single::new(|_| {}).await;
    let token = ctx.store("hostile-cl", "050-1111-2201").await;
    for connected in [false, true] {
        let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
        if connected {
            c.connect(&token).await;
        }
        c.send_raw(HUGE).await;
        let err = c.expect("ERROR").await;
        assert_eq!(err.get("message"), Some("frame too large"), "{connected}");
        assert_eq!(c.close_code().await, Some(1009), "{connected}");
    }
    // The instance goes on: a tablet connects and subscribes.
    let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
    c.connect(&token).await;
    c.subscribe("hostile-cl", "0", "auto").await;
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_content_length_over_xhr_send_ends_its_session_and_leaks_nothing() {
    let ctx = Single::new(|_| {}).await;
    let base = format!("http://{}/ws/v1/offline-store-pad", ctx.server.addr);
    let http = common::http();
    const SESSIONS: usize = 20;
    for i in 0..SESSIONS {
        let url = format!("{base}/000/hostile{i}");
        let open = http.post(format!("{url}/xhr")).send().await.unwrap();
        assert_eq!(open.text().await.unwrap(), "o\n");
        let body = serde_json::to_string(&[HUGE]).unwrap();
        let sent = http
            .post(format!("{url}/xhr_send"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 204);
        let answer = http.post(format!("{url}/xhr")).send().await.unwrap();
        let text = answer.text().await.unwrap();
        let frames: Vec<String> = text
            .strip_prefix('a')
            .and_then(|a| serde_json::from_str(a.trim_end()).ok())
            .unwrap_or_else(|| panic!("{i}: not a message frame: {text}"));
        assert!(
            frames[0].starts_with("ERROR\nmessage:frame too large\n"),
            "{i}: {text}"
        );
    }
    // Every session is forgotten once its close has been served for the
    // disconnect delay (5 s): none is left to count against the caps.
    common::eventually(Duration::from_secs(20), "sessions forgotten", || async {
        ctx.server.app.sockjs.is_empty()
    })
    .await;
    // Opening sessions still works.
    let open = http
        .post(format!("{base}/000/afterwards/xhr"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.text().await.unwrap(), "o\n");
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}
