//! `nkmc run` end to end: purpose-built tools (scripts registered in config.toml) run inside a
//! real gatewayd with a canary key injected. Whatever form they print it in, on whichever
//! stream, it comes back masked; their environment is the allowlist; exit codes, stdin,
//! timeouts, the output cap and a caller going away behave; refused subcommands never start
//! the tool; the canary reaches no log, audit record or file.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nkmc_e2e::{canary, contains, Nkmc};

const MARKER: &str = "[masked by nkmc]";

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// An installation whose config defines the test tools; gatewayd started, the canary stored
/// for `tools.test`.
fn setup() -> (Nkmc, String) {
    let n = Nkmc::new("");
    let d = n.dir.path().to_path_buf();
    let leaky = script(
        &d,
        "leaky",
        r#"T="$LEAKY_TOKEN"
case "$1" in
  whole) echo "token=$T" ;;
  stderr) echo "err: $T" >&2 ;;
  bytes) for ((i = 0; i < ${#T}; i++)); do printf '%s' "${T:i:1}"; sleep 0.005; done; echo ;;
  b64) printf '%s' "$T" | base64 -w0; echo; printf 'x%s' "$T" | base64 -w0; echo; printf 'xy%s' "$T" | base64 -w0; echo ;;
  hex) printf '%s' "$T" | od -An -tx1 | tr -d ' \n'; echo ;;
  plain) echo "nothing secret here" ;;
  forever) while :; do echo y; done ;;
  write) mkdir -p "$HOME/.config" && echo "$T" > "$HOME/.config/token" && pwd ;;
esac"#,
    );
    let started = d.join("started");
    let marker = script(&d, "marker", &format!("touch {}\necho ran", started.display()));
    let exit3 = script(&d, "exit3", "echo bye >&2\nexit 3");
    let stubborn = script(
        &d,
        "stubborn",
        &format!(
            "trap '' TERM\n(trap '' TERM; exec sleep 300) &\necho $! > {child}\necho $$ > {pid}\necho started\n\
             while :; do sleep 0.1; done",
            child = d.join("stubborn.child").display(),
            pid = d.join("stubborn.pid").display()
        ),
    );
    let config = format!(
        r#"[run]
kill_grace_ms = 300

[run.tools.leaky]
binary = "{leaky}"
domain = "tools.test"
inject = {{ LEAKY_TOKEN = "secret" }}

[run.tools.envdump]
binary = "/usr/bin/env"
domain = "tools.test"
inject = {{ ENVDUMP_TOKEN = "secret" }}
allow_env = ["ENVDUMP_REGION"]
deny_env = ["ENVDUMP_HOST"]

[run.tools.marker]
binary = "{marker}"
domain = "tools.test"
inject = {{ MARKER_TOKEN = "secret" }}
deny = ["auth token", "auth status -t"]
deny_flags = ["--hostname"]

[run.tools.exit3]
binary = "{exit3}"
domain = "tools.test"
inject = {{ EXIT3_TOKEN = "secret" }}

[run.tools.stubborn]
binary = "{stubborn}"
domain = "tools.test"
inject = {{ STUBBORN_TOKEN = "secret" }}
timeout_ms = 1500

[run.tools.cat]
binary = "cat"
domain = "tools.test"
inject = {{ CAT_TOKEN = "secret" }}

[run.tools.flood]
binary = "yes"
domain = "tools.test"
inject = {{ FLOOD_TOKEN = "secret" }}
max_output_bytes = 100000
"#,
        leaky = leaky.display(),
        marker = marker.display(),
        exit3 = exit3.display(),
        stubborn = stubborn.display(),
    );
    std::fs::write(&n.config, config).unwrap();
    // A variable of gatewayd's own environment: no tool may see it.
    let out = n.cmd(&["gateway", "start", "--daemon"]).env("GATEWAYD_PRIVATE", "daemon-only").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = canary();
    let out = n.run_stdin(&["keys", "set", "tools.test", "--token", "-"], format!("{key}\n").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (n, key)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(n: &Nkmc, args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    n.run(&all)
}

/// Every form of the key the tools print.
fn forms(key: &str) -> Vec<Vec<u8>> {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    vec![key.as_bytes().to_vec(), hex.into_bytes(), key.as_bytes()[..12].to_vec()]
}

fn assert_clean(what: &str, out: &[u8], key: &str) {
    for f in forms(key) {
        assert!(!contains(out, &f), "{what} leaks the key: {}", text(out));
    }
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie (state Z) is dead; only its parent has not reaped it yet.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_key_never_leaves_whatever_the_tool_prints() {
    let (n, key) = setup();
    for mode in ["whole", "bytes", "b64", "hex"] {
        let out = run(&n, &["leaky", mode]);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        assert_clean(mode, &out.stdout, &key);
        let expected_markers = if mode == "b64" { 3 } else { 1 };
        assert_eq!(text(&out.stdout).matches(MARKER).count(), expected_markers, "{mode}: {}", text(&out.stdout));
    }
    let out = run(&n, &["leaky", "whole"]);
    assert_eq!(text(&out.stdout), format!("token={MARKER}\n"));
    // No base64 of the key at any alignment survives (checked against an independent encoder).
    let out = run(&n, &["leaky", "b64"]);
    for prefix in ["", "x", "xy"] {
        let b64 = std::process::Command::new("bash")
            .args(["-c", &format!("printf '{prefix}%s' \"$0\" | base64 -w0"), &key])
            .output()
            .unwrap()
            .stdout;
        let core = &b64[4..b64.len() - 4];
        assert!(!contains(&out.stdout, core), "base64 after {prefix:?} leaks: {}", text(&out.stdout));
    }
    // stderr is masked too, and stays apart from stdout.
    let out = run(&n, &["leaky", "stderr"]);
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), format!("err: {MARKER}\n"));
    // Output without a secret passes unchanged.
    assert_eq!(text(&run(&n, &["leaky", "plain"]).stdout), "nothing secret here\n");

    // The environment is the allowlist plus the injection: nothing of gatewayd's.
    let out = run(&n, &["-e", "ENVDUMP_REGION=eu-west-1", "envdump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = text(&out.stdout);
    assert_clean("env", &out.stdout, &key);
    let names: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    let allowed = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "ENVDUMP_TOKEN", "ENVDUMP_REGION"];
    for name in &names {
        assert!(allowed.contains(name), "{name} is not allowlisted:\n{env}");
    }
    assert!(env.contains(&format!("ENVDUMP_TOKEN={MARKER}\n")), "{env}");
    assert!(env.contains("ENVDUMP_REGION=eu-west-1\n"), "{env}");
    assert!(env.contains("PATH=/usr/local/bin:/usr/bin:/bin\n"), "{env}");
    let scratch = n.data_dir.join("run/tools");
    assert!(env.contains(&format!("HOME={}/", scratch.display())), "{env}");
    assert!(!env.contains("daemon-only") && !env.contains("NKMC"), "{env}");
    // Variables the tool does not allow are refused before it starts.
    for refused in ["ENVDUMP_HOST=evil", "LD_PRELOAD=/x.so", "OTHER=1", "ENVDUMP_TOKEN=mine"] {
        let out = run(&n, &["-e", refused, "envdump"]);
        assert!(!out.status.success() && out.stdout.is_empty(), "{refused}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("does not let callers set"), "{}", text(&out.stderr));
    }

    // What a tool writes in its home (its working directory too) is gone after the run.
    let out = run(&n, &["leaky", "write"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{}/", scratch.display())), "{}", text(&out.stdout));
    wait_until("the scratch directory's removal", Duration::from_secs(5), || {
        std::fs::read_dir(&scratch).unwrap().next().is_none()
    });

    // The tool's exit code is nkmc's.
    let out = run(&n, &["exit3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr), "bye\n");

    // stdin goes through (and is masked on the way back like any output).
    let out = n.run_stdin(&["run", "cat"], format!("line one\nkey {key}\n").as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("line one\nkey {MARKER}\n"));
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = n.run_stdin(&["run", "cat"], &big);
    assert_eq!(out.stdout.len(), big.len());
    assert!(out.stdout == big);

    // Over the output cap: killed, exit 125.
    let started = Instant::now();
    let out = run(&n, &["flood"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(out.stdout.len() <= 100_000, "{}", out.stdout.len());
    assert!(text(&out.stderr).contains("cap"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A reader that stops early (`| head -c 10`) ends a never-ending run as SIGPIPE would:
    // 141 from nkmc, and the tool stopped (the audit records it `cancelled`).
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            r#""$0" run leaky forever | head -c 10; echo " ${PIPESTATUS[0]}""#,
            nkmc_e2e::bin("nkmc").to_str().unwrap(),
        ])
        .envs(n.cmd(&[]).get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .env_remove("NKMC_SOCKET")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "y\ny\ny\ny\ny\n 141\n", "{}", text(&out.stderr));
    wait_until("the endless tool's end", Duration::from_secs(5), || {
        let tail = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
        tail.lines().any(|l| l.contains("run:leaky forever") && l.contains(r#""outcome":"cancelled""#))
    });

    // The list shows the tools with their resolved binaries, never a key.
    let list = n.ok(&["run", "--list"]);
    assert!(list.contains("leaky\ttools.test\tLEAKY_TOKEN\t/"), "{list}");
    assert!(list.contains("cat\ttools.test\tCAT_TOKEN\t/usr/bin/cat") || list.contains("\t/bin/cat"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("gh\tgithub.com\tGH_TOKEN")), "{list}");
    assert!(list.contains("auth token"), "{list}");
    assert!(!list.contains(&key));

    // Nothing in the audit log or the data dir (logs, database, WAL) holds the key.
    let tail = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
    assert_clean("the audit log", tail.as_bytes(), &key);
    assert!(tail.contains(r#""target":"run:leaky whole (1 args)""#), "{tail}");
    assert!(tail.contains(r#""outcome":"exit 3""#), "{tail}");
    assert!(tail.contains(r#""outcome":"output_limit""#), "{tail}");
    assert!(tail.contains(r#""operation":"run""#) && tail.contains(r#""outcome":"permission_denied""#), "{tail}");
    for f in n.data_files() {
        let bytes = nkmc_e2e::read_if_present(&f);
        assert_clean(&f.display().to_string(), &bytes, &key);
    }
}

#[test]
fn refused_subcommands_never_start_the_tool() {
    let (n, _key) = setup();
    let started = n.dir.path().join("started");
    for args in [
        &["marker", "auth", "token"][..],
        &["marker", "auth", "status", "-t"],
        &["marker", "api", "--hostname=evil.example", "/user"],
        &["marker", "api", "--hostname", "evil.example"],
    ] {
        let out = run(&n, args);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(text(&out.stderr).contains("refused"), "{args:?}: {}", text(&out.stderr));
        assert!(!started.exists(), "{args:?} started the tool");
    }
    // The built-in gh refuses `auth token` before anything else (installed or not).
    let out = run(&n, &["gh", "auth", "token"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("`gh auth token` is refused"), "{}", text(&out.stderr));
    let out = run(&n, &["aws", "configure", "export-credentials"]);
    assert!(text(&out.stderr).contains("refused"), "{}", text(&out.stderr));
    // Unknown tools are named as such.
    let out = run(&n, &["nosuchtool"]);
    assert!(text(&out.stderr).contains("no tool `nosuchtool`"), "{}", text(&out.stderr));
    // The same tool with allowed arguments does start: the refusals above were the rules.
    let out = run(&n, &["marker", "auth", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
    assert!(started.exists());
}

#[test]
fn timeouts_and_a_departed_caller_kill_the_process_group() {
    let (n, _key) = setup();
    let d = n.dir.path();
    let read_pid = |name: &str| -> i32 { std::fs::read_to_string(d.join(name)).unwrap().trim().parse().unwrap() };

    // The tool ignores SIGTERM; at the timeout (1.5 s) and the grace (0.3 s) it is killed,
    // with the child it started.
    let started = Instant::now();
    let out = run(&n, &["stubborn"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "started\n");
    assert!(text(&out.stderr).contains("timeout"), "{}", text(&out.stderr));
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(8), "{took:?}");
    let (pid, child) = (read_pid("stubborn.pid"), read_pid("stubborn.child"));
    wait_until("the tool's death", Duration::from_secs(5), || gone(pid));
    wait_until("its child's death", Duration::from_secs(5), || gone(child));

    // The caller goes away mid-run: the group is killed too.
    std::fs::remove_file(d.join("stubborn.pid")).unwrap();
    let mut caller = n.cmd(&["run", "stubborn"]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    wait_until("the tool's start", Duration::from_secs(5), || {
        std::fs::read_to_string(d.join("stubborn.pid")).is_ok_and(|s| s.ends_with('\n'))
    });
    let (pid, child) = (read_pid("stubborn.pid"), read_pid("stubborn.child"));
    assert!(!gone(pid) && !gone(child));
    caller.kill().unwrap();
    caller.wait().unwrap();
    // Well before the 1.5 s timeout would have done it.
    let killed_at = Instant::now();
    wait_until("the tool's death after the caller left", Duration::from_secs(5), || gone(pid) && gone(child));
    assert!(killed_at.elapsed() < Duration::from_millis(1400), "{:?}", killed_at.elapsed());
    let tail = n.ok(&["audit", "tail", "-n", "100", "--json"]);
    assert!(tail.contains(r#""outcome":"timeout""#) && tail.contains(r#""outcome":"cancelled""#), "{tail}");

    // gatewayd stops mid-run: the run is told (exit 143) and its group killed; no tool
    // outlives gatewayd.
    std::fs::remove_file(d.join("stubborn.pid")).unwrap();
    let caller =
        n.cmd(&["run", "stubborn"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("the tool's start", Duration::from_secs(5), || {
        std::fs::read_to_string(d.join("stubborn.pid")).is_ok_and(|s| s.ends_with('\n'))
    });
    let (pid, child) = (read_pid("stubborn.pid"), read_pid("stubborn.child"));
    n.ok(&["gateway", "stop"]);
    let out = caller.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("shutting down"), "{}", text(&out.stderr));
    wait_until("the tool's death at shutdown", Duration::from_secs(5), || gone(pid) && gone(child));
}

#[test]
fn agent_tokens_need_the_run_right_on_the_domain() {
    let (n, key) = setup();
    let token = n.ok(&["token", "mint", "--agent", "runner"]).trim().to_owned();
    let may_run =
        n.ok(&["token", "attenuate", "--token", &token, "--allow", "tools.test:run", "--ttl", "1h"]).trim().to_owned();
    let read_only =
        n.ok(&["token", "attenuate", "--token", &token, "--allow", "tools.test:read", "--ttl", "1h"]).trim().to_owned();
    let as_agent = |t: &str, args: &[&str]| n.cmd(args).env("NKMC_TOKEN", t).stdin(Stdio::null()).output().unwrap();
    let out = as_agent(&may_run, &["run", "leaky", "whole"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("token={MARKER}\n"));
    let list = text(&as_agent(&may_run, &["run", "--list"]).stdout);
    assert!(list.contains("leaky\t") && !list.contains("gh\t"), "only tools.test's tools: {list}");
    // Without `run` the tool looks like it does not exist.
    let out = as_agent(&read_only, &["run", "leaky", "whole"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no tool `leaky`"), "{}", text(&out.stderr));
    assert_clean("refusal", &out.stderr, &key);
    let tail = n.ok(&["audit", "tail", "-n", "100", "--json"]);
    assert!(tail.lines().any(|l| l.contains(r#""agent":"runner""#) && l.contains("run:leaky")), "{tail}");
    // A revoked token is told so, rather than shown an empty list.
    n.ok(&["token", "revoke", "--token", &may_run]);
    let out = as_agent(&may_run, &["run", "--list"]);
    assert!(!out.status.success() && text(&out.stderr).contains("revoked"), "{}", text(&out.stderr));
    let out = as_agent(&may_run, &["run", "leaky", "whole"]);
    assert!(!out.status.success() && text(&out.stderr).contains("revoked"), "{}", text(&out.stderr));
}
