//! CNI spec versions: which we speak, and how they compare.

use crate::error::{Error, Result};

/// Every version whose configs we accept and whose results we print.
pub const SUPPORTED: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version we speak.
pub const CURRENT: &str = "1.1.0";

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// Parse a config's `cniVersion`; an empty one means 0.1.0, as in the reference library.
    pub fn of_config(s: &str) -> Result<Version> {
        let s = if s.is_empty() { "0.1.0" } else { s };
        if !SUPPORTED.contains(&s) {
            return Err(Error::incompatible_version(format!(
                "incompatible CNI versions: config is \"{s}\", plugin supports {SUPPORTED:?}"
            )));
        }
        Ok(Version::parse(s).expect("supported versions parse"))
    }

    pub fn at_least(self, s: &str) -> bool {
        self >= Version::parse(s).expect("valid version literal")
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The VERSION verb's output.
pub fn version_json(config_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": if config_version.is_empty() { CURRENT } else { config_version },
        "supportedVersions": SUPPORTED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare() {
        assert!(Version::parse("1.1.0").unwrap() > Version::parse("1.0.0").unwrap());
        assert!(Version::parse("0.4.0").unwrap().at_least("0.4.0"));
        assert!(!Version::parse("0.3.1").unwrap().at_least("0.4.0"));
        assert!(Version::parse("1.0").is_none());
        assert!(Version::of_config("9.9.9").is_err());
        assert_eq!(Version::of_config("").unwrap(), Version(0, 1, 0));
    }
}
