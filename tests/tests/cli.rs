//! The command line itself: `--help` on every command and subcommand, and what an error says
//! when gatewayd is not running.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::Nkmc;

/// The command names listed under `Commands:` in a help text (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_command_and_subcommand_has_help() {
    let n = Nkmc::new("");
    let top = n.ok(&["--help"]);
    let mut queue: Vec<Vec<String>> = commands(&top).into_iter().map(|c| vec![c]).collect();
    assert!(queue.len() >= 18, "the top-level commands: {queue:?}\n{top}");
    let mut checked = Vec::new();
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = n.run(&args);
        let help = text(&out.stdout);
        assert!(out.status.success(), "nkmc {args:?} exits {:?}: {}", out.status.code(), text(&out.stderr));
        assert!(help.contains(&format!("Usage: nkmc {}", path.join(" "))), "nkmc {args:?}:\n{help}");
        let about = help.lines().next().unwrap_or_default();
        assert!(!about.starts_with("Usage:") && about.len() > 10, "nkmc {args:?} says what it does:\n{help}");
        for sub in commands(&help) {
            let mut deeper = path.clone();
            deeper.push(sub);
            queue.push(deeper);
        }
        checked.push(path.join(" "));
    }
    for expected in ["keys set", "token attenuate", "gateway start", "audit verify", "vault rotate", "services list"] {
        assert!(checked.iter().any(|c| c == expected), "{expected} was checked: {checked:?}");
    }
}

#[test]
fn without_gatewayd_errors_say_how_to_start_it() {
    let n = Nkmc::new("");
    for args in [&["ls", "/"][..], &["cat", "/a.test/x"], &["keys", "list"], &["audit", "tail"], &["run", "--list"]] {
        let out = n.run(args);
        assert!(!out.status.success(), "nkmc {args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("nkmc up") && err.contains("nkmc gateway start"), "nkmc {args:?}: {err}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "the cause once: {err}");
    }
}
