//! `nkmc run`: existing CLIs run inside gatewayd with their credential injected, and never
//! see it leave.
//!
//! - [`tools`]: the tool registry (built-in tools, `[run]` in config.toml, binaries resolved
//!   at start).
//! - [`policy`]: refused subcommands, flags and variables; the tool's environment.
//! - [`mask`]: masking the injected values (and their encodings) in the output.
//! - [`frame`]: the framed request and response bodies of `POST /v1/proxy/exec`.
//! - [`exec`]: spawning, streaming, timeouts, killing the process group.
//! - [`wire`]: the JSON types.
//!
//! [`prepare`] turns a request into a [`exec::Prepared`] run, or a refusal, before anything
//! starts.

pub mod exec;
pub mod frame;
pub mod mask;
pub mod policy;
pub mod tools;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use crate::vault::{Credential, VaultError};
use crate::Gateway;
use policy::Refusal;
use tools::Tool;
use wire::ExecRequest;

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No such tool (or the caller's token cannot run it: it looks the same).
    #[error("run: no tool `{0}` is configured; `nkmc run --list` shows the tools")]
    NoTool(String),
    /// The tool's binary was not found when gatewayd started.
    #[error("run: `{tool}`'s binary `{binary}` was not found in [run] path when gatewayd started; install it (or set [run.tools.{tool}] binary) and restart gatewayd")]
    NotInstalled {
        /// The tool.
        tool: String,
        /// The binary as configured.
        binary: String,
    },
    /// The request asks for something refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No key is stored for the tool's domain.
    #[error(
        "run: no key is stored for {domain} (`{tool}` needs one); store it with `nkmc keys set {domain} --token -`"
    )]
    NoKey {
        /// The tool.
        tool: String,
        /// Its domain.
        domain: String,
    },
    /// The stored key does not fit the tool's injection.
    #[error("run: the key stored for {domain} {problem}")]
    BadKey {
        /// The domain.
        domain: String,
        /// What is wrong (never the key).
        problem: String,
    },
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The tools' home directory cannot be created.
    #[error("run: cannot create the tools' home directory {path}: {message}")]
    Home {
        /// The directory.
        path: PathBuf,
        /// The error.
        message: String,
    },
}

/// The runs under way: at most `max_concurrent` at once, and told to stop when gatewayd
/// shuts down (their process groups are killed; a run never outlives gatewayd).
#[derive(Debug)]
pub struct Runs {
    stop: tokio::sync::watch::Sender<bool>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Runs {
    /// Room for `max_concurrent` runs at once.
    pub fn new(max_concurrent: usize) -> Self {
        Runs {
            stop: tokio::sync::watch::channel(false).0,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
        }
    }

    /// A slot for one run, held until it ends; `None` when all are taken.
    pub fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Stops every run under way and every run that starts from now on.
    pub fn stop_all(&self) {
        self.stop.send_replace(true);
    }

    /// What a run watches to learn that gatewayd stops.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// The credential a run injects for `domain`, per caller: the agent's own key (BYOK) first,
/// then the pool key (`agent` is who [`crate::ops::authorize`] found; `None`: the owner).
pub fn credential(
    gw: &Gateway,
    agent: Option<&crate::auth::AgentId>,
    domain: &str,
) -> Result<Option<Credential>, VaultError> {
    let conn = gw.db();
    gw.vault.credential(&conn, agent.map(crate::auth::AgentId::as_str), domain)
}

/// A run's own home and working directory, `run/tools/<id>` in the data dir (0700), removed
/// with everything in it when the run ends: what a tool writes there (a config file, a
/// cached token) does not outlive the run, nor reach the next one.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new, empty directory.
    pub fn create(gw: &Gateway) -> Result<Self, RunError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let id = format!("{}-{}-{nanos:08x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let parent = gw.paths.data_dir.join("run").join("tools");
        let path = parent.join(id);
        let err = |e: &dyn std::fmt::Display| RunError::Home { path: path.clone(), message: e.to_string() };
        crate::gateway::create_private_dir(&parent).map_err(|e| err(&e))?;
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| err(&e))?;
        Ok(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "run: the scratch directory was not removed");
        }
    }
}

/// Everything checked, the key looked up and the environment built: the run, ready to
/// start. `tool` is already authorized for the caller.
pub fn prepare(
    gw: &Gateway,
    agent: Option<&crate::auth::AgentId>,
    tool: &Tool,
    req: ExecRequest,
) -> Result<exec::Prepared, RunError> {
    let spec = &tool.spec;
    policy::check_env(spec, &req.env)?;
    policy::check_args(spec, &req.args)?;
    let program = tool
        .path
        .clone()
        .ok_or_else(|| RunError::NotInstalled { tool: spec.name.clone(), binary: spec.binary.clone() })?;
    let credential = credential(gw, agent, &spec.domain)?
        .ok_or_else(|| RunError::NoKey { tool: spec.name.clone(), domain: spec.domain.clone() })?;
    let key = credential.secret.expose();
    let mut injected = Vec::new();
    let mut secrets: Vec<&[u8]> = vec![key.as_bytes()];
    for (name, part) in &spec.inject {
        let bad = |problem: String| RunError::BadKey { domain: spec.domain.clone(), problem };
        let value = part.of(key).ok_or_else(|| {
            bad(format!(
                "has no `:`; `{name}` needs it stored as USER:PASSWORD (`nkmc keys set {} --basic -`)",
                spec.domain
            ))
        })?;
        if value.len() < mask::MIN_SECRET_LEN {
            return Err(bad(format!(
                "gives `{name}` fewer than {} characters, too short to mask in output; the tool was not started",
                mask::MIN_SECRET_LEN
            )));
        }
        secrets.push(value.as_bytes());
        injected.push((name.clone(), value.to_owned()));
    }
    let patterns = mask::Patterns::new(secrets);
    let scratch = Scratch::create(gw)?;
    let run = &gw.config.run;
    let env =
        policy::environment(&run.path, scratch.path(), &run.pass_env, |k| std::env::var_os(k), &req.env, injected);
    Ok(exec::Prepared {
        program,
        args: req.args,
        env,
        scratch,
        patterns,
        timeout: Duration::from_millis(spec.timeout_ms),
        max_output: spec.max_output_bytes,
        grace: Duration::from_millis(run.kill_grace_ms),
    })
}

/// What the audit log records of a request: the tool, its leading subcommand words (only
/// lower-case letters and `-`, which a credential hardly is) and how many arguments there
/// were. Never the arguments themselves.
pub fn audit_target(req: &ExecRequest) -> String {
    let word = |a: &&String| a.len() <= 24 && !a.is_empty() && a.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    let words: Vec<&str> =
        req.args.iter().take_while(|a| !a.starts_with('-')).take(2).filter(word).map(String::as_str).collect();
    let name = if req.tool.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        req.tool.as_str()
    } else {
        "?"
    };
    let mut target = format!("run:{name}");
    for w in words {
        target.push(' ');
        target.push_str(w);
    }
    target.push_str(&format!(" ({} args)", req.args.len()));
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_target_keeps_no_secret_looking_words() {
        let req = |args: &[&str]| ExecRequest {
            tool: "gh".into(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: Default::default(),
        };
        assert_eq!(audit_target(&req(&["repo", "list", "--limit", "5"])), "run:gh repo list (4 args)");
        assert_eq!(audit_target(&req(&["login", "ghp_0123abcd"])), "run:gh login (2 args)");
        assert_eq!(audit_target(&req(&["-R", "x", "issue"])), "run:gh (3 args)");
    }

    #[tokio::test]
    async fn runs_have_a_limit_and_a_stop() {
        let runs = Runs::new(2);
        let a = runs.slot().unwrap();
        let _b = runs.slot().unwrap();
        assert!(runs.slot().is_none(), "a third run waits for a slot");
        drop(a);
        assert!(runs.slot().is_some());
        let mut stopping = runs.stopping();
        assert!(!*stopping.borrow());
        runs.stop_all();
        stopping.wait_for(|s| *s).await.unwrap();
    }
}
