//! Offline validation of DealerTenant manifests: the checks the API server makes on create,
//! driven by the CRD this crate generates, so `validate` and the cluster cannot disagree.
//!
//! Order, as in the API server: apiVersion/kind, metadata (name rules), unknown fields
//! (what kubectl's strict field validation reports), the structural schema (types, enums,
//! bounds, required fields), then the CEL `x-kubernetes-validations` rules (via `kube-cel`,
//! with schema defaults applied first as admission does). Transition rules (`oldSelf`)
//! only apply to updates, which an offline check of single manifests never sees.

use std::sync::LazyLock;

use kube::CustomResourceExt;
use serde_json::Value;

use super::{DealerTenant, GROUP, MAX_NAME_LEN, QUANTITY_PATTERN, VERSION, regions};

/// One problem in one manifest, printable as `FILE: PATH: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path such as `spec.region`; empty for whole-document problems.
    pub path: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The CRD's `openAPIV3Schema`, as the API server receives it.
pub fn crd_schema() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let crd = DealerTenant::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the derived CRD has a schema");
        serde_json::to_value(schema).expect("a schema serializes")
    });
    &SCHEMA
}

static STRUCTURAL: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(crd_schema())
        .expect("the derived CRD schema compiles")
});

static CEL: LazyLock<kube_cel::CompiledSchema> =
    LazyLock::new(|| kube_cel::compile_schema(crd_schema()));

/// Fields of `metadata` that a client may send (ObjectMeta).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Validates every document of one manifest file's text. The outer `Vec` has one entry per
/// document: `(document name or index, problems)`. A text with no document is an error.
pub fn validate_text(text: &str) -> Result<Vec<(String, Vec<Problem>)>, Problem> {
    if text.trim().is_empty() {
        return Err(Problem::new(
            "",
            "the file is empty; expected a DealerTenant manifest",
        ));
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        Problem::new(
            "",
            format!("not valid YAML: {}", first_line(&e.to_string())),
        )
    })?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.is_empty() {
        return Err(Problem::new(
            "",
            "the file holds no YAML document; expected a DealerTenant manifest",
        ));
    }
    let many = docs.len() > 1;
    Ok(docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let label = if many {
                format!("document {}", i + 1)
            } else {
                String::new()
            };
            (label, validate_value(doc))
        })
        .collect())
}

/// Validates one parsed manifest as the API server would validate a create.
pub fn validate_value(doc: &Value) -> Vec<Problem> {
    let Some(obj) = doc.as_object() else {
        return vec![Problem::new(
            "",
            format!(
                "expected a mapping (a Kubernetes object), found {}",
                kind_of(doc)
            ),
        )];
    };
    let want_api = format!("{GROUP}/{VERSION}");
    let mut problems = Vec::new();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == want_api => {}
        Some(v) => problems.push(Problem::new(
            "apiVersion",
            format!("\"{v}\" is not {want_api}"),
        )),
        None => problems.push(Problem::new(
            "apiVersion",
            format!("required field is missing; expected {want_api}"),
        )),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some("DealerTenant") => {}
        Some(k) => problems.push(Problem::new("kind", format!("\"{k}\" is not DealerTenant"))),
        None => problems.push(Problem::new(
            "kind",
            "required field is missing; expected DealerTenant",
        )),
    }
    if !problems.is_empty() {
        // Not a DealerTenant: its other fields mean something else entirely.
        return problems;
    }
    problems.extend(check_metadata(obj.get("metadata")));
    unknown_fields(crd_schema(), doc, "", &mut problems);
    problems.extend(structural(doc));
    // CEL needs a well-typed object; rules on a broken one only repeat the errors above.
    if problems.is_empty() {
        problems.extend(cel(doc));
    }
    problems
}

fn check_metadata(meta: Option<&Value>) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(meta) = meta else {
        return vec![Problem::new("metadata.name", "required field is missing")];
    };
    let Some(meta) = meta.as_object() else {
        return vec![Problem::new(
            "metadata",
            format!("expected a mapping, found {}", kind_of(meta)),
        )];
    };
    for key in meta.keys() {
        if !OBJECT_META_FIELDS.contains(&key.as_str()) {
            out.push(Problem::new(format!("metadata.{key}"), "unknown field"));
        }
    }
    if meta.contains_key("namespace") {
        out.push(Problem::new(
            "metadata.namespace",
            "DealerTenant is cluster-scoped; remove metadata.namespace",
        ));
    }
    match meta.get("name") {
        None if meta.contains_key("generateName") => out.push(Problem::new(
            "metadata.generateName",
            "generated names are not supported: every derived name must be predictable; set metadata.name",
        )),
        None => out.push(Problem::new("metadata.name", "required field is missing")),
        Some(Value::String(name)) => {
            if let Some(why) = name_problem(name) {
                out.push(Problem::new("metadata.name", why));
            }
        }
        Some(other) => out.push(Problem::new("metadata.name", format!("expected a string, found {}", kind_of(other)))),
    }
    for map in ["labels", "annotations"] {
        if let Some(v) = meta.get(map)
            && let Some(m) = v.as_object()
        {
            for (k, v) in m {
                if !v.is_string() {
                    out.push(Problem::new(
                        format!("metadata.{map}.{k}"),
                        format!("expected a string, found {}", kind_of(v)),
                    ));
                }
            }
        }
    }
    out
}

/// Why `name` cannot name a tenant, if it cannot: a DNS-1123 label of at most 40 characters.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "\"{name}\" is {} characters; at most {MAX_NAME_LEN} are allowed so that every derived name fits",
            name.chars().count()
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = name.as_bytes()[0] != b'-' && name.as_bytes()[name.len() - 1] != b'-';
    if !ok_chars || !ok_ends {
        return Some(format!(
            "\"{name}\" is not a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    None
}

/// Reports fields the schema does not know, as kubectl's strict field validation does,
/// and int-or-string values that are neither (a Kubernetes extension JSON Schema lacks).
fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<Problem>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            out.push(Problem::new(
                path,
                format!("expected an integer or a string, found {}", kind_of(value)),
            ));
        }
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if path == "metadata" {
                return; // checked against ObjectMeta by `check_metadata`
            }
            for (key, child) in map {
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue; // implicit in every CRD schema; checked above
                }
                let child_path = join(path, key);
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) | (None, Some(s)) => unknown_fields(s, child, &child_path, out),
                    (None, None)
                        if props.is_some()
                            || schema.get("type") == Some(&Value::from("object")) =>
                    {
                        out.push(Problem::new(child_path, "unknown field"))
                    }
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn structural(doc: &Value) -> Vec<Problem> {
    STRUCTURAL
        .iter_errors(doc)
        .filter_map(|e| {
            let path = pointer_to_path(e.instance_path().as_str());
            if path == "metadata" || path.starts_with("metadata.") || path.starts_with("status") {
                return None; // metadata is checked on its own; status is ignored on create
            }
            let message = match e.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let field = property.as_str().unwrap_or_default();
                    return Some(Problem::new(
                        join(&path, field),
                        "required field is missing",
                    ));
                }
                jsonschema::error::ValidationErrorKind::Enum { .. } if path == "spec.region" => {
                    match e.instance().as_str() {
                        Some(s) => regions::region_error(s).unwrap_or_default(),
                        None => format!(
                            "expected a region ID string, found {}",
                            kind_of(e.instance())
                        ),
                    }
                }
                jsonschema::error::ValidationErrorKind::Pattern { pattern }
                    if pattern == QUANTITY_PATTERN =>
                {
                    format!(
                        "{} is not a Kubernetes quantity (for example 250m, 2, 512Mi, 1Gi)",
                        e.instance()
                    )
                }
                _ => one_line(&e.to_string()),
            };
            Some(Problem::new(path, message))
        })
        .collect()
}

fn cel(doc: &Value) -> Vec<Problem> {
    let validator = kube_cel::Validator::new();
    match validator.validate_compiled(&CEL, doc, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .filter(|e| !e.rule.contains("oldSelf"))
            .map(|e| {
                // The root rule is about metadata.name; say so instead of "".
                let path = if e.field_path.is_empty() && e.rule.contains("metadata.name") {
                    "metadata.name".to_string()
                } else {
                    e.field_path.clone()
                };
                Problem::new(path, one_line(&e.message))
            })
            .collect(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `/spec/server/replicas` -> `spec.server.replicas`; `/a/0` -> `a[0]`.
fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn first_line(s: &str) -> String {
    one_line(
        s.lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: "),
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(name: &str, region: &str) -> Value {
        json!({
            "apiVersion": "dealerdesk.de/v1alpha1",
            "kind": "DealerTenant",
            "metadata": {"name": name},
            "spec": {"displayName": "Autohaus Müller GmbH & Co. KG", "region": region},
        })
    }

    #[test]
    fn a_good_manifest_has_no_problem() {
        assert_eq!(
            validate_value(&doc("autohaus-mueller", "europe-west3")),
            vec![]
        );
    }

    #[test]
    fn the_crd_cel_rules_themselves_catch_bad_names() {
        // Bypass our own name check: the CRD's root CEL rule must refuse the name too,
        // so that the API server refuses it even when `validate` is not used.
        let long = "a".repeat(41);
        let problems = cel(&doc(&long, "europe-west3"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "metadata.name");
        assert!(problems[0].message.contains("DNS-1123"));
        assert!(cel(&doc("Bad_Name", "europe-west3")).len() == 1);
        assert!(cel(&doc("-bad", "europe-west3")).len() == 1);
        assert!(cel(&doc(&"a".repeat(40), "europe-west3")).is_empty());
    }

    #[test]
    fn the_region_transition_rule_is_in_the_schema() {
        let v = kube_cel::Validator::new();
        let old = doc("a", "europe-west3");
        let new = doc("a", "europe-west1");
        let errors = v.validate_compiled(&CEL, &new, Some(&old)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("region is immutable")),
            "{errors:?}"
        );
        assert!(v.validate_compiled(&CEL, &old, Some(&old)).is_ok());
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let mut d = doc("ok", "europe-west2");
        d["spec"]["server"] = json!({"replicas": 42, "colour": "red"});
        let problems = validate_value(&d);
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"spec.region"), "{paths:?}");
        assert!(paths.contains(&"spec.server.replicas"), "{paths:?}");
        assert!(paths.contains(&"spec.server.colour"), "{paths:?}");
    }

    #[test]
    fn pointers_become_dotted_paths() {
        assert_eq!(
            pointer_to_path("/spec/server/replicas"),
            "spec.server.replicas"
        );
        assert_eq!(pointer_to_path("/a/0/b"), "a[0].b");
        assert_eq!(pointer_to_path(""), "");
    }
}
