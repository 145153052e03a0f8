//! Layers 3 and 4 of data residency: before every external create the provider checks the
//! location it is about to send (nothing leaves on a violation), and after every create and
//! on every resync it checks the location the service reports.

use super::ProviderError;
use crate::api::regions;

/// Refuses a location outside the EU. Call it before sending a create.
pub fn check_before_create(resource: &str, location: &str) -> Result<(), ProviderError> {
    if regions::is_eu_region(location) {
        Ok(())
    } else {
        Err(ProviderError::Residency {
            resource: resource.to_string(),
            location: location.to_string(),
        })
    }
}

/// Checks a location reported by a service. Services spell locations differently (GCS
/// answers `EUROPE-WEST3`), so the comparison ignores case.
pub fn check_reported(resource: &str, reported: &str, expected: &str) -> Result<(), ProviderError> {
    let reported_lc = reported.to_ascii_lowercase();
    if regions::is_eu_region(&reported_lc) && reported_lc == expected.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(ProviderError::Residency {
            resource: resource.to_string(),
            location: reported.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_eu_regions_pass() {
        assert!(check_before_create("bucket b", "europe-west3").is_ok());
        assert_eq!(
            check_before_create("bucket b", "us-central1")
                .unwrap_err()
                .reason(),
            "ResidencyViolation"
        );
        assert!(check_before_create("bucket b", "EU").is_err());
        assert!(check_reported("bucket b", "EUROPE-WEST3", "europe-west3").is_ok());
        assert!(check_reported("bucket b", "EUROPE-WEST1", "europe-west3").is_err());
        assert!(check_reported("bucket b", "US", "europe-west3").is_err());
    }
}
