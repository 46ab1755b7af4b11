//! Validated names: run names, identities, method names — anything that may become a path.
//!
//! A run name is joined under `runs/`, a method name under the bench folder, an identity may
//! name a folder of references; `--name ../escape` used to write outside `runs/`. A [`Name`] is
//! one path component by construction, so joining it never leaves the folder it is joined to.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest name, in bytes (most file systems allow 255 per component).
pub const MAX_NAME_BYTES: usize = 255;

/// A name that is safe as one path component: not empty, at most [`MAX_NAME_BYTES`] bytes, no
/// `/` or `\`, no `..` anywhere, not `.`, no leading `.` (hidden files, and the run layout's
/// own `.tmp` names), no control characters, no leading or trailing whitespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a text is not a [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{shown}` is not a valid name: {why} (it becomes a folder name: a plain name without `/`, `\\`, `..`, a leading `.` or control characters)"
)]
pub struct NameError {
    shown: String,
    why: &'static str,
}

impl Name {
    /// Checks `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        match problem(&s) {
            None => Ok(Name(s)),
            Some(why) => Err(NameError {
                shown: s.escape_debug().to_string(),
                why,
            }),
        }
    }

    /// Whether `s` would be accepted.
    pub fn is_valid(s: &str) -> bool {
        problem(s).is_none()
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > MAX_NAME_BYTES {
        return Some("it is longer than 255 bytes");
    }
    if s.contains(['/', '\\']) {
        return Some("it contains a path separator");
    }
    if s.contains("..") {
        return Some("it contains `..`");
    }
    if s.starts_with('.') {
        return Some("it starts with `.`");
    }
    if s.chars().any(char::is_control) {
        return Some("it contains a control character");
    }
    if s.trim() != s {
        return Some("it starts or ends with whitespace");
    }
    None
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Name::new(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<Path> for Name {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_path_tricks_do_not() {
        for ok in ["demo", "run-1_2.v3", "Jane Doe", "Zoë", "a.b"] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../escape",
            "a/b",
            "a\\b",
            "x..y",
            ".hidden",
            "tab\there",
            "nul\0",
            " padded",
            "/abs",
        ] {
            let e = Name::new(bad).unwrap_err().to_string();
            assert!(e.contains("not a valid name"), "{bad}: {e}");
        }
        assert!(Name::new("x".repeat(256)).is_err());
        let e = Name::new("../escape").unwrap_err().to_string();
        assert!(e.contains("path separator"), "{e}");
    }

    #[test]
    fn a_name_joined_stays_one_component() {
        let n: Name = "demo".parse().unwrap();
        let p = Path::new("runs").join(&n);
        assert_eq!(p.components().count(), 2);
    }
}
