//! `GET /admin`: the admin console, one hand-written page (`assets/admin.html`: HTML, CSS and
//! vanilla JavaScript, no build step, no external asset) that works over the admin API.
//!
//! # Why it is built this way
//!
//! The console is a thin client of the documented API: the page itself is public and holds no
//! data, every datum comes from `/api/...` with the admin token as a bearer token (typed into
//! the page's login box or passed once as `?token=`, then kept in the tab's `sessionStorage`
//! and dropped from the address bar). So the console can do nothing the API does not allow,
//! and there is a single place where access is checked.
//!
//! The page is served with a strict Content-Security-Policy: no origin but the gateway's own
//! for requests, and only the page's own inline script and style, pinned by their SHA-256
//! hashes (computed here once from the embedded page). Should some text ever slip into the
//! DOM as markup, a script in it would not run. The page puts text in the DOM only with
//! `textContent` and `createElement`, never `innerHTML`; the unit tests below hold it to that.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

/// The console page, served as is.
pub const PAGE: &str = include_str!("../../assets/admin.html");

/// The text between the first `<open>` and the next `</close>` of `page`.
pub(crate) fn element_text<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let len = page[start..].find(close)?;
    Some(&page[start..start + len])
}

/// Standard base64 (RFC 4648, with padding), as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `'sha256-...'` of a text, as a CSP source.
pub(crate) fn hash_source(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

/// The page's Content-Security-Policy: its own inline script and style only (by hash), requests
/// to the gateway only, no frames, no forms posted elsewhere.
pub fn content_security_policy() -> &'static str {
    static CSP: LazyLock<String> = LazyLock::new(|| {
        let script = element_text(PAGE, "<script>", "</script>").unwrap_or_default();
        let style = element_text(PAGE, "<style>", "</style>").unwrap_or_default();
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; media-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_source(script),
            hash_source(style)
        )
    });
    &CSP
}

/// `GET /admin`: the page (no token needed; it holds no data).
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            // The token may arrive in the address (?token=): never pass it on.
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{fixture, send};
    use axum::http::StatusCode;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        // A known SHA-256 CSP source: of the empty string.
        assert_eq!(
            hash_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }

    #[test]
    fn the_page_is_self_contained_and_never_writes_markup_from_data() {
        assert!(PAGE.starts_with("<!doctype html>"));
        assert!(PAGE.contains("<title>"));
        // One inline script and one inline style (the CSP pins exactly those), nothing loaded
        // from elsewhere.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        // The one address in it is SVG's namespace name (an identifier, never fetched).
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "SVG_NAMESPACE");
        for banned in [
            "http://",
            "https://",
            "url(",
            "src=",
            "<link",
            "@import",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
        ] {
            assert!(!page.contains(banned), "assets/admin.html uses {banned}");
        }
        // The admin token is kept for the tab only, and sent as a bearer token.
        assert!(PAGE.contains("sessionStorage"));
        assert!(PAGE.contains("\"Authorization\""));
        // Every admin API route it needs.
        for path in [
            "/api/flows",
            "/api/flows/validate",
            "/api/test/chat",
            "/api/test/wav",
            "/api/test/say",
            "/api/calls",
            "/api/calls/live",
            "/api/analytics",
            "/api/webrtc/flows/",
            "/api/calls/live/events?call_id=",
        ] {
            assert!(PAGE.contains(&format!("\"{path}")), "{path}");
        }
    }

    #[tokio::test]
    async fn the_admin_console_is_served_without_a_token_with_a_strict_policy() {
        let f = fixture(true);
        let a = send(&f.app, "GET", "/admin", None, None, "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            a.content_type.starts_with("text/html"),
            "{}",
            a.content_type
        );
        assert_eq!(a.text(), PAGE);
        let csp = content_security_policy();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // The hashes are of the page's own script and style.
        let script = element_text(PAGE, "<script>", "</script>").expect("script");
        assert!(script.len() > 1000);
        assert!(csp.contains(&hash_source(script)));
        // The data it shows still needs the token.
        let a = send(&f.app, "GET", "/api/flows", None, None, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let a = send(&f.app, "POST", "/admin", None, None, "").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
