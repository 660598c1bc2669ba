//! The canonical virtual path: one validated form used by policy and execution alike.
//!
//! A virtual path names a node of the mount: `/` (the root), `/api.openai.com` (a
//! service) or `/api.openai.com/models.d/gpt-4o` (a node inside a service). Parsing is
//! deterministic: empty segments (`//`, a trailing `/`) are dropped, `.` and `..` are
//! refused rather than resolved, NUL and over-long names are refused. A single name
//! ([`Name::parse`]) is never empty.
//!
//! Names are the *escaped* form of raw values: an id that contains `/` is shown as
//! `%2F` and a literal `%` as `%25`, so every raw value has exactly one name and back.

use std::fmt;

/// Longest name component, in bytes, as on Linux (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest whole path, in bytes, as on Linux (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// Why a path or name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `.`, `..` or empty component (an empty name would vanish from the path's text).
    #[error("path: {} components are not allowed", if .0.is_empty() { "empty".to_owned() } else { format!("`{}`", .0) })]
    DotSegment(String),
    /// A NUL byte or a control character.
    #[error("path: names must not contain NUL or control characters")]
    ControlChar,
    /// A component longer than [`NAME_MAX`].
    #[error("path: a name is {0} bytes long, the limit is {NAME_MAX}")]
    NameTooLong(usize),
    /// A path longer than [`PATH_MAX`].
    #[error("path: the path is {0} bytes long, the limit is {PATH_MAX}")]
    PathTooLong(usize),
}

/// One validated name component, as shown in a listing (escaped form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Validates one component as the kernel or an API client hands it over.
    /// An empty name, `.` and `..` are refused.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() || s == "." || s == ".." {
            return Err(PathError::DotSegment(s.to_owned()));
        }
        if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(PathError::ControlChar);
        }
        // A `/` can only arrive here through an API call; names never contain one. The
        // limit applies to the escaped form, the one that is shown and handed back.
        let name = if s.contains('/') { escape(s) } else { s.to_owned() };
        if name.len() > NAME_MAX {
            return Err(PathError::NameTooLong(name.len()));
        }
        Ok(Name(name))
    }

    /// The name for a raw value (an id from an API response): `/` and `%` escaped.
    pub fn from_raw(raw: &str) -> Result<Self, PathError> {
        Name::parse(&escape(raw))
    }

    /// The escaped form, as shown in a listing.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The raw value this name stands for (`%2F` → `/`, `%25` → `%`).
    pub fn raw(&self) -> String {
        unescape(&self.0)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.len() >= 3 && tail[1..3].eq_ignore_ascii_case("2F") {
            out.push('/');
            rest = &tail[3..];
        } else if tail.len() >= 3 && &tail[1..3] == "25" {
            out.push('%');
            rest = &tail[3..];
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A canonical path from the mount root: zero or more validated names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct VPath {
    names: Vec<Name>,
}

impl VPath {
    /// The mount root.
    pub fn root() -> Self {
        VPath::default()
    }

    /// Parses a `/`-separated path; empty components are dropped. Both the text given
    /// and the canonical form (which may be one byte longer: it starts with `/`) must fit
    /// in [`PATH_MAX`], so that a parsed path's text always parses again.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.len() > PATH_MAX {
            return Err(PathError::PathTooLong(s.len()));
        }
        let names = s.split('/').filter(|c| !c.is_empty()).map(Name::parse).collect::<Result<Vec<_>, _>>()?;
        let canonical: usize = names.iter().map(|n| n.0.len() + 1).sum();
        if canonical > PATH_MAX {
            return Err(PathError::PathTooLong(canonical));
        }
        Ok(VPath { names })
    }

    /// This path with one more component.
    pub fn join(&self, name: Name) -> Self {
        let mut names = self.names.clone();
        names.push(name);
        VPath { names }
    }

    /// The components, from the root.
    pub fn names(&self) -> &[Name] {
        &self.names
    }

    /// The service this path is inside (its first component), if any.
    pub fn service(&self) -> Option<&Name> {
        self.names.first()
    }

    /// The components inside the service (all but the first).
    pub fn inside_service(&self) -> &[Name] {
        self.names.get(1..).unwrap_or(&[])
    }

    /// Whether this is the mount root.
    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.names.is_empty() {
            return f.write_str("/");
        }
        for n in &self.names {
            write!(f, "/{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_drops_empty_segments() {
        let p = VPath::parse("//api.openai.com//models/").unwrap();
        assert_eq!(p.to_string(), "/api.openai.com/models");
        assert_eq!(p.service().unwrap().as_str(), "api.openai.com");
        assert_eq!(p.inside_service().len(), 1);
        assert!(VPath::parse("/").unwrap().is_root());
    }

    #[test]
    fn dot_segments_nul_and_long_names_are_refused() {
        assert!(matches!(VPath::parse("/a/../b"), Err(PathError::DotSegment(_))));
        assert!(matches!(VPath::parse("/a/./b"), Err(PathError::DotSegment(_))));
        assert_eq!(VPath::parse("/a\0b"), Err(PathError::ControlChar));
        assert_eq!(VPath::parse(&"x".repeat(256)), Err(PathError::NameTooLong(256)));
        assert!(VPath::parse(&"/x".repeat(2100)).is_err());
    }

    #[test]
    fn raw_values_round_trip_through_names() {
        for raw in ["a/b", "100%", "a%2Fb", "plain", "%25/"] {
            let n = Name::from_raw(raw).unwrap();
            assert!(!n.as_str().contains('/'));
            assert_eq!(n.raw(), raw);
        }
    }
}
