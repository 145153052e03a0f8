//! The one list of Google Cloud regions a tenant may live in.
//!
//! Source: Google Cloud "Geography and regions" / "Cloud locations"
//! (<https://cloud.google.com/about/locations>), regions whose data centres lie in a
//! member state of the European Union. Deliberately absent: `europe-west2` (London,
//! United Kingdom) and `europe-west6` (Zurich, Switzerland) — European, but not EU —
//! and every multi-region (`EU`, `eur4`, ...) and zone (`europe-west3-a`).
//!
//! The CRD's `spec.region` enum, `validate`, the admission policy and every provider's
//! pre-create check are generated from or call into this table, so adding a region is a
//! one-line change here.

/// A Google Cloud region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Lowercase region ID, e.g. `europe-west3`.
    pub id: &'static str,
    /// Where the data centre is.
    pub city: &'static str,
    /// Country name, for messages.
    pub country: &'static str,
    /// ISO 3166-1 alpha-2 country code.
    pub country_code: &'static str,
}

const fn r(
    id: &'static str,
    city: &'static str,
    country: &'static str,
    country_code: &'static str,
) -> RegionInfo {
    RegionInfo {
        id,
        city,
        country,
        country_code,
    }
}

/// Regions in EU member states: the only places a tenant may be hosted.
pub const EU_REGIONS: &[RegionInfo] = &[
    r("europe-central2", "Warsaw", "Poland", "PL"),
    r("europe-north1", "Hamina", "Finland", "FI"),
    r("europe-north2", "Stockholm", "Sweden", "SE"),
    r("europe-southwest1", "Madrid", "Spain", "ES"),
    r("europe-west1", "St. Ghislain", "Belgium", "BE"),
    r("europe-west3", "Frankfurt", "Germany", "DE"),
    r("europe-west4", "Eemshaven", "Netherlands", "NL"),
    r("europe-west8", "Milan", "Italy", "IT"),
    r("europe-west9", "Paris", "France", "FR"),
    r("europe-west10", "Berlin", "Germany", "DE"),
    r("europe-west12", "Turin", "Italy", "IT"),
];

/// Regions that exist but are outside the EU. Only used to say *why* a region is refused.
const NON_EU_REGIONS: &[RegionInfo] = &[
    r("europe-west2", "London", "United Kingdom", "GB"),
    r("europe-west6", "Zurich", "Switzerland", "CH"),
    r("me-central1", "Doha", "Qatar", "QA"),
    r("me-central2", "Dammam", "Saudi Arabia", "SA"),
    r("me-west1", "Tel Aviv", "Israel", "IL"),
    r("africa-south1", "Johannesburg", "South Africa", "ZA"),
    r("us-central1", "Council Bluffs, Iowa", "United States", "US"),
    r(
        "us-east1",
        "Moncks Corner, South Carolina",
        "United States",
        "US",
    ),
    r("us-east4", "Ashburn, Virginia", "United States", "US"),
    r("us-east5", "Columbus, Ohio", "United States", "US"),
    r("us-south1", "Dallas, Texas", "United States", "US"),
    r("us-west1", "The Dalles, Oregon", "United States", "US"),
    r("us-west2", "Los Angeles, California", "United States", "US"),
    r("us-west3", "Salt Lake City, Utah", "United States", "US"),
    r("us-west4", "Las Vegas, Nevada", "United States", "US"),
    r("northamerica-northeast1", "Montréal", "Canada", "CA"),
    r("northamerica-northeast2", "Toronto", "Canada", "CA"),
    r("northamerica-south1", "Querétaro", "Mexico", "MX"),
    r("southamerica-east1", "São Paulo", "Brazil", "BR"),
    r("southamerica-west1", "Santiago", "Chile", "CL"),
    r("asia-east1", "Changhua County", "Taiwan", "TW"),
    r("asia-east2", "Hong Kong", "Hong Kong", "HK"),
    r("asia-northeast1", "Tokyo", "Japan", "JP"),
    r("asia-northeast2", "Osaka", "Japan", "JP"),
    r("asia-northeast3", "Seoul", "South Korea", "KR"),
    r("asia-south1", "Mumbai", "India", "IN"),
    r("asia-south2", "Delhi", "India", "IN"),
    r("asia-southeast1", "Jurong West", "Singapore", "SG"),
    r("asia-southeast2", "Jakarta", "Indonesia", "ID"),
    r("australia-southeast1", "Sydney", "Australia", "AU"),
    r("australia-southeast2", "Melbourne", "Australia", "AU"),
];

/// Multi-region and dual-region location names of Cloud Storage / Cloud SQL.
const MULTI_REGIONS: &[&str] = &["eu", "us", "asia", "eur4", "eur5", "eur7", "eur8", "nam4"];

/// The EU region with this exact (lowercase) ID.
pub fn eu_region(id: &str) -> Option<&'static RegionInfo> {
    EU_REGIONS.iter().find(|r| r.id == id)
}

/// True when `id` is exactly an EU region ID.
pub fn is_eu_region(id: &str) -> bool {
    eu_region(id).is_some()
}

/// Region IDs, in list order, for schemas and messages.
pub fn eu_region_ids() -> impl Iterator<Item = &'static str> {
    EU_REGIONS.iter().map(|r| r.id)
}

/// Why `id` is not an EU region, in one human sentence fragment such as
/// `"europe-west2" is not an EU region (London, United Kingdom)`.
/// `None` when it is one.
pub fn why_not_eu(id: &str) -> Option<String> {
    if is_eu_region(id) {
        return None;
    }
    let lower = id.to_ascii_lowercase();
    let detail = if lower != id && is_eu_region(&lower) {
        format!("region IDs are lowercase; did you mean \"{lower}\"?")
    } else if let Some(known) = NON_EU_REGIONS.iter().find(|r| r.id == lower) {
        format!("{}, {}", known.city, known.country)
    } else if MULTI_REGIONS.contains(&lower.as_str()) {
        "a multi-region, not a single region".to_string()
    } else if let Some((region, zone)) = lower.rsplit_once('-')
        && zone.len() == 1
        && (is_eu_region(region) || NON_EU_REGIONS.iter().any(|r| r.id == region))
    {
        format!("a zone of {region}, not a region")
    } else {
        "not a known Google Cloud region".to_string()
    };
    Some(format!("\"{id}\" is not an EU region ({detail})"))
}

/// `why_not_eu` plus the list of allowed regions, the message `validate` prints.
pub fn region_error(id: &str) -> Option<String> {
    why_not_eu(id).map(|why| {
        format!(
            "{why}; allowed: {}",
            eu_region_ids().collect::<Vec<_>>().join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_eu_region_is_lowercase_unique_and_in_the_union() {
        const EU_MEMBERS: &[&str] = &[
            "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
            "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
        ];
        let mut seen = std::collections::HashSet::new();
        for r in EU_REGIONS {
            assert_eq!(r.id, r.id.to_ascii_lowercase());
            assert!(seen.insert(r.id), "duplicate {}", r.id);
            assert!(EU_MEMBERS.contains(&r.country_code), "{} not in EU", r.id);
            assert!(NON_EU_REGIONS.iter().all(|n| n.id != r.id));
        }
        for n in NON_EU_REGIONS {
            assert!(!EU_MEMBERS.contains(&n.country_code), "{} is EU", n.id);
        }
    }

    #[test]
    fn london_zurich_multi_regions_and_zones_are_refused() {
        assert_eq!(
            why_not_eu("europe-west2").unwrap(),
            "\"europe-west2\" is not an EU region (London, United Kingdom)"
        );
        assert!(
            why_not_eu("europe-west6")
                .unwrap()
                .contains("Zurich, Switzerland")
        );
        assert!(why_not_eu("eu").unwrap().contains("multi-region"));
        assert!(why_not_eu("EU").unwrap().contains("multi-region"));
        assert!(
            why_not_eu("europe-west3-a")
                .unwrap()
                .contains("zone of europe-west3")
        );
        assert!(why_not_eu("Europe-West3").unwrap().contains("lowercase"));
        assert!(why_not_eu("mars-north1").unwrap().contains("not a known"));
        assert!(why_not_eu("").is_some());
    }

    #[test]
    fn eu_regions_are_accepted() {
        for id in [
            "europe-west3",
            "europe-west10",
            "europe-north2",
            "europe-central2",
        ] {
            assert!(is_eu_region(id), "{id}");
            assert_eq!(why_not_eu(id), None);
        }
        assert_eq!(eu_region("europe-west3").unwrap().country_code, "DE");
    }

    #[test]
    fn region_error_lists_the_allowed_regions() {
        let msg = region_error("europe-west2").unwrap();
        assert!(msg.starts_with("\"europe-west2\" is not an EU region (London, United Kingdom); allowed: europe-central2, "));
        assert!(msg.ends_with("europe-west12"));
    }
}
