//! Browser calls to a flow, signalled the WHIP way (RFC 9725): `POST /api/webrtc/flows/{flow}`
//! with an SDP offer answers `201 Created` with the SDP answer and the session's URL in
//! `Location`; `DELETE` on that URL hangs up. Behind the admin token like the rest of the API.
//! The media itself is the WebRTC edge's ([`crate::webrtc`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{AdminState, ApiError};
use crate::webrtc::{EdgeError, EdgeHandle};

/// The session URL's prefix.
pub const SESSIONS: &str = "/api/webrtc/sessions";

fn edge(state: &AdminState) -> Result<&EdgeHandle, ApiError> {
    state.webrtc.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "browser calls are off: set [webrtc] enabled = true",
        )
    })
}

impl From<EdgeError> for ApiError {
    fn from(e: EdgeError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string())
    }
}

/// `POST /api/webrtc/flows/{flow}`: a browser calls `flow`.
pub async fn call_flow(
    State(state): State<Arc<AdminState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the SDP offer with Content-Type: application/sdp (got `{content_type}`)"),
        ));
    }
    let body = body?;
    let offer = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("malformed SDP offer: not UTF-8 text"))?;
    let session = edge(&state)?.call_flow(&flow, offer).await?;
    let location = format!("{SESSIONS}/{}", session.id);
    let mut response = (StatusCode::CREATED, session.answer_sdp).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&session.sip_call_id) {
        h.insert("x-voicebot-sip-call-id", v);
    }
    Ok(response)
}

/// `DELETE /api/webrtc/sessions/{id}`: hangs up.
pub async fn hangup(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    edge(&state)?.hangup(&id).await?;
    Ok(StatusCode::OK.into_response())
}
