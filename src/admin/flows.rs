//! Flows through the API: list, read, validate, write, delete.
//!
//! # Why it works this way
//!
//! The flow files stay the source of truth: an admin may edit them by hand, review them, keep
//! them in version control. The API is one more editor of those files, with two promises:
//!
//! - **nothing invalid is ever written**: an edit is first loaded together with every other
//!   flow, with the edited files seen through an [`Overlay`] instead of the disk, by the very
//!   code that loads the flows at start ([`crate::engines::load_flows_with`]). Whatever a load
//!   would refuse (a syntax error, an unknown key, a threshold out of range, a number claimed by
//!   two flows, a reply missing for an intent) is refused with the file, line, field and
//!   reason, and the disk is not touched;
//! - **no call is dropped**: the set that was validated is the set put in force
//!   ([`crate::flows::FlowStore::replace`]) once the files are written, so new calls get it at
//!   once, and calls in progress keep the flow they started with (flows are shared by `Arc`).
//!
//! Files are written atomically (a temporary file in the same directory, fsync, rename, fsync
//! of the directory), so a crash leaves the old file or the new one, never half of one. Edits
//! are serialised: one validate-write-swap at a time.
//!
//! A flow may come with its own intents and prompts texts; they are kept beside it, in
//! `<flows dir>/<name>/intents.toml` and `prompts.toml`, and the flow must name them so (the
//! flow file stays the one place that says which files it uses). A gateway running on the
//! embedded default flow (no flows directory) gets the directory on the first write, with the
//! default flow written into it too (using the built-in intents and prompts), so the set stays
//! complete.

use crate::flows::sync_dir;
pub use crate::flows::{write_atomically, WritePlan};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{parse_json, AdminState, ApiError};
use crate::config::GatewayConfig;
use crate::config_file::{self, ConfigError};
use crate::engines::{load_flows_with, LoadError};
use crate::flows::{FileRoots, Flow, FlowSet, Overlay, EMBEDDED_FLOW, EMBEDDED_FLOW_FILE};
use crate::speech::voice::VoiceStyle;

/// Largest flow write accepted (the flow with its intents and prompts texts).
pub const MAX_FLOW_BODY: usize = 512 * 1024;

/// One validation problem, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file the problem is in (the flows directory's path of the file being written).
    pub file: String,
    /// 1-based line, when it could be located.
    pub line: Option<usize>,
    /// Dotted path of the offending field (`escalation.min_intent_confidence`), when known.
    pub field: Option<String>,
    pub reason: String,
}

impl From<&ConfigError> for Problem {
    fn from(e: &ConfigError) -> Self {
        Problem {
            file: e.file.display().to_string(),
            line: e.line,
            field: e.field.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// Why a flow operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowEditError {
    #[error("`{0}` is not a flow name (1 to 64 letters, digits, - and _)")]
    BadName(String),
    #[error("no flow `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("`{0}` is the default flow ([flows] default); make another flow the default first")]
    DefaultFlow(String),
    #[error("flow `{name}` is not a file of the flows directory {dir}; it cannot be deleted")]
    NotInDir { name: String, dir: PathBuf },
    #[error("the request body is not UTF-8 text")]
    NotText,
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load the flows' intent model: {0}")]
    Model(String),
    #[error("shared flows: {0}")]
    Shared(#[from] crate::flow_sync::FlowSyncError),
}

impl From<FlowEditError> for ApiError {
    fn from(e: FlowEditError) -> Self {
        let status = match &e {
            FlowEditError::BadName(_) | FlowEditError::NotText => StatusCode::BAD_REQUEST,
            FlowEditError::NotFound(_) => StatusCode::NOT_FOUND,
            FlowEditError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FlowEditError::DefaultFlow(_) | FlowEditError::NotInDir { .. } => StatusCode::CONFLICT,
            FlowEditError::Io { .. } | FlowEditError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
            FlowEditError::Shared(crate::flow_sync::FlowSyncError::Conflict { .. }) => {
                StatusCode::CONFLICT
            }
            FlowEditError::Shared(crate::flow_sync::FlowSyncError::Postgres(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            FlowEditError::Shared(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut error = ApiError::new(status, e.to_string());
        if let FlowEditError::Invalid(c) = &e {
            error.problems = vec![Problem::from(c)];
        }
        error
    }
}

impl From<LoadError> for FlowEditError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Config(c) => FlowEditError::Invalid(c),
            other => FlowEditError::Model(other.to_string()),
        }
    }
}

/// A flow name as the API accepts it (it becomes a file name).
pub fn check_name(name: &str) -> Result<(), FlowEditError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FlowEditError::BadName(name.chars().take(80).collect()))
    }
}

/// A flow write as JSON (`PUT /api/flows/{name}`, `POST /api/flows/validate`); a plain TOML
/// body means `{"flow": body}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowWrite {
    /// The flow file's text (TOML).
    pub flow: String,
    /// Its own intents file's text; with `prompts`, or neither.
    #[serde(default)]
    pub intents: Option<String>,
    /// Its own prompts file's text.
    #[serde(default)]
    pub prompts: Option<String>,
}

/// The managed paths of a flow's own intents and prompts, relative to the flows directory.
fn own_files(name: &str) -> (String, String) {
    (
        format!("{name}/intents.toml"),
        format!("{name}/prompts.toml"),
    )
}

/// The embedded default flow as a file of a new flows directory: the same flow, with the
/// built-in intents and prompts (its `intents`/`prompts` paths only make sense in the source
/// tree, so they are left out).
fn materialized_default() -> String {
    let mut text = String::from(
        "# Written by the admin API from the gateway's built-in default flow (with the\n\
         # built-in intents and prompts) when the flows directory was created.\n",
    );
    for line in EMBEDDED_FLOW.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if key == "intents" || key == "prompts" {
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn is_embedded(flow: &Flow) -> bool {
    flow.source == Path::new(EMBEDDED_FLOW_FILE)
}

/// Validates writing `write` as flow `name` against the flows in force (`current`) and the
/// files on disk; touches nothing.
pub fn plan_write(
    config: &GatewayConfig,
    current: &FlowSet,
    name: &str,
    write: &FlowWrite,
) -> Result<WritePlan, FlowEditError> {
    check_name(name)?;
    let dir = &config.flows.dir;
    let existing = current.get(name);
    let target = match &existing {
        Some(flow) if flow.source.parent() == Some(dir.as_path()) => flow.source.clone(),
        _ => dir.join(format!("{name}.toml")),
    };
    let created = existing.as_ref().is_none_or(|f| is_embedded(f));
    let text = &write.flow;
    // The name in the text must be the name in the URL (the file is named after it).
    let table: toml::Table = config_file::parse(&target, text).map_err(FlowEditError::Invalid)?;
    let invalid = |field: &str, reason: String| {
        FlowEditError::Invalid(ConfigError::invalid(&target, text, field, reason))
    };
    match table.get("name").and_then(|v| v.as_str()) {
        Some(n) if n != name => {
            return Err(invalid(
                "name",
                format!("is `{n}`, but the flow is written as `{name}` (they must be the same)"),
            ))
        }
        _ => {}
    }
    let mut overlay = Overlay::new();
    let mut files = Vec::new();
    match (&write.intents, &write.prompts) {
        (None, None) => {}
        (Some(intents), Some(prompts)) => {
            let (i, p) = own_files(name);
            for (key, expected) in [("intents", &i), ("prompts", &p)] {
                if table.get(key).and_then(|v| v.as_str()) != Some(expected.as_str()) {
                    return Err(invalid(
                        key,
                        format!(
                            "with its own {key} text, the flow must say {key} = \"{expected}\""
                        ),
                    ));
                }
            }
            files.push((dir.join(&i), intents.clone()));
            files.push((dir.join(&p), prompts.clone()));
        }
        (Some(_), None) => {
            return Err(invalid(
                "prompts",
                "an intents text needs a prompts text too (every intent needs its replies)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "intents",
                "a prompts text needs an intents text too (prompts are checked against them)"
                    .into(),
            ))
        }
    }
    // On the embedded default flow, the directory is created with that flow in it.
    let default = current.default_flow();
    if is_embedded(&default) && default.name != name {
        files.push((
            dir.join(format!("{}.toml", default.name)),
            materialized_default(),
        ));
    }
    files.push((target.clone(), text.clone()));
    for (path, text) in &files {
        overlay.insert(path.clone(), Some(text.clone()));
    }
    let set = load_flows_with(config, &overlay)?;
    Ok(WritePlan {
        target,
        created,
        files,
        removals: Vec::new(),
        set,
    })
}

/// Validates deleting flow `name`; touches nothing.
pub fn plan_delete(
    config: &GatewayConfig,
    current: &FlowSet,
    name: &str,
) -> Result<WritePlan, FlowEditError> {
    check_name(name)?;
    let flow = current
        .get(name)
        .ok_or_else(|| FlowEditError::NotFound(name.to_string()))?;
    if current.default_name() == name {
        return Err(FlowEditError::DefaultFlow(name.to_string()));
    }
    let dir = &config.flows.dir;
    if flow.source.parent() != Some(dir.as_path()) {
        return Err(FlowEditError::NotInDir {
            name: name.to_string(),
            dir: dir.clone(),
        });
    }
    let mut overlay = Overlay::new();
    overlay.insert(flow.source.clone(), None);
    let set = load_flows_with(config, &overlay)?;
    Ok(WritePlan {
        target: flow.source.clone(),
        created: false,
        files: Vec::new(),
        removals: vec![flow.source.clone()],
        set,
    })
}

/// Carries out a plan on disk (writes, then removals).
pub fn apply(plan: &WritePlan) -> Result<(), FlowEditError> {
    for (path, text) in &plan.files {
        write_atomically(path, text).map_err(|source| FlowEditError::Io {
            path: path.clone(),
            source,
        })?;
    }
    for path in &plan.removals {
        std::fs::remove_file(path)
            .and_then(|()| sync_dir(path.parent().unwrap_or(Path::new("."))))
            .map_err(|source| FlowEditError::Io {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// A flow in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct FlowSummary {
    pub name: String,
    pub description: String,
    pub numbers: Vec<String>,
    /// The file it was loaded from (`<embedded>/...` for the built-in default).
    pub file: String,
    /// Whether it answers calls no other flow claims.
    pub default: bool,
    /// Whether it is the built-in flow (no flows directory yet).
    pub embedded: bool,
    /// Its intents, in file order.
    pub intents: Vec<String>,
    /// The teams its escalations go to.
    pub skills: Vec<String>,
    /// How its bot sounds (`[voice]`).
    pub voice: VoiceStyle,
}

fn summary(flow: &Flow, default: &str) -> FlowSummary {
    let intents = flow.dialog.intents();
    FlowSummary {
        name: flow.name.clone(),
        description: flow.description.clone(),
        numbers: flow.numbers.clone(),
        file: flow.source.display().to_string(),
        default: flow.name == default,
        embedded: is_embedded(flow),
        intents: intents.intents.iter().map(|i| i.name.clone()).collect(),
        skills: intents.skills.clone(),
        voice: flow.voice,
    }
}

#[derive(Serialize)]
pub struct FlowList {
    pub default: String,
    pub dir: String,
    /// Whether the flows directory exists (else the built-in default flow is in force).
    pub dir_exists: bool,
    pub flows: Vec<FlowSummary>,
    /// The cluster's flow revision in force on this gateway (with a shared store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// `GET /api/flows`.
pub async fn list(State(state): State<Arc<AdminState>>) -> Json<FlowList> {
    let set = state.engines.flows.current();
    let dir = &state.engines.config.flows.dir;
    Json(FlowList {
        default: set.default_name().to_string(),
        dir: dir.display().to_string(),
        dir_exists: dir.is_dir(),
        flows: set
            .flows()
            .map(|f| summary(f, set.default_name()))
            .collect(),
        revision: state.flow_sync.as_ref().and_then(|s| s.in_force()),
    })
}

/// One flow, with its text.
#[derive(Serialize)]
pub struct FlowDetail {
    #[serde(flatten)]
    pub summary: FlowSummary,
    /// The flow file's text as it is on disk now (the built-in text for the embedded flow).
    pub text: String,
    /// The intents and prompts files it names, resolved, and their texts when readable.
    pub intents_file: Option<String>,
    pub intents_text: Option<String>,
    pub prompts_file: Option<String>,
    pub prompts_text: Option<String>,
    /// The escalation settings in force for it (the gateway's, with its overrides).
    pub escalation: serde_json::Value,
}

fn detail(flow: &Flow, default: &str, roots: &FileRoots) -> Result<FlowDetail, ApiError> {
    let text = if is_embedded(flow) {
        EMBEDDED_FLOW.to_string()
    } else {
        std::fs::read_to_string(&flow.source).map_err(|e| {
            ApiError::internal(format!("cannot read {}: {e}", flow.source.display()))
        })?
    };
    let table: Option<toml::Table> = toml::from_str(&text).ok();
    let dir = flow.source.parent().unwrap_or(Path::new("."));
    let file = |key: &str| -> (Option<String>, Option<String>) {
        if is_embedded(flow) {
            return (None, None);
        }
        match table
            .as_ref()
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
        {
            // The file may have been edited on disk since the flow loaded: it is checked
            // again, and a file outside the allowed places is never read.
            Some(rel) => match roots.check(dir, Path::new(rel)) {
                Ok(path) => {
                    let text = std::fs::read_to_string(&path).ok();
                    (Some(path.display().to_string()), text)
                }
                Err(e) => {
                    tracing::warn!(flow = %flow.name, field = key, reason = %e,
                        "flow file not served");
                    (Some(dir.join(rel).display().to_string()), None)
                }
            },
            None => (None, None),
        }
    };
    let (intents_file, intents_text) = file("intents");
    let (prompts_file, prompts_text) = file("prompts");
    Ok(FlowDetail {
        summary: summary(flow, default),
        text,
        intents_file,
        intents_text,
        prompts_file,
        prompts_text,
        escalation: serde_json::to_value(&flow.escalation).unwrap_or_default(),
    })
}

/// `GET /api/flows/{name}`.
pub async fn get_one(
    State(state): State<Arc<AdminState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<FlowDetail>, ApiError> {
    check_name(&name)?;
    let set = state.engines.flows.current();
    let flow = set
        .get(&name)
        .ok_or_else(|| FlowEditError::NotFound(name.clone()))?;
    let default = set.default_name().to_string();
    let config = Arc::clone(&state.engines.config);
    tokio::task::spawn_blocking(move || detail(&flow, &default, &FileRoots::new(&config.flows)))
        .await
        .map_err(|e| ApiError::internal(format!("reading the flow: {e}")))?
        .map(Json)
}

/// The write in a request: JSON ([`FlowWrite`]) or the flow's TOML as the body.
fn flow_write(headers: &HeaderMap, body: &[u8]) -> Result<FlowWrite, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json") || ct.contains("+json")
        });
    if json {
        return parse_json(body);
    }
    let text = std::str::from_utf8(body).map_err(|_| FlowEditError::NotText)?;
    Ok(FlowWrite {
        flow: text.to_string(),
        intents: None,
        prompts: None,
    })
}

/// The result of a write or a delete.
#[derive(Serialize)]
pub struct FlowChange {
    pub name: String,
    pub file: String,
    pub created: bool,
    /// Files written (or removed, for a delete).
    pub files: Vec<String>,
    /// The flows in force now.
    pub flows: Vec<String>,
    /// The cluster's revision this change was published as (with a shared store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// The result of a dry run.
#[derive(Serialize)]
pub struct Validation {
    pub valid: bool,
    pub name: String,
    /// The file a write would create or replace.
    pub file: String,
    pub created: bool,
    /// The flows a write would put in force.
    pub flows: Vec<String>,
    pub summary: FlowSummary,
}

/// Runs a planning step off the async runtime (it reads files and embeds intent examples).
async fn plan<F>(state: &Arc<AdminState>, f: F) -> Result<WritePlan, ApiError>
where
    F: FnOnce(&GatewayConfig, &FlowSet) -> Result<WritePlan, FlowEditError> + Send + 'static,
{
    let config = Arc::clone(&state.engines.config);
    let current = state.engines.flows.current();
    Ok(tokio::task::spawn_blocking(move || f(&config, &current))
        .await
        .map_err(|e| ApiError::internal(format!("validating the flow: {e}")))??)
}

/// The validation base of an edit: the cluster revision in force here (with a shared store).
fn base_revision(state: &AdminState) -> Option<i64> {
    state.flow_sync.as_ref().and_then(|s| s.in_force())
}

/// Carries out a validated plan off the async runtime and puts its flows in force: writes its
/// files here, or, with a shared store, publishes it as a new revision validated against
/// `base` (then written here too; the other gateways follow). Returns the flows in force and
/// the revision.
async fn commit(
    state: &Arc<AdminState>,
    plan: WritePlan,
    base: Option<i64>,
    change: String,
) -> Result<(Arc<FlowSet>, Option<i64>), ApiError> {
    let sync = state.flow_sync.clone();
    let shared = sync.is_some();
    let store = Arc::clone(&state.engines.flows);
    let done = tokio::task::spawn_blocking(move || match sync {
        Some(sync) => sync
            .publish(plan, base, &change)
            .map(|(revision, set)| (set, Some(revision)))
            .map_err(FlowEditError::from),
        None => apply(&plan).map(|()| (store.replace(plan.set), None)),
    })
    .await
    .map_err(|e| ApiError::internal(format!("writing the flow: {e}")))??;
    // With a shared store, the sync's hook does this for every set it puts in force.
    if !shared {
        crate::engines::keep_prompts_ready(&state.engines);
    }
    Ok(done)
}

/// `PUT /api/flows/{name}`.
pub async fn put(
    State(state): State<Arc<AdminState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<FlowChange>), ApiError> {
    check_name(&name)?;
    let write = flow_write(&headers, &body?)?;
    let _edit = state.flow_edits.lock().await;
    let base = base_revision(&state);
    let n = name.clone();
    let planned = plan(&state, move |c, s| plan_write(c, s, &n, &write)).await?;
    let (target, created) = (planned.target.clone(), planned.created);
    let files: Vec<String> = planned
        .files
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let (set, revision) = commit(&state, planned, base, format!("PUT {name}")).await?;
    tracing::info!(flow = %name, file = %target.display(), created, "flow written by the admin API");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(FlowChange {
            name,
            file: target.display().to_string(),
            created,
            files,
            flows: set.names(),
            revision,
        }),
    ))
}

/// `DELETE /api/flows/{name}`.
pub async fn delete(
    State(state): State<Arc<AdminState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<FlowChange>, ApiError> {
    check_name(&name)?;
    let _edit = state.flow_edits.lock().await;
    let base = base_revision(&state);
    let n = name.clone();
    let planned = plan(&state, move |c, s| plan_delete(c, s, &n)).await?;
    let target = planned.target.clone();
    let removals: Vec<String> = planned
        .removals
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let (set, revision) = commit(&state, planned, base, format!("DELETE {name}")).await?;
    tracing::info!(flow = %name, file = %target.display(), "flow deleted by the admin API");
    Ok(Json(FlowChange {
        name,
        file: target.display().to_string(),
        created: false,
        files: removals,
        flows: set.names(),
        revision,
    }))
}

/// `POST /api/flows/validate`: what a write of this flow would do, or why it would be refused
/// (the same 422 as the write).
pub async fn validate(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Validation>, ApiError> {
    let write = flow_write(&headers, &body?)?;
    // The name comes from the text; without one, the loader's own message says what is wrong.
    let label = state.engines.config.flows.dir.join("<validate>.toml");
    let table: toml::Table =
        config_file::parse(&label, &write.flow).map_err(FlowEditError::Invalid)?;
    let name = match table.get("name").and_then(|v| v.as_str()) {
        Some(n) => n.to_string(),
        None => {
            return Err(FlowEditError::Invalid(ConfigError::invalid(
                &label,
                &write.flow,
                "name",
                "missing: a flow needs a name (letters, digits, - and _)",
            ))
            .into())
        }
    };
    if check_name(&name).is_err() {
        return Err(FlowEditError::Invalid(ConfigError::invalid(
            &label,
            &write.flow,
            "name",
            "must be a name of 1 to 64 letters, digits, - and _",
        ))
        .into());
    }
    let n = name.clone();
    let planned = plan(&state, move |c, s| plan_write(c, s, &n, &write)).await?;
    let flow = planned
        .set
        .get(&name)
        .ok_or_else(|| ApiError::internal("the validated set lacks the flow"))?;
    Ok(Json(Validation {
        valid: true,
        name,
        file: planned.target.display().to_string(),
        created: planned.created,
        flows: planned.set.names(),
        summary: summary(&flow, planned.set.default_name()),
    }))
}

/// `GET`, `PUT` and `DELETE` on `/api/flows/{name}`, with the larger body limit for writes.
pub fn flow_route() -> MethodRouter<Arc<AdminState>> {
    get(get_one)
        .put(put)
        .delete(delete)
        .layer(DefaultBodyLimit::max(MAX_FLOW_BODY))
}

/// `POST /api/flows/validate`.
pub fn validate_route() -> MethodRouter<Arc<AdminState>> {
    post(validate).layer(DefaultBodyLimit::max(MAX_FLOW_BODY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{admin, fixture, send, support_flow, ADMIN};
    use serde_json::json;

    fn billing(extra: &str) -> String {
        format!(
            "name = \"billing\"\ndescription = \"Billing line\"\nnumbers = [\"200\"]\n\
             intents = \"../intents.toml\"\nprompts = \"../prompts.toml\"\n{extra}"
        )
    }

    #[tokio::test]
    async fn admin_routes_need_the_admin_token() {
        let f = fixture(true);
        for token in [None, Some("wrong"), Some(crate::admin::test_support::AGENT)] {
            let a = send(&f.app, "GET", "/api/flows", token, None, "").await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert!(a.json()["error"].as_str().is_some());
            crate::admin::test_support::assert_schema("GET", "/api/flows", a.status, &a.json());
        }
        // The token is checked before the body is read: no 413 for an anonymous upload.
        let big = vec![b'x'; 2 * MAX_FLOW_BODY];
        let a = send(&f.app, "PUT", "/api/flows/x", None, Some("text/plain"), big).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn list_and_get_describe_the_flows() {
        let f = fixture(true);
        let (status, v) = admin(&f.app, "GET", "/api/flows", "/api/flows", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["default"], "support");
        assert_eq!(v["flows"][0]["name"], "support");
        assert!(v["flows"][0]["intents"]
            .as_array()
            .is_some_and(|i| i.contains(&json!("order_status"))));
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/flows/support",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["text"], support_flow(""));
        assert!(v["intents_text"]
            .as_str()
            .is_some_and(|t| t.contains("[[intent]]")));
        assert!(v["escalation"]["min_intent_confidence"].is_number());
        let (status, _) = admin(
            &f.app,
            "GET",
            "/api/flows/nope",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = admin(
            &f.app,
            "GET",
            "/api/flows/a%2E%2E",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    /// Not a `#[tokio::test]`: the blocking PostgreSQL client (the fixtures' pools) must be
    /// made and dropped outside the runtime; only the requests run on it.
    #[test]
    fn with_a_shared_store_an_edit_is_published_and_followed_by_the_other_gateway() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let one = crate::admin::test_support::shared_fixture(true, &url, "one");
        let two = crate::admin::test_support::shared_fixture(true, &url, "two");
        let sync_two = two.state.flow_sync.clone().expect("shared");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert_eq!(
                sync_two.in_force(),
                Some(1),
                "one published revision 1, two took it"
            );
            let (status, v) = admin(
                &one.app,
                "GET",
                "/api/flows",
                "/api/flows",
                None,
                axum::body::Body::empty(),
            )
            .await;
            assert_eq!((status, &v["revision"]), (StatusCode::OK, &json!(1)), "{v}");
            let listening = sync_two.listen().expect("listener");
            let (status, v) = admin(
                &one.app,
                "PUT",
                "/api/flows/billing",
                "/api/flows/{name}",
                Some("application/toml"),
                billing(""),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{v}");
            assert_eq!(v["revision"], 2, "{v}");
            let start = std::time::Instant::now();
            while two.state.engines.flows.current().get("billing").is_none() {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(3),
                    "the edit reached gateway two"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let (_, v) = admin(
                &two.app,
                "GET",
                "/api/flows",
                "/api/flows",
                None,
                axum::body::Body::empty(),
            )
            .await;
            assert_eq!(v["revision"], 2, "{v}");
            assert!(two.flows_dir().join("billing.toml").is_file());
            drop(listening);
            // An invalid edit is refused where it is made and never published.
            let (status, _) = admin(
                &two.app,
                "PUT",
                "/api/flows/billing",
                "/api/flows/{name}",
                Some("application/toml"),
                billing("[escalation]\nmin_intent_confidence = 2.0\n"),
            )
            .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            // one edits again; two (no longer listening) is behind: its edit is refused with 409.
            let (status, v) = admin(
                &one.app,
                "DELETE",
                "/api/flows/billing",
                "/api/flows/{name}",
                None,
                axum::body::Body::empty(),
            )
            .await;
            assert_eq!((status, &v["revision"]), (StatusCode::OK, &json!(3)), "{v}");
            let (status, v) = admin(
                &two.app,
                "PUT",
                "/api/flows/billing",
                "/api/flows/{name}",
                Some("application/toml"),
                billing("description = \"late\"\n").replace("description = \"Billing line\"\n", ""),
            )
            .await;
            assert_eq!(status, StatusCode::CONFLICT, "{v}");
            assert!(
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("another gateway")),
                "{v}"
            );
            assert!(
                two.flows_dir().join("billing.toml").is_file(),
                "two unchanged"
            );
        });
    }

    #[tokio::test]
    async fn an_invalid_flow_is_refused_with_line_and_field_and_not_written() {
        let f = fixture(true);
        let target = f.flows_dir().join("billing.toml");
        let bad = billing("[escalation]\nmin_intent_confidence = 2.0\n");
        for (method, uri, template) in [
            ("POST", "/api/flows/validate", "/api/flows/validate"),
            ("PUT", "/api/flows/billing", "/api/flows/{name}"),
        ] {
            let (status, v) = admin(
                &f.app,
                method,
                uri,
                template,
                Some("application/toml"),
                bad.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{method} {v}");
            let p = &v["problems"][0];
            assert_eq!(p["field"], "escalation.min_intent_confidence", "{v}");
            assert_eq!(p["line"], 7, "{v}");
            assert!(p["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("billing.toml")));
            assert!(
                v["error"].as_str().is_some_and(|e| e.contains(":7:")),
                "{v}"
            );
        }
        assert!(!target.exists(), "an invalid flow was written");
        // An unknown key, a name that is not the URL's, a number another flow claims.
        let cases = [
            (billing("numbrs = [\"1\"]\n"), None),
            (
                billing("").replace("name = \"billing\"", "name = \"other\""),
                Some("name"),
            ),
            (billing("").replace("\"200\"", "\"100\""), None),
            ("name = \"billing\"\nnumbers = [".to_string(), None),
        ];
        for (text, field) in cases {
            let (status, v) = admin(
                &f.app,
                "PUT",
                "/api/flows/billing",
                "/api/flows/{name}",
                Some("text/plain"),
                text,
            )
            .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
            if let Some(field) = field {
                assert_eq!(v["problems"][0]["field"], field, "{v}");
            }
        }
        assert!(!target.exists());
        assert_eq!(f.state.engines.flows.current().names(), vec!["support"]);
    }

    #[tokio::test]
    async fn a_flow_naming_a_file_outside_the_flows_directory_is_refused() {
        let f = fixture(true);
        let target = f.flows_dir().join("billing.toml");
        // A file the gateway can read but a flow must not name: beside the flows directory,
        // not shared.
        let secret = f.dir.path().join("admin-token");
        std::fs::write(&secret, "token-that-must-not-leak").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&secret, f.flows_dir().join("link.txt")).unwrap();
        let mut cases = vec![
            ("intents", secret.display().to_string(), "absolute path"),
            ("intents", "../admin-token".to_string(), "`..`"),
            ("prompts", "/etc/hostname".to_string(), "absolute path"),
        ];
        if cfg!(unix) {
            cases.push(("intents", "link.txt".to_string(), "symbolic link"));
        }
        for (field, named, why) in cases {
            let text = billing("").replace(
                &format!("{field} = \"../{field}.toml\""),
                &format!("{field} = \"{named}\""),
            );
            assert!(text.contains(&named), "{text}");
            for (method, uri, template) in [
                ("POST", "/api/flows/validate", "/api/flows/validate"),
                ("PUT", "/api/flows/billing", "/api/flows/{name}"),
            ] {
                let (status, v) = admin(
                    &f.app,
                    method,
                    uri,
                    template,
                    Some("text/plain"),
                    text.clone(),
                )
                .await;
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
                let p = &v["problems"][0];
                assert_eq!(p["field"], field, "{v}");
                assert!(p["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("billing.toml")));
                let reason = p["reason"].as_str().unwrap_or_default();
                assert!(
                    reason.contains("flows directory") && reason.contains(why),
                    "{v}"
                );
                assert!(!v.to_string().contains("token-that-must-not-leak"), "{v}");
            }
        }
        assert!(!target.exists(), "a refused flow was written");

        // A flow edited on disk after it loaded is not served from outside either.
        let support = f.flows_dir().join("support.toml");
        let edited = std::fs::read_to_string(&support)
            .unwrap()
            .replace("../intents.toml", "../admin-token");
        std::fs::write(&support, edited).unwrap();
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/flows/support",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(v["intents_text"].is_null(), "{v}");
        assert!(v["prompts_text"].is_string(), "{v}");
    }

    #[tokio::test]
    async fn put_creates_replaces_and_reloads_while_calls_keep_their_flow() {
        let f = fixture(true);
        let in_call = f.state.engines.flows.current().for_number("100");
        let (status, v) = admin(
            &f.app,
            "POST",
            "/api/flows/validate",
            "/api/flows/validate",
            Some("text/plain"),
            billing(""),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["created"], true);
        assert!(
            !f.flows_dir().join("billing.toml").exists(),
            "validate wrote"
        );
        let (status, v) = admin(
            &f.app,
            "PUT",
            "/api/flows/billing",
            "/api/flows/{name}",
            Some("application/toml"),
            billing(""),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["flows"], json!(["billing", "support"]));
        assert_eq!(
            std::fs::read_to_string(f.flows_dir().join("billing.toml")).expect("written"),
            billing("")
        );
        assert_eq!(
            f.state.engines.flows.current().for_number("200").name,
            "billing"
        );
        // Replace the support flow: new calls get the change, the call in progress does not.
        let body = json!({"flow": support_flow("[escalation]\nmax_misunderstandings = 7\n")});
        let (status, v) = admin(
            &f.app,
            "PUT",
            "/api/flows/support",
            "/api/flows/{name}",
            Some("application/json"),
            body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["created"], false);
        let now = f.state.engines.flows.current().for_number("100");
        assert_eq!(now.escalation.max_misunderstandings, 7);
        assert_ne!(in_call.escalation.max_misunderstandings, 7);
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(f.flows_dir())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_flow_with_its_own_intents_and_prompts() {
        let f = fixture(true);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let intents =
            std::fs::read_to_string(root.join("sip-config/intents.toml")).expect("intents");
        let prompts = std::fs::read_to_string(root.join("prompts/en.toml")).expect("prompts");
        let own = "name = \"sales\"\nnumbers = [\"300\"]\nintents = \"sales/intents.toml\"\nprompts = \"sales/prompts.toml\"\n";
        let body = |flow: &str, prompts: Option<&str>| {
            json!({"flow": flow, "intents": intents, "prompts": prompts}).to_string()
        };
        // Texts that the flow does not name, or an intents text alone: refused.
        let wrong = own.replace("sales/intents.toml", "../intents.toml");
        for b in [body(&wrong, Some(&prompts)), body(own, None)] {
            let (status, v) = admin(
                &f.app,
                "PUT",
                "/api/flows/sales",
                "/api/flows/{name}",
                Some("application/json"),
                b,
            )
            .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        }
        // A prompts text missing a reply: the prompts file's own error, not written.
        let broken = prompts.replacen("[replies]", "[replies]\nnot_an_intent = \"x\"", 1);
        let (status, v) = admin(
            &f.app,
            "PUT",
            "/api/flows/sales",
            "/api/flows/{name}",
            Some("application/json"),
            body(own, Some(&broken)),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            v["problems"][0]["file"]
                .as_str()
                .is_some_and(|p| p.ends_with("sales/prompts.toml")),
            "{v}"
        );
        assert!(!f.flows_dir().join("sales").exists());
        let (status, v) = admin(
            &f.app,
            "PUT",
            "/api/flows/sales",
            "/api/flows/{name}",
            Some("application/json"),
            body(own, Some(&prompts)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert!(f.flows_dir().join("sales/intents.toml").is_file());
        let (_, v) = admin(
            &f.app,
            "GET",
            "/api/flows/sales",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(v["prompts_text"], prompts);
    }

    #[tokio::test]
    async fn bad_bodies_get_json_errors() {
        let f = fixture(true);
        let put = |ct: &'static str, body: Vec<u8>| {
            let app = f.app.clone();
            async move {
                send(
                    &app,
                    "PUT",
                    "/api/flows/billing",
                    Some(ADMIN),
                    Some(ct),
                    body,
                )
                .await
            }
        };
        let a = put("application/json", b"{not json".to_vec()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("JSON")));
        let a = put("application/json", br#"{"flow": 5}"#.to_vec()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        let a = put("application/json", br#"{"flow": "x", "extra": 1}"#.to_vec()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        let a = put("text/plain", vec![0xff, 0xfe, 0x00]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let a = put("text/plain", vec![b'#'; MAX_FLOW_BODY + 1]).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(a.json()["error"].is_string());
        for a in [
            put("application/json", b"{not json".to_vec()).await,
            put("text/plain", vec![b'#'; MAX_FLOW_BODY + 1]).await,
        ] {
            crate::admin::test_support::assert_schema(
                "PUT",
                "/api/flows/{name}",
                a.status,
                &a.json(),
            );
        }
    }

    #[tokio::test]
    async fn delete_refuses_the_default_and_removes_others() {
        let f = fixture(true);
        let (status, _) = admin(
            &f.app,
            "PUT",
            "/api/flows/billing",
            "/api/flows/{name}",
            Some("text/plain"),
            billing(""),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, v) = admin(
            &f.app,
            "DELETE",
            "/api/flows/support",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
        assert!(f.flows_dir().join("support.toml").exists());
        let (status, v) = admin(
            &f.app,
            "DELETE",
            "/api/flows/billing",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["flows"], json!(["support"]));
        assert!(!f.flows_dir().join("billing.toml").exists());
        assert!(f.state.engines.flows.current().get("billing").is_none());
        let (status, _) = admin(
            &f.app,
            "DELETE",
            "/api/flows/billing",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn on_the_embedded_flow_a_write_creates_the_directory() {
        let f = fixture(false);
        assert!(!f.flows_dir().exists());
        let (_, v) = admin(&f.app, "GET", "/api/flows", "/api/flows", None, "").await;
        assert_eq!(v["dir_exists"], false);
        assert_eq!(v["flows"][0]["embedded"], true);
        let (status, v) = admin(
            &f.app,
            "GET",
            "/api/flows/support",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(v["text"]
            .as_str()
            .is_some_and(|t| t.contains("name = \"support\"")));
        // The embedded flow cannot be deleted: it is no file.
        let (status, _) = admin(
            &f.app,
            "DELETE",
            "/api/flows/support",
            "/api/flows/{name}",
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        // A new flow without intents/prompts files uses the built-in ones.
        let text =
            "name = \"billing\"\nnumbers = [\"200\"]\n[escalation]\nmax_misunderstandings = 4\n";
        let (status, v) = admin(
            &f.app,
            "PUT",
            "/api/flows/billing",
            "/api/flows/{name}",
            Some("text/plain"),
            text,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert!(f.flows_dir().join("billing.toml").is_file());
        assert!(f.flows_dir().join("support.toml").is_file());
        let set = f.state.engines.flows.current();
        assert_eq!(set.names(), vec!["billing", "support"]);
        // The default flow written out still answers from its order data.
        assert!(set
            .get("support")
            .is_some_and(|s| s.dialog.lookup("order_status").is_some()));
        // And what was written loads on its own, as at the next start.
        let reloaded = crate::engines::load_flows(&f.state.engines.config).expect("loads");
        assert_eq!(reloaded.names(), vec!["billing", "support"]);
    }
}
