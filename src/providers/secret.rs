//! Secret contents in memory. `Debug` shows the keys only, so a stray `{:?}` in a log line
//! cannot leak a credential.

use std::collections::BTreeMap;

/// Environment variable name -> value, as stored in a component's Secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, String>);

impl SecretData {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }

    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A strong random password: 32 characters from a 62-letter alphabet (about 190 bits),
/// from the operating system's generator. Only letters and digits, so it needs no quoting
/// in connection strings.
pub fn random_password() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_keys_not_values() {
        let s = SecretData::new().with("PASSWORD", "hunter2");
        let shown = format!("{s:?}");
        assert!(shown.contains("PASSWORD"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn passwords_are_long_and_different() {
        let a = random_password();
        let b = random_password();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
