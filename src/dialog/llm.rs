//! The optional LLM backend: an OpenAI-compatible chat endpoint (llama.cpp's server, vLLM,
//! Ollama, a hosted API) that classifies caller turns and writes hand-over summaries.
//!
//! Off by default (`[intent.llm] enabled = false`): the gateway is offline and the embedded
//! engines decide. When it is on, every call to the endpoint has a strict deadline
//! (`timeout_ms`, for the whole exchange), and anything short of a well-formed answer naming a
//! known intent (a timeout, a refused connection, an HTTP error, prose instead of JSON, an
//! invented intent) falls back to the offline engine for that turn, with the reason in the
//! turn's evidence and a warning in the log. The offline engine also runs on every turn, so its
//! verdict is at hand for the fallback and its tone-by-meaning is kept either way.
//!
//! The HTTP exchange is blocking (`ureq`): classification runs on the inference pool, never on
//! the async runtime. The API key comes from the config or, better, an environment variable,
//! and is never logged.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::intent::{IntentClassifier, IntentMatch, IntentsFile, NONE_INTENT};

/// `[intent.llm]`: the OpenAI-compatible endpoint.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Whether turns are classified by the endpoint (with the offline engine as fallback).
    pub enabled: bool,
    /// The chat-completions URL, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
    pub url: String,
    /// The model name sent in each request.
    pub model: String,
    /// The bearer token; prefer `api_key_env`. Empty: none (a local server).
    pub api_key: String,
    /// Environment variable holding the bearer token (used when `api_key` is empty).
    pub api_key_env: String,
    /// Deadline for one whole exchange (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
    /// Example sentences per intent shown to the model.
    pub examples_per_intent: usize,
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never reaches a log line.
        f.debug_struct("LlmConfig")
            .field("enabled", &self.enabled)
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "***" })
            .field("api_key_env", &self.api_key_env)
            .field("timeout_ms", &self.timeout_ms)
            .field("examples_per_intent", &self.examples_per_intent)
            .finish()
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            enabled: false,
            url: "http://127.0.0.1:8080/v1/chat/completions".into(),
            model: "default".into(),
            api_key: String::new(),
            api_key_env: "VOICEBOT_LLM_API_KEY".into(),
            timeout_ms: 1500,
            examples_per_intent: 3,
        }
    }
}

/// Shortest and longest allowed `timeout_ms`.
pub const TIMEOUT_RANGE_MS: (u64, u64) = (50, 30_000);

impl LlmConfig {
    /// What is wrong with the settings, as `(field, reason)`; only checked when enabled.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !self.enabled {
            return None;
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Some((
                "url",
                format!("`{}` is not an http:// or https:// URL", self.url),
            ));
        }
        if self.model.trim().is_empty() {
            return Some(("model", "must name the model".into()));
        }
        let (lo, hi) = TIMEOUT_RANGE_MS;
        if !(lo..=hi).contains(&self.timeout_ms) {
            return Some((
                "timeout_ms",
                format!("{} must be in {lo}..={hi}", self.timeout_ms),
            ));
        }
        if self.examples_per_intent > 20 {
            return Some(("examples_per_intent", "must be at most 20".into()));
        }
        None
    }

    fn key(&self) -> Option<String> {
        if !self.api_key.is_empty() {
            return Some(self.api_key.clone());
        }
        std::env::var(&self.api_key_env)
            .ok()
            .filter(|k| !k.is_empty())
    }
}

/// Why the endpoint gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("answer is not a chat completion: {0}")]
    Shape(String),
    #[error("answer is not the JSON asked for: {0:?}")]
    NotJson(String),
    #[error("answer names unknown intent `{0}`")]
    UnknownIntent(String),
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    temperature: f32,
    max_tokens: u32,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Verdict {
    intent: String,
    confidence: Option<f32>,
}

/// A client of one OpenAI-compatible chat endpoint.
pub struct LlmClient {
    config: LlmConfig,
    agent: ureq::Agent,
}

impl fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// A client with the config's deadline on every exchange.
    pub fn new(config: LlmConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            .build()
            .into();
        LlmClient { config, agent }
    }

    /// The settings.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// One chat exchange: the assistant's answer to `system` + `user`.
    pub fn complete(&self, system: &str, user: &str, max_tokens: u32) -> Result<String, LlmError> {
        let started = Instant::now();
        let body = ChatRequest {
            model: &self.config.model,
            messages: [
                Message {
                    role: "system",
                    content: system,
                },
                Message {
                    role: "user",
                    content: user,
                },
            ],
            temperature: 0.0,
            max_tokens,
        };
        let mut request = self.agent.post(&self.config.url);
        if let Some(key) = self.config.key() {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let timed_out = |e: &ureq::Error| {
            matches!(e, ureq::Error::Timeout(_))
                || started.elapsed() >= Duration::from_millis(self.config.timeout_ms)
        };
        let response = request.send_json(&body).map_err(|e| {
            if timed_out(&e) {
                LlmError::Timeout(self.config.timeout_ms)
            } else {
                LlmError::Http(e.to_string())
            }
        })?;
        let parsed: ChatResponse = response.into_body().read_json().map_err(|e| {
            if timed_out(&e) {
                LlmError::Timeout(self.config.timeout_ms)
            } else {
                LlmError::Shape(e.to_string())
            }
        })?;
        parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::Shape("no choices[0].message.content".into()))
    }

    /// Asks for the intent of one caller turn; `system` is [`classification_prompt`].
    fn classify(
        &self,
        system: &str,
        text: &str,
        known: &[String],
    ) -> Result<(String, f32), LlmError> {
        let answer = self.complete(system, text, 60)?;
        let verdict = parse_verdict(&answer)?;
        let intent = verdict.intent.trim().to_ascii_lowercase();
        if intent != NONE_INTENT && !known.contains(&intent) {
            return Err(LlmError::UnknownIntent(intent));
        }
        let confidence = verdict.confidence.unwrap_or(0.8);
        if !confidence.is_finite() {
            return Err(LlmError::NotJson(answer));
        }
        Ok((intent, confidence.clamp(0.0, 1.0)))
    }

    /// A short summary (at most `max_chars`) of a call for the agent who takes it over:
    /// `transcript` is one line per turn ("caller: ...", "bot: ...").
    pub fn summarise(&self, transcript: &str, max_chars: usize) -> Result<String, LlmError> {
        let system = "You write hand-over notes for contact-center agents. Summarise the phone \
                      call below in 3 to 5 short lines: who is calling, what they want, what the \
                      bot already did, and why the call is being handed to a person. Plain text, \
                      no preamble.";
        let answer = self.complete(system, transcript, 200)?;
        let text = answer.trim();
        if text.is_empty() {
            return Err(LlmError::Shape("empty summary".into()));
        }
        Ok(text.chars().take(max_chars).collect())
    }
}

/// The JSON object in an answer, tolerating prose or a code fence around it.
fn parse_verdict(answer: &str) -> Result<Verdict, LlmError> {
    let (Some(start), Some(end)) = (answer.find('{'), answer.rfind('}')) else {
        return Err(LlmError::NotJson(answer.chars().take(200).collect()));
    };
    answer
        .get(start..=end)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| LlmError::NotJson(answer.chars().take(200).collect()))
}

/// The system prompt that asks for one intent name as JSON, listing the flow's intents with a
/// few examples each.
pub fn classification_prompt(intents: &IntentsFile, examples_per_intent: usize) -> String {
    let mut prompt = String::from(
        "You classify what a caller says to a customer-support phone line. The text is a \
         speech-recognition transcript and may contain recognition errors. Answer with one JSON \
         object and nothing else: {\"intent\": \"<name>\", \"confidence\": <number from 0 to 1>}. \
         Use \"none\" when no intent fits. A negated request is not that request (\"I don't want \
         to cancel\" is not a cancellation). Intents, with example sentences:\n",
    );
    for def in &intents.intents {
        let examples: Vec<String> = def
            .examples
            .iter()
            .take(examples_per_intent)
            .map(|e| format!("\"{e}\""))
            .collect();
        prompt.push_str(&format!("- {}: {}\n", def.name, examples.join(", ")));
    }
    prompt.push_str("- none: anything else\n");
    prompt
}

/// Classifies with the endpoint, falling back to an offline classifier (see the module docs).
pub struct LlmClassifier {
    client: LlmClient,
    fallback: Box<dyn IntentClassifier>,
    known: Vec<String>,
    prompt: String,
}

impl fmt::Debug for LlmClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmClassifier")
            .field("client", &self.client)
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

impl LlmClassifier {
    /// The endpoint for `intents`, with `fallback` (the offline engine) behind it.
    pub fn new(
        config: LlmConfig,
        intents: &IntentsFile,
        fallback: Box<dyn IntentClassifier>,
    ) -> Self {
        let prompt = classification_prompt(intents, config.examples_per_intent);
        LlmClassifier {
            client: LlmClient::new(config),
            fallback,
            known: intents.intents.iter().map(|i| i.name.clone()).collect(),
            prompt,
        }
    }
}

impl IntentClassifier for LlmClassifier {
    fn classify(&self, normalized_text: &str) -> IntentMatch {
        let offline = self.fallback.classify(normalized_text);
        if normalized_text.trim().is_empty() {
            return offline;
        }
        let started = Instant::now();
        match self
            .client
            .classify(&self.prompt, normalized_text, &self.known)
        {
            Ok((intent, confidence)) => {
                let ms = started.elapsed().as_millis();
                let mut evidence = vec![format!(
                    "llm decided: {} said {intent} {confidence:.2} in {ms} ms",
                    self.client.config.model
                )];
                evidence.push(format!(
                    "offline engine: {} {:.2}",
                    offline.intent, offline.confidence
                ));
                IntentMatch {
                    intent,
                    confidence,
                    evidence,
                    tone: offline.tone,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "LLM intent backend failed; the offline engine decides");
                let mut m = offline;
                m.evidence
                    .insert(0, format!("llm failed ({e}); the offline engine decided"));
                m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::intent::RuleClassifier;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::mpsc;
    use std::thread;

    const EMBEDDED: &str = include_str!("../../sip-config/intents.toml");

    fn intents() -> IntentsFile {
        IntentsFile::from_text(Path::new("intents.toml"), EMBEDDED).expect("valid")
    }

    /// What the fake endpoint does with a request.
    #[derive(Clone)]
    enum Reply {
        /// 200 with a chat completion whose content is this.
        Content(String),
        /// This status and body.
        Status(u16, String),
        /// Waits this long before answering with "none".
        Stall(Duration),
    }

    /// An OpenAI-compatible endpoint on loopback answering `replies` in order; each request's
    /// headers and body are sent on the returned channel.
    fn endpoint(replies: Vec<Reply>) -> (String, mpsc::Receiver<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().expect("addr")
        );
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
                let (status, body) = match reply {
                    Reply::Content(c) => (
                        200,
                        serde_json::json!({"choices": [{"message": {"role": "assistant", "content": c}}]})
                            .to_string(),
                    ),
                    Reply::Status(s, b) => (s, b),
                    Reply::Stall(d) => {
                        thread::sleep(d);
                        (200, "{}".into())
                    }
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, rx)
    }

    fn classifier(url: String, timeout_ms: u64, key: &str) -> LlmClassifier {
        let file = intents();
        LlmClassifier::new(
            LlmConfig {
                enabled: true,
                url,
                model: "test-model".into(),
                api_key: key.into(),
                timeout_ms,
                ..LlmConfig::default()
            },
            &file,
            Box::new(RuleClassifier::new(&file)),
        )
    }

    #[test]
    fn the_endpoint_decides_and_sees_the_intents_and_the_key() {
        let (url, seen) = endpoint(vec![Reply::Content(
            "```json\n{\"intent\": \"order_status\", \"confidence\": 0.93}\n```".into(),
        )]);
        let c = classifier(url, 2000, "sekret");
        let m = c.classify("the thing i bought never turned up");
        assert_eq!(m.intent, "order_status", "{m:?}");
        assert_eq!(m.confidence, 0.93);
        assert!(m.evidence[0].starts_with("llm decided: test-model said order_status"));
        let (head, body) = seen.recv().expect("request seen");
        assert!(
            head.contains("authorization: Bearer sekret")
                || head.contains("Authorization: Bearer sekret"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("json body");
        assert_eq!(json["model"], "test-model");
        assert_eq!(
            json["messages"][1]["content"],
            "the thing i bought never turned up"
        );
        let system = json["messages"][0]["content"].as_str().unwrap_or_default();
        assert!(system.contains("- password_reset: "), "{system}");
        assert!(system.contains("- none: "), "{system}");
    }

    #[test]
    fn every_failure_falls_back_to_the_offline_engine() {
        let replies = vec![
            Reply::Status(500, "{\"error\": \"overloaded\"}".into()),
            Reply::Content("I think the caller wants their order.".into()),
            Reply::Content("{\"intent\": \"buy_a_boat\", \"confidence\": 0.9}".into()),
            Reply::Status(200, "{\"unexpected\": true}".into()),
        ];
        let expected = [
            "500",
            "not the JSON",
            "unknown intent `buy_a_boat`",
            "not a chat completion",
        ];
        let (url, _seen) = endpoint(replies);
        let c = classifier(url, 2000, "");
        for why in expected {
            let m = c.classify("where is my order");
            assert_eq!(m.intent, "order_status", "{why}: {m:?}");
            assert!(
                m.evidence[0].starts_with("llm failed") && m.evidence[0].contains(why),
                "{why}: {m:?}"
            );
        }
    }

    #[test]
    fn a_slow_endpoint_is_cut_off_at_the_deadline() {
        let (url, _seen) = endpoint(vec![Reply::Stall(Duration::from_millis(1500))]);
        let c = classifier(url, 200, "");
        let started = Instant::now();
        let m = c.classify("i forgot my password");
        let took = started.elapsed();
        assert_eq!(m.intent, "password_reset", "{m:?}");
        assert!(m.evidence[0].contains("no answer within 200 ms"), "{m:?}");
        assert!(took < Duration::from_millis(1000), "took {took:?}");
    }

    #[test]
    fn a_dead_endpoint_falls_back() {
        // A port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let c = classifier(
            format!("http://127.0.0.1:{port}/v1/chat/completions"),
            500,
            "",
        );
        let m = c.classify("what time do you open");
        assert_eq!(m.intent, "opening_hours", "{m:?}");
        assert!(
            m.evidence[0].starts_with("llm failed (request failed"),
            "{m:?}"
        );
    }

    #[test]
    fn summaries_are_trimmed_and_bounded() {
        let (url, seen) = endpoint(vec![Reply::Content(
            "  Caller wants to cancel.\nOrder 45712.\n".into(),
        )]);
        let client = LlmClient::new(LlmConfig {
            enabled: true,
            url,
            timeout_ms: 2000,
            ..LlmConfig::default()
        });
        let s = client
            .summarise("caller: I want to cancel\nbot: transferring", 18)
            .expect("summary");
        assert_eq!(s, "Caller wants to ca");
        let (_, body) = seen.recv().expect("request");
        assert!(body.contains("hand-over notes"), "{body}");
    }

    #[test]
    fn config_problems_and_the_key_stays_out_of_debug() {
        let ok = LlmConfig {
            enabled: true,
            ..LlmConfig::default()
        };
        assert_eq!(ok.problem(), None);
        assert_eq!(LlmConfig::default().problem(), None);
        let bad = LlmConfig {
            url: "ftp://x".into(),
            ..ok.clone()
        };
        assert_eq!(bad.problem().map(|p| p.0), Some("url"));
        let bad = LlmConfig {
            timeout_ms: 10,
            ..ok.clone()
        };
        assert_eq!(bad.problem().map(|p| p.0), Some("timeout_ms"));
        let secret = LlmConfig {
            api_key: "sk-very-secret".into(),
            ..ok
        };
        assert!(!format!("{secret:?}").contains("very-secret"));
    }
}
