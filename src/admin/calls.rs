//! Calls: the history of finished calls, one call's full record, analytics, and the calls in
//! progress; and the storing of each finished call.
//!
//! # Why it is built this way
//!
//! Each call task ends by handing its record to [`on_call_finished`], which feeds the metrics
//! and stores the record in the [`CallHistory`] on a blocking thread: the SQLite write (a few
//! ms, more when the disk is busy) never holds an async worker, and a failed write costs the
//! history one call, never the call itself. The record is stored as the JSON the gateway
//! writes to `--report-dir`, plus a `summary`: the same few lines the agent's hand-over context
//! has, written from the dialog state, so a history view can show what happened at a glance.
//!
//! Query parameters are parsed by hand into the history's [`CallFilter`], so that a bad value
//! gets a message naming the parameter (`since: expected ms since the epoch or an RFC 3339
//! time`) instead of a deserialiser's, and unknown parameters are refused rather than ignored
//! (a typo in a filter would otherwise return everything).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::{AdminState, ApiError};
use crate::history::{Analytics, CallFilter, CallHistory, CallSummary, MAX_LIMIT};

pub use crate::observe::finished::{on_call_finished, spawn_retention};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time as the filters take it: ms since the Unix epoch (`1795844701857`), a date
/// (`2026-11-28`, midnight UTC) or an RFC 3339 time (`2026-11-28T05:44:55Z`,
/// `2026-11-28T07:44:55.5+02:00`).
pub fn parse_time(text: &str) -> Option<i64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, time) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    let Some(time) = time else {
        return Some(ms);
    };
    // The zone: Z, or +HH:MM / -HH:MM.
    let (clock, offset_ms) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, min) = zone[1..].split_once(':')?;
        let (h, min) = (num(h)?, num(min)?);
        if h > 23 || min > 59 {
            return None;
        }
        (clock, sign * (h * 3600 + min * 60) * 1000)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let mut fields = hms.split(':');
    let (h, min, s) = (
        num(fields.next()?)?,
        num(fields.next()?)?,
        num(fields.next()?)?,
    );
    if fields.next().is_some() || h > 23 || min > 59 || s > 60 {
        return None;
    }
    ms += (h * 3600 + min * 60 + s) * 1000;
    if let Some(frac) = frac {
        let digits: String = frac.chars().take(3).collect();
        let n = num(&digits)?;
        ms += n * 10_i64.pow(3 - digits.len() as u32);
    }
    Some(ms - offset_ms)
}

/// The filter parameters of `/api/calls` and `/api/analytics`, as written in the query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterQuery {
    since: Option<String>,
    until: Option<String>,
    flow: Option<String>,
    escalated: Option<String>,
    reason: Option<String>,
    /// The gateway that handled the call (`[storage] node`).
    node: Option<String>,
}

/// `/api/calls` also pages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    since: Option<String>,
    until: Option<String>,
    flow: Option<String>,
    escalated: Option<String>,
    reason: Option<String>,
    node: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

fn filter(q: FilterQuery) -> Result<CallFilter, ApiError> {
    let time = |name: &str, v: Option<String>| -> Result<Option<i64>, ApiError> {
        v.filter(|s| !s.is_empty())
            .map(|s| {
                parse_time(&s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name}: `{s}` is not a time (ms since the Unix epoch, a date such as \
                         2026-11-28, or an RFC 3339 time such as 2026-11-28T05:44:55Z)"
                    ))
                })
            })
            .transpose()
    };
    let escalated = match q.escalated.as_deref() {
        None | Some("") => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "escalated: `{other}` is not true or false"
            )))
        }
    };
    let word = |name: &str, v: Option<String>| -> Result<Option<String>, ApiError> {
        match v.filter(|s| !s.is_empty()) {
            Some(s) if s.len() > 128 => Err(ApiError::bad_request(format!(
                "{name}: longer than 128 characters"
            ))),
            other => Ok(other),
        }
    };
    let since_ms = time("since", q.since)?;
    let until_ms = time("until", q.until)?;
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if u < s {
            return Err(ApiError::bad_request("until is before since"));
        }
    }
    Ok(CallFilter {
        since_ms,
        until_ms,
        flow: word("flow", q.flow)?,
        escalated,
        reason: word("reason", q.reason)?,
        node: match q.node.filter(|s| !s.is_empty()) {
            // A node name is up to 200 characters (`[storage] node`).
            Some(s) if s.len() > 200 => {
                return Err(ApiError::bad_request("node: longer than 200 characters"))
            }
            other => other,
        },
        limit: None,
        offset: None,
    })
}

fn history(state: &AdminState) -> Result<Arc<CallHistory>, ApiError> {
    state.history.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the call history is off ([http] history_database is empty)",
        )
    })
}

/// Runs a history query on a blocking thread.
async fn query<T: Send + 'static>(
    history: Arc<CallHistory>,
    f: impl FnOnce(&CallHistory) -> Result<T, crate::history::HistoryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&history))
        .await
        .map_err(|e| ApiError::internal(format!("history query: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A page of the history.
#[derive(Serialize)]
pub struct CallList {
    /// Calls the filter selects, all pages together.
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
    /// This page, newest first.
    pub calls: Vec<CallSummary>,
}

/// `GET /api/calls`.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<CallList>, ApiError> {
    let Query(q) = q?;
    let number = |name: &str, v: Option<String>, default: u32, range: (u32, u32)| match v
        .filter(|s| !s.is_empty())
    {
        None => Ok(default),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (range.0..=range.1).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name}: `{s}` is not a whole number from {} to {}",
                    range.0, range.1
                ))
            }),
    };
    let limit = number(
        "limit",
        q.limit,
        crate::history::DEFAULT_LIMIT,
        (1, MAX_LIMIT),
    )?;
    let offset = number("offset", q.offset, 0, (0, u32::MAX))?;
    let mut f = filter(FilterQuery {
        since: q.since,
        until: q.until,
        flow: q.flow,
        escalated: q.escalated,
        reason: q.reason,
        node: q.node,
    })?;
    f.limit = Some(limit);
    f.offset = Some(offset);
    let (total, calls) = query(history(&state)?, move |h| Ok((h.count(&f)?, h.list(&f)?))).await?;
    Ok(Json(CallList {
        total,
        limit,
        offset,
        calls,
    }))
}

/// One call, everything known about it.
#[derive(Serialize)]
pub struct CallDetail {
    pub call_id: String,
    /// A few lines on what happened (who, what they wanted, what the bot did, why it handed
    /// over).
    pub summary: Option<String>,
    /// The call's record as the gateway wrote it: transcript and decisions per turn
    /// (`turns`), outcome, escalation, codec, RTP figures, the bot's prompts, the transfer.
    pub record: Value,
    /// The latest hand-over context, while the gateway still holds it (escalated calls).
    pub handover_context: Option<Value>,
    /// The call's webhook events and their delivery state (when webhooks are configured).
    pub webhook_events: Option<Vec<crate::handover::outbox::EventStatus>>,
}

/// `GET /api/calls/{id}`.
pub async fn one(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Json<CallDetail>, ApiError> {
    if id.is_empty() || id.len() > 512 {
        return Err(ApiError::bad_request("a call id has 1 to 512 characters"));
    }
    let key = id.clone();
    let record = query(history(&state)?, move |h| h.get(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no call `{id}` in the history")))?;
    let handover_context = state.hub.context(&id);
    let summary = record
        .get("summary")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            handover_context
                .as_ref()
                .and_then(|c| c.get("summary"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let webhook_events = match &state.outbox {
        Some(outbox) => {
            let (outbox, key) = (Arc::clone(outbox), id.clone());
            match tokio::task::spawn_blocking(move || outbox.events_for_call(&key)).await {
                Ok(Ok(events)) => Some(events),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the call's webhook events");
                    None
                }
                Err(e) => return Err(ApiError::internal(format!("outbox query: {e}"))),
            }
        }
        None => None,
    };
    Ok(Json(CallDetail {
        call_id: id,
        summary,
        record,
        handover_context,
        webhook_events,
    }))
}

/// `GET /api/calls/{id}/recording`: the call's stereo WAV (left: the caller, right: what the
/// caller was sent), with Range requests so a player can seek.
pub async fn recording(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    if id.is_empty() || id.len() > 512 {
        return Err(ApiError::bad_request("a call id has 1 to 512 characters"));
    }
    let key = id.clone();
    let record = query(history(&state)?, move |h| h.get(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no call `{id}` in the history")))?;
    let file = record
        .get("recording")
        .and_then(|r| r.get("file"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "call `{id}` was not recorded ([recording] enabled was off, or the recording failed)"
            ))
        })?;
    if !crate::call::record::is_recording_file_name(file) {
        return Err(ApiError::internal(format!(
            "the history names `{file}` as the recording of `{id}`, which is not a recording file name"
        )));
    }
    let path = state.engines.config.recording.dir.join(file);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(ApiError::not_found(format!(
            "the recording of `{id}` is gone (deleted after [recording] retention_days, or by hand)"
        )));
    }
    let served = ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(format!("cannot serve the recording: {e}")))?;
    // Errors are JSON here like everywhere else.
    match served.status() {
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // Content-Range (`bytes */SIZE`) tells the client the size.
            let mut answer = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "the Range is outside the recording (Content-Range gives its size)",
            )
            .into_response();
            let range = axum::http::header::CONTENT_RANGE;
            if let Some(v) = served.headers().get(&range) {
                answer.headers_mut().insert(range, v.clone());
            }
            Ok(answer)
        }
        s if s.is_client_error() || s.is_server_error() => Err(ApiError::new(
            s,
            format!("cannot serve the recording of `{id}`: {s}"),
        )),
        _ => Ok(served.map(axum::body::Body::new).into_response()),
    }
}

/// `GET /api/analytics`.
pub async fn analytics(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<FilterQuery>, QueryRejection>,
) -> Result<Json<Analytics>, ApiError> {
    let Query(q) = q?;
    let f = filter(q)?;
    query(history(&state)?, move |h| h.analytics(&f))
        .await
        .map(Json)
}

/// The calls in progress.
#[derive(Serialize)]
pub struct LiveList {
    pub count: usize,
    pub calls: Vec<super::live::LiveCall>,
}

/// `GET /api/calls/live`.
pub async fn live(State(state): State<Arc<AdminState>>) -> Json<LiveList> {
    let calls = state.live.snapshot();
    Json(LiveList {
        count: calls.len(),
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        assert_eq!(parse_time("1795844701857"), Some(1_795_844_701_857));
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2026-11-28"), Some(1_795_824_000_000));
        assert_eq!(parse_time("2026-11-28T05:44:55Z"), Some(1_795_844_695_000));
        assert_eq!(
            parse_time("2026-11-28T07:44:55.5+02:00"),
            Some(1_795_844_695_500)
        );
        assert_eq!(
            parse_time("2000-02-29T00:00:00-00:30"),
            Some(951_784_200_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-28T25:00:00Z",
            "2026-11-28T05:44Z",
            "12ab",
            "2026-11-28T05:44:55+2",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_name_the_bad_parameter() {
        let q = |f: FilterQuery| filter(f).map_err(|e| e.message);
        let err = q(FilterQuery {
            since: Some("soon".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.starts_with("since:"), "{err}");
        let err = q(FilterQuery {
            escalated: Some("maybe".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.starts_with("escalated:"), "{err}");
        let err = q(FilterQuery {
            since: Some("2026-11-28".into()),
            until: Some("2026-11-01".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("before"), "{err}");
        let ok = filter(FilterQuery {
            since: Some("2026-11-28".into()),
            escalated: Some("true".into()),
            flow: Some("support".into()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(ok.since_ms, Some(1_795_824_000_000));
        assert_eq!(ok.escalated, Some(true));
    }
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use crate::admin::test_support::{admin, assert_schema, fixture, send, ADMIN};
    use crate::call::record::CallRecord;
    use crate::observe::live::CallState;
    use crate::observe::metrics;
    use serde_json::json;
    use std::time::SystemTime;

    fn record(id: &str, flow: &str, escalated: Option<&str>, intent: &str, conf: f64) -> Value {
        json!({
            "call_id": id, "from": "sip:alice@192.0.2.4", "called": "support", "codec": "PCMU",
            "remote_rtp": "192.0.2.4:4000", "duration_ms": 42_000, "ended_by": "caller",
            "dtmf": [], "bot_speech": [], "rtp": {"packets_received": 100, "packets_lost": 1},
            "flow": flow, "greeting": "Hello",
            "turns": [{"index": 1, "transcript": "hi", "intent": intent, "intent_confidence": conf}],
            "outcome": if escalated.is_some() { "escalated" } else { "completed" },
            "escalation": escalated.map(|r| json!({"reason": r, "detail": "d", "skill": "general", "turn": 1})),
            "pipeline_error": null, "summary": "Caller sip:alice@192.0.2.4"
        })
    }

    #[tokio::test]
    async fn calls_are_listed_and_analysed_per_node() {
        let f = fixture(true);
        let h = f.state.history.clone().expect("history");
        let on = |id: &str, node: &str| {
            let mut r = record(id, "support", None, "order_status", 0.9);
            r["node"] = json!(node);
            r
        };
        h.insert(1, &on("a", "gw-1")).expect("a");
        h.insert(2, &on("b", "gw-2")).expect("b");
        h.insert(3, &on("c", "gw-2")).expect("c");
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/calls?node=gw-2",
            "/api/calls",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["total"], 2);
        assert_eq!(v["calls"][0]["node"], "gw-2");
        assert_eq!(v["calls"][1]["call_id"], "b");
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/analytics?node=gw-1",
            "/api/analytics",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["calls"], 1);
        let long = format!("/api/calls?node={}", "n".repeat(201));
        let (status, v) = admin(&f.app, "GET", &long, "/api/calls", None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }

    #[tokio::test]
    async fn history_lists_filters_pages_and_shows_one_call() {
        let f = fixture(true);
        let h = f.state.history.clone().expect("history");
        let day = 1_795_824_000_000_i64; // 2026-11-28
        h.insert(
            day + 1000,
            &record("a", "support", None, "order_status", 0.95),
        )
        .expect("a");
        h.insert(
            day + 2000,
            &record("b", "support", Some("dtmf0"), "none", 0.2),
        )
        .expect("b");
        h.insert(
            day - 86_400_000,
            &record("c", "billing", Some("negative_tone"), "complaint", 0.8),
        )
        .expect("c");
        let get = |uri: String| {
            let app = f.app.clone();
            async move { admin(&app, "GET", &uri, "/api/calls", None, "").await }
        };
        let (status, v) = get("/api/calls".into()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["total"], 3);
        assert_eq!(v["calls"][0]["call_id"], "b", "newest first");
        let (_, v) = get("/api/calls?since=2026-11-28&escalated=true".into()).await;
        assert_eq!(v["total"], 1);
        assert_eq!(v["calls"][0]["reason"], "dtmf0");
        let (_, v) = get("/api/calls?flow=billing&reason=negative_tone".into()).await;
        assert_eq!(v["calls"][0]["call_id"], "c");
        let (_, v) = get(format!("/api/calls?until={}&limit=1&offset=0", day + 1500)).await;
        assert_eq!(
            (v["total"].as_u64(), v["calls"].as_array().map(Vec::len)),
            (Some(2), Some(1))
        );
        for bad in [
            "/api/calls?since=soon",
            "/api/calls?escalated=maybe",
            "/api/calls?limit=0",
            "/api/calls?limit=5000",
            "/api/calls?offset=-1",
            "/api/calls?flw=support",
            "/api/calls?since=2026-11-28&until=2026-11-01",
        ] {
            let (status, v) = get(bad.into()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        }
        let (status, v) = admin(&f.app, "GET", "/api/calls/b", "/api/calls/{id}", None, "").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["record"]["escalation"]["reason"], "dtmf0");
        assert_eq!(v["summary"], "Caller sip:alice@192.0.2.4");
        assert!(v["webhook_events"].is_null());
        let (status, _) = admin(&f.app, "GET", "/api/calls/zzz", "/api/calls/{id}", None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_recording_is_served_whole_or_by_range_and_its_absence_explained() {
        let f = fixture(true);
        let h = f.state.history.clone().expect("history");
        let dir = f.state.engines.config.recording.dir.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(dir.join("rec-1.wav"), spec).unwrap();
        for i in 0..8000 {
            w.write_sample(i as i16).unwrap();
        }
        w.finalize().unwrap();
        let size = std::fs::metadata(dir.join("rec-1.wav")).unwrap().len();
        let with = |id: &str, file: Option<&str>| {
            let mut r = record(id, "support", None, "order_status", 0.9);
            if let Some(file) = file {
                r["recording"] = serde_json::json!({
                    "file": file, "rate": 8000, "channels": "left: caller, right: sent to the caller",
                    "seconds": 0.5, "dropped_ms": 0
                });
            }
            r
        };
        h.insert(1, &with("rec-1", Some("rec-1.wav"))).unwrap();
        h.insert(2, &with("plain", None)).unwrap();
        h.insert(3, &with("pruned", Some("pruned.wav"))).unwrap();
        h.insert(4, &with("evil", Some("../gateway.toml"))).unwrap();
        let get = |uri: &str, range: Option<&str>| {
            let mut r = axum::http::Request::builder()
                .uri(uri)
                .header("Authorization", format!("Bearer {ADMIN}"));
            if let Some(range) = range {
                r = r.header("Range", range);
            }
            let app = f.app.clone();
            let request = r.body(axum::body::Body::empty()).unwrap();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let (parts, body) = response.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                (parts, bytes)
            }
        };
        let (parts, bytes) = get("/api/calls/rec-1/recording", None).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-type"], "audio/wav");
        assert_eq!(bytes.len() as u64, size);
        let wav = hound::WavReader::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
        assert_eq!((wav.spec().channels, wav.len()), (2, 8000));
        let (parts, bytes) = get("/api/calls/rec-1/recording", Some("bytes=0-43")).await;
        assert_eq!(parts.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(bytes.len(), 44);
        let (parts, bytes) = get("/api/calls/rec-1/recording", Some("bytes=999999-")).await;
        assert_eq!(parts.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(parts.headers["content-range"], format!("bytes */{size}"));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_schema("GET", "/api/calls/{id}/recording", parts.status, &v);
        for (id, status, says) in [
            ("plain", StatusCode::NOT_FOUND, "not recorded"),
            ("pruned", StatusCode::NOT_FOUND, "retention_days"),
            ("nobody", StatusCode::NOT_FOUND, "no call"),
            (
                "evil",
                StatusCode::INTERNAL_SERVER_ERROR,
                "not a recording file name",
            ),
        ] {
            let uri = format!("/api/calls/{id}/recording");
            let (status_got, v) =
                admin(&f.app, "GET", &uri, "/api/calls/{id}/recording", None, "").await;
            assert_eq!(status_got, status, "{id}: {v}");
            assert!(v["error"].as_str().unwrap().contains(says), "{id}: {v}");
        }
        let answer = send(&f.app, "GET", "/api/calls/rec-1/recording", None, None, "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn analytics_over_the_selected_calls() {
        let f = fixture(true);
        let h = f.state.history.clone().expect("history");
        h.insert(1000, &record("a", "support", None, "order_status", 0.95))
            .expect("a");
        h.insert(
            2000,
            &record("b", "support", Some("dtmf0"), "order_status", 0.35),
        )
        .expect("b");
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/analytics?flow=support",
            "/api/analytics",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["calls"], 2);
        assert_eq!(v["containment_rate"], 0.5);
        assert_eq!(v["escalations_by_reason"]["dtmf0"], 1);
        assert_eq!(v["intents"][0]["histogram"][3], 1);
        let (status, _) = admin(
            &f.app,
            "GET",
            "/api/analytics?limit=3",
            "/api/analytics",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = admin(
            &f.app,
            "GET",
            "/api/analytics?until=x",
            "/api/analytics",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn live_calls_and_their_states() {
        let f = fixture(true);
        f.state
            .live
            .start("x@h", "x@h", "sip:bob@h", Some("support"), "support");
        f.state.live.set_state("x@h", CallState::Bridged);
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/calls/live",
            "/api/calls/live",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["count"], 1);
        assert_eq!(v["calls"][0]["state"], "bridged");
        let a = send(&f.app, "GET", "/api/calls/live", None, None, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_a_history_the_call_endpoints_say_so() {
        let f = fixture(true);
        let state = Arc::new(AdminState::new(
            f.state.engines.clone(),
            ADMIN.into(),
            Arc::clone(&f.state.hub),
        ));
        let app = crate::admin::router(state);
        for (uri, template) in [
            ("/api/calls", "/api/calls"),
            ("/api/calls/a", "/api/calls/{id}"),
            ("/api/analytics", "/api/analytics"),
        ] {
            let (status, v) = admin(&app, "GET", uri, template, None, "").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {v}");
        }
    }

    #[tokio::test]
    async fn a_finished_call_is_stored_with_its_summary_and_counted() {
        let f = fixture(true);
        let flow = f.state.engines.flows.current().default_flow();
        let run = crate::simulate::chat::simulate_chat(
            &f.state.engines,
            flow,
            &["I want to speak to a human".to_string()],
        )
        .await
        .expect("chat");
        let record = CallRecord {
            id: "0190a1b2-0000-7000-8000-000000000001".into(),
            call_id: "done@h".into(),
            from: "sip:carol@h".into(),
            called: Some("support".into()),
            trunk: None,
            codec: "PCMA".into(),
            remote_rtp: "192.0.2.9:4000".into(),
            duration_ms: 9000,
            ended_by: crate::call::record::EndedBy::Bot,
            dtmf: vec![],
            bot_speech: vec![],
            rtp: crate::call::record::RtpFigures {
                packets_received: 400,
                packets_lost: 4,
                jitter_ms: 2.5,
                ..Default::default()
            },
            report: Some(run.report),
            pipeline_error: None,
            transfer: None,
            recording: None,
            node: Some("gw-a:5060".into()),
        };
        let before = metrics::global().rtp_lost.get();
        let stored = on_call_finished(f.state.history.clone(), SystemTime::now(), &record);
        assert!(metrics::global().rtp_lost.get() >= before + 4);
        assert!(stored
            .expect("a history is configured")
            .await
            .expect("store"));
        let h = f.state.history.clone().expect("history");
        let stored = h.get("done@h").expect("get").expect("stored");
        assert_eq!(stored["escalation"]["reason"], "explicit_request");
        assert_eq!(stored["node"], "gw-a:5060", "the record names the gateway");
        let summary = stored["summary"].as_str().expect("summary");
        assert!(summary.contains("Caller sip:carol@h"), "{summary}");
        assert!(summary.contains("Escalated on turn 1"), "{summary}");
        let (_, v) = admin(
            &f.app,
            "GET",
            "/api/calls/done@h",
            "/api/calls/{id}",
            None,
            "",
        )
        .await;
        assert_eq!(v["record"]["codec"], "PCMA");
    }
}
