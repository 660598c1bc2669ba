//! Templated path segments: `{id}`, `{id}.json`, `v{version}`.

/// A segment with one `{param}` between a literal prefix and suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    prefix: String,
    suffix: String,
}

impl Pattern {
    /// `None` for a literal segment.
    pub(super) fn parse(seg: &str) -> Option<Self> {
        let open = seg.find('{')?;
        let close = seg[open..].find('}')? + open;
        Some(Pattern { prefix: seg[..open].to_owned(), suffix: seg[close + 1..].to_owned() })
    }

    /// Two templates that accept the same names share one node.
    pub(super) fn same_shape(&self, other: &Pattern) -> bool {
        self.prefix == other.prefix && self.suffix == other.suffix
    }

    /// The name for a parameter value (`{id}.json` with `42` → `42.json`).
    pub(super) fn render(&self, value: &str) -> String {
        format!("{}{value}{}", self.prefix, self.suffix)
    }

    /// Whether `name` fits, with a non-empty value for the parameter. The segment `.` or
    /// `..` never fits: the name `..d` strips to `.` and `..?q` carries a query on `..`,
    /// and such a segment would step out of the path template upstream.
    pub(super) fn matches(&self, name: &str) -> bool {
        name != "."
            && name != ".."
            && name.len() > self.prefix.len() + self.suffix.len()
            && name.starts_with(&self.prefix)
            && name.ends_with(&self.suffix)
    }
}
