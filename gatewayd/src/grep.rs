//! `grep -r` without a mount: walk the tree under a path with the caller's rights, read every
//! readable file, and report the matching lines. The walk sees exactly what a mount of the
//! same caller would list (hidden entries stay hidden), and every limit is explicit.

use agentfs::path::{Name, VPath};
use agentfs::wire::{EntryKind, GrepMatch, GrepRequest, GrepResult};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use regex::bytes::{Regex, RegexBuilder};

use crate::ops::{self, Caller, OpError};
use crate::Gateway;

/// Files searched when the request gives no limit.
pub const DEFAULT_MAX_FILES: u32 = 1000;
/// The most files one search may read.
pub const MAX_FILES: u32 = 10_000;
/// The deepest directory visited below the start.
pub const MAX_DEPTH: usize = 16;
/// Bytes of one file searched; the rest is skipped (and `truncated` set).
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Longest line text returned.
pub const MAX_LINE_BYTES: usize = 4096;
/// Files read at once.
const PARALLEL_READS: usize = 8;
/// Largest compiled pattern.
const MAX_PATTERN_BYTES: usize = 1024 * 1024;

/// Compiles the request's pattern (linear-time matching, bounded size).
pub fn pattern(req: &GrepRequest) -> Result<Regex, OpError> {
    let source = if req.fixed { regex::escape(&req.pattern) } else { req.pattern.clone() };
    RegexBuilder::new(&source)
        .case_insensitive(req.ignore_case)
        .size_limit(MAX_PATTERN_BYTES)
        .build()
        .map_err(|e| OpError::InvalidPattern(e.to_string()))
}

/// Searches `start` (a file, or a directory recursively) as `caller`.
pub async fn grep(gw: &Gateway, caller: &Caller, start: &VPath, req: &GrepRequest) -> Result<GrepResult, OpError> {
    let re = pattern(req)?;
    let max_files = req.max_files.unwrap_or(DEFAULT_MAX_FILES).clamp(1, MAX_FILES) as usize;
    let mut result = GrepResult { matches: Vec::new(), files_searched: 0, files_failed: 0, truncated: false };

    // The files to read, breadth first, in listing order.
    let mut files = Vec::new();
    let root = ops::stat(gw, caller, start)?;
    if root.kind == EntryKind::File {
        files.push(start.clone());
    } else {
        let mut dirs = std::collections::VecDeque::from([(start.clone(), 0usize)]);
        let mut listed = 0usize;
        while let Some((dir, depth)) = dirs.pop_front() {
            if listed >= max_files {
                result.truncated = true;
                break;
            }
            listed += 1;
            let listing = match ops::list(gw, caller, &dir).await {
                Ok(l) => l,
                Err(e) if dir == *start => return Err(e),
                Err(_) => {
                    result.files_failed += 1;
                    continue;
                }
            };
            for entry in listing.entries {
                let Ok(name) = Name::parse(&entry.name) else { continue };
                let child = dir.join(name);
                match entry.kind {
                    EntryKind::File => files.push(child),
                    EntryKind::Dir if depth < MAX_DEPTH => dirs.push_back((child, depth + 1)),
                    EntryKind::Dir => result.truncated = true,
                }
            }
        }
    }
    if files.len() > max_files {
        files.truncate(max_files);
        result.truncated = true;
    }

    let read = stream::iter(files).map(|path| async move {
        let body = read_capped(gw, caller, &path).await;
        (path, body)
    });
    let mut read = read.buffered(PARALLEL_READS);
    while let Some((path, body)) = read.next().await {
        match body {
            Ok(Some((bytes, cut))) => {
                result.files_searched += 1;
                result.truncated |= cut;
                search(&re, &path, &bytes, &mut result.matches);
            }
            Ok(None) => {}
            Err(_) => result.files_failed += 1,
        }
    }
    result.matches.sort_by(|a, b| (a.path.as_str(), a.line).cmp(&(b.path.as_str(), b.line)));
    Ok(result)
}

/// A file's body, at most [`MAX_FILE_BYTES`] (and whether it was cut); `None` for a file
/// that cannot be read at all (write-only: no GET).
async fn read_capped(gw: &Gateway, caller: &Caller, path: &VPath) -> Result<Option<(Bytes, bool)>, OpError> {
    let out = match ops::read(gw, caller, path, Default::default()).await {
        Ok(out) => out,
        Err(OpError::NoOperation { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match out {
        ops::Output::Whole { body, .. } => {
            let cut = body.len() > MAX_FILE_BYTES;
            Ok(Some((body.slice(..body.len().min(MAX_FILE_BYTES)), cut)))
        }
        ops::Output::Upstream(resp) => {
            let mut body = Vec::new();
            let mut chunks = resp.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| {
                    OpError::Upstream(crate::upstream::UpstreamError::Transport {
                        domain: path.service().map(|s| s.to_string()).unwrap_or_default(),
                        message: e.without_url().to_string(),
                    })
                })?;
                let room = MAX_FILE_BYTES - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return Ok(Some((body.into(), true)));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some((body.into(), false)))
        }
    }
}

/// Appends the lines of `body` that match.
fn search(re: &Regex, path: &VPath, body: &[u8], out: &mut Vec<GrepMatch>) {
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if re.is_match(line) {
            let shown = &line[..line.len().min(MAX_LINE_BYTES)];
            out.push(GrepMatch {
                path: path.to_string(),
                line: i as u64 + 1,
                text: String::from_utf8_lossy(shown).into_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pattern: &str, fixed: bool, ignore_case: bool) -> GrepRequest {
        GrepRequest { path: "/".into(), pattern: pattern.into(), fixed, ignore_case, max_files: None }
    }

    #[test]
    fn lines_match_like_grep() {
        let path = VPath::parse("/svc/models").unwrap();
        let mut out = Vec::new();
        let body = b"{\"id\":\"gpt-4o\"}\r\nnothing\n{\"id\":\"GPT-4O-mini\"}\n";
        search(&pattern(&req("gpt-4o", false, false)).unwrap(), &path, body, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].line, out[0].text.as_str()), (1, "{\"id\":\"gpt-4o\"}"));
        out.clear();
        search(&pattern(&req("gpt-4o", false, true)).unwrap(), &path, body, &mut out);
        assert_eq!(out.iter().map(|m| m.line).collect::<Vec<_>>(), vec![1, 3]);
        out.clear();
        search(&pattern(&req("4o.", true, false)).unwrap(), &path, body, &mut out);
        assert!(out.is_empty(), "a fixed pattern's `.` is a dot");
    }

    #[test]
    fn a_bad_pattern_is_an_error_not_a_panic() {
        let err = pattern(&req("(unclosed", false, false)).unwrap_err();
        assert!(err.to_string().contains("pattern"), "{err}");
        let huge = format!("{}{{1000}}", "a{1000}");
        assert!(pattern(&req(&huge, false, false)).is_err(), "the compiled size is bounded");
    }
}
