//! IVR flows: which intents, replies, escalation settings and data answer a call.
//!
//! Admins keep one TOML file per flow in a directory (`[flows] dir`, default
//! `sip-config/flows/`). Each names the called numbers or SIP users it answers, its intents and
//! prompts files, per-flow overrides of the gateway's `[escalation]` table, and data lookups.
//! Everything is validated at load with file/line/field errors. The [`FlowStore`] holds the
//! current set: a reload that fails validation keeps the previous set and says why, and a call
//! keeps the flow it started with (flows are shared by `Arc`), so an edit never drops a call.
//! Without a flows directory the embedded default flow is used.
//!
//! # Files a flow may name
//!
//! A flow's `intents` and `prompts` are read when it loads (and served back by the admin API),
//! and a flow can be written through the admin API. So that a flow cannot be made to read any
//! file the gateway can read (its configuration, a token file, `/etc/...`), every file a flow
//! names must lie inside the flows directory, or inside one of the `[flows] shared` paths
//! (files or directories; by default the shipped `sip-config/intents.toml` and `prompts/`).
//! The check ([`FileRoots`]) compares real paths (`canonicalize`, then a component-wise
//! `starts_with`), so an absolute path, a `..` or a symbolic link leading anywhere else is
//! refused, at start and through the API alike, with the flow file, the line, the field and
//! the reason. A file not on disk yet (written with the flow by the admin API) must be named
//! by a plain relative path below the flows directory.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::config_file::{self, ConfigError};
use crate::dialog::escalation::EscalationConfig;
use crate::dialog::lookup::{Lookup, LookupSpec};
use crate::dialog::DialogAssets;
use crate::speech::voice::VoiceStyle;

/// The default flow embedded in the binary, used when the flows directory does not exist.
pub const EMBEDDED_FLOW: &str = include_str!("../sip-config/flows/support.toml");
/// The label of the embedded default flow in errors and listings.
pub const EMBEDDED_FLOW_FILE: &str = "<embedded>/sip-config/flows/support.toml";

/// Files that a load sees instead of the disk: `Some(text)` replaces (or adds) a file, `None`
/// hides it. Keys are the paths the loader builds (the flows directory joined with a file
/// name; a flow's `intents`/`prompts` joined to that directory). The admin API validates an
/// edit through this before writing anything, with exactly the checks of a load from disk.
pub type Overlay = BTreeMap<PathBuf, Option<String>>;

/// `[flows]` in the gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Directory of flow files; when it does not exist, the embedded default flow is used.
    pub dir: PathBuf,
    /// The flow for calls whose number no flow claims.
    pub default: String,
    /// Files or directories outside `dir` whose files flows may name as `intents`/`prompts`
    /// (shared, read-only texts); every other file a flow names must lie inside `dir`.
    pub shared: Vec<PathBuf>,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            dir: PathBuf::from("sip-config/flows"),
            default: "support".into(),
            shared: vec![
                PathBuf::from("sip-config/intents.toml"),
                PathBuf::from("prompts"),
            ],
        }
    }
}

/// Why a file a flow names is refused (see [the module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefusal {
    #[error(
        "`{named}` is an absolute path outside the flows directory {dir} (and not in \
         [flows] shared)"
    )]
    Absolute { named: String, dir: String },
    #[error(
        "`{named}` leads out of the flows directory {dir} with `..` (and not into [flows] shared)"
    )]
    ParentDir { named: String, dir: String },
    #[error(
        "`{named}` resolves to {resolved}, outside the flows directory {dir} (a symbolic \
         link?) and not in [flows] shared"
    )]
    Outside {
        named: String,
        resolved: String,
        dir: String,
    },
    #[error("`{named}` cannot be resolved: {reason}")]
    Unresolvable { named: String, reason: String },
}

/// Where the files a flow names may lie: inside the flows directory, or inside one of the
/// `[flows] shared` paths, compared as real paths (symbolic links resolved).
#[derive(Debug, Clone)]
pub struct FileRoots {
    /// The flows directory as configured (for messages).
    dir: PathBuf,
    /// Its real path; `None` while it does not exist.
    dir_real: Option<PathBuf>,
    /// The real paths of the shared files and directories that exist.
    shared: Vec<PathBuf>,
}

impl FileRoots {
    /// The roots of `config`, resolved now.
    pub fn new(config: &FlowsConfig) -> Self {
        FileRoots {
            dir: config.dir.clone(),
            dir_real: std::fs::canonicalize(&config.dir).ok(),
            shared: config
                .shared
                .iter()
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .collect(),
        }
    }

    /// Nothing is allowed (the embedded flow reads no files).
    fn none() -> Self {
        FileRoots {
            dir: PathBuf::from("<embedded>"),
            dir_real: None,
            shared: Vec::new(),
        }
    }

    fn allows(&self, real: &Path) -> bool {
        self.dir_real
            .as_deref()
            .is_some_and(|d| real.starts_with(d))
            || self.shared.iter().any(|s| real.starts_with(s))
    }

    /// Checks `named` (as a flow file in `base`, the flows directory, writes it) and returns
    /// the path to read: `base` joined with `named`.
    pub fn check(&self, base: &Path, named: &Path) -> Result<PathBuf, FileRefusal> {
        let joined = base.join(named);
        let plain = named
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        match std::fs::canonicalize(&joined) {
            Ok(real) if self.allows(&real) => Ok(joined),
            Ok(real) => Err(self.refusal(named, plain, Some(&real))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Not on disk (yet): only a plain path below the flows directory, whose
                // nearest existing ancestor (a sub-directory may be a link) is inside it.
                if !plain {
                    return Err(self.refusal(named, plain, None));
                }
                let Some(dir_real) = &self.dir_real else {
                    // No flows directory yet: nothing inside it can be a link.
                    return Ok(joined);
                };
                let ancestor = joined
                    .ancestors()
                    .skip(1)
                    .find_map(|a| std::fs::canonicalize(a).ok());
                match ancestor {
                    Some(real) if real.starts_with(dir_real) => Ok(joined),
                    Some(real) => Err(self.refusal(named, plain, Some(&real))),
                    None => Ok(joined),
                }
            }
            Err(e) => Err(FileRefusal::Unresolvable {
                named: named.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn refusal(&self, named: &Path, plain: bool, real: Option<&Path>) -> FileRefusal {
        let (named_text, dir) = (named.display().to_string(), self.dir.display().to_string());
        if named.is_absolute() || named.has_root() {
            FileRefusal::Absolute {
                named: named_text,
                dir,
            }
        } else if !plain {
            FileRefusal::ParentDir {
                named: named_text,
                dir,
            }
        } else {
            FileRefusal::Outside {
                named: named_text,
                resolved: real.map(|r| r.display().to_string()).unwrap_or_default(),
                dir,
            }
        }
    }
}

/// A flow file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    numbers: Vec<String>,
    intents: Option<PathBuf>,
    prompts: Option<PathBuf>,
    #[serde(default)]
    escalation: toml::Table,
    #[serde(default)]
    lookup: Vec<LookupSpec>,
    #[serde(default)]
    voice: VoiceStyle,
}

/// One loaded flow.
#[derive(Debug)]
pub struct Flow {
    pub name: String,
    pub description: String,
    /// Called numbers / SIP users this flow answers.
    pub numbers: Vec<String>,
    pub dialog: Arc<DialogAssets>,
    /// The gateway's escalation settings with this flow's overrides.
    pub escalation: EscalationConfig,
    /// How the bot sounds on this flow (`[voice]`: engine, pace, level).
    pub voice: VoiceStyle,
    /// The file it came from.
    pub source: PathBuf,
}

/// Builds the intent classifier for a flow (the embedding model, when configured).
pub type ClassifierFactory<'a> = &'a dyn Fn(DialogAssets) -> DialogAssets;

/// A validated set of flows.
#[derive(Debug)]
pub struct FlowSet {
    flows: BTreeMap<String, Arc<Flow>>,
    default: String,
}

impl FlowSet {
    /// Loads the flows of `config` (or the embedded default when its directory is missing).
    pub fn load(
        config: &FlowsConfig,
        base: &EscalationConfig,
        customize: ClassifierFactory<'_>,
    ) -> Result<Self, ConfigError> {
        Self::load_with(config, base, customize, &Overlay::new())
    }

    /// [`FlowSet::load`] with some files replaced, added or hidden by `overlay` (see
    /// [`Overlay`]). A non-empty overlay on a missing directory loads the overlay's flows as
    /// that directory's content (the embedded default is not used then).
    pub fn load_with(
        config: &FlowsConfig,
        base: &EscalationConfig,
        customize: ClassifierFactory<'_>,
        overlay: &Overlay,
    ) -> Result<Self, ConfigError> {
        let mut flows = BTreeMap::new();
        let read = |path: &Path| match overlay.get(path) {
            Some(Some(text)) => Ok(text.clone()),
            Some(None) => Err(ConfigError::whole_file(path, "cannot read: file removed")),
            None => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}"))),
        };
        let roots = FileRoots::new(config);
        if config.dir.is_dir() || !overlay.is_empty() {
            let mut files: Vec<PathBuf> = if config.dir.is_dir() {
                std::fs::read_dir(&config.dir)
                    .map_err(|e| ConfigError::whole_file(&config.dir, format!("cannot list: {e}")))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| is_flow_file(p))
                    .collect()
            } else {
                Vec::new()
            };
            for (path, text) in overlay {
                let listed = files.contains(path);
                let in_dir = path.parent() == Some(config.dir.as_path()) && is_flow_file(path);
                match text {
                    None => files.retain(|f| f != path),
                    Some(_) if in_dir && !listed => files.push(path.clone()),
                    Some(_) => {}
                }
            }
            files.sort();
            for file in files {
                let text = read(&file)?;
                let flow = load_flow(&file, &text, base, customize, &read, &roots)?;
                insert(&mut flows, flow, &text)?;
            }
        } else {
            tracing::info!(dir = %config.dir.display(), "no flows directory; using the embedded default flow");
            insert(&mut flows, embedded_flow(base, customize)?, EMBEDDED_FLOW)?;
        }
        if !flows.contains_key(&config.default) {
            return Err(ConfigError::whole_file(
                &config.dir,
                format!(
                    "default flow `{}` not found (flows: {})",
                    config.default,
                    flows.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for flow in flows.values() {
            for number in &flow.numbers {
                if let Some(other) = seen.insert(number, &flow.name) {
                    return Err(ConfigError::whole_file(
                        &flow.source,
                        format!(
                            "number `{number}` is claimed by flows `{other}` and `{}`",
                            flow.name
                        ),
                    ));
                }
            }
        }
        Ok(FlowSet {
            flows,
            default: config.default.clone(),
        })
    }

    /// The embedded default flow alone, as a gateway without a flows directory runs it (tests
    /// and benchmarks use it too).
    pub fn embedded(
        base: &EscalationConfig,
        customize: ClassifierFactory<'_>,
    ) -> Result<Self, ConfigError> {
        let flow = embedded_flow(base, customize)?;
        let default = flow.name.clone();
        Ok(FlowSet {
            flows: BTreeMap::from([(default.clone(), Arc::new(flow))]),
            default,
        })
    }

    /// The flow answering `called` (a number or SIP user), else the default flow.
    pub fn for_number(&self, called: &str) -> Arc<Flow> {
        self.flows
            .values()
            .find(|f| f.numbers.iter().any(|n| n == called))
            .cloned()
            .unwrap_or_else(|| self.default_flow())
    }

    /// A flow by name.
    pub fn get(&self, name: &str) -> Option<Arc<Flow>> {
        self.flows.get(name).cloned()
    }

    /// The default flow.
    pub fn default_flow(&self) -> Arc<Flow> {
        // Load checks that the default exists.
        self.flows
            .get(&self.default)
            .or_else(|| self.flows.values().next())
            .cloned()
            .expect("a flow set holds at least its default flow")
    }

    /// Flow names.
    pub fn names(&self) -> Vec<String> {
        self.flows.keys().cloned().collect()
    }

    /// The name of the default flow.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every flow, by name.
    pub fn flows(&self) -> impl Iterator<Item = &Arc<Flow>> {
        self.flows.values()
    }
}

/// Whether `path` names a flow file (`*.toml`; directories, e.g. of a flow's own intents and
/// prompts, are not flows).
fn is_flow_file(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "toml") && !path.is_dir()
}

fn insert(
    flows: &mut BTreeMap<String, Arc<Flow>>,
    flow: Flow,
    text: &str,
) -> Result<(), ConfigError> {
    if let Some(first) = flows.get(&flow.name) {
        return Err(ConfigError::invalid(
            &flow.source,
            text,
            "name",
            format!(
                "flow `{}` is already defined in {}",
                flow.name,
                first.source.display()
            ),
        ));
    }
    flows.insert(flow.name.clone(), Arc::new(flow));
    Ok(())
}

/// The embedded default flow ([`EMBEDDED_FLOW`]); it names no files of its own.
fn embedded_flow(
    base: &EscalationConfig,
    customize: ClassifierFactory<'_>,
) -> Result<Flow, ConfigError> {
    let file = Path::new(EMBEDDED_FLOW_FILE);
    load_flow(
        file,
        EMBEDDED_FLOW,
        base,
        customize,
        &|_: &Path| {
            Err(ConfigError::whole_file(
                file,
                "the embedded flow reads no files",
            ))
        },
        &FileRoots::none(),
    )
}

/// Reads a file a flow names (its intents and prompts), from the disk or an overlay.
type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String, ConfigError>;

fn load_flow(
    file: &Path,
    text: &str,
    base: &EscalationConfig,
    customize: ClassifierFactory<'_>,
    read: ReadFile<'_>,
    roots: &FileRoots,
) -> Result<Flow, ConfigError> {
    let embedded = file == Path::new(EMBEDDED_FLOW_FILE);
    let raw: FlowFile = config_file::parse(file, text)?;
    if raw.name.trim().is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::invalid(
            file,
            text,
            "name",
            "must be a non-empty name of letters, digits, - and _",
        ));
    }
    let dialog = if embedded {
        DialogAssets::embedded()?
    } else {
        let dir = file.parent().unwrap_or(Path::new("."));
        match (&raw.intents, &raw.prompts) {
            (None, None) => DialogAssets::embedded()?,
            (Some(i), Some(p)) => {
                let confined = |field: &str, named: &Path| {
                    roots
                        .check(dir, named)
                        .map_err(|e| ConfigError::invalid(file, text, field, e.to_string()))
                };
                let (i, p) = (confined("intents", i)?, confined("prompts", p)?);
                DialogAssets::from_texts(&i, &read(&i)?, &p, &read(&p)?)?
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    file,
                    text,
                    "prompts",
                    "give `intents` too (prompts are checked against them)",
                ))
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    file,
                    text,
                    "intents",
                    "give `prompts` too (every intent needs its replies)",
                ))
            }
        }
    };
    // Per-flow escalation: the gateway's settings with this flow's keys on top.
    let mut merged = toml::Table::try_from(base)
        .map_err(|e| ConfigError::invalid(file, text, "escalation", e.to_string()))?;
    for (k, v) in &raw.escalation {
        merged.insert(k.clone(), v.clone());
    }
    let escalation: EscalationConfig =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| {
                ConfigError::invalid(file, text, "escalation", e.message().trim().to_string())
            })?;
    escalation.validate(file, text, "escalation")?;
    raw.voice.check().map_err(|(field, reason)| {
        ConfigError::invalid(file, text, &format!("voice.{field}"), reason)
    })?;
    let lookups = raw
        .lookup
        .iter()
        .enumerate()
        .map(|(i, spec)| Lookup::compile(spec, &dialog, file, text, &format!("lookup.{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let dialog = customize(dialog.with_lookups(lookups));
    Ok(Flow {
        name: raw.name,
        description: raw.description,
        numbers: raw.numbers,
        dialog: Arc::new(dialog),
        escalation,
        voice: raw.voice,
        source: file.to_path_buf(),
    })
}

/// The current flows, swapped atomically on reload.
#[derive(Debug)]
pub struct FlowStore {
    current: RwLock<Arc<FlowSet>>,
}

impl FlowStore {
    /// A store holding `set`.
    pub fn new(set: FlowSet) -> Self {
        FlowStore {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The flows in force now. Calls keep the `Arc<Flow>` they started with.
    pub fn current(&self) -> Arc<FlowSet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `set` in force (a set loaded and validated elsewhere, e.g. by the admin API after
    /// it wrote the files the set was loaded from). Calls keep the flows they started with.
    pub fn replace(&self, set: FlowSet) -> Arc<FlowSet> {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::clone(&set),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&set),
        }
        tracing::info!(flows = ?set.names(), "flows replaced");
        set
    }

    /// Loads the flows again. On any error the previous flows stay in force and the error says
    /// what is wrong (file, line, field).
    pub fn reload(
        &self,
        config: &FlowsConfig,
        base: &EscalationConfig,
        customize: ClassifierFactory<'_>,
    ) -> Result<Arc<FlowSet>, ConfigError> {
        match FlowSet::load(config, base, customize) {
            Ok(set) => {
                let set = Arc::new(set);
                match self.current.write() {
                    Ok(mut guard) => *guard = Arc::clone(&set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::clone(&set),
                }
                tracing::info!(flows = ?set.names(), "flows reloaded");
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow reload rejected; the previous flows stay in force");
                Err(e)
            }
        }
    }
}

/// No customisation: the rule-based classifier of the flow's intents.
pub fn as_is(assets: DialogAssets) -> DialogAssets {
    assets
}

/// What a validated write will do.
#[derive(Debug)]
pub struct WritePlan {
    /// The flow file.
    pub target: PathBuf,
    /// Whether it is a new flow.
    pub created: bool,
    /// Files to write, in order (the flow file last).
    pub files: Vec<(PathBuf, String)>,
    /// Files to remove.
    pub removals: Vec<PathBuf>,
    /// The flows once the plan is carried out.
    pub set: FlowSet,
}

/// Writes `text` to `path` atomically: a temporary file beside it, fsync, rename over it, fsync
/// of the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flow".into());
    // Not `*.toml`: a loader listing the directory meanwhile never takes it for a flow.
    let tmp = dir.join(format!(
        ".{file_name}.{}-{:08x}.partial",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename or removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_flow_dir(dir: &Path, extra: &str) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            root.join("sip-config/intents.toml"),
            dir.join("intents.toml"),
        )
        .expect("copy");
        std::fs::copy(root.join("prompts/en.toml"), dir.join("en.toml")).expect("copy");
        let flows = dir.join("flows");
        std::fs::create_dir_all(&flows).expect("mkdir");
        std::fs::write(
            flows.join("support.toml"),
            format!("name = \"support\"\nnumbers = [\"100\"]\nintents = \"../intents.toml\"\nprompts = \"../en.toml\"\n{extra}"),
        )
        .expect("write");
    }

    /// The flows of [`write_flow_dir`]: their intents and prompts are shared files beside the
    /// flows directory.
    fn config(dir: &Path) -> FlowsConfig {
        FlowsConfig {
            dir: dir.join("flows"),
            default: "support".into(),
            shared: vec![dir.join("intents.toml"), dir.join("en.toml")],
        }
    }

    #[test]
    fn files_a_flow_names_stay_in_the_flows_directory_or_the_shared_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let flows = root.join("flows");
        std::fs::create_dir_all(flows.join("own")).expect("mkdir");
        std::fs::create_dir_all(root.join("shared")).expect("mkdir");
        for file in ["flows/own/intents.toml", "secret.toml", "shared/en.toml"] {
            std::fs::write(root.join(file), "x").expect("write");
        }
        let cfg = FlowsConfig {
            dir: flows.clone(),
            default: "support".into(),
            shared: vec![root.join("shared"), root.join("missing-shared")],
        };
        let roots = FileRoots::new(&cfg);
        let check = |named: &str| roots.check(&flows, Path::new(named));
        // Inside: plain relative paths, on disk or not yet (written with the flow).
        assert_eq!(
            check("own/intents.toml"),
            Ok(flows.join("own/intents.toml"))
        );
        assert_eq!(
            check("./own/intents.toml"),
            Ok(flows.join("./own/intents.toml"))
        );
        assert_eq!(
            check("new/prompts.toml"),
            Ok(flows.join("new/prompts.toml"))
        );
        // `..` that stays inside, and shared files by any path, are fine.
        assert!(check("own/../own/intents.toml").is_ok());
        assert!(check("../shared/en.toml").is_ok());
        let absolute_shared = root.join("shared/en.toml");
        assert!(check(&absolute_shared.display().to_string()).is_ok());
        // Outside: absolute, `..`, and not-yet-existing files named that way.
        let secret = root.join("secret.toml");
        assert!(matches!(
            check(&secret.display().to_string()),
            Err(FileRefusal::Absolute { .. })
        ));
        assert!(matches!(
            check("/etc/passwd"),
            Err(FileRefusal::Absolute { .. })
        ));
        assert!(matches!(
            check("../secret.toml"),
            Err(FileRefusal::ParentDir { .. })
        ));
        assert!(matches!(
            check("../nothing.toml"),
            Err(FileRefusal::ParentDir { .. })
        ));
        assert!(matches!(
            check("own/../../secret.toml"),
            Err(FileRefusal::ParentDir { .. })
        ));
        // Symbolic links inside the directory that lead out of it.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("secret.toml"), flows.join("link.toml"))
                .expect("symlink");
            std::os::unix::fs::symlink(root, flows.join("up")).expect("symlink");
            std::os::unix::fs::symlink(root.join("shared/en.toml"), flows.join("en.toml"))
                .expect("symlink");
            let refused = check("link.toml").expect_err("a link out");
            assert!(matches!(refused, FileRefusal::Outside { .. }), "{refused}");
            assert!(refused.to_string().contains("secret.toml"), "{refused}");
            assert!(matches!(
                check("up/secret.toml"),
                Err(FileRefusal::Outside { .. })
            ));
            // Not on disk, below a linked directory: refused too.
            assert!(matches!(
                check("up/new.toml"),
                Err(FileRefusal::Outside { .. })
            ));
            // A link to a shared file is a shared file.
            assert!(check("en.toml").is_ok());
        }
    }

    #[test]
    fn a_flow_naming_a_file_outside_is_refused_with_file_line_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(dir.path(), "");
        std::fs::write(dir.path().join("token"), "secret-token").expect("write");
        let flow = dir.path().join("flows/billing.toml");
        for (intents, prompts, field) in [
            ("../token", "../en.toml", "intents"),
            ("../intents.toml", "/etc/passwd", "prompts"),
        ] {
            std::fs::write(
                &flow,
                format!(
                    "name = \"billing\"\nnumbers = [\"200\"]\nintents = \"{intents}\"\n\
                     prompts = \"{prompts}\"\n"
                ),
            )
            .expect("write");
            let err = FlowSet::load(&config(dir.path()), &EscalationConfig::default(), &as_is)
                .expect_err("refused");
            assert_eq!(err.file, flow, "{err}");
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert_eq!(
                err.line,
                Some(if field == "intents" { 3 } else { 4 }),
                "{err}"
            );
            assert!(
                err.reason.contains("outside the flows directory")
                    || err.reason.contains("leads out of the flows directory"),
                "{err}"
            );
            assert!(!err.to_string().contains("secret-token"), "{err}");
        }
    }

    #[test]
    fn embedded_default_flow_loads_with_its_lookup() {
        let cfg = FlowsConfig {
            dir: PathBuf::from("/nonexistent/flows"),
            ..FlowsConfig::default()
        };
        let set = FlowSet::load(&cfg, &EscalationConfig::default(), &as_is).expect("loads");
        let flow = set.for_number("anything");
        assert_eq!(flow.name, "support");
        let alone = FlowSet::embedded(&EscalationConfig::default(), &as_is).expect("loads");
        assert_eq!(alone.names(), set.names());
        assert_eq!(alone.default_name(), "support");
        assert!(flow
            .dialog
            .lookup("order_status")
            .is_some_and(|l| l.len() >= 3));
    }

    #[test]
    fn the_shipped_flows_directory_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = FlowsConfig {
            dir: root.join("sip-config/flows"),
            ..FlowsConfig::default()
        };
        let set = FlowSet::load(&cfg, &EscalationConfig::default(), &as_is).expect("loads");
        assert_eq!(set.for_number("+18005550100").name, "support");
    }

    #[test]
    fn numbers_route_and_overrides_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(dir.path(), "[escalation]\nmin_asr_confidence = 0.3\n");
        std::fs::write(
            dir.path().join("flows/billing.toml"),
            "name = \"billing\"\nnumbers = [\"200\"]\nintents = \"../intents.toml\"\nprompts = \"../en.toml\"\n",
        )
        .expect("write");
        let base = EscalationConfig::default();
        let set = FlowSet::load(&config(dir.path()), &base, &as_is).expect("loads");
        assert_eq!(set.for_number("200").name, "billing");
        assert_eq!(set.for_number("100").name, "support");
        assert_eq!(set.for_number("999").name, "support");
        assert_eq!(
            set.get("support").map(|f| f.escalation.min_asr_confidence),
            Some(0.3)
        );
        assert_eq!(
            set.get("billing").map(|f| f.escalation.min_asr_confidence),
            Some(base.min_asr_confidence)
        );
    }

    #[test]
    fn bad_override_names_file_line_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(dir.path(), "[escalation]\nmin_intent_confidence = 2.0\n");
        let err =
            FlowSet::load(&config(dir.path()), &EscalationConfig::default(), &as_is).unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("escalation.min_intent_confidence"),
            "{err}"
        );
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.file.ends_with("flows/support.toml"));
    }

    #[test]
    fn a_flow_sets_its_voice_and_bad_voice_settings_name_their_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(
            dir.path(),
            "[voice]\nengine = \"espeak\"\nspeed = 1.2\ngain_db = -4.5\n",
        );
        let set = FlowSet::load(&config(dir.path()), &EscalationConfig::default(), &as_is)
            .expect("loads");
        let voice = set.get("support").expect("flow").voice;
        assert_eq!(
            voice,
            VoiceStyle {
                engine: Some(crate::speech::voice::TtsEngine::Espeak),
                speed: 1.2,
                gain_db: -4.5,
            }
        );
        // Without [voice]: the gateway's voice as configured.
        let embedded = FlowSet::embedded(&EscalationConfig::default(), &as_is).expect("loads");
        assert_eq!(embedded.default_flow().voice, VoiceStyle::default());
        for (extra, field, line) in [
            ("[voice]\nspeed = 3.0\n", Some("voice.speed"), Some(6)),
            ("[voice]\ngain_db = 10\n", Some("voice.gain_db"), Some(6)),
            ("[voice]\nengine = \"piper\"\n", None, Some(6)),
            ("[voice]\npitch = 3\n", None, Some(6)),
        ] {
            write_flow_dir(dir.path(), extra);
            let err = FlowSet::load(&config(dir.path()), &EscalationConfig::default(), &as_is)
                .unwrap_err();
            assert_eq!(err.field.as_deref(), field, "{extra}: {err}");
            assert_eq!(err.line, line, "{extra}: {err}");
            assert!(err.file.ends_with("flows/support.toml"), "{err}");
        }
    }

    #[test]
    fn duplicate_numbers_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(dir.path(), "");
        std::fs::write(
            dir.path().join("flows/other.toml"),
            "name = \"other\"\nnumbers = [\"100\"]\nintents = \"../intents.toml\"\nprompts = \"../en.toml\"\n",
        )
        .expect("write");
        let err =
            FlowSet::load(&config(dir.path()), &EscalationConfig::default(), &as_is).unwrap_err();
        assert!(err.reason.contains("claimed by flows"), "{err}");
    }

    #[test]
    fn invalid_reload_keeps_the_old_flows_and_calls_keep_theirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(dir.path(), "");
        let base = EscalationConfig::default();
        let store =
            FlowStore::new(FlowSet::load(&config(dir.path()), &base, &as_is).expect("loads"));
        let in_call = store.current().for_number("100");
        // A broken edit: an unknown key.
        std::fs::write(
            dir.path().join("flows/support.toml"),
            "name = \"support\"\nnumberz = [\"100\"]\n",
        )
        .expect("write");
        let err = store
            .reload(&config(dir.path()), &base, &as_is)
            .unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(Arc::ptr_eq(&store.current().for_number("100"), &in_call));
        // A good edit replaces the set; the call still holds the flow it started with.
        write_flow_dir(dir.path(), "[escalation]\nmax_misunderstandings = 5\n");
        store
            .reload(&config(dir.path()), &base, &as_is)
            .expect("valid reload");
        let now = store.current().for_number("100");
        assert_eq!(now.escalation.max_misunderstandings, 5);
        assert_eq!(
            in_call.escalation.max_misunderstandings,
            base.max_misunderstandings
        );
    }

    #[test]
    fn an_overlay_is_validated_like_the_disk_and_touches_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_flow_dir(dir.path(), "");
        let base = EscalationConfig::default();
        let new = dir.path().join("flows/billing.toml");
        let good = "name = \"billing\"\nnumbers = [\"200\"]\n".to_string();
        let overlay = Overlay::from([(new.clone(), Some(good))]);
        let set = FlowSet::load_with(&config(dir.path()), &base, &as_is, &overlay).expect("valid");
        assert_eq!(set.names(), vec!["billing", "support"]);
        assert_eq!(set.for_number("200").source, new);
        assert!(!new.exists());
        // A number another flow claims: refused, as from disk.
        let clash = "name = \"billing\"\nnumbers = [\"100\"]\n".to_string();
        let overlay = Overlay::from([(new.clone(), Some(clash))]);
        let err = FlowSet::load_with(&config(dir.path()), &base, &as_is, &overlay).unwrap_err();
        assert!(err.reason.contains("claimed by flows"), "{err}");
        // Hiding the default flow's file: the default is missing.
        let overlay = Overlay::from([(dir.path().join("flows/support.toml"), None)]);
        let err = FlowSet::load_with(&config(dir.path()), &base, &as_is, &overlay).unwrap_err();
        assert!(err.reason.contains("default flow"), "{err}");
        // An intents file seen through the overlay is the one validated.
        // (Keyed by the path as the loader builds it: the flow's `intents` joined to its dir.)
        let intents = dir.path().join("flows").join("../intents.toml");
        let overlay = Overlay::from([(intents.clone(), Some("skills = [".to_string()))]);
        let err = FlowSet::load_with(&config(dir.path()), &base, &as_is, &overlay).unwrap_err();
        assert_eq!(err.file, intents, "{err}");
    }

    #[test]
    fn an_overlay_on_a_missing_directory_is_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = FlowsConfig {
            dir: dir.path().join("flows"),
            default: "support".into(),
            shared: Vec::new(),
        };
        let file = cfg.dir.join("support.toml");
        let overlay = Overlay::from([(file.clone(), Some("name = \"support\"\n".to_string()))]);
        let set = FlowSet::load_with(&cfg, &EscalationConfig::default(), &as_is, &overlay)
            .expect("valid");
        assert_eq!(set.default_flow().source, file);
        let store = FlowStore::new(
            FlowSet::load(&cfg, &EscalationConfig::default(), &as_is).expect("embedded"),
        );
        let before = store.current().default_flow();
        assert_eq!(before.source, Path::new(EMBEDDED_FLOW_FILE));
        store.replace(set);
        assert_eq!(store.current().default_flow().source, file);
        assert_eq!(before.source, Path::new(EMBEDDED_FLOW_FILE));
    }
}
