//! The tablet page with its script and style, and what a browser asks for
//! around it: `/` leads to it, and the icon (docs/http-api.md, "Pages").

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::app::App;

const TABLET_PAGE: &str = include_str!("../../web/tablet.html");
/// Where the page's template takes the STOMP endpoint's path.
const STOMP_PATH_SLOT: &str = "{{stomp_path}}";
/// What pages from before the modules load: it loads `/tablet/main.js`.
const TABLET_SCRIPT: &str = include_str!("../../web/tablet.js");
const TABLET_MAIN: &str = include_str!("../../web/tablet/main.js");
const TABLET_STRINGS: &str = include_str!("../../web/tablet/strings.js");
const TABLET_STOMP: &str = include_str!("../../web/tablet/stomp.js");
const TABLET_VIEWS: &str = include_str!("../../web/tablet/views.js");
const TABLET_STYLE: &str = include_str!("../../web/tablet.css");
const SERVICE_WORKER: &str = include_str!("../../web/sw.js");
const MANIFEST: &str = include_str!("../../web/manifest.webmanifest");
const ICON_192: &[u8] = include_bytes!("../../web/icon-192.png");
const ICON_512: &[u8] = include_bytes!("../../web/icon-512.png");

/// The tablet page's policy: its own script and style files only (nothing
/// inline, so an injected `<script>` cannot run), requests to this server
/// only, its manifest and service worker from here, and never inside
/// another site's frame.
pub const TABLET_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; media-src 'self' data:; manifest-src 'self'; \
     worker-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const ADMIN_PAGE: &str = include_str!("../../web/admin.html");
const ADMIN_SCRIPT: &str = include_str!("../../web/admin.js");
const ADMIN_STRINGS: &str = include_str!("../../web/admin-strings.js");
const ADMIN_STYLE: &str = include_str!("../../web/admin.css");

const FAVICON: &str = include_str!("../../web/favicon.svg");

/// `/`: a person who opens the instance's address lands on the tablet page.
pub async fn root() -> Redirect {
    Redirect::to("/tablet")
}

/// `/favicon.ico` (browsers ask for it on their own): an SVG icon, which
/// browsers take by its content type whatever the path says.
pub async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
}

/// `GET /tablet`: the page, self-contained (no network beyond this server).
/// It carries `stomp.path` in `<meta name="bizcall-stomp-path">`, where
/// its script finds the endpoint to connect to.
pub async fn tablet_page(State(app): State<App>) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, TABLET_CSP),
        ],
        Html(tablet_html(&app.config.stomp.path)),
    )
        .into_response()
}

/// The tablet page with `stomp_path` in its slot.
fn tablet_html(stomp_path: &str) -> String {
    TABLET_PAGE.replace(STOMP_PATH_SLOT, &escape_attribute(stomp_path))
}

/// `value` made safe inside a double-quoted HTML attribute.
fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /tablet.js`: what pages from before the script modules load; it
/// loads the modules.
pub async fn tablet_script() -> Response {
    script(TABLET_SCRIPT)
}

/// `GET /tablet/main.js`: the page's entry module (the wiring).
pub async fn tablet_main() -> Response {
    script(TABLET_MAIN)
}

/// `GET /tablet/strings.js`: the page's words, Korean and English.
pub async fn tablet_strings() -> Response {
    script(TABLET_STRINGS)
}

/// `GET /tablet/stomp.js`: the page's STOMP client.
pub async fn tablet_stomp() -> Response {
    script(TABLET_STOMP)
}

/// `GET /tablet/views.js`: what the page draws.
pub async fn tablet_views() -> Response {
    script(TABLET_VIEWS)
}

fn script(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /tablet.css`: the page's style.
pub async fn tablet_style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        TABLET_STYLE,
    )
        .into_response()
}

/// `GET /sw.js`: the service worker that keeps the page shell for network
/// blips (never API answers). At the root so that it covers `/tablet`.
pub async fn service_worker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SERVICE_WORKER,
    )
        .into_response()
}

/// `GET /manifest.webmanifest`: makes the page an installable, full-screen
/// web app.
pub async fn manifest() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/manifest+json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        MANIFEST,
    )
        .into_response()
}

/// `GET /icon-192.png` and `/icon-512.png`: the app's icons.
pub async fn icon_192() -> Response {
    png(ICON_192)
}

pub async fn icon_512() -> Response {
    png(ICON_512)
}

fn png(bytes: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /admin`: the operator console, under the tablet page's policy
/// (its QR codes are `data:` images).
pub async fn admin_page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, TABLET_CSP),
        ],
        Html(ADMIN_PAGE),
    )
        .into_response()
}

/// `GET /admin.js`: the console's script.
pub async fn admin_script() -> Response {
    script(ADMIN_SCRIPT)
}

/// `GET /admin-strings.js`: the console's words, Korean and English.
pub async fn admin_strings() -> Response {
    script(ADMIN_STRINGS)
}

/// `GET /admin.css`: the console's style.
pub async fn admin_style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        ADMIN_STYLE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_stomp_path_escaped() {
        let html = tablet_html("/ws");
        assert!(html.contains(r#"<meta name="bizcall-stomp-path" content="/ws">"#));
        assert!(!html.contains(STOMP_PATH_SLOT));
        let html = tablet_html(r#"/a"><script>x&'"#);
        assert!(
            html.contains(r#"content="/a&quot;&gt;&lt;script&gt;x&amp;&#39;">"#),
            "{html}"
        );
        assert!(!html.contains("<script>x"));
    }
}
