//! The configuration reference: every key of the operator configuration, with its type,
//! default and meaning, generated from the configuration types (their JSON schema and doc
//! comments), so it cannot drift from the code. `config-reference` prints it; the README
//! holds a copy that a test keeps current.

use serde_json::Value;

use crate::config::OperatorConfig;

/// The reference as a Markdown table.
pub fn markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(OperatorConfig))
        .expect("the configuration schema serializes");
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let defaults = serde_json::to_value(OperatorConfig::default()).unwrap_or(Value::Null);
    let mut rows = Vec::new();
    walk(&schema, &defs, "", &defaults, &mut rows);
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (key, type_, default, meaning) in rows {
        out.push_str(&format!("| `{key}` | {type_} | {default} | {meaning} |\n"));
    }
    out
}

type Row = (String, String, String, String);

fn resolve<'a>(s: &'a Value, defs: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .and_then(|name| defs.get(name))
            .unwrap_or(s),
        None => s,
    }
}

fn walk(schema: &Value, defs: &Value, prefix: &str, defaults: &Value, rows: &mut Vec<Row>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, prop) in props {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let target = resolve(prop, defs);
        let default = prop
            .get("default")
            .or_else(|| defaults.get(key))
            .cloned()
            .unwrap_or(Value::Null);
        let meaning = one_line(
            prop.get("description")
                .or_else(|| target.get("description"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        let nested = target.get("properties").is_some() && !is_kubernetes(prop);
        if nested {
            rows.push((path.clone(), "object".into(), String::new(), meaning));
            walk(target, defs, &path, &default, rows);
        } else {
            rows.push((path, type_of(prop, target, defs), show(&default), meaning));
        }
    }
}

fn is_kubernetes(prop: &Value) -> bool {
    prop.get("$ref")
        .and_then(Value::as_str)
        .is_some_and(|r| r.contains("io.k8s."))
}

fn type_of(prop: &Value, target: &Value, defs: &Value) -> String {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str)
        && r.contains("io.k8s.")
    {
        return r.rsplit('.').next().unwrap_or(r).to_string();
    }
    let values: Vec<String> = target
        .get("enum")
        .and_then(Value::as_array)
        .map(|v| v.iter().map(show).collect())
        .or_else(|| {
            target.get("oneOf").and_then(Value::as_array).map(|v| {
                v.iter()
                    .filter_map(|o| o.get("const").or_else(|| o.get("enum")?.get(0)))
                    .map(show)
                    .collect()
            })
        })
        .unwrap_or_default();
    if !values.is_empty() {
        return values.join(" \\| ");
    }
    let types: Vec<&str> = match target.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let optional = types.contains(&"null");
    let base = types
        .iter()
        .find(|t| **t != "null")
        .copied()
        .unwrap_or("any");
    let text = match base {
        "array" => {
            let item = target
                .get("items")
                .map(|i| resolve(i, defs))
                .map(|i| {
                    i.get("title")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| type_of(i, i, defs))
                })
                .unwrap_or_else(|| "any".into());
            format!("list of {item}")
        }
        "object" => "map".into(),
        other => other.into(),
    };
    if optional {
        format!("{text} (optional)")
    } else {
        text
    }
}

fn show(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        "see `default-config`".into()
    } else {
        format!("`{}`", text.replace('|', "\\|"))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_top_level_key_is_documented_with_its_default() {
        let md = markdown();
        for key in [
            "`operatorNamespace`",
            "`resyncSeconds`",
            "`thirdCountryProcessors`",
            "`database.provider`",
            "`database.postgres.host`",
        ] {
            assert!(md.contains(key), "{key} missing:\n{md}");
        }
        let resync = md
            .lines()
            .find(|l| l.starts_with("| `resyncSeconds`"))
            .unwrap();
        assert!(
            resync.contains("integer") && resync.contains("`600`"),
            "{resync}"
        );
        let policy = md
            .lines()
            .find(|l| l.starts_with("| `thirdCountryProcessors`"))
            .unwrap();
        assert!(policy.contains("`allow` \\| `deny`"), "{policy}");
    }
}
