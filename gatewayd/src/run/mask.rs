//! Masking injected secrets in a tool's output, as it streams.
//!
//! For every secret, the patterns are the secret itself and its encodings that a tool might
//! print: base64 (standard and URL-safe alphabets, at each of the three byte alignments the
//! secret can have inside a longer encoded string), hex (lower and upper case),
//! URL-encoding (`%XX` upper and lower case, of the reserved bytes only or of every byte, and
//! form encoding with `+` for a space), and
//! JSON string escaping (`\"`, `\\`, and `\/` as some encoders write `/`). Every
//! occurrence of a pattern is replaced by [`MARKER`]; overlapping occurrences become one
//! marker.
//!
//! Output arrives in arbitrary chunks, so a secret may be split across writes. [`Masker`]
//! holds back the longest end of what it has seen that is the beginning of some pattern (at
//! most the longest pattern's length minus one byte) until the next chunk, or
//! [`Masker::finish`], says how it goes on. Text that cannot start a secret is passed on at
//! once, so a tool's prompts are not delayed. An occurrence that later ones may overlap is
//! passed on as its marker at once, and what overlaps it afterwards is dropped: a stream of
//! ever-overlapping occurrences is one marker, and never held whole.
//!
//! What it cannot do: a secret split between stdout and stderr (each stream has its own
//! masker), a secret printed only in part, or a secret transformed in another way
//! (reversed, encrypted, another encoding) is not recognised.

/// What replaces every occurrence of a secret.
pub const MARKER: &[u8] = b"[masked by nkmc]";

/// Shortest secret value that can be masked: a shorter one would mask ordinary text.
pub const MIN_SECRET_LEN: usize = 6;

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `bytes` without padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    out
}

/// The base64 characters that depend on `secret` alone when it starts `align` bytes into a
/// 3-byte group: characters mixing in bits of the bytes around it are left out.
fn base64_core(secret: &[u8], align: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut padded = vec![0u8; align];
    padded.extend_from_slice(secret);
    let encoded = base64(&padded, alphabet);
    let start_bits = 8 * align;
    let end_bits = 8 * (align + secret.len());
    let first = start_bits.div_ceil(6);
    let last = end_bits / 6; // exclusive: character i covers bits [6i, 6i + 6)
    if last <= first {
        return Vec::new();
    }
    encoded[first..last.min(encoded.len())].to_vec()
}

fn hex(bytes: &[u8], upper: bool) -> Vec<u8> {
    if upper { hex::encode_upper(bytes) } else { hex::encode(bytes) }.into_bytes()
}

/// Percent-encoding of every byte outside RFC 3986's unreserved set; `plus` writes a space
/// as `+` (form encoding).
fn url_encoded(bytes: &[u8], upper: bool, plus: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else if plus && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]);
        }
    }
    out
}

/// Every byte as `%XX`, unreserved ones too (some encoders and echoing servers write it so).
fn percent_every_byte(bytes: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    bytes.iter().flat_map(|b| [b'%', digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]).collect()
}

/// `secret` inside a JSON string: `"` and `\` escaped, and `/` as `\/` when `slash`.
fn json_escaped(secret: &[u8], slash: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len());
    for &b in secret {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'/' if slash => out.extend_from_slice(b"\\/"),
            _ => out.push(b),
        }
    }
    out
}

/// Every pattern that stands for `secret` in output.
pub fn patterns_of(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec(), json_escaped(secret, false), json_escaped(secret, true)];
    for alphabet in [STD, URL_SAFE] {
        for align in 0..3 {
            out.push(base64_core(secret, align, alphabet));
        }
    }
    for upper in [false, true] {
        out.push(hex(secret, upper));
        for plus in [false, true] {
            out.push(url_encoded(secret, upper, plus));
        }
        out.push(percent_every_byte(secret, upper));
    }
    out
}

/// The set of patterns to mask, built once per run from the injected values.
#[derive(Clone)]
pub struct Patterns {
    patterns: Vec<Vec<u8>>,
    /// A searcher per pattern, for the exact occurrences, built once.
    finders: Vec<memchr::memmem::Finder<'static>>,
    /// One automaton for every pattern, built once: text without any occurrence (nearly
    /// all of it) is searched in one pass, not once per pattern. `None` when there is no
    /// pattern.
    searcher: Option<aho_corasick::AhoCorasick>,
    /// Whether a byte begins some pattern (most bytes of ordinary output do not).
    first: [bool; 256],
    longest: usize,
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Patterns {{ {} patterns: <redacted> }}", self.patterns.len())
    }
}

impl Patterns {
    /// The patterns of every secret (each at least [`MIN_SECRET_LEN`] bytes; shorter ones
    /// must be refused by the caller before the tool starts).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut patterns: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .flat_map(patterns_of)
            // A base64 core this short (from a short secret) would match ordinary text.
            .filter(|p| p.len() >= 4)
            .collect();
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        // Leftmost-first semantics: the automaton then searches with a vectorised prefilter
        // (Teddy) over every pattern at once. It only says whether and where a first
        // occurrence is; the exact set, overlapping ones included, is found pattern by
        // pattern, in the rare text that holds one. Building fails only past the automaton's
        // size limits, far beyond a few dozen short patterns; should it ever, every search is
        // the pattern-by-pattern one.
        let searcher = (!patterns.is_empty())
            .then(|| {
                aho_corasick::AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostFirst).build(&patterns)
            })
            .and_then(Result::ok);
        let mut first = [false; 256];
        for b in patterns.iter().filter_map(|p| p.first()) {
            first[usize::from(*b)] = true;
        }
        let finders = patterns.iter().map(|p| memchr::memmem::Finder::new(p).into_owned()).collect();
        Patterns { patterns, finders, searcher, first, longest }
    }

    /// The longest pattern's length.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Whether there is no pattern at all (nothing can be masked).
    fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern occurs in `hay` (what [`mask_all`] would change).
    pub fn occurs_in(&self, hay: &[u8]) -> bool {
        match &self.searcher {
            Some(ac) => ac.is_match(hay),
            None => !self.slow_occurrences(hay).is_empty(),
        }
    }

    /// Occurrences in `hay` as `[start, end)` ranges, sorted, overlapping ones merged.
    fn occurrences(&self, hay: &[u8]) -> Vec<(usize, usize)> {
        match &self.searcher {
            // The common case, text without any: one pass.
            Some(ac) if !ac.is_match(hay) => Vec::new(),
            _ => self.slow_occurrences(hay),
        }
    }

    /// Every occurrence of every pattern, one pattern at a time (overlapping ones too).
    fn slow_occurrences(&self, hay: &[u8]) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for finder in &self.finders {
            // Overlapping occurrences of one pattern too (`find_iter` skips those).
            let len = finder.needle().len();
            let mut at = 0;
            while let Some(i) = finder.find(&hay[at..]) {
                found.push((at + i, at + i + len));
                at += i + 1;
            }
        }
        merge(found)
    }

    /// Length of the longest end of `hay` that is a proper beginning of some pattern.
    fn open_tail(&self, hay: &[u8]) -> usize {
        let max = self.longest.saturating_sub(1).min(hay.len());
        for k in (1..=max).rev() {
            let tail = &hay[hay.len() - k..];
            if self.first[usize::from(tail[0])] && self.patterns.iter().any(|p| p.len() > k && p.starts_with(tail)) {
                return k;
            }
        }
        0
    }
}

/// `found` sorted by start, overlapping ranges merged into one.
fn merge(mut found: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    found.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(found.len());
    for (s, e) in found {
        match merged.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// One output stream's masker: feed it chunks, pass on what it returns.
pub struct Masker {
    patterns: std::sync::Arc<Patterns>,
    held: Vec<u8>,
    /// How many of the held bytes' first bytes lie in an occurrence whose marker was
    /// already passed on: an occurrence overlapping them continues that marker (one marker
    /// for overlapping occurrences, as in one-shot masking), and they are never passed on.
    covered: usize,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The held bytes may be most of a secret: their count only.
        write!(f, "Masker {{ held: {} bytes, covered: {} }}", self.held.len(), self.covered)
    }
}

impl Masker {
    /// A masker for one stream.
    pub fn new(patterns: impl Into<std::sync::Arc<Patterns>>) -> Self {
        Masker { patterns: patterns.into(), held: Vec::new(), covered: 0 }
    }

    /// Bytes held back, waiting for the next chunk (always fewer than the longest
    /// pattern's length).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes a chunk; returns what can be passed on now, masked.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if chunk.is_empty() {
            return Vec::new();
        }
        self.held.extend_from_slice(chunk);
        if self.patterns.is_empty() {
            return std::mem::take(&mut self.held);
        }
        let found = self.found();
        self.pass_on(found)
    }

    /// What of the held bytes can go now, given `found`, their occurrences (the covered
    /// ones merged in).
    fn pass_on(&mut self, found: Vec<(usize, usize)>) -> Vec<u8> {
        let len = self.held.len();
        let cut = len - self.patterns.open_tail(&self.held);
        let Some(&(s, e)) = found.iter().find(|&&(s, e)| s < cut && e > cut) else {
            // Nothing runs past the cut: pass on everything before it.
            let out = replace(&self.held[..cut], found.iter().filter(|&&(_, e)| e <= cut), self.covered > 0);
            self.held.drain(..cut);
            if cut > 0 {
                // The covered run, if any, ended before the cut and went with it.
                self.covered = 0;
            }
            return out;
        };
        // An occurrence runs past the cut: another overlapping it may still be completed by
        // the next chunk. Any such occurrence starts within the last `longest - 1` bytes, so
        // the rest can go now, the running one as its marker, and those bytes stay held as
        // covered. (A stream of ever-overlapping occurrences is then never held whole.)
        let keep_from = (len + 1).saturating_sub(self.patterns.longest());
        if keep_from <= s {
            // It starts within those bytes: hold it whole.
            let out = replace(&self.held[..s], found.iter().filter(|&&(_, end)| end <= s), self.covered > 0);
            self.held.drain(..s);
            if s > 0 {
                self.covered = 0;
            }
            return out;
        }
        let running = (s, keep_from);
        let before = found.iter().filter(|&&(start, _)| start < s).chain(std::iter::once(&running));
        let out = replace(&self.held[..keep_from], before, self.covered > 0);
        self.held.drain(..keep_from);
        self.covered = e - keep_from;
        out
    }

    /// Occurrences in the held bytes, the covered ones first (merged with any overlapping
    /// them).
    fn found(&self) -> Vec<(usize, usize)> {
        let mut found = self.patterns.occurrences(&self.held);
        if self.covered > 0 {
            found.push((0, self.covered));
            found = merge(found);
        }
        found
    }

    /// [`Masker::push`] of a shared buffer: when nothing is held from the chunk before and
    /// nothing in this one is masked (the common case), what is passed on is a slice of
    /// `chunk` itself, not a copy.
    pub fn push_bytes(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        if self.patterns.is_empty() || chunk.is_empty() {
            return chunk;
        }
        if !self.held.is_empty() {
            return self.push(&chunk).into();
        }
        // Nothing held, so nothing covered: the chunk's occurrences are the held bytes'.
        let found = self.patterns.occurrences(&chunk);
        if found.is_empty() {
            let cut = chunk.len() - self.patterns.open_tail(&chunk);
            self.held.extend_from_slice(&chunk[cut..]);
            return chunk.slice(..cut);
        }
        self.held.extend_from_slice(&chunk);
        self.pass_on(found).into()
    }

    /// The end of the stream: what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let found = self.found();
        let out = replace(&self.held, found.iter(), self.covered > 0);
        self.held.clear();
        self.covered = 0;
        out
    }
}

/// `hay` with each of `ranges` (sorted, disjoint) replaced by [`MARKER`]; when `continued`,
/// a range at 0 continues a marker already passed on and is only dropped.
fn replace<'a>(hay: &[u8], ranges: impl Iterator<Item = &'a (usize, usize)>, continued: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut at = 0;
    for &(s, e) in ranges {
        out.extend_from_slice(&hay[at..s]);
        if !(continued && s == 0) {
            out.extend_from_slice(MARKER);
        }
        at = e;
    }
    out.extend_from_slice(&hay[at..]);
    out
}

/// Masks a whole buffer at once (messages built from a tool's output): what a [`Masker`]
/// given `bytes` and then finished returns, without copying the patterns.
pub fn mask_all(patterns: &Patterns, bytes: &[u8]) -> Vec<u8> {
    if patterns.is_empty() {
        return bytes.to_vec();
    }
    let found = patterns.occurrences(bytes);
    replace(bytes, found.iter(), false)
}

/// [`mask_all`] of a shared buffer: `bytes` itself when nothing in it is masked.
pub fn mask_bytes(patterns: &Patterns, bytes: bytes::Bytes) -> bytes::Bytes {
    let found = patterns.occurrences(&bytes);
    if found.is_empty() {
        bytes
    } else {
        replace(&bytes, found.iter(), false).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
    }

    fn pats(secret: &str) -> Patterns {
        Patterns::new([secret.as_bytes()])
    }

    /// A reference base64 with padding, to build test input independently of the masker.
    fn b64_padded(bytes: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            let mut n = 0u32;
            for (i, b) in chunk.iter().enumerate() {
                n |= u32::from(*b) << (16 - 8 * i);
            }
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out
    }

    #[test]
    fn masks_the_secret_and_its_encodings() {
        let secret = "CANARY_0123456789abcdef/+ x";
        let p = pats(secret);
        let mut inputs: Vec<Vec<u8>> = vec![secret.as_bytes().to_vec()];
        for prefix in ["", "a", "ab", "abc"] {
            let mut s = prefix.as_bytes().to_vec();
            s.extend_from_slice(secret.as_bytes());
            s.extend_from_slice(b"tail");
            inputs.push(b64_padded(&s, STD));
            inputs.push(b64_padded(&s, URL_SAFE));
        }
        inputs.push(hex(secret.as_bytes(), false));
        inputs.push(hex(secret.as_bytes(), true));
        inputs.push(b"CANARY_0123456789abcdef%2F%2B%20x".to_vec());
        inputs.push(b"CANARY_0123456789abcdef%2f%2b+x".to_vec());
        inputs.push(secret.bytes().flat_map(|b| format!("%{b:02X}").into_bytes()).collect());
        inputs.push(secret.bytes().flat_map(|b| format!("%{b:02x}").into_bytes()).collect());
        inputs.push(br#"{"key":"CANARY_0123456789abcdef\/+ x"}"#.to_vec());
        for input in inputs {
            let out = mask_all(&p, &input);
            assert!(contains(&out, MARKER), "not masked: {}", String::from_utf8_lossy(&input));
            assert!(!contains(&out, b"CANARY_0123456789"), "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn base64_of_user_pass_is_masked() {
        // `Authorization: Basic base64(user:pass)`: the secret is the whole `user:pass`.
        let p = pats("AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG");
        let header = b64_padded(b"AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG", STD);
        assert!(contains(&mask_all(&p, &header), MARKER));
    }

    #[test]
    fn one_byte_writes_are_masked_and_plain_text_is_not_held() {
        let p = pats("CANARY_secret_value");
        let mut m = Masker::new(p);
        let mut out = Vec::new();
        for b in b"token: CANARY_secret_value\n" {
            out.extend(m.push(&[*b]));
        }
        out.extend(m.finish());
        assert_eq!(out, b"token: [masked by nkmc]\n");
        let mut m = Masker::new(pats("CANARY_secret_value"));
        assert_eq!(m.push(b"Password? "), b"Password? ");
        assert_eq!(m.held(), 0);
        assert_eq!(m.push(b"CAN"), b"");
        assert_eq!(m.held(), 3);
        assert_eq!(m.push(b"DY"), b"CANDY");
    }

    #[test]
    fn shared_buffers_pass_through_uncopied_when_nothing_is_masked() {
        let mut m = Masker::new(pats("CANARY_shared_value"));
        let chunk = bytes::Bytes::from_static(b"{\"id\": 1, \"name\": \"plain\"}");
        let out = m.push_bytes(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "a slice of the same buffer");
        assert_eq!(out, chunk);
        // A chunk ending in what may begin the secret: that end is held, the rest is a slice.
        let chunk = bytes::Bytes::from_static(b"see CANARY_sh");
        let out = m.push_bytes(chunk.clone());
        assert_eq!((out.as_ptr(), &out[..]), (chunk.as_ptr(), &b"see "[..]));
        assert_eq!(m.held(), 9);
        assert_eq!(&m.push_bytes(bytes::Bytes::from_static(b"ared_value!"))[..], b"[masked by nkmc]!");
        let body = bytes::Bytes::from_static(b"no secret here");
        assert_eq!(mask_bytes(&pats("CANARY_shared_value"), body.clone()).as_ptr(), body.as_ptr());
    }

    #[test]
    fn overlapping_occurrences_without_end_are_one_marker_and_never_held_whole() {
        // A secret whose end is its beginning: an upstream that knows it can send an
        // endless chain of occurrences, each overlapping the next.
        let secret = "a1b2c3_chain_a1";
        let p = std::sync::Arc::new(pats(secret));
        let mut input = b"x".to_vec();
        for _ in 0..1000 {
            input.extend_from_slice(b"a1b2c3_chain_");
        }
        input.extend_from_slice(b"a1y");
        let whole = mask_all(&p, &input);
        assert_eq!(whole, b"x[masked by nkmc]y");
        for size in [1, 5, 13, 64, 4096] {
            let mut m = Masker::new(p.clone());
            let mut out = Vec::new();
            for piece in input.chunks(size) {
                out.extend(m.push(piece));
                assert!(m.held() < p.longest(), "held {} of {size}-byte chunks", m.held());
            }
            out.extend(m.finish());
            assert_eq!(out, whole, "{size}-byte chunks");
            let mut m = Masker::new(p.clone());
            let mut out = Vec::new();
            for piece in input.chunks(size) {
                out.extend_from_slice(&m.push_bytes(bytes::Bytes::copy_from_slice(piece)));
                assert!(m.held() < p.longest());
            }
            out.extend(m.finish());
            assert_eq!(out, whole, "{size}-byte shared chunks");
        }
        // The chain ends in a held byte that then proves not to continue it.
        let mut m = Masker::new(p.clone());
        let mut out = m.push(b"a1b2c3_chain_a1b2c3_chain_a1b2");
        out.extend(m.push(b"Q"));
        out.extend(m.finish());
        assert_eq!(out, mask_all(&p, b"a1b2c3_chain_a1b2c3_chain_a1b2Q"));
        assert_eq!(out, b"[masked by nkmc]b2Q");
    }

    #[test]
    fn an_empty_chunk_changes_nothing_in_a_chain() {
        // A chain of a self-overlapping secret in each of its longer forms, cut anywhere,
        // an empty chunk between the two pieces: what one-shot masking gives.
        let secret = b"ab_CDEF_ab";
        let p = std::sync::Arc::new(Patterns::new([&secret[..]]));
        let plain = b"ab_CDEF_ab_CDEF_ab_CDEF_ab";
        for encoded in [percent_every_byte(plain, false), hex(plain, true), plain.to_vec()] {
            let input = [&encoded[..], b"Q"].concat();
            let whole = mask_all(&p, &input);
            assert!(!contains(&whole, &encoded[encoded.len() - 4..]), "the chain's end is masked");
            for cut in 1..input.len() {
                let mut m = Masker::new(p.clone());
                let mut out = m.push(&input[..cut]);
                out.extend(m.push(b""));
                out.extend_from_slice(&m.push_bytes(bytes::Bytes::new()));
                out.extend(m.push(&input[cut..]));
                out.extend(m.finish());
                assert_eq!(out, whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn no_secrets_means_no_change() {
        let mut m = Masker::new(Patterns::new(std::iter::empty()));
        assert_eq!(m.push(b"anything"), b"anything");
        assert!(m.finish().is_empty());
    }

    #[test]
    fn debug_never_shows_patterns() {
        let p = pats("CANARY_debug_value");
        assert!(!format!("{p:?} {:?}", Masker::new(p.clone())).contains("CANARY"));
        let mut m = Masker::new(p);
        assert!(m.push(b"CANARY_debug_valu").is_empty());
        assert_eq!(format!("{m:?}"), "Masker { held: 17 bytes, covered: 0 }");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A secret whose end is its beginning, repeated so that each copy overlaps the
        /// next: one marker for the chain, whatever the chunking, and little held.
        #[test]
        fn overlapping_chains_are_one_marker(
            border in "[a-z]{1,3}",
            middle in "[A-Z0-9_]{4,20}",
            copies in 1usize..30,
            before in "[ .,]{0,5}",
            cuts in proptest::collection::vec(1usize..40, 1..20),
        ) {
            let secret = format!("{border}{middle}{border}");
            let p = std::sync::Arc::new(pats(&secret));
            let mut input = before.clone().into_bytes();
            for _ in 0..copies {
                input.extend_from_slice(border.as_bytes());
                input.extend_from_slice(middle.as_bytes());
            }
            input.extend_from_slice(border.as_bytes());
            input.extend_from_slice(b"!");
            let whole = mask_all(&p, &input);
            prop_assert_eq!(&whole, &[before.as_bytes(), MARKER, b"!"].concat());
            let mut m = Masker::new(p.clone());
            let (mut out, mut at, mut i) = (Vec::new(), 0, 0);
            while at < input.len() {
                let n = cuts[i % cuts.len()].min(input.len() - at);
                if i % 2 == 0 {
                    out.extend(m.push(&input[at..at + n]));
                    // An empty chunk changes nothing (a stream may deliver one).
                    out.extend_from_slice(&m.push_bytes(bytes::Bytes::new()));
                } else {
                    out.extend_from_slice(&m.push_bytes(bytes::Bytes::copy_from_slice(&input[at..at + n])));
                    out.extend(m.push(b""));
                }
                prop_assert!(m.held() < p.longest());
                at += n;
                i += 1;
            }
            out.extend(m.finish());
            prop_assert_eq!(out, whole);
        }

        /// Whatever the chunking, the output is the one-shot masking, and it holds none of
        /// the secret's patterns.
        #[test]
        fn chunking_does_not_matter(
            secret in "[A-Za-z0-9_+/ -]{6,40}",
            pieces in proptest::collection::vec((0u8..6, "[a-zA-Z0-9 +/=%_-]{0,12}"), 0..12),
            cuts in proptest::collection::vec(1usize..20, 1..40),
        ) {
            let p = pats(&secret);
            let all = patterns_of(secret.as_bytes());
            let mut input = Vec::new();
            for (kind, filler) in &pieces {
                input.extend_from_slice(filler.as_bytes());
                match kind {
                    0 => input.extend_from_slice(secret.as_bytes()),
                    1 => input.extend(b64_padded(&[filler.as_bytes(), secret.as_bytes()].concat(), STD)),
                    2 => input.extend(b64_padded(&[secret.as_bytes(), b"x"].concat(), URL_SAFE)),
                    3 => input.extend(hex(secret.as_bytes(), *kind % 2 == 0)),
                    4 => input.extend(url_encoded(secret.as_bytes(), true, false)),
                    _ => {}
                }
            }
            let whole = mask_all(&p, &input);
            let mut m = Masker::new(p.clone());
            let mut chunked = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < input.len() {
                let n = cuts[i % cuts.len()].min(input.len() - at);
                chunked.extend(m.push(&input[at..at + n]));
                prop_assert!(m.held() < p.longest().max(1));
                at += n;
                i += 1;
            }
            chunked.extend(m.finish());
            prop_assert_eq!(&chunked, &whole);
            // The same through shared buffers, as gatewayd streams an upstream's answer.
            let mut m = Masker::new(p.clone());
            let mut shared = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < input.len() {
                let n = cuts[(i + 1) % cuts.len()].min(input.len() - at);
                shared.extend_from_slice(&m.push_bytes(bytes::Bytes::copy_from_slice(&input[at..at + n])));
                at += n;
                i += 1;
            }
            shared.extend(m.finish());
            prop_assert_eq!(&shared, &whole);
            prop_assert_eq!(&mask_bytes(&p, bytes::Bytes::from(input.clone()))[..], &whole[..]);
            // The one-pass search sees an occurrence exactly when the exact one does.
            prop_assert_eq!(p.occurs_in(&input), !p.slow_occurrences(&input).is_empty());
            for pat in all.iter().filter(|pat| pat.len() >= 4) {
                prop_assert!(!contains(&whole, pat), "pattern left in output");
            }
        }
    }
}
