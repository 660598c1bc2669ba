//! Property tests for the canonical path type (`agentfs::path::{Name, VPath}`).
//!
//! DESIGN: names are validated once into a canonical form shared by policy checks and
//! execution — no `..`, no NUL, `/` inside an id escaped as `%2F`, long names refused.
//! These properties hold that form up against arbitrary input:
//! - a raw value (an id from an API response) has exactly one name, and back;
//! - a parsed path's canonical text parses to the same path (a fixed point);
//! - whatever the input, no parsed name is `.`/`..`, holds `/`, NUL or a control
//!   character, or is longer than `NAME_MAX`;
//! - parsing is deterministic, errors included.
//!
//! Case counts are modest (512) so that `cargo test -p agentfs` stays fast.

#![allow(clippy::unwrap_used)]

use agentfs::path::{Name, PathError, VPath, NAME_MAX, PATH_MAX};
use proptest::prelude::*;

/// The bytes a raw value takes once escaped (`/` and `%` become three bytes).
fn escaped_len(raw: &str) -> usize {
    raw.len() + 2 * raw.chars().filter(|c| matches!(c, '/' | '%')).count()
}

fn is_control(c: char) -> bool {
    (c as u32) < 0x20 || c == '\u{7f}'
}

/// One character of a raw value: the ones the escaping cares about, often, and any
/// other non-control character.
fn raw_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec!['/', '%', '2', 'F', 'f', '5', '.', 'a', 'é', '?', ' ']),
        2 => any::<char>().prop_map(|c| if is_control(c) { 'x' } else { c }),
    ]
}

/// A raw value without NUL or control characters, at most 200 bytes.
fn raw_value() -> impl Strategy<Value = String> {
    prop::collection::vec(raw_char(), 0..=200).prop_map(|cs| cs.into_iter().collect::<String>()).prop_map(|s| {
        // Cut to 200 bytes on a character boundary.
        let mut end = s.len().min(200);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    })
}

/// Pieces that hostile paths are made of.
fn hostile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "/", "//", ".", "..", "%2F", "%2f", "%25", "%", "\0", "\u{7f}", "\n", "a", "models.d", "?q=1",
            "..d", "\u{e9}", "\u{1F600}",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z.%/]{1,40}",
        1 => any::<String>(),
        1 => (0usize..300).prop_map(|n| "x".repeat(n)),
    ]
}

/// An arbitrary path string built from hostile pieces.
fn hostile_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(hostile_piece(), 0..24).prop_map(|ps| ps.concat()),
        1 => any::<String>(),
    ]
}

/// A path of valid components, sometimes long enough to reach `PATH_MAX`.
fn long_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec((1usize..=NAME_MAX, prop::sample::select(vec!['a', 'é'])), 1..24)).prop_map(
        |(lead, names)| {
            let names: Vec<String> = names
                .into_iter()
                .map(|(n, c)| {
                    let s: String = std::iter::repeat_n(c, n).collect();
                    let mut end = s.len().min(NAME_MAX);
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s[..end].to_owned()
                })
                .collect();
            let joined = names.join("/");
            if lead {
                format!("/{joined}")
            } else {
                joined
            }
        },
    )
}

/// What every name of a parsed path must be.
fn assert_valid_name(n: &Name) -> Result<(), TestCaseError> {
    let s = n.as_str();
    prop_assert!(!s.is_empty(), "empty name");
    prop_assert!(s != "." && s != "..", "dot name {s:?}");
    prop_assert!(!s.contains('/'), "name with '/': {s:?}");
    prop_assert!(!s.chars().any(is_control), "name with NUL or control char: {s:?}");
    prop_assert!(s.len() <= NAME_MAX, "name of {} bytes", s.len());
    Ok(())
}

proptest! {
    // No regression files: the failures found so far are the fixed tests below.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// (a) raw → name → raw; the escaped name never holds `/`. A raw value has no name
    /// only when it is `.`/`..`/empty or when its escaped form is too long.
    #[test]
    fn raw_values_round_trip(raw in raw_value()) {
        match Name::from_raw(&raw) {
            Ok(n) => {
                prop_assert_eq!(n.raw(), raw.clone());
                prop_assert!(!n.as_str().contains('/'));
                prop_assert_eq!(n.as_str().len(), escaped_len(&raw));
                assert_valid_name(&n)?;
                // The name is already canonical: parsing it gives it back.
                prop_assert_eq!(Name::parse(n.as_str()), Ok(n.clone()));
                // And it survives a trip through a path.
                let p = VPath::root().join(n.clone());
                prop_assert_eq!(VPath::parse(&p.to_string()), Ok(p));
            }
            Err(PathError::NameTooLong(len)) => {
                prop_assert_eq!(len, escaped_len(&raw));
                prop_assert!(len > NAME_MAX);
            }
            Err(PathError::DotSegment(_)) => prop_assert!(raw.is_empty() || raw == "." || raw == ".."),
            Err(e) => prop_assert!(false, "unexpected error for {raw:?}: {e}"),
        }
    }

    /// (a) Two different raw values never share a name.
    #[test]
    fn raw_values_have_distinct_names(a in raw_value(), b in raw_value()) {
        if let (Ok(na), Ok(nb)) = (Name::from_raw(&a), Name::from_raw(&b)) {
            prop_assert_eq!(a == b, na == nb);
        }
    }

    /// (b) The canonical form is a fixed point of parsing.
    #[test]
    fn canonical_form_is_a_fixed_point(s in prop_oneof![hostile_path(), long_path()]) {
        if let Ok(p) = VPath::parse(&s) {
            let text = p.to_string();
            prop_assert!(text.len() <= PATH_MAX, "canonical form of {} bytes", text.len());
            prop_assert_eq!(VPath::parse(&text), Ok(p.clone()));
            prop_assert_eq!(VPath::parse(&text).unwrap().to_string(), text);
        }
    }

    /// (c) No parsed path has a bad component, whatever the input.
    #[test]
    fn parsed_names_are_always_valid(s in prop_oneof![hostile_path(), long_path()]) {
        if let Ok(p) = VPath::parse(&s) {
            for n in p.names() {
                assert_valid_name(n)?;
            }
        }
    }

    /// (c) The same holds for single names, which may arrive with a `/` through an API call.
    #[test]
    fn parsed_single_names_are_always_valid(s in hostile_path()) {
        if let Ok(n) = Name::parse(&s) {
            assert_valid_name(&n)?;
        }
    }

    /// (d) Same input, same result — errors included.
    #[test]
    fn parsing_is_deterministic(s in hostile_path()) {
        prop_assert_eq!(VPath::parse(&s), VPath::parse(&s.clone()));
        prop_assert_eq!(Name::parse(&s), Name::parse(&s.clone()));
        prop_assert_eq!(Name::from_raw(&s), Name::from_raw(&s.clone()));
    }
}

/// A path without a leading `/` whose length is exactly `PATH_MAX`: its canonical form
/// gains a `/` and must still parse (or the path must be refused in the first place).
#[test]
fn canonical_form_at_path_max_reparses() {
    let mut names: Vec<String> = (0..15).map(|_| "a".repeat(NAME_MAX)).collect();
    names.push("b".repeat(254));
    names.push("c".to_owned());
    let s = names.join("/");
    assert_eq!(s.len(), PATH_MAX);
    match VPath::parse(&s) {
        Ok(p) => assert_eq!(VPath::parse(&p.to_string()), Ok(p)),
        Err(e) => assert_eq!(e, PathError::PathTooLong(PATH_MAX + 1)),
    }
    // With the leading `/` the same names are one byte too long either way.
    assert_eq!(VPath::parse(&format!("/{s}")), Err(PathError::PathTooLong(PATH_MAX + 1)));
}

/// A name handed over with `/` in it (through an API call) is escaped; the escaped form
/// must still respect `NAME_MAX`.
#[test]
fn escaped_names_respect_name_max() {
    let s = "/".repeat(200);
    assert_eq!(Name::parse(&s), Err(PathError::NameTooLong(600)));
    let n = Name::parse("a/b").unwrap();
    assert_eq!((n.as_str(), n.raw().as_str()), ("a%2Fb", "a/b"));
}

/// An empty name is no name: it would vanish from the canonical text of a path.
#[test]
fn empty_names_are_refused() {
    assert!(Name::parse("").is_err());
    assert!(Name::from_raw("").is_err());
}

/// Fixed examples of hostile input.
#[test]
fn hostile_examples() {
    for bad in ["/a/../b", "..", "/.", "a/./b", "/a\0b", "/a\nb", "/\u{7f}"] {
        assert!(VPath::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(VPath::parse("/%2F/%2e%2e").unwrap().to_string(), "/%2F/%2e%2e");
    assert_eq!(VPath::parse("/a/%2F").unwrap().names()[1].raw(), "/");
    // `%2e%2e` is not unescaped: its raw value is not `..`.
    assert_eq!(VPath::parse("/%2e%2e").unwrap().names()[0].raw(), "%2e%2e");
}
