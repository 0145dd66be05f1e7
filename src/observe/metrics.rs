//! The gateway's Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! # Why one process-wide registry
//!
//! The figures come from places that share no handle: the pipeline times every turn (ASR,
//! intent, TTS) for live calls and simulations alike, the signalling task counts calls, a
//! finished call's record carries its RTP loss and jitter. Threading a metrics handle through
//! `Engines` and every call's setup would touch every constructor for no gain, so the metrics
//! live in one lazily built, lock-free registry ([`global`]); observing is an atomic add.
//! Gauges that describe current state (calls in progress, webhook outbox depth and dead letters) are not kept
//! up to date continuously: the scrape handler sets them from their source just before
//! encoding, so they cannot drift.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::call::record::CallRecord;
use crate::report::{CallOutcome, TurnTimings};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metric names as they appear in the exposition (counters get `_total`, histograms
/// `_bucket`/`_sum`/`_count`); the tests check each is served.
pub const NAMES: &[&str] = &[
    "voicebot_calls_active",
    "voicebot_calls_total",
    "voicebot_calls_finished_total",
    "voicebot_escalations_total",
    "voicebot_asr_latency_seconds",
    "voicebot_intent_latency_seconds",
    "voicebot_tts_latency_seconds",
    "voicebot_turn_latency_seconds",
    "voicebot_rtp_packets_received_total",
    "voicebot_rtp_packets_lost_total",
    "voicebot_rtp_jitter_seconds",
    "voicebot_rtp_loss_ratio",
    "voicebot_webhook_outbox_depth",
    "voicebot_webhook_dead_events",
    "voicebot_prompt_cache_hits_total",
    "voicebot_prompt_cache_misses_total",
    "voicebot_prompt_cache_units",
    "voicebot_prompt_cache_kept_units",
    "voicebot_srtp_auth_failures_total",
    "voicebot_srtp_replays_total",
    "voicebot_turn_wait_seconds",
];
// `voicebot_refused`, `voicebot_sip_trunk_registered` and `voicebot_sip_register_failures_total`
// have samples only once a limit refused something or a trunk is configured (their labels);
// tests/trunk_kamailio.rs checks the trunk ones are served.

/// The escalation reasons, as serialised (`EscalationReason`).
const REASONS: &[&str] = &[
    "explicit_request",
    "critical_keyword",
    "low_asr_confidence",
    "low_intent_confidence",
    "repeated_misunderstanding",
    "negative_tone",
    "dtmf0",
    "no_input",
];

/// The escalation reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A trunk's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabel {
    pub trunk: String,
}

/// A trunk's name and why a REGISTER failed (`timeout`, `auth`, `status`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkReasonLabel {
    pub trunk: String,
    pub reason: String,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub calls_active: Gauge,
    pub calls_total: Counter,
    pub calls_finished: Counter,
    pub escalations: Family<ReasonLabel, Counter>,
    pub asr_latency: Histogram,
    pub intent_latency: Histogram,
    pub tts_latency: Histogram,
    pub turn_latency: Histogram,
    pub rtp_received: Counter,
    pub rtp_lost: Counter,
    pub rtp_jitter: Histogram,
    pub rtp_loss_ratio: Histogram,
    pub outbox_depth: Gauge,
    pub webhook_dead: Gauge,
    pub prompt_cache_hits: Counter,
    pub prompt_cache_misses: Counter,
    pub prompt_cache_units: Gauge,
    pub prompt_cache_kept: Gauge,
    /// Requests and connections refused by a limit (`reason`: `tcp_total`, `tcp_per_source`,
    /// `tcp_header_timeout`, `tcp_write_backlog`, `auth_throttled`).
    pub refused: Family<ReasonLabel, Counter>,
    /// Failed TLS handshakes (`direction`: `inbound` on our listener, `outbound` on
    /// connections we open, e.g. an agent's certificate not trusted).
    pub tls_handshake_failures: Family<DirectionLabel, Counter>,
    /// SRTP/SRTCP packets dropped unauthenticated (wrong key, tampered, truncated) and as
    /// replays, counted as they happen (never played).
    pub srtp_auth_failures: Counter,
    pub srtp_replays: Counter,
    /// 1 while the trunk's registration holds, else 0 (set at each scrape).
    pub trunk_registered: Family<TrunkLabel, Gauge>,
    /// Failed REGISTER attempts by trunk and reason.
    pub register_failures: Family<TrunkReasonLabel, Counter>,
    /// The 90th percentile of how long end-of-turn inference jobs waited for a worker over
    /// `[admission] window_s`, the figure admission's lateness check compares (set at each
    /// scrape; 0 when none ran).
    pub turn_wait: Gauge<f64, AtomicU64>,
}

/// The direction label of TLS handshake failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let calls_active = Gauge::default();
        let calls_total = Counter::default();
        let calls_finished = Counter::default();
        let escalations = Family::<ReasonLabel, Counter>::default();
        // Every reason is exported from the start (at 0), so a rate over it is defined before
        // the first escalation of that kind.
        for reason in REASONS {
            let _ = escalations.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
        // 1 ms .. 16 s: recognition and synthesis of one turn.
        let slow = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        // 50 us .. 0.8 s: the dialog (intent model, rules, policy).
        let intent_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 15));
        let (asr_latency, tts_latency, turn_latency) = (slow(), slow(), slow());
        let rtp_received = Counter::default();
        let rtp_lost = Counter::default();
        // 1 ms .. 256 ms of interarrival jitter per call.
        let rtp_jitter = Histogram::new(exponential_buckets(0.001, 2.0, 9));
        let rtp_loss_ratio = Histogram::new([0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]);
        let outbox_depth = Gauge::default();
        let webhook_dead = Gauge::default();
        let prompt_cache_hits = Counter::default();
        let prompt_cache_misses = Counter::default();
        let prompt_cache_units = Gauge::default();
        let prompt_cache_kept = Gauge::default();
        let refused = Family::<ReasonLabel, Counter>::default();
        let tls_handshake_failures = Family::<DirectionLabel, Counter>::default();
        let srtp_auth_failures = Counter::default();
        let srtp_replays = Counter::default();
        let trunk_registered = Family::<TrunkLabel, Gauge>::default();
        let register_failures = Family::<TrunkReasonLabel, Counter>::default();
        let turn_wait = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "voicebot_turn_wait_seconds",
            "90th percentile of how long end-of-turn inference jobs waited for a worker over \
             [admission] window_s (0 when none ran)",
            turn_wait.clone(),
        );
        registry.register(
            "voicebot_sip_trunk_registered",
            "1 while the gateway's registration with the trunk holds",
            trunk_registered.clone(),
        );
        registry.register(
            "voicebot_sip_register_failures",
            "Failed REGISTER attempts, by trunk and reason (timeout, transport, unavailable = 503, auth, status, resolve)",
            register_failures.clone(),
        );
        registry.register(
            "voicebot_calls_active",
            "Calls in progress (answered by the bot, in transfer or bridged)",
            calls_active.clone(),
        );
        registry.register(
            "voicebot_calls",
            "Calls answered since start",
            calls_total.clone(),
        );
        registry.register(
            "voicebot_calls_finished",
            "Calls finished since start",
            calls_finished.clone(),
        );
        registry.register(
            "voicebot_escalations",
            "Calls handed to a person, by escalation reason",
            escalations.clone(),
        );
        registry.register(
            "voicebot_asr_latency_seconds",
            "Speech recognition time per caller turn",
            asr_latency.clone(),
        );
        registry.register(
            "voicebot_intent_latency_seconds",
            "Dialog time per caller turn (intent, slots, escalation policy)",
            intent_latency.clone(),
        );
        registry.register(
            "voicebot_tts_latency_seconds",
            "Speech synthesis time per bot reply",
            tts_latency.clone(),
        );
        registry.register(
            "voicebot_turn_latency_seconds",
            "From the end of the caller's utterance to the reply audio being ready",
            turn_latency.clone(),
        );
        registry.register(
            "voicebot_rtp_packets_received",
            "RTP packets received from callers (finished calls)",
            rtp_received.clone(),
        );
        registry.register(
            "voicebot_rtp_packets_lost",
            "RTP packets from callers that never arrived (finished calls)",
            rtp_lost.clone(),
        );
        registry.register(
            "voicebot_rtp_jitter_seconds",
            "Interarrival jitter of the caller's RTP per finished call (RFC 3550 estimate)",
            rtp_jitter.clone(),
        );
        registry.register(
            "voicebot_rtp_loss_ratio",
            "Share of the caller's RTP packets lost, per finished call",
            rtp_loss_ratio.clone(),
        );
        registry.register(
            "voicebot_webhook_outbox_depth",
            "Webhook events waiting for delivery",
            outbox_depth.clone(),
        );
        registry.register(
            "voicebot_webhook_dead_events",
            "Webhook events given up after max_attempts (dead letters kept in the outbox)",
            webhook_dead.clone(),
        );
        registry.register(
            "voicebot_prompt_cache_hits",
            "Synthesised units served from the prompt cache since start",
            prompt_cache_hits.clone(),
        );
        registry.register(
            "voicebot_prompt_cache_misses",
            "Units synthesised because the prompt cache did not hold them",
            prompt_cache_misses.clone(),
        );
        registry.register(
            "voicebot_prompt_cache_units",
            "Units held by the prompt cache",
            prompt_cache_units.clone(),
        );
        registry.register(
            "voicebot_prompt_cache_kept_units",
            "Fixed-prompt units kept ready in the prompt cache (never evicted)",
            prompt_cache_kept.clone(),
        );
        registry.register(
            "voicebot_refused",
            "Requests and connections refused by a limit, by reason",
            refused.clone(),
        );
        registry.register(
            "voicebot_tls_handshake_failures",
            "SIP over TLS handshakes that failed (bad or untrusted certificate, protocol error, \
             timeout), by direction",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "voicebot_srtp_auth_failures",
            "SRTP/SRTCP packets dropped because they failed authentication (never played)",
            srtp_auth_failures.clone(),
        );
        registry.register(
            "voicebot_srtp_replays",
            "SRTP/SRTCP packets dropped as replays or older than the replay window",
            srtp_replays.clone(),
        );
        Metrics {
            registry,
            calls_active,
            calls_total,
            calls_finished,
            escalations,
            asr_latency,
            intent_latency,
            tts_latency,
            turn_latency,
            rtp_received,
            rtp_lost,
            rtp_jitter,
            rtp_loss_ratio,
            outbox_depth,
            webhook_dead,
            prompt_cache_hits,
            prompt_cache_misses,
            prompt_cache_units,
            prompt_cache_kept,
            refused,
            tls_handshake_failures,
            srtp_auth_failures,
            srtp_replays,
            trunk_registered,
            register_failures,
            turn_wait,
        }
    }

    /// The exposition text (OpenMetrics, see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts one failed TLS handshake (`direction`: `inbound` or `outbound`).
pub fn tls_handshake_failed(direction: &str) {
    global()
        .tls_handshake_failures
        .get_or_create(&DirectionLabel {
            direction: direction.to_string(),
        })
        .inc();
}

/// Counts one refusal by a limit under `reason` (see [`Metrics::refused`]).
pub fn refused(reason: &str) {
    global()
        .refused
        .get_or_create(&ReasonLabel {
            reason: reason.to_string(),
        })
        .inc();
}

/// Sets a trunk's registered gauge.
pub fn trunk_registered(trunk: &str, registered: bool) {
    global()
        .trunk_registered
        .get_or_create(&TrunkLabel {
            trunk: trunk.to_string(),
        })
        .set(i64::from(registered));
}

/// Counts one failed REGISTER of `trunk` for `reason`.
pub fn register_failed(trunk: &str, reason: &str) {
    global()
        .register_failures
        .get_or_create(&TrunkReasonLabel {
            trunk: trunk.to_string(),
            reason: reason.to_string(),
        })
        .inc();
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Records one caller turn's processing times; `heard` is false for a turn without speech
/// recognition (a key press).
pub fn observe_turn(timings: &TurnTimings, heard: bool) {
    let m = global();
    if heard {
        m.asr_latency.observe(timings.asr.as_secs_f64());
        m.intent_latency.observe(timings.intent.as_secs_f64());
    }
    if !timings.tts.is_zero() {
        m.tts_latency.observe(timings.tts.as_secs_f64());
    }
    m.turn_latency.observe(timings.total.as_secs_f64());
}

/// Records a finished call from its JSON record (the gateway's `CallRecord`): the escalation
/// reason and the RTP figures. Fields are read defensively; a missing one is skipped.
pub fn observe_finished_call(record: &CallRecord) {
    let m = global();
    m.calls_finished.inc();
    if let Some(report) = record
        .report
        .as_ref()
        .filter(|r| r.outcome == CallOutcome::Escalated)
    {
        let reason = report
            .escalation
            .as_ref()
            .and_then(|e| serde_json::to_value(e.reason).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        m.escalations.get_or_create(&ReasonLabel { reason }).inc();
    }
    let rtp = &record.rtp;
    let (received, lost) = (rtp.packets_received, rtp.packets_lost);
    m.rtp_received.inc_by(received);
    m.rtp_lost.inc_by(lost);
    if received + lost > 0 {
        m.rtp_loss_ratio
            .observe(lost as f64 / (received + lost) as f64);
        m.rtp_jitter.observe(rtp.jitter_ms.max(0.0) / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::record::RtpFigures;
    use crate::report::CallReport;
    use std::time::Duration;

    /// A call's report with this outcome (escalated: by the caller pressing 0).
    fn report(outcome: CallOutcome) -> CallReport {
        let escalated = outcome == CallOutcome::Escalated;
        CallReport {
            flow: "support".into(),
            greeting: "Hello".into(),
            turns: Vec::new(),
            outcome,
            escalation: escalated.then(|| crate::dialog::Escalation {
                reason: crate::dialog::EscalationReason::Dtmf0,
                detail: "the caller pressed 0".into(),
                skill: "general".into(),
                turn: 1,
            }),
            caller_audio: Duration::from_secs(5),
            unprocessed_after_end: Duration::ZERO,
            noise_ignored: 0,
            after_handover: Vec::new(),
        }
    }

    #[test]
    fn every_named_metric_is_exposed_in_openmetrics_text() {
        observe_turn(
            &TurnTimings {
                asr: Duration::from_millis(120),
                intent: Duration::from_millis(2),
                tts: Duration::from_millis(20),
                total: Duration::from_millis(150),
            },
            true,
        );
        observe_finished_call(&CallRecord {
            report: Some(report(CallOutcome::Escalated)),
            rtp: RtpFigures {
                packets_received: 990,
                packets_lost: 10,
                jitter_ms: 3.5,
                ..RtpFigures::default()
            },
            ..CallRecord::default()
        });
        let text = global().encode();
        for name in NAMES {
            assert!(
                text.contains(&format!("\n{name}")) || text.starts_with(name),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("voicebot_escalations_total{reason=\"dtmf0\"}"),
            "{text}"
        );
        assert!(
            text.contains("voicebot_asr_latency_seconds_bucket{le="),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        for reason in REASONS {
            assert!(
                text.contains(&format!(
                    "voicebot_escalations_total{{reason=\"{reason}\"}}"
                )),
                "{reason}"
            );
            let serialised = serde_json::from_value::<crate::dialog::EscalationReason>(
                serde_json::json!(reason),
            );
            assert!(serialised.is_ok(), "{reason} is not an escalation reason");
        }
    }

    #[test]
    fn records_without_figures_are_counted_but_not_measured() {
        let before = global().calls_finished.get();
        observe_finished_call(&CallRecord {
            report: Some(report(CallOutcome::Completed)),
            ..CallRecord::default()
        });
        observe_finished_call(&CallRecord::default());
        // Other tests may count calls concurrently; these two counted at least.
        assert!(global().calls_finished.get() >= before + 2);
    }
}
