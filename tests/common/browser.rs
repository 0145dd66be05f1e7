//! A minimal W3C WebDriver client for the browser tests: headless Chromium driven by
//! chromedriver over HTTP (JSON in and out), with waits that end in a screenshot and the page's
//! text when something does not appear in time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::admin::http_client;

/// Longest wait for something to appear on the page.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// A minimal WebDriver client (W3C WebDriver over HTTP, JSON in and out).

/// The key WebDriver names an element by.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Special keys (WebDriver's code points).
pub const ENTER: &str = "\u{E007}";
pub const CONTROL: &str = "\u{E009}";
pub const END: &str = "\u{E010}";
pub const RELEASE: &str = "\u{E000}";

/// chromedriver on a free loopback port; killed on drop.
pub struct Driver {
    child: Child,
    pub base: String,
}

impl Driver {
    pub fn start(log: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = http()
                .get(format!("{}/status", driver.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 15 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> ureq::Agent {
    http_client(Duration::from_secs(60))
}

/// One browser session; ended on drop.
pub struct Browser {
    agent: ureq::Agent,
    session: String,
    shots: PathBuf,
}

/// An element reference.
#[derive(Clone)]
pub struct El(pub String);

impl Browser {
    pub fn open(driver: &Driver, profile: &Path, shots: PathBuf) -> Browser {
        Self::open_with(driver, profile, shots, &[])
    }

    /// A session whose Chromium gets `extra` command-line arguments too (e.g. a fake
    /// microphone: `--use-fake-ui-for-media-stream --use-fake-device-for-media-stream
    /// --use-file-for-fake-audio-capture=<wav>`).
    pub fn open_with(driver: &Driver, profile: &Path, shots: PathBuf, extra: &[String]) -> Browser {
        let chromium = which("chromium");
        let mut args: Vec<Value> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-component-update",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| json!(a))
        .collect();
        args.push(json!(format!("--user-data-dir={}", profile.display())));
        args.extend(extra.iter().map(|a| json!(a)));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The page's console (script errors, Content-Security-Policy violations).
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args
            }
        }}});
        let agent = http();
        let mut r = agent
            .post(format!("{}/session", driver.base))
            .send_json(&caps)
            .expect("POST /session");
        let v: Value = r.body_mut().read_json().expect("session JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            agent,
            session: format!("{}/session/{session}", driver.base),
            shots,
        }
    }

    /// A WebDriver command; the `value` of its answer, or the error.
    pub fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.session);
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut r = r.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let ok = r.status().is_success();
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            Err(value)
        }
    }

    pub fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn try_find(&self, css: &str) -> Option<El> {
        let v = self
            .command(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()?;
        v[ELEMENT].as_str().map(|id| El(id.to_string()))
    }

    pub fn find_all(&self, css: &str) -> Vec<El> {
        self.command(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e[ELEMENT].as_str().map(|id| El(id.to_string())))
        .collect()
    }

    /// Polls `probe` until it gives a value (at most [`WAIT`]); on a timeout, panics naming
    /// `what`, with a screenshot and the page's text.
    pub fn wait_until<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        self.wait_within(what, WAIT, "main", probe)
    }

    /// Polls `probe` until it gives a value, at most `limit`; on a timeout, panics naming
    /// `what`, with a screenshot and the text of `shown` (a CSS selector).
    pub fn wait_within<T>(
        &self,
        what: &str,
        limit: Duration,
        shown: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("failure");
                let text = self
                    .try_find(shown)
                    .map(|m| self.text(&m))
                    .unwrap_or_default();
                panic!(
                    "timed out after {limit:?} waiting for {what}; screenshot {}; {shown}:\n{text}",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The element for `css`, once it exists and is displayed.
    pub fn find(&self, css: &str) -> El {
        self.wait_until(&format!("element {css}"), || {
            self.try_find(css).filter(|e| self.displayed(e))
        })
    }

    /// Waits until the text of `css` contains `needle`; returns the text.
    pub fn wait_text(&self, css: &str, needle: &str) -> String {
        self.wait_until(&format!("{needle:?} in {css}"), || {
            let text = self.text(&self.try_find(css)?);
            text.contains(needle).then_some(text)
        })
    }

    /// Waits until the text of `css` is `expected`.
    pub fn wait_exact(&self, css: &str, expected: &str) {
        self.wait_until(&format!("{css} to read {expected:?}"), || {
            (self.text(&self.try_find(css)?) == expected).then_some(())
        })
    }

    pub fn text(&self, e: &El) -> String {
        self.command("GET", &format!("/element/{}/text", e.0), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn property(&self, e: &El, name: &str) -> Value {
        self.command("GET", &format!("/element/{}/property/{name}", e.0), None)
            .unwrap_or(Value::Null)
    }

    pub fn displayed(&self, e: &El) -> bool {
        self.command("GET", &format!("/element/{}/displayed", e.0), None)
            .is_ok_and(|v| v == true)
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        // An element re-rendered between the find and the click is found again.
        let deadline = Instant::now() + WAIT;
        let mut e = e;
        while let Err(err) = self.command("POST", &format!("/element/{}/click", e.0), None) {
            assert!(Instant::now() < deadline, "cannot click {css}: {err}");
            std::thread::sleep(Duration::from_millis(100));
            e = self.find(css);
        }
    }

    pub fn clear(&self, e: &El) {
        self.must("POST", &format!("/element/{}/clear", e.0), None);
    }

    /// Types `text` into `css` once it is enabled.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_until(&format!("{css} enabled"), || {
            let e = self.try_find(css).filter(|e| self.displayed(e))?;
            self.command("GET", &format!("/element/{}/enabled", e.0), None)
                .is_ok_and(|v| v == true)
                .then_some(e)
        });
        self.must(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        );
    }

    /// Picks the option `value` of the select `css`.
    pub fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// A PNG of the window, saved as `<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        self.save_png(name, "/screenshot")
    }

    /// Checks that the page shows no placeholder of a missing value (`null`, `undefined`,
    /// `NaN`), then takes a screenshot.
    pub fn stop(&self, name: &str) {
        let text = self.text(&self.find("body"));
        for word in text.split(|c: char| !c.is_alphanumeric()) {
            assert!(
                !["null", "undefined", "NaN", "nullnull"].contains(&word),
                "{name}: the page shows {word:?}:\n{text}"
            );
        }
        let errors = self.console_errors();
        assert!(errors.is_empty(), "{name}: console errors: {errors:#?}");
        self.screenshot(name);
    }

    /// The page's console messages at level SEVERE since the last call, less the browser's
    /// notes on HTTP errors (the 401s and 422s the test provokes).
    pub fn console_errors(&self) -> Vec<String> {
        let entries = self.must("POST", "/se/log", Some(json!({"type": "browser"})));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str())
            .filter(|m| !m.contains("Failed to load resource"))
            .map(str::to_string)
            .collect()
    }

    /// Sets the window's size (a screenshot shows the window only).
    pub fn resize(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    pub fn save_png(&self, name: &str, path: &str) -> PathBuf {
        let b64 = self.must("GET", path, None);
        let png = base64_decode(b64.as_str().unwrap_or_default());
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.session).call();
    }
}

pub fn which(program: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Standard base64 (screenshots come as base64).
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (d << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}
