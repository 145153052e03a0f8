//! The `processors` report: which processors hold which tenant's data, as a table, as
//! Markdown fit for a public sub-processor page, or as JSON.

use serde::Serialize;

use super::TenantProcessor;

/// One tenant's processors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    pub processors: Vec<TenantProcessor>,
}

/// Country names for the codes the register uses (ISO 3166-1 alpha-2).
pub fn country_name(code: &str) -> &str {
    const NAMES: &[(&str, &str)] = &[
        ("AT", "Austria"),
        ("BE", "Belgium"),
        ("BG", "Bulgaria"),
        ("CH", "Switzerland"),
        ("CY", "Cyprus"),
        ("CZ", "Czechia"),
        ("DE", "Germany"),
        ("DK", "Denmark"),
        ("EE", "Estonia"),
        ("ES", "Spain"),
        ("FI", "Finland"),
        ("FR", "France"),
        ("GB", "United Kingdom"),
        ("GR", "Greece"),
        ("HR", "Croatia"),
        ("HU", "Hungary"),
        ("IE", "Ireland"),
        ("IS", "Iceland"),
        ("IT", "Italy"),
        ("LI", "Liechtenstein"),
        ("LT", "Lithuania"),
        ("LU", "Luxembourg"),
        ("LV", "Latvia"),
        ("MT", "Malta"),
        ("NL", "Netherlands"),
        ("NO", "Norway"),
        ("PL", "Poland"),
        ("PT", "Portugal"),
        ("RO", "Romania"),
        ("SE", "Sweden"),
        ("SI", "Slovenia"),
        ("SK", "Slovakia"),
        ("US", "United States"),
        ("ZZ", "unknown"),
    ];
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or(code)
}

/// JSON: `[{"tenant": ..., "processors": [...]}]`.
pub fn json(reports: &[TenantReport]) -> String {
    serde_json::to_string_pretty(reports).expect("a report serializes")
}

/// An aligned text table, one row per tenant and processor.
pub fn table(reports: &[TenantReport]) -> String {
    let mut rows = vec![
        [
            "TENANT",
            "PROCESSOR",
            "ENTITY",
            "COUNTRY",
            "THIRD-COUNTRY",
            "SAFEGUARD",
            "HOLDS",
        ]
        .map(String::from),
    ];
    for r in reports {
        for p in &r.processors {
            rows.push([
                r.tenant.clone(),
                p.name.clone(),
                p.entity.clone(),
                p.country.clone(),
                if p.third_country { "yes" } else { "no" }.into(),
                p.safeguard.clone(),
                p.components.join(","),
            ]);
        }
    }
    let mut out = String::new();
    out.push_str(&crate::table::aligned(&rows));
    out
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn location(p: &TenantProcessor) -> String {
    format!("{} ({})", country_name(&p.country), p.country)
}

fn safeguards(p: &TenantProcessor) -> String {
    let mut s = if p.third_country {
        format!("Third country. {}", p.safeguard)
    } else {
        p.safeguard.clone()
    };
    if let Some(r) = &p.retention {
        s.push_str(&format!("; {r}"));
    }
    s
}

/// Markdown that reads like a public sub-processor page: all tenants first, then each.
pub fn markdown(reports: &[TenantReport]) -> String {
    let mut out = String::from("# Sub-processors\n\n");
    out.push_str(
        "These processors handle customer personal data on our behalf. Hosting, databases and \
         file storage run on Google Cloud in EU regions only.\n\n",
    );
    // Aggregate: each processor once, with how many tenants it serves.
    let mut all: Vec<(TenantProcessor, usize)> = Vec::new();
    for r in reports {
        for p in &r.processors {
            match all.iter_mut().find(|(q, _)| q.id == p.id) {
                Some((q, n)) => {
                    *n += 1;
                    for c in &p.components {
                        if !q.components.contains(c) {
                            q.components.push(c.clone());
                        }
                    }
                }
                None => all.push((p.clone(), 1)),
            }
        }
    }
    out.push_str(&format!("## All customers ({} tenants)\n\n", reports.len()));
    out.push_str("| Processor | Legal entity | Location | Purpose | Safeguards | Customers |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for (p, n) in &all {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            cell(&p.name),
            cell(&p.entity),
            cell(&location(p)),
            cell(&p.purpose),
            cell(&safeguards(p)),
            n
        ));
    }
    let third: Vec<&TenantProcessor> = all
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.third_country)
        .collect();
    out.push('\n');
    if third.is_empty() {
        out.push_str("No personal data is transferred to a third country.\n");
    } else {
        for p in third {
            out.push_str(&format!(
                "Transfers to {} ({}, {}) rely on {}.\n",
                p.name,
                p.entity,
                country_name(&p.country),
                p.safeguard
            ));
        }
    }
    out.push_str("\n## Per customer\n");
    for r in reports {
        out.push_str(&format!("\n### {}\n\n", r.tenant));
        out.push_str("| Processor | Legal entity | Location | Purpose | Safeguards |\n|---|---|---|---|---|\n");
        for p in &r.processors {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&p.name),
                cell(&p.entity),
                cell(&location(p)),
                cell(&p.purpose),
                cell(&safeguards(p))
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::{builtin, for_tenant};

    fn reports() -> Vec<TenantReport> {
        let catalog = builtin();
        let with_email = for_tenant(
            &[
                ("hosting".into(), "google-cloud".into()),
                ("email".into(), "postmark".into()),
                ("search".into(), "elastic".into()),
            ],
            &catalog,
        );
        let without = for_tenant(&[("hosting".into(), "google-cloud".into())], &catalog);
        vec![
            TenantReport {
                tenant: "acme".into(),
                processors: with_email,
            },
            TenantReport {
                tenant: "dupont".into(),
                processors: without,
            },
        ]
    }

    #[test]
    fn markdown_reads_like_a_sub_processor_page() {
        let md = markdown(&reports());
        assert!(md.starts_with("# Sub-processors\n"));
        assert!(md.contains("## All customers (2 tenants)"));
        assert!(md.contains("| Google Cloud | Google Cloud EMEA Ltd. | Ireland (IE) | hosting, database and file storage |"));
        assert!(md.contains("| Postmark | ActiveCampaign, LLC | United States (US) | sending and receiving email | Third country. EU standard contractual clauses; email content kept 45 days"));
        assert!(md.contains("Transfers to Postmark (ActiveCampaign, LLC, United States) rely on EU standard contractual clauses."));
        assert!(md.contains("### dupont"));
        // Google Cloud serves both customers.
        assert!(
            md.lines()
                .any(|l| l.starts_with("| Google Cloud ") && l.ends_with("| 2 |"))
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&json(&reports())).unwrap();
        let p = &v[0]["processors"][1];
        assert_eq!(v[0]["tenant"], "acme");
        assert_eq!(p["name"], "Postmark");
        assert_eq!(p["entity"], "ActiveCampaign, LLC");
        assert_eq!(p["country"], "US");
        assert_eq!(p["thirdCountry"], true);
        assert!(p["purpose"].is_string() && p["safeguard"].is_string());
        assert!(
            v[1]["processors"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["thirdCountry"] == false)
        );
    }

    #[test]
    fn table_has_a_row_per_tenant_and_processor() {
        let t = table(&reports());
        assert_eq!(t.lines().count(), 1 + 3 + 1);
        assert!(t.lines().next().unwrap().starts_with("TENANT"));
    }
}
