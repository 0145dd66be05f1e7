//! Runs every scenario file in tests/scenarios through the real binary, model and voice.

use std::process::Command;

#[test]
fn all_scenarios_pass() {
    assert!(
        std::path::Path::new("models/ggml-tiny.en.bin").is_file(),
        "models/ggml-tiny.en.bin is missing: run `python3 models/provision.py`"
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
