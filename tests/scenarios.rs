//! Runs every scenario file in tests/scenarios through the real binary, model and voice.

use std::path::Path;
use std::process::{Command, Output};

/// `voicebot [--config CONFIG] -v simulate --scenario --out TMP PATHS...`; prints what the bot
/// heard and said, and fails unless every scenario passed (`expected` of them).
fn run_scenarios(config: Option<&Path>, paths: &[&str], expected: usize) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voicebot"));
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd
        .args(["-v", "simulate", "--scenario", "--out"])
        .arg(dir.path())
        .args(paths)
        .output()
        .expect("voicebot runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Printed so a failing run shows what the bot heard and said.
    println!("{stdout}");
    assert!(
        out.status.success(),
        "scenarios failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("scenarios: {expected} passed, 0 failed")),
        "{stdout}"
    );
    out
}

#[test]
fn all_scenarios_pass() {
    assert!(
        Path::new("models/moonshine/base-en/tokenizer.bin").is_file(),
        "models/moonshine/base-en is missing: run `python3 models/provision.py`"
    );
    let n = std::fs::read_dir("tests/scenarios")
        .expect("scenario dir")
        .filter(|e| {
            e.as_ref()
                .map(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .unwrap_or(false)
        })
        .count();
    run_scenarios(None, &["tests/scenarios"], n);
}

/// whisper.cpp still works when a gateway selects it: the same scenario files, heard by
/// whisper tiny.en instead of the default Moonshine.
#[test]
fn whisper_engine_passes_scenarios() {
    assert!(
        Path::new("models/ggml-tiny.en.bin").is_file(),
        "models/ggml-tiny.en.bin is missing: run `python3 models/provision.py`"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("whisper.toml");
    std::fs::write(
        &config,
        "[asr]\nengine = \"whisper\"\nmodel = \"models/ggml-tiny.en.bin\"\n",
    )
    .expect("config");
    let files = [
        "tests/scenarios/order_status.toml",
        "tests/scenarios/human_request.toml",
        "tests/scenarios/password_reset.toml",
    ];
    let out = run_scenarios(Some(&config), &files, files.len());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("asr::whisper") && stderr.contains("speech model loaded"),
        "the log does not show whisper loading:\n{stderr}"
    );
}

/// A flow can end the call instead of handing a silent caller over: the gateway's
/// `[escalation]` says so, and the bot says goodbye after `max_no_input` silences.
#[test]
fn a_silent_caller_can_be_said_goodbye_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hangup.toml");
    std::fs::write(
        &config,
        "[escalation]\nno_input_s = 5.0\nmax_no_input = 2\nno_input_action = \"hangup\"\n",
    )
    .expect("config");
    let scenario = dir.path().join("silent.toml");
    std::fs::write(
        &scenario,
        r#"description = "A silent caller is prompted once, then the bot says goodbye and hangs up"
[[turn]]
silence_s = 40
[turn.expect]
no_input_prompts = 2
escalates = false
ends_call = true
reply_contains = ["are you still there", "end the call now"]
"#,
    )
    .expect("scenario");
    let path = scenario.to_str().expect("utf-8 path");
    run_scenarios(Some(&config), &[path], 1);
}
