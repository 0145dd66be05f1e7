//! Runs every scenario file in tests/scenarios through the real binary, model and voice.

use std::process::Command;

#[test]
fn all_scenarios_pass() {
    assert!(
        std::path::Path::new("models/moonshine/base-en/tokenizer.bin").is_file(),
        "models/moonshine/base-en is missing: run `python3 models/provision.py`"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_voicebot"))
        .args(["simulate", "--scenario", "--out"])
        .arg(dir.path())
        .arg("tests/scenarios")
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
    let n = std::fs::read_dir("tests/scenarios")
        .expect("scenario dir")
        .filter(|e| {
            e.as_ref()
                .map(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .unwrap_or(false)
        })
        .count();
    assert!(
        stdout.contains(&format!("scenarios: {n} passed, 0 failed")),
        "{stdout}"
    );
}

/// whisper.cpp still works when a gateway selects it: the same scenario files, heard by
/// whisper tiny.en instead of the default Moonshine.
#[test]
fn whisper_engine_passes_scenarios() {
    assert!(
        std::path::Path::new("models/ggml-tiny.en.bin").is_file(),
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
    let out = Command::new(env!("CARGO_BIN_EXE_voicebot"))
        .arg("--config")
        .arg(&config)
        .args(["-v", "simulate", "--scenario", "--out"])
        .arg(dir.path())
        .args(files)
        .output()
        .expect("voicebot runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "scenarios failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("scenarios: {} passed, 0 failed", files.len())),
        "{stdout}"
    );
    assert!(
        stderr.contains("asr::whisper") && stderr.contains("speech model loaded"),
        "the log does not show whisper loading:\n{stderr}"
    );
}
