//! Where the configuration's relative paths point: the gateway's home.
//!
//! The shipped configuration names its files from the project root (`models/...`,
//! `sip-config/flows`, `prompts`, `data/...`). Taken relative to the current directory, those
//! paths made `voicebot simulate` fail with "model file not found" as soon as it ran anywhere
//! else. So every relative path in the configuration, the embedded defaults and a `--config`
//! file alike, is taken relative to one directory, the *home*, found once per process:
//!
//! 1. `$VOICEBOT_HOME`, when set (relative to the current directory if it is relative itself);
//! 2. else the nearest directory above the running executable that holds
//!    `models/manifest.toml` (the checkout `target/release/voicebot` was built in);
//! 3. else the current directory (an installed binary without its project: as before).
//!
//! A `--config` file's paths use the same home rather than the file's own directory, so the
//! shipped `sip-config/gateway.toml` (and any copy of it, wherever it is kept) means what the
//! embedded defaults mean. Absolute paths are used as they are; empty paths keep their meaning
//! ("none"). Paths given on the command line (`--journal`, `--report-dir`, the files to
//! simulate, `--out`) stay relative to the current directory, as users expect of a command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable that names the home explicitly.
pub const HOME_ENV: &str = "VOICEBOT_HOME";

/// The file whose presence marks a directory as the project root.
pub const MARKER: &str = "models/manifest.toml";

/// The gateway's home for this process (see [the module docs](self)).
pub fn home() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let exe = std::env::current_exe()
        .ok()
        .map(|e| std::fs::canonicalize(&e).unwrap_or(e));
    home_from(std::env::var_os(HOME_ENV), exe.as_deref(), &cwd)
}

/// The rule of [`home`], on its inputs: the environment variable's value, the executable's
/// path and the current directory.
pub fn home_from(env: Option<OsString>, exe: Option<&Path>, cwd: &Path) -> PathBuf {
    if let Some(dir) = env.filter(|v| !v.is_empty()) {
        return cwd.join(dir);
    }
    exe.and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|dir| dir.join(MARKER).is_file())
    })
    .map_or_else(|| cwd.to_path_buf(), Path::to_path_buf)
}

/// `path` taken relative to `home`: absolute and empty paths are returned as they are.
pub fn under(home: &Path, path: &Path) -> PathBuf {
    if path.as_os_str().is_empty() || path.is_absolute() {
        path.to_path_buf()
    } else {
        home.join(path)
    }
}

/// A program name or path: a bare name (`espeak-ng`) is looked up in `PATH` and stays as it
/// is; a path with a directory in it is taken relative to `home`.
pub fn program_under(home: &Path, program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        under(home, program)
    } else {
        program.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_and_is_taken_from_the_current_directory() {
        let cwd = Path::new("/work/here");
        let exe = Path::new("/opt/vb/target/release/voicebot");
        assert_eq!(
            home_from(Some("/srv/voicebot".into()), Some(exe), cwd),
            PathBuf::from("/srv/voicebot")
        );
        assert_eq!(
            home_from(Some("vb".into()), Some(exe), cwd),
            PathBuf::from("/work/here/vb")
        );
        // Set but empty: as if unset.
        assert_eq!(home_from(Some("".into()), None, cwd), cwd);
    }

    #[test]
    fn the_executable_s_project_is_found_by_its_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let project = dir.path().join("project");
        std::fs::create_dir_all(project.join("models")).expect("mkdir");
        std::fs::create_dir_all(project.join("target/release")).expect("mkdir");
        std::fs::write(project.join(MARKER), "").expect("marker");
        let exe = project.join("target/release/voicebot");
        let cwd = dir.path().join("elsewhere");
        assert_eq!(home_from(None, Some(&exe), &cwd), project);
        // No marker above the executable: the current directory.
        let lone = dir.path().join("bin/voicebot");
        assert_eq!(home_from(None, Some(&lone), &cwd), cwd);
        assert_eq!(home_from(None, None, &cwd), cwd);
    }

    #[test]
    fn this_checkout_is_the_home_of_its_test_binaries() {
        // The test binary lives in target/.../deps below the checkout, which holds the marker.
        assert_eq!(
            std::fs::canonicalize(home_from(
                None,
                std::env::current_exe().ok().as_deref(),
                Path::new("/nowhere")
            ))
            .expect("home exists"),
            std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).expect("manifest dir")
        );
    }

    #[test]
    fn relative_paths_go_under_the_home_others_stay() {
        let home = Path::new("/srv/vb");
        assert_eq!(
            under(home, Path::new("models/x.onnx")),
            PathBuf::from("/srv/vb/models/x.onnx")
        );
        assert_eq!(under(home, Path::new("/etc/x")), PathBuf::from("/etc/x"));
        assert_eq!(under(home, Path::new("")), PathBuf::new());
        assert_eq!(
            program_under(home, Path::new("espeak-ng")),
            PathBuf::from("espeak-ng")
        );
        assert_eq!(
            program_under(home, Path::new("bin/espeak-ng")),
            PathBuf::from("/srv/vb/bin/espeak-ng")
        );
    }
}
