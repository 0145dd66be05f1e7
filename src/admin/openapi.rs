//! `GET /openapi.json`: the OpenAPI 3.1 description of every HTTP route of the gateway, admin
//! and agent alike.
//!
//! # Why a hand-written document
//!
//! The responses are mostly the gateway's own report types (`CallReport`, `TurnReport`,
//! escalations, emotion readings), spread over a dozen modules; deriving schemas for them
//! with a macro crate would put a schema attribute on types that have nothing to do with HTTP,
//! for one endpoint. The document is kept by hand in `assets/openapi.json` instead, and held
//! to the code from two sides:
//!
//! - every route is registered through [`Routes`], which records its path and methods, and a
//!   test checks that the recorded routes and the document's paths are the same set;
//! - the router tests check every response body against the schema the document gives for
//!   that path, method and status, with the small JSON Schema checker [`check`] (the subset the
//!   document uses: `type`, `properties`, `required`, `additionalProperties`, `items`, `enum`,
//!   `const`, `minimum`, `maximum`, `anyOf`/`oneOf` and local `$ref`s).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use axum::Router;
use serde_json::Value;

/// The document, as shipped.
pub const DOCUMENT: &str = include_str!("../../assets/openapi.json");

/// The document, parsed once (the tests check it parses).
pub fn parsed() -> &'static Value {
    static PARSED: LazyLock<Value> =
        LazyLock::new(|| serde_json::from_str(DOCUMENT).unwrap_or(Value::Null));
    &PARSED
}

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

/// One registered route: an HTTP method and a path template (`/api/flows/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteId {
    pub method: String,
    pub path: String,
}

/// A router that remembers its routes, so the OpenAPI document can be checked against it.
pub struct Routes<S> {
    router: Router<S>,
    list: Vec<RouteId>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    /// Adds `handler` at `path` for `methods` (which must be the methods `handler` serves).
    pub fn route(mut self, path: &str, methods: &[&str], handler: MethodRouter<S>) -> Self {
        for m in methods {
            self.list.push(RouteId {
                method: m.to_string(),
                path: path.to_string(),
            });
        }
        self.router = self.router.route(path, handler);
        self
    }

    /// Both sets of routes.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.list.extend(other.list);
        self
    }

    /// Provides the state; the routes no longer need it.
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            list: self.list,
        }
    }

    /// The routes registered, sorted.
    pub fn list(&self) -> Vec<RouteId> {
        let mut list = self.list.clone();
        list.sort();
        list.dedup();
        list
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }

    /// Applies a function to the router (layers, fallbacks), keeping the route list.
    pub fn map_router(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }
}

/// The routes the document describes: `(METHOD, path)` for every operation under `paths`.
pub fn documented_routes(doc: &Value) -> Vec<RouteId> {
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.contains_key(method) {
                    out.push(RouteId {
                        method: method.to_uppercase(),
                        path: path.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out
}

/// The schema of the response to `method path` with `status` (its `application/json`
/// content), falling back to the operation's `default` response.
pub fn response_schema<'a>(
    doc: &'a Value,
    method: &str,
    path: &str,
    status: u16,
) -> Option<&'a Value> {
    let op = doc.get("paths")?.get(path)?.get(method.to_lowercase())?;
    let responses = op.get("responses")?;
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))?;
    let response = resolve(doc, response);
    let content = response.get("content")?;
    content
        .get("application/json")
        .or_else(|| content.get("application/problem+json"))?
        .get("schema")
}

/// Follows a local `$ref` (`#/components/...`), once or repeatedly.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            return schema;
        };
        match doc.pointer(pointer) {
            Some(target) => schema = target,
            None => return schema,
        }
    }
    schema
}

/// Checks `value` against `schema` (resolving `$ref`s in `doc`); returns every violation as
/// `path: reason`, empty when the value conforms.
pub fn check(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check_at(doc, schema, value, "$", &mut problems);
    problems
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    let actual = type_name(value);
    actual == expected
        || (expected == "number" && actual == "integer")
        // A float with no fraction (serde writes 3.0) is an integer in JSON Schema.
        || (expected == "integer" && value.as_f64().is_some_and(|f| f.fract() == 0.0))
}

fn check_at(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    let Some(schema) = schema.as_object() else {
        return; // `true` / `{}`: anything goes
    };
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| type_matches(t, value)) {
            out.push(format!(
                "{at}: expected {}, got {}",
                allowed.join(" or "),
                type_name(value)
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            out.push(format!(
                "{at}: {value} is not one of {}",
                Value::from(options.clone())
            ));
        }
    }
    if let Some(expected) = schema.get("const") {
        if expected != value {
            out.push(format!("{at}: expected {expected}, got {value}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                out.push(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                out.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|o| check(doc, o, value).is_empty())
                .count();
            let ok = if key == "oneOf" {
                matching == 1
            } else {
                matching >= 1
            };
            if !ok {
                out.push(format!("{at}: matches {matching} of the {key} schemas"));
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check_at(doc, s, value, at, out);
        }
    }
    if let Value::Object(map) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    out.push(format!("{at}: missing required property `{name}`"));
                }
            }
        }
        for (name, v) in map {
            let child = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(s) => check_at(doc, s, v, &child, out),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{at}: unexpected property `{name}`"))
                    }
                    Some(s @ Value::Object(_)) => check_at(doc, s, v, &child, out),
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_at(doc, item_schema, v, &format!("{at}[{i}]"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_document_is_openapi_3_1_with_components() {
        let doc = parsed();
        assert!(doc.is_object(), "assets/openapi.json does not parse");
        assert!(doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")));
        assert!(doc["components"]["schemas"].is_object());
        assert!(doc["components"]["securitySchemes"]["adminToken"].is_object());
        // Every $ref points somewhere.
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let (_, routes) = crate::admin::test_support::full_app();
        let registered = routes;
        let documented = documented_routes(parsed());
        let missing: Vec<_> = registered
            .iter()
            .filter(|r| !documented.contains(r))
            .collect();
        let extra: Vec<_> = documented
            .iter()
            .filter(|r| !registered.contains(r))
            .collect();
        assert!(
            missing.is_empty(),
            "routes not in assets/openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented routes the router lacks: {extra:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_responses_and_errors_use_the_error_schema() {
        let doc = parsed();
        for r in documented_routes(doc) {
            let op = &doc["paths"][&r.path][r.method.to_lowercase()];
            assert!(op["summary"].is_string(), "{r:?} has no summary");
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{r:?}");
            for (status, _) in responses {
                if status.starts_with('4') && r.path != "/agent" {
                    let schema =
                        response_schema(doc, &r.method, &r.path, status.parse().unwrap_or(0));
                    let error = json!({"error": "x"});
                    assert!(
                        schema.is_some_and(|s| check(doc, s, &error).is_empty()),
                        "{r:?} {status}: error responses must use the Error schema"
                    );
                }
            }
        }
    }

    #[test]
    fn the_checker_finds_what_is_wrong() {
        let doc = json!({"components": {"schemas": {
            "Item": {"type": "object", "required": ["id"], "additionalProperties": false,
                     "properties": {"id": {"type": "integer", "minimum": 1},
                                    "kind": {"enum": ["a", "b"]},
                                    "note": {"type": ["string", "null"]}}}}}});
        let list = json!({"type": "array", "items": {"$ref": "#/components/schemas/Item"}});
        assert!(check(&doc, &list, &json!([{"id": 1, "kind": "a", "note": null}])).is_empty());
        let bad = check(
            &doc,
            &list,
            &json!([{"id": 0}, {"kind": "c", "extra": true}, "x"]),
        );
        let joined = bad.join("\n");
        assert!(
            joined.contains("$[0].id: 0 is below the minimum 1"),
            "{joined}"
        );
        assert!(
            joined.contains("$[1]: missing required property `id`"),
            "{joined}"
        );
        assert!(
            joined.contains("$[1].kind: \"c\" is not one of"),
            "{joined}"
        );
        assert!(
            joined.contains("$[1]: unexpected property `extra`"),
            "{joined}"
        );
        assert!(
            joined.contains("$[2]: expected object, got string"),
            "{joined}"
        );
        assert!(check(&doc, &json!({"type": "integer"}), &json!(3.0)).is_empty());
        assert!(!check(&doc, &json!({"type": "integer"}), &json!(3.5)).is_empty());
    }
}

#[cfg(test)]
mod router_tests {
    use crate::admin::test_support::{fixture, send};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn the_document_is_served_and_unknown_routes_get_json() {
        let f = fixture(true);
        let a = send(&f.app, "GET", "/openapi.json", None, None, "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["openapi"], "3.1.0");
        let a = send(&f.app, "GET", "/api/nothing", None, None, "").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert!(a.json()["error"].is_string());
        let a = send(&f.app, "PATCH", "/api/flows", None, None, "").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(a.json()["error"].is_string());
    }

    /// Every documented operation is served: nothing answers "no such endpoint" or 405.
    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        let f = fixture(true);
        for r in super::documented_routes(super::parsed()) {
            if r.path == "/agent/events" {
                continue; // an endless stream
            }
            let uri = r
                .path
                .replace("{name}", "support")
                .replace("{id}", "c1")
                .replace("{ring_id}", "r1");
            let a = send(&f.app, &r.method, &uri, Some("wrong"), None, "").await;
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
            if a.status == StatusCode::NOT_FOUND {
                assert!(
                    !a.text().contains("no such endpoint"),
                    "{r:?} is not routed"
                );
            }
        }
    }
}
