//! `nkmc pipe "cat /a | write /b"`: bodies move from stage to stage inside nkmc, byte for
//! byte (no envelope, no shell). Stages are parsed whole before anything runs, so a typo
//! never leaves half a pipeline done.

use std::io::Write;
use std::process::ExitCode;

use agentfs::client::fs_route;
use anyhow::{bail, Context};
use hyper::Method;
use regex::bytes::RegexBuilder;

use crate::Ctx;

/// One stage.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// The file's body.
    Cat(String),
    /// The input's lines that match (or, inverted, that do not).
    Grep { pattern: String, ignore_case: bool, invert: bool, fixed: bool },
    /// The input sent to the file; the response goes on.
    Write(String),
}

fn parse(pipeline: &str) -> anyhow::Result<Vec<Stage>> {
    let mut stages = Vec::new();
    for (i, text) in pipeline.split('|').enumerate() {
        let words: Vec<&str> = text.split_whitespace().collect();
        let stage = match words.as_slice() {
            ["cat", path] if i == 0 => Stage::Cat((*path).to_owned()),
            ["cat", ..] if i > 0 => bail!("stage {}: `cat` can only start a pipeline", i + 1),
            ["write", path] if i > 0 => Stage::Write((*path).to_owned()),
            ["write", _] => bail!("stage 1: `write` needs input; start with `cat PATH`"),
            ["grep", rest @ ..] => {
                let (mut ignore_case, mut invert, mut fixed) = (false, false, false);
                let mut pattern = None;
                for w in rest {
                    match *w {
                        "-i" => ignore_case = true,
                        "-v" => invert = true,
                        "-F" => fixed = true,
                        p if pattern.is_none() => pattern = Some(p.to_owned()),
                        _ => bail!("stage {}: `grep` takes one pattern (without spaces)", i + 1),
                    }
                }
                let pattern = pattern.with_context(|| format!("stage {}: `grep` needs a pattern", i + 1))?;
                if i == 0 {
                    bail!("stage 1: `grep` needs input; start with `cat PATH` (or use `nkmc grep`)");
                }
                Stage::Grep { pattern, ignore_case, invert, fixed }
            }
            [] => bail!("stage {} is empty", i + 1),
            [cmd, ..] => bail!("stage {}: `{cmd}` is not a pipe stage (cat PATH, grep PATTERN, write PATH)", i + 1),
        };
        stages.push(stage);
    }
    Ok(stages)
}

pub async fn run(ctx: &Ctx, pipeline: &str) -> anyhow::Result<ExitCode> {
    let stages = parse(pipeline).context("nkmc pipe")?;
    let client = ctx.client();
    let mut data: Vec<u8> = Vec::new();
    for stage in stages {
        data = match stage {
            Stage::Cat(path) => client.call_ok(Method::GET, &fs_route("read", &path), None).await?.to_vec(),
            Stage::Write(path) => client
                .call_ok(Method::POST, &fs_route("write", &path), Some((data.into(), "application/json")))
                .await?
                .to_vec(),
            Stage::Grep { pattern, ignore_case, invert, fixed } => {
                let source = if fixed { regex::escape(&pattern) } else { pattern };
                let re = RegexBuilder::new(&source)
                    .case_insensitive(ignore_case)
                    .size_limit(1024 * 1024)
                    .build()
                    .context("nkmc pipe: the grep pattern is invalid")?;
                let mut kept = Vec::new();
                for line in data.split_inclusive(|b| *b == b'\n') {
                    let text = line.strip_suffix(b"\n").unwrap_or(line);
                    if re.is_match(text) != invert {
                        kept.extend_from_slice(line);
                    }
                }
                kept
            }
        };
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&data)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_parse_whole_or_not_at_all() {
        assert_eq!(
            parse("cat /a/items | grep -i rex | write /b/items").unwrap(),
            vec![
                Stage::Cat("/a/items".into()),
                Stage::Grep { pattern: "rex".into(), ignore_case: true, invert: false, fixed: false },
                Stage::Write("/b/items".into()),
            ]
        );
        for (bad, why) in [
            ("write /b", "needs input"),
            ("cat /a | cat /b", "can only start"),
            ("cat /a | rm /b", "not a pipe stage"),
            ("cat /a |", "empty"),
            ("cat /a | grep", "needs a pattern"),
            ("cat /a /b", "not a pipe stage"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
