//! What the voice-to-voice benchmarks (turn_latency, webrtc) share: the callers' utterances,
//! made with the gateway's own neural voice through the admin API (`POST /api/test/say`) and
//! an 8 kHz telephone band, the admin API client, and percentiles. One place, so both benches
//! say exactly the same things.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
/// The caller utterances, each in parts said with a pause of PAUSE_MS between them (the
/// recogniser must not take the pause for the end of the turn). Each one is answered by the
/// default flow with a reply, without a hand-over and without ending the call, in any order.
pub const UTTERANCES: &[(&str, &[&str])] = &[
    ("hours", &["What are your opening hours?"]),
    ("saturday", &["Are you open on Saturday?"]),
    ("password", &["Hi, I forgot my password."]),
    (
        "login",
        &[
            "I can't log in to my account,",
            "could you reset my password?",
        ],
    ),
    (
        "order-45712",
        &[
            "I'm calling about my order, the number is",
            "four five seven one two.",
        ],
    ),
    (
        "order-10001",
        &["My order number is", "one zero zero zero one."],
    ),
    (
        "order-12345",
        &[
            "I'd like to check on order number",
            "one two three four five.",
        ],
    ),
    ("thanks", &["Thank you, that's really helpful."]),
    ("hello", &["Hello, is this customer support?"]),
];
/// Silence inside an utterance between its parts, from the last voiced sample to the next.
pub const PAUSE_MS: usize = 600;
/// Speech level: each utterance's peak, dBFS.
pub const SPEECH_PEAK_DBFS: f32 = -6.0;
/// Voiced: at or above this level (the callers use the same for their end of speech).
pub const VOICED_DBFS: f32 = -40.0;
pub const RATE: u32 = 8000;

/// The admin API.
pub struct Api {
    pub base: String,
    pub token: String,
    pub agent: ureq::Agent,
}

impl Api {
    /// The admin API (with `token`) and the SIP port that a gateway's ready line names.
    pub fn from_ready_line(ready: &str, token: &str) -> Result<(Api, u16), String> {
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .ok_or_else(|| format!("no {key} in the ready line {ready:?}"))
        };
        let sip_port: u16 = field("sip=127.0.0.1:")?
            .parse()
            .map_err(|_| format!("no SIP port in the ready line {ready:?}"))?;
        let api = Api {
            base: format!("http://{}", field("http=")?),
            token: token.to_string(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(120)))
                .build()
                .into(),
        };
        Ok((api, sip_port))
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn read(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Vec<u8>) {
        match r {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut()
                    .with_config()
                    .limit(64 * 1024 * 1024)
                    .read_to_vec()
                    .unwrap_or_default(),
            ),
            Err(e) => panic!("admin API: {e}"),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        Self::read(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", &self.auth())
                .call(),
        )
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        Self::read(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Authorization", &self.auth())
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    /// `text` in the support flow's voice (16 kHz mono samples).
    pub fn say(&self, text: &str) -> Vec<f32> {
        let body = json!({"flow": "support", "text": text}).to_string();
        let (status, wav) = self.post("/api/test/say", "application/json", body.as_bytes());
        assert_eq!(
            status,
            200,
            "say {text:?}: {}",
            String::from_utf8_lossy(&wav)
        );
        let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).expect("a WAV");
        let spec = reader.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate),
            (1, 16_000),
            "say: format"
        );
        reader
            .samples::<i16>()
            .map(|s| f32::from(s.expect("sample")) / 32768.0)
            .collect()
    }

    /// A finished call's record, waiting for the history to have it.
    pub fn record(&self, call_id: &str) -> Option<Value> {
        let id = percent_encoding::utf8_percent_encode(call_id, percent_encoding::NON_ALPHANUMERIC);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(&format!("/api/calls/{id}"));
            if status == 200 {
                let v: Value = serde_json::from_slice(&body).ok()?;
                return Some(v["record"].clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A second-order section (RBJ's cookbook), run in place.
pub fn biquad(samples: &mut [f32], rate: f32, f0: f32, highpass: bool) {
    let w0 = 2.0 * std::f32::consts::PI * f0 / rate;
    let (sin, cos) = w0.sin_cos();
    let alpha = sin / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
    let (b0, b1, b2) = if highpass {
        ((1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0)
    } else {
        ((1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0)
    };
    let (a0, a1, a2) = (1.0 + alpha, -2.0 * cos, 1.0 - alpha);
    let (mut x1, mut x2, mut y1, mut y2) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for s in samples.iter_mut() {
        let x = *s;
        let y = (b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2) / a0;
        (x2, x1, y2, y1) = (x1, x, y1, y);
        *s = y;
    }
}

/// The telephone band, 300-3400 Hz, at 8 kHz.
pub fn telephone_band(samples: &mut [f32]) {
    for _ in 0..2 {
        biquad(samples, RATE as f32, 300.0, true);
        biquad(samples, RATE as f32, 3400.0, false);
    }
}

pub fn db_to_amplitude(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// The first and last sample at or above `threshold` (magnitude).
pub fn voiced_span(samples: &[f32], threshold: f32) -> Option<(usize, usize)> {
    let first = samples.iter().position(|s| s.abs() >= threshold)?;
    let last = samples.iter().rposition(|s| s.abs() >= threshold)?;
    Some((first, last))
}

pub fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    for s in samples {
        w.write_sample((s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
            .expect("write WAV");
    }
    w.finalize().expect("finish WAV");
}

/// One utterance: its parts in the neural voice, in the telephone band at 8 kHz, peak at
/// SPEECH_PEAK_DBFS, each trimmed to its voiced span and joined by exactly PAUSE_MS from the
/// last voiced sample of one to the first of the next, with 100 ms of silence before and
/// 150 ms after.
pub fn make_utterance(api: &Api, parts: &[&str]) -> Vec<f32> {
    let mut narrow: Vec<Vec<f32>> = parts
        .iter()
        .map(|part| {
            let wide = api.say(part);
            let mut n = voicebot_gateway::audio::resample::resample_all(&wide, 16_000, RATE)
                .expect("resample");
            telephone_band(&mut n);
            n
        })
        .collect();
    let peak = narrow.iter().flatten().fold(0.0f32, |m, s| m.max(s.abs()));
    let gain = db_to_amplitude(SPEECH_PEAK_DBFS) / peak.max(1e-6);
    let threshold = db_to_amplitude(VOICED_DBFS);
    let mut out = vec![0.0; RATE as usize / 10];
    for (i, part) in narrow.iter_mut().enumerate() {
        part.iter_mut().for_each(|s| *s *= gain);
        let (first, last) = voiced_span(part, threshold).expect("the voice said nothing");
        if i > 0 {
            out.extend(std::iter::repeat_n(0.0, PAUSE_MS * RATE as usize / 1000));
        }
        out.extend_from_slice(&part[first..=last]);
    }
    out.extend(std::iter::repeat_n(0.0, RATE as usize * 15 / 100));
    out
}

/// The longest stretch below the voiced level between the first and last voiced sample, ms.
pub fn longest_pause_ms(samples: &[f32]) -> f64 {
    let threshold = db_to_amplitude(VOICED_DBFS);
    let voiced: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].abs() >= threshold)
        .collect();
    let longest = voiced.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    longest as f64 * 1000.0 / RATE as f64
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}
