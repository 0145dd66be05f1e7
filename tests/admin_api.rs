//! The admin API end to end: the real `voicebot serve` binary with its models, on loopback,
//! driven over HTTP as an admin would. Every JSON answer is checked against the schema that
//! `/openapi.json` (the document the binary serves) gives for it.
//!
//! The gateway runs on a flows directory of its own (a copy of the shipped support flow) and
//! an admin token it generates into a file, as it does when none is configured.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use voicebot_gateway::admin::openapi::{check, response_schema};

use common::admin::{http_client, HttpGateway};
use common::{have_sipp, root, spoken_wav};

fn http() -> ureq::Agent {
    http_client(Duration::from_secs(120))
}

/// An answer: status and body text.
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("HTTP request");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Answer {
        status: r.status().as_u16(),
        content_type,
        text: r
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default(),
    }
}

/// The client: base URL, admin token, the served OpenAPI document.
struct Admin {
    base: String,
    token: String,
    doc: Value,
    agent: ureq::Agent,
}

impl Admin {
    fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        answer(req.call())
    }

    fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Answer {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let r = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(body),
            "PUT" => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(body),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            other => panic!("method {other}"),
        };
        answer(r)
    }

    /// An admin call whose JSON answer must match the document's schema for `template`.
    fn call(
        &self,
        method: &str,
        path: &str,
        template: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let a = if method == "GET" {
            self.get(path, Some(&self.token))
        } else {
            self.send(method, path, content_type, body)
        };
        let v = a.json();
        self.schema(method, template, a.status, &v);
        (a.status, v)
    }

    fn schema(&self, method: &str, template: &str, status: u16, v: &Value) {
        let schema = response_schema(&self.doc, method, template, status).unwrap_or_else(|| {
            panic!("/openapi.json has no JSON {status} answer for {method} {template}: {v}")
        });
        let problems = check(&self.doc, schema, v);
        assert!(
            problems.is_empty(),
            "{method} {template} {status}: {}\n{v:#}",
            problems.join("\n")
        );
    }

    fn chat(&self, turns: &[&str]) -> Value {
        let body = json!({"flow": "support", "turns": turns}).to_string();
        let (status, v) = self.call(
            "POST",
            "/api/test/chat",
            "/api/test/chat",
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{v}");
        v
    }
}

/// The shipped support flow with its intents and prompts named by absolute path, plus `extra`.
fn support_flow(extra: &str) -> String {
    let shipped =
        std::fs::read_to_string(root().join("sip-config/flows/support.toml")).expect("flow");
    let intents = root().join("sip-config/intents.toml");
    let prompts = root().join("prompts/en.toml");
    let mut text = String::new();
    for line in shipped.lines() {
        if line.starts_with("intents =") {
            text.push_str(&format!("intents = \"{}\"\n", intents.display()));
        } else if line.starts_with("prompts =") {
            text.push_str(&format!("prompts = \"{}\"\n", prompts.display()));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(extra);
    text
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("mkdir");
    std::fs::write(flows.join("support.toml"), support_flow("")).expect("flow");
    let config = dir.join("gateway.toml");
    let text = format!(
        "[flows]\ndir = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-e2e-token\"\n\
         feedback_database = \"{}\"\nadmin_token_env = \"\"\nadmin_token_file = \"{}\"\n\
         history_database = \"{}\"\n",
        flows.display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("secret/admin-token").display(),
        dir.join("history.sqlite3").display(),
    );
    std::fs::write(&config, text + extra).expect("config");
    config
}

#[test]
fn admin_api_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "");
    let serve = HttpGateway::start(&config, "46100-46199", 3, Duration::from_secs(120));

    // The banner says where the admin API is and where its token comes from; the generated
    // token is in that file, readable by the owner only, and never printed.
    let token_file = dir.path().join("secret/admin-token");
    let token = std::fs::read_to_string(&token_file)
        .expect("generated admin token")
        .trim()
        .to_string();
    let admin_line = &serve.banner[2];
    assert!(admin_line.starts_with("admin API: http://"), "{admin_line}");
    assert!(
        admin_line.contains(&token_file.display().to_string()),
        "{admin_line}"
    );
    assert!(
        !serve.banner.join("\n").contains(&token),
        "the token was printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let agent = http();
    let doc = answer(agent.get(format!("{}/openapi.json", serve.base)).call());
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/flows",
        "/api/flows/{name}",
        "/api/flows/validate",
        "/api/test/chat",
        "/api/test/wav",
        "/api/calls",
        "/api/calls/live",
        "/api/calls/{id}",
        "/api/analytics",
        "/readyz",
        "/metrics",
        "/calls/{id}/context",
    ] {
        assert!(paths.contains_key(p), "{p} not in /openapi.json");
    }
    let api = Admin {
        base: serve.base.clone(),
        token: token.clone(),
        doc,
        agent,
    };

    // Token required: none, a wrong one and the agents' token are all refused.
    for t in [None, Some("wrong-token"), Some("agent-e2e-token")] {
        let a = api.get("/api/flows", t);
        assert_eq!(a.status, 401, "{t:?}: {}", a.text);
        api.schema("GET", "/api/flows", a.status, &a.json());
    }

    // Health: ready (models loaded, SIP listening); metrics in the text format.
    let a = api.get("/readyz", None);
    assert_eq!(a.status, 200, "{}", a.text);
    api.schema("GET", "/readyz", 200, &a.json());
    assert_eq!(a.json()["flows"], json!(["support"]));
    let a = api.get("/metrics", None);
    assert_eq!(a.status, 200);
    assert!(
        a.content_type.contains("openmetrics-text"),
        "{}",
        a.content_type
    );
    for name in [
        "voicebot_calls_active",
        "voicebot_calls_total",
        "voicebot_escalations_total",
        "voicebot_asr_latency_seconds",
        "voicebot_intent_latency_seconds",
        "voicebot_tts_latency_seconds",
        "voicebot_rtp_jitter_seconds",
        "voicebot_rtp_packets_lost_total",
        "voicebot_webhook_outbox_depth",
    ] {
        assert!(
            a.text.contains(&format!("# TYPE {name}")) || a.text.contains(name),
            "{name}"
        );
    }

    // Flows: list, get.
    let (status, v) = api.call("GET", "/api/flows", "/api/flows", "", b"");
    assert_eq!(status, 200);
    assert_eq!(v["flows"][0]["name"], "support");
    let (status, v) = api.call("GET", "/api/flows/support", "/api/flows/{name}", "", b"");
    assert_eq!(status, 200);
    assert!(v["text"].as_str().is_some_and(|t| t.contains("[[lookup]]")));

    // An unknown order number before the edit.
    let before = api.chat(&["where is my order", "55555"]);
    let reply = before["report"]["turns"][1]["reply"].as_str().unwrap_or("");
    assert!(reply.contains("can't find an order"), "{before}");

    // An invalid edit: 422 with file, line and field, and nothing written or changed.
    let flow_file = dir.path().join("flows/support.toml");
    let on_disk = std::fs::read_to_string(&flow_file).expect("flow");
    let bad = support_flow("").replace(
        "clarifications_before_escalation = 1",
        "clarifications_before_escalation = 1\nmin_intent_confidence = 2.0",
    );
    let bad_line = bad
        .lines()
        .position(|l| l.starts_with("min_intent_confidence"))
        .expect("line")
        + 1;
    for (method, path, template) in [
        ("POST", "/api/flows/validate", "/api/flows/validate"),
        ("PUT", "/api/flows/support", "/api/flows/{name}"),
    ] {
        let (status, v) = api.call(method, path, template, "application/toml", bad.as_bytes());
        assert_eq!(status, 422, "{method} {v}");
        assert_eq!(
            v["problems"][0]["field"], "escalation.min_intent_confidence",
            "{v}"
        );
        assert_eq!(v["problems"][0]["line"], bad_line, "{v}");
    }
    assert_eq!(std::fs::read_to_string(&flow_file).expect("flow"), on_disk);

    // A valid edit: validated, written, in force for the next chat.
    let changed =
        support_flow("\"55555\" = { status = \"is waiting for you at the post office\" }\n");
    let (status, v) = api.call(
        "POST",
        "/api/flows/validate",
        "/api/flows/validate",
        "application/toml",
        changed.as_bytes(),
    );
    assert_eq!((status, &v["valid"]), (200, &json!(true)), "{v}");
    let (status, v) = api.call(
        "PUT",
        "/api/flows/support",
        "/api/flows/{name}",
        "application/toml",
        changed.as_bytes(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(std::fs::read_to_string(&flow_file).expect("flow"), changed);
    let (_, v) = api.call("GET", "/api/flows/support", "/api/flows/{name}", "", b"");
    assert_eq!(v["text"], changed);
    let after = api.chat(&["where is my order", "55555"]);
    let reply = after["report"]["turns"][1]["reply"].as_str().unwrap_or("");
    assert!(reply.contains("post office"), "{after}");

    // A second flow: created, listed, deleted; the default flow cannot be deleted.
    let billing = format!(
        "name = \"billing\"\nnumbers = [\"200\"]\nintents = \"{}\"\nprompts = \"{}\"\n",
        root().join("sip-config/intents.toml").display(),
        root().join("prompts/en.toml").display()
    );
    let body = json!({"flow": billing}).to_string();
    let (status, v) = api.call(
        "PUT",
        "/api/flows/billing",
        "/api/flows/{name}",
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["flows"], json!(["billing", "support"]));
    let (status, v) = api.call("DELETE", "/api/flows/support", "/api/flows/{name}", "", b"");
    assert_eq!(status, 409, "{v}");
    let (status, v) = api.call("DELETE", "/api/flows/billing", "/api/flows/{name}", "", b"");
    assert_eq!(status, 200, "{v}");
    assert!(!dir.path().join("flows/billing.toml").exists());
    let (status, _) = api.call("GET", "/api/flows/billing", "/api/flows/{name}", "", b"");
    assert_eq!(status, 404);

    // A chat that escalates, with its reason.
    let v = api.chat(&["I want to speak to a human, please"]);
    assert_eq!(v["report"]["outcome"], "escalated", "{v}");
    assert_eq!(
        v["report"]["escalation"]["reason"], "explicit_request",
        "{v}"
    );

    // A spoken chat: espeak-ng, then speech recognition, then the dialog.
    let body = json!({"turns": ["Where is my order?"], "speak": true}).to_string();
    let (status, v) = api.call(
        "POST",
        "/api/test/chat",
        "/api/test/chat",
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mode"], "speech");
    assert_eq!(v["report"]["turns"][0]["intent"], "order_status", "{v}");

    // A WAV through the whole pipeline, speech recognition included.
    let wav = spoken_wav(dir.path(), "order", "Hi, where is my order?");
    let bytes = std::fs::read(&wav).expect("wav");
    let (status, v) = api.call(
        "POST",
        "/api/test/wav?flow=support",
        "/api/test/wav",
        "audio/wav",
        &bytes,
    );
    assert_eq!(status, 200, "{v}");
    let turn = &v["report"]["turns"][0];
    assert!(
        turn["transcript"]
            .as_str()
            .is_some_and(|t| t.to_lowercase().contains("order")),
        "{v}"
    );
    assert_eq!(turn["intent"], "order_status", "{v}");
    let a = api.get("/metrics", None);
    let asr_count = a
        .text
        .lines()
        .find(|l| l.starts_with("voicebot_asr_latency_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(asr_count >= 1, "ASR latency not observed:\n{}", a.text);

    // Calls: no call yet; the history answers.
    let (status, v) = api.call("GET", "/api/calls?since=2026-01-01", "/api/calls", "", b"");
    assert_eq!((status, &v["total"]), (200, &json!(0)), "{v}");
    let (status, v) = api.call("GET", "/api/calls/live", "/api/calls/live", "", b"");
    assert_eq!((status, &v["count"]), (200, &json!(0)), "{v}");
    let (status, v) = api.call("GET", "/api/analytics", "/api/analytics", "", b"");
    assert_eq!((status, &v["calls"]), (200, &json!(0)), "{v}");
    let (status, _) = api.call("GET", "/api/calls/nope", "/api/calls/{id}", "", b"");
    assert_eq!(status, 404);
    let (status, _) = api.call("GET", "/api/calls?escalated=perhaps", "/api/calls", "", b"");
    assert_eq!(status, 400);

    // Bad input: malformed JSON, wrong types, an oversized body.
    let (status, v) = api.call(
        "POST",
        "/api/test/chat",
        "/api/test/chat",
        "application/json",
        b"{\"turns\": [",
    );
    assert_eq!(status, 400, "{v}");
    let (status, _) = api.call(
        "POST",
        "/api/test/chat",
        "/api/test/chat",
        "application/json",
        b"{\"turns\": 3}",
    );
    assert_eq!(status, 422);
    let huge = json!({"turns": ["x".repeat(100_000)]}).to_string();
    let (status, v) = api.call(
        "POST",
        "/api/test/chat",
        "/api/test/chat",
        "application/json",
        huge.as_bytes(),
    );
    assert_eq!(status, 413, "{v}");
}

/// Polls `f` every 100 ms for up to `limit`; the last value.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> (bool, T)) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (done, value) = f();
        if done || std::time::Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real call (SIPp, pressing 0 by SIP INFO): live while it lasts, then in the history with
/// its escalation, in the analytics and in the metrics.
#[test]
fn a_real_call_is_live_then_in_the_history() {
    if !have_sipp() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let recordings = dir.path().join("recordings");
    let config = write_config(
        dir.path(),
        &format!(
            "[recording]\nenabled = true\ndir = \"{}\"\n",
            recordings.display()
        ),
    );
    let serve = HttpGateway::start(&config, "46200-46299", 3, Duration::from_secs(120));
    let token = std::fs::read_to_string(dir.path().join("secret/admin-token"))
        .expect("token")
        .trim()
        .to_string();
    let agent = http();
    let doc = answer(agent.get(format!("{}/openapi.json", serve.base)).call()).json();
    let api = Admin {
        base: serve.base.clone(),
        token,
        doc,
        agent,
    };
    // The caller's audio, looped: a faint 1 kHz tone (-50 dBFS, below the barge-in floor), so
    // the recording's caller channel can be told from silence and from the bot.
    let status = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-t", "raw", "-e", "a-law"])
        .arg(dir.path().join("caller.raw"))
        .args(["synth", "1", "sine", "1000", "vol", "0.00316"])
        .status()
        .expect("sox");
    assert!(status.success());
    let (port, cwd) = (serve.sip_port, dir.path().to_path_buf());
    let sipp = std::thread::spawn(move || {
        Command::new("timeout")
            .arg("120")
            .arg("sipp")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(&cwd)
            .arg("-sf")
            .arg(root().join("tests/sipp/uac_dtmf_info.xml"))
            .args(["-s", "support", "-i", "127.0.0.1", "-p", "0"])
            .args(["-mp", "46400", "-m", "1", "-nostdin"])
            .args(["-timeout", "100", "-timeout_error"])
            .output()
            .expect("run sipp")
    });
    let live = poll(Duration::from_secs(30), || {
        let (status, v) = api.call("GET", "/api/calls/live", "/api/calls/live", "", b"");
        assert_eq!(status, 200);
        (v["count"] == 1, v)
    });
    assert_eq!(live["count"], 1, "the call never showed as live: {live}");
    assert_eq!(live["calls"][0]["flow"], "support");
    assert_eq!(live["calls"][0]["called"], "support");
    let out = sipp.join().expect("sipp thread");
    assert!(
        out.status.success(),
        "sipp failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = poll(Duration::from_secs(30), || {
        let (status, v) = api.call("GET", "/api/calls?escalated=true", "/api/calls", "", b"");
        assert_eq!(status, 200);
        (v["total"] == 1, v)
    });
    assert_eq!(list["total"], 1, "the call is not in the history: {list}");
    let call = &list["calls"][0];
    assert_eq!(call["reason"], "dtmf0", "{call}");
    assert_eq!(call["flow"], "support");
    let id = call["call_id"].as_str().expect("call id").to_string();
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, v) = api.call(
        "GET",
        &format!("/api/calls/{encoded}"),
        "/api/calls/{id}",
        "",
        b"",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["record"]["dtmf"], json!(["0"]));
    assert!(
        v["summary"]
            .as_str()
            .is_some_and(|s| s.contains("Escalated on turn 1")),
        "{v}"
    );
    check_recording(&api, &encoded, &v["record"], dir.path());
    let (_, v) = api.call("GET", "/api/analytics", "/api/analytics", "", b"");
    assert_eq!(v["escalations_by_reason"]["dtmf0"], 1, "{v}");
    assert_eq!(v["containment_rate"], 0.0, "{v}");
    let (_, live) = api.call("GET", "/api/calls/live", "/api/calls/live", "", b"");
    assert_eq!(live["count"], 0, "{live}");
    let metrics = api.get("/metrics", None).text;
    assert!(
        metrics.contains("voicebot_escalations_total{reason=\"dtmf0\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("voicebot_calls_total 1"), "{metrics}");
    assert!(
        metrics.contains("voicebot_calls_finished_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voicebot_rtp_jitter_seconds_count 1"),
        "{metrics}"
    );
    // The flow's fixed prompts were kept ready at start; the call took its prompts from them.
    let figure = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(
        figure("voicebot_prompt_cache_kept_units") >= 20.0,
        "{metrics}"
    );
    assert!(
        figure("voicebot_prompt_cache_hits_total") >= 1.0,
        "{metrics}"
    );
}

/// The call's recording, fetched over the API: a stereo WAV as long as the call, the caller's
/// tone on the left, the bot's greeting on the right; a range request gets the header alone.
fn check_recording(api: &Admin, encoded: &str, record: &Value, dir: &Path) {
    let info = &record["recording"];
    assert_eq!(info["rate"], 8000, "{record}");
    assert_eq!(info["dropped_ms"], 0, "{record}");
    let url = format!("{}/api/calls/{encoded}/recording", api.base);
    let auth = format!("Bearer {}", api.token);
    let mut r = api
        .agent
        .get(&url)
        .header("Authorization", &auth)
        .call()
        .expect("recording");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    let bytes = r
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .expect("body");
    let mut wav = hound::WavReader::new(std::io::Cursor::new(bytes)).expect("a WAV");
    let spec = wav.spec();
    assert_eq!((spec.channels, spec.sample_rate), (2, 8000));
    let samples: Vec<f32> = wav
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect();
    let seconds = samples.len() as f64 / 2.0 / 8000.0;
    let call_s = record["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    assert!(
        (seconds - call_s).abs() < 0.5,
        "recording {seconds} s, call {call_s} s"
    );
    assert!((info["seconds"].as_f64().unwrap_or(0.0) - seconds).abs() < 0.01);
    let channel = |c: usize, from_s: f64, to_s: f64| -> Vec<f32> {
        let (a, b) = ((from_s * 8000.0) as usize, (to_s * 8000.0) as usize);
        samples
            .chunks(2)
            .skip(a)
            .take(b.saturating_sub(a))
            .map(|p| p[c])
            .collect()
    };
    let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt();
    // The tone: about -53 dB RMS, at 1 kHz (a Goertzel filter holds most of its energy).
    let left = channel(0, 1.0, 2.0);
    let level = rms(&left);
    assert!(
        (0.0012..0.0045).contains(&level),
        "caller channel RMS {level}"
    );
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    let k = 2.0 * (2.0 * std::f32::consts::PI * 1000.0 / 8000.0).cos();
    for &x in &left {
        let s0 = x + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let tone_power =
        (s1 * s1 + s2 * s2 - k * s1 * s2) / left.len() as f32 * 2.0 / left.len() as f32;
    assert!(
        tone_power > 0.5 * level * level,
        "the caller channel is not the 1 kHz tone: {tone_power} vs {}",
        level * level
    );
    // The bot on the right: its greeting, as the caller heard it.
    let right = channel(1, 0.0, seconds);
    assert!(rms(&right) > 0.02, "bot channel RMS {}", rms(&right));
    let mono = dir.join("bot-side.wav");
    let mut w = hound::WavWriter::create(
        &mono,
        hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .expect("wav");
    for s in &right {
        w.write_sample((s * 32767.0) as i16).expect("write");
    }
    w.finalize().expect("finalize");
    let heard = common::transcribe_recording(&mono);
    assert!(
        heard.contains("calling") || heard.contains("thank"),
        "bot side: {heard}"
    );
    // Players seek with ranges.
    let r = api
        .agent
        .get(&url)
        .header("Authorization", &auth)
        .header("Range", "bytes=0-43")
        .call()
        .expect("range");
    assert_eq!(r.status().as_u16(), 206);
}
