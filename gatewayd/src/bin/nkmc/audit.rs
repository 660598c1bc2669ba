//! `audit tail`, `audit verify`: the audit log, read through gatewayd.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use agentfs::client::GatewayClient;
use agentfs::wire::{AuditProblemKind, AuditRecord, AuditRecords, AuditVerification};
use clap::Subcommand;

use crate::Ctx;

/// How often `tail --follow` asks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Records asked for at a time (gatewayd's maximum).
const PAGE: u32 = 1000;

/// `nkmc audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the last records, one line each (text fields escaped; --json for JSON lines).
    Tail {
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: u64,
        /// Keep printing records as they are written, until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Walk the hash chain: exit 0 when it is intact, 1 with the first problem.
    Verify,
}

/// Runs an audit command.
pub async fn run(ctx: &Ctx, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Tail { n, follow, json } => tail(ctx, n, follow, json).await,
        AuditCommand::Verify => verify(ctx).await,
    }
}

async fn page(client: &GatewayClient, after: Option<u64>, limit: u32) -> anyhow::Result<Vec<AuditRecord>> {
    let route = match after {
        Some(after) => format!("/v1/audit?after={after}&limit={limit}"),
        None => format!("/v1/audit?limit={limit}"),
    };
    Ok(client.get_json::<AuditRecords>(&route).await?.records)
}

/// Prints records; `Ok(false)` when stdout was closed (`nkmc audit tail | head`).
fn print(records: &[AuditRecord], json: bool) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        for r in records {
            let line = if json { serde_json::to_string(r).map_err(std::io::Error::other)? } else { text_line(r) };
            writeln!(out, "{line}")?;
        }
        out.flush()
    };
    match write() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn tail(ctx: &Ctx, n: u64, follow: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = ctx.client();
    let head = page(&client, None, 1).await?.last().map_or(0, |r| r.seq);
    // The last `n` records up to the head as it was; then, following, everything after it.
    let mut after = head.saturating_sub(n);
    while after < head {
        let records = page(&client, Some(after), PAGE).await?;
        let Some(next) = records.last().map(|r| r.seq) else { break };
        let shown: Vec<AuditRecord> = records.into_iter().filter(|r| r.seq <= head).collect();
        if !print(&shown, json)? {
            return Ok(ExitCode::SUCCESS);
        }
        after = next;
    }
    let mut after = head;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        let records = page(&client, Some(after), PAGE).await?;
        if !print(&records, json)? {
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(last) = records.last() {
            after = last.seq;
        }
    }
}

async fn verify(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let v: AuditVerification = ctx.client().get_json("/v1/audit/verify").await?;
    match &v.problem {
        None => {
            match (v.last_seq, &v.last_hash) {
                (Some(seq), Some(hash)) => {
                    println!("audit log intact: {} records; the last is #{seq} with hash {hash}", v.records)
                }
                _ => println!("audit log intact: no records yet"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(p) => {
            let kind = match p.kind {
                AuditProblemKind::Edited => "edited",
                AuditProblemKind::Missing => "missing",
                AuditProblemKind::Reordered => "reordered",
                AuditProblemKind::Truncated => "truncated",
                AuditProblemKind::Anchor => "anchor",
            };
            println!("audit log damaged at record {} ({kind}): {}", p.seq, p.message);
            println!("{} records before it are intact", v.records);
            Ok(ExitCode::from(1))
        }
    }
}

/// One record as a line of text.
fn text_line(r: &AuditRecord) -> String {
    let status = r.upstream_status.map_or_else(|| "-".to_owned(), |s| s.to_string());
    let target = if r.target.is_empty() { "-".to_owned() } else { printable(&r.target) };
    let mut line = format!(
        "{:>6}  {}  {}  {:<15}  {:<15}  {:>3}  {:>9} B  {:>6} ms  {}",
        r.seq,
        utc(r.time_ms),
        printable(&r.agent),
        printable(&r.operation),
        printable(&r.outcome),
        status,
        r.bytes,
        r.duration_ms,
        target
    );
    if let Some(k) = &r.key_id {
        line.push_str(&format!("  key {}", printable(k)));
    }
    if let Some(p) = &r.peer {
        line.push_str(&format!("  peer {}", printable(p)));
    }
    line
}

/// Text from the log made safe for a terminal: control characters (line breaks, escape
/// sequences), bidirectional overrides and backslashes are escaped, so one record is one line
/// and reads as what it is.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || bidi || c == '\u{2028}' || c == '\u{2029}' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds since the epoch as an ISO 8601 UTC time.
pub fn utc(ms: i64) -> String {
    gatewayd::timefmt::utc(ms, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn agent_text_stays_on_one_line() {
        assert_eq!(printable("/a\r\n#2 fake\u{1b}[2J\u{202e}x\\y"), "/a\\u{d}\\u{a}#2 fake\\u{1b}[2J\\u{202e}x\\\\y");
        assert_eq!(printable("/api.example.com/ünï code"), "/api.example.com/ünï code");
    }
}
