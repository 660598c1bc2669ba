//! The audit log end to end: a real gatewayd records every operation; `nkmc audit tail`
//! shows them, `nkmc audit verify` passes, and finds a record edited or removed while gatewayd
//! was stopped. No form of the key ever reaches the log, its outputs or the data dir.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nkmc_e2e::{assert_no_secret, canary, fixture, json, Nkmc, Upstream};
use serde_json::Value;

const MODELS: &str = r#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"o3"}]}"#;

/// An upstream playing api.openai.com/v1 that only answers the right bearer key.
fn openai_upstream(key: String) -> Upstream {
    Upstream::start(move |req| {
        if req.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {key}")) {
            return json(401, r#"{"error":{"message":"Incorrect API key provided"}}"#);
        }
        match req.uri.as_str() {
            "/v1/models" => json(200, MODELS),
            "/v1/models/gpt-4o" => json(200, r#"{"id":"gpt-4o","object":"model"}"#),
            _ => json(404, r#"{"error":{"message":"not found"}}"#),
        }
    })
}

fn setup(key: &str, up: &Upstream) -> (Nkmc, String) {
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let spec = fixture("openapi/openai.yaml");
    let spec = spec.to_str().unwrap();
    n.ok(&["register", "--spec", spec, "--domain", "api.openai.com", "--base-url", &up.url("/v1")]);
    let out = n.run_stdin(&["keys", "set", "api.openai.com", "--token", "-"], format!("{key}\n").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let key_id = said.split("key id ").nth(1).unwrap().trim_end_matches([')', '\n']).to_owned();
    (n, key_id)
}

/// Runs one SQL statement on the database with Python's sqlite3; returns the rows, one
/// `repr` per line.
fn sql(db: &Path, statement: &str) -> String {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n\
                  for r in c.execute(sys.argv[2]): print(repr(r))\nc.commit()\nc.close()";
    let out = Command::new("python3").args(["-c", script, db.to_str().unwrap(), statement]).output().unwrap();
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The audit records as `nkmc audit tail --json` prints them.
fn tail_json(n: &Nkmc) -> (String, Vec<Value>) {
    let out = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
    let records = out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
    (out, records)
}

/// Waits for a record (reads are recorded when their body has been sent).
fn wait_for(n: &Nkmc, what: impl Fn(&Value) -> bool) -> (String, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, records) = tail_json(n);
        if records.iter().any(&what) {
            return (out, records);
        }
        assert!(Instant::now() < deadline, "the record never appeared:\n{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(records: &'a [Value], operation: &str, target: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["operation"] == operation && r["target"] == target)
        .unwrap_or_else(|| panic!("no {operation} {target} in {records:#?}"))
}

#[test]
fn every_operation_is_recorded_and_no_secret_enters_the_log() {
    let key = canary();
    let up = openai_upstream(key.clone());
    let (n, key_id) = setup(&key, &up);
    assert_eq!(n.ok(&["cat", "/api.openai.com/models"]), MODELS);
    n.ok(&["cat", "/api.openai.com/models.d/gpt-4o"]);
    n.ok(&["ls", "/api.openai.com"]);
    assert!(!n.run(&["cat", "/api.openai.com/models.d/gpt-5"]).status.success(), "upstream 404");
    assert!(!n.run(&["cat", "/api.openai.com/../etc"]).status.success(), "an invalid path");
    // Agent-controlled text with line breaks, an escape sequence and JSON in it.
    let hostile = "evil\r\n{\"seq\":1,\"operation\":\"fake\"}\u{1b}[2J.test";
    assert!(!n.run(&["keys", "remove", hostile]).status.success());
    n.ok(&["keys", "list"]);

    let (json_out, records) =
        wait_for(&n, |r| r["operation"] == "read" && r["target"] == "/api.openai.com/models" && r["outcome"] == "ok");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "numbered without gaps: {r}");
        assert_eq!(r["agent"], "owner");
        if i > 0 {
            assert_eq!(r["prev_hash"], records[i - 1]["hash"]);
        }
    }
    assert_eq!(json_out.lines().count(), records.len(), "one line per record");

    let spec_len = std::fs::metadata(fixture("openapi/openai.yaml")).unwrap().len();
    let register = find(&records, "register", "api.openai.com");
    assert_eq!((register["outcome"].as_str(), register["bytes"].as_u64()), (Some("ok"), Some(spec_len)));
    let set = find(&records, "keys.set", "api.openai.com");
    assert_eq!(set["key_id"], key_id.as_str(), "keys.set records the key id");
    assert_eq!(set["outcome"], "ok");
    let models = find(&records, "read", "/api.openai.com/models");
    assert_eq!(models["upstream_status"], 200);
    assert_eq!(models["bytes"], MODELS.len() as u64);
    assert!(models.get("key_id").is_none() && models.get("peer").is_none(), "{models}");
    assert_eq!(find(&records, "list", "/api.openai.com")["outcome"], "ok");
    let missing = find(&records, "read", "/api.openai.com/models.d/gpt-5");
    assert_eq!((missing["outcome"].as_str(), missing["upstream_status"].as_u64()), (Some("not_found"), Some(404)));
    assert!(records.iter().any(|r| r["operation"] == "read" && r["target"] == "" && r["outcome"] == "invalid_path"));
    let evil = find(&records, "keys.remove", &hostile.to_ascii_lowercase());
    assert_eq!(evil["outcome"], "not_found");
    assert!(records.iter().any(|r| r["operation"] == "keys.list"));

    // Text output: one line per record, agent text escaped.
    let text = n.ok(&["audit", "tail", "-n", "1000"]);
    assert_eq!(text.lines().count(), records.len(), "{text}");
    assert!(!text.contains('\r') && !text.contains('\u{1b}'), "{text:?}");
    let line = text.lines().find(|l| l.contains("keys.remove")).unwrap();
    assert!(line.contains(r"evil\u{d}\u{a}{"), "{line}");
    let last = n.ok(&["audit", "tail", "-n", "2", "--json"]);
    assert_eq!(last.lines().count(), 2);

    let verified = n.ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    // No form of the key: in the outputs, in the table, in any file of the data dir.
    assert_no_secret("audit tail --json", json_out.as_bytes(), &key);
    assert_no_secret("audit tail", text.as_bytes(), &key);
    let table = sql(&n.data_dir.join("nkmc.db"), "SELECT * FROM audit");
    assert_eq!(table.lines().count(), records.len());
    assert_no_secret("the audit table", table.as_bytes(), &key);
    n.ok(&["gateway", "stop"]);
    let files = n.data_files();
    assert!(files.iter().any(|f| f.ends_with("audit.anchor")), "{files:?}");
    for f in files {
        assert_no_secret(&f.display().to_string(), &nkmc_e2e::read_if_present(&f), &key);
    }
}

#[test]
fn verify_finds_a_record_edited_while_gatewayd_was_stopped() {
    let key = canary();
    let up = openai_upstream(key.clone());
    let (n, _) = setup(&key, &up);
    assert!(!n.run(&["cat", "/api.openai.com/models.d/gpt-5"]).status.success());
    n.ok(&["cat", "/api.openai.com/models"]);
    wait_for(&n, |r| r["target"] == "/api.openai.com/models");
    assert!(n.ok(&["audit", "verify"]).contains("intact"));
    n.ok(&["gateway", "stop"]);

    // Hide the failed read: make it look like a success.
    let db = n.data_dir.join("nkmc.db");
    let seq = sql(&db, "SELECT seq FROM audit WHERE outcome = 'not_found'");
    let seq = seq.trim().trim_start_matches('(').trim_end_matches(",)").to_owned();
    sql(&db, &format!("UPDATE audit SET outcome = 'ok', upstream_status = 200 WHERE seq = {seq}"));

    n.ok(&["gateway", "start", "--daemon"]);
    let out = n.run(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("damaged at record {seq} (edited)")), "{said}");
}

#[test]
fn verify_finds_the_last_records_removed_while_gatewayd_was_stopped() {
    let key = canary();
    let up = openai_upstream(key.clone());
    let (n, _) = setup(&key, &up);
    n.ok(&["cat", "/api.openai.com/models"]);
    wait_for(&n, |r| r["target"] == "/api.openai.com/models");
    n.ok(&["gateway", "stop"]);

    // Remove the tail of the log: the read and everything after it.
    let db = n.data_dir.join("nkmc.db");
    let seq = sql(&db, "SELECT seq FROM audit WHERE operation = 'read'");
    let seq = seq.trim().trim_start_matches('(').trim_end_matches(",)").to_owned();
    sql(&db, &format!("DELETE FROM audit WHERE seq >= {seq}"));

    // Restarted, gatewayd numbers on after the anchor, so the hole stays visible.
    n.ok(&["gateway", "start", "--daemon"]);
    let out = n.run(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("damaged at record {seq} (missing)")), "{said}");
}

#[test]
fn operations_are_refused_while_the_audit_log_cannot_be_written() {
    let key = canary();
    let up = openai_upstream(key.clone());
    let (n, _) = setup(&key, &up);
    let db = n.data_dir.join("nkmc.db");
    let tcp = n.tcp_addr();
    let ready = || nkmc_e2e::http(tcp, "GET", "/readyz", &[], b"");
    assert_eq!(ready().status, 200);

    // The disk "fills": every insert into the audit table fails from now on.
    sql(&db, "CREATE TRIGGER audit_full BEFORE INSERT ON audit BEGIN SELECT RAISE(FAIL, 'disk full'); END;");
    // This read goes through (nothing was known to be wrong); its record fails to be written.
    n.ok(&["cat", "/api.openai.com/models"]);
    // A read is recorded once its body is sent, just after the client has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready().status == 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let calls = up.seen().len();
    let refused = n.run(&["cat", "/api.openai.com/models"]);
    assert!(!refused.status.success(), "{:?} {}", ready(), String::from_utf8_lossy(&refused.stdout));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("audit log cannot be written"), "{said}");
    assert_eq!(up.seen().len(), calls, "nothing reached the upstream while unaudited");
    let not_ready = ready();
    assert_eq!(not_ready.status, 503, "{}", not_ready.text());
    assert!(not_ready.text().contains("audit log"), "{}", not_ready.text());

    // Space again: the next refusal is recorded, and operations resume.
    sql(&db, "DROP TRIGGER audit_full;");
    let _ = n.run(&["cat", "/api.openai.com/models"]);
    assert_eq!(n.ok(&["cat", "/api.openai.com/models"]), MODELS);
    assert_eq!(ready().status, 200);
    let verified = n.ok(&["audit", "verify"]);
    assert!(verified.contains("ok") || verified.contains("intact"), "{verified}");
}
