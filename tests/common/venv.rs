//! Where the Python with pjsua2 (PJSIP's binding) is: `VOICEBOT_PJSUA_PYTHON`, else the
//! virtual environment `scripts/deps.sh` makes. Shared by the tests and the benchmarks.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The interpreter, if it can import pjsua2.
pub fn pjsua_interpreter() -> Option<PathBuf> {
    let python = std::env::var_os("VOICEBOT_PJSUA_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/voicebot/venv/bin/python"))
        })?;
    let ok = Command::new(&python)
        .args(["-c", "import pjsua2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}
