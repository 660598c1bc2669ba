//! The tool registry: the built-in tools, the `[run]` section of `config.toml`, and the
//! binaries resolved once, when gatewayd starts.
//!
//! ```toml
//! [run]
//! timeout_ms = 600000             # per run, unless the tool says otherwise
//! max_output_bytes = 67108864     # stdout + stderr, per run
//! kill_grace_ms = 2000            # SIGTERM, then SIGKILL after this long
//! path = "/usr/local/bin:/usr/bin:/bin"   # where binary names are looked up; the tools' PATH
//! pass_env = ["LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ"]   # taken from gatewayd's environment
//! max_concurrent = 16             # runs under way at once
//!
//! [run.tools.mytool]
//! binary = "/opt/mytool/bin/mytool"   # or a name looked up in `path`
//! domain = "api.example.com"          # whose vault key is injected
//! inject = { MYTOOL_TOKEN = "secret" } # "secret" | "user" | "password"
//! deny = ["auth token", "config set"]  # subcommand words, optionally with flags
//! deny_flags = ["--host"]
//! deny_env = ["MYTOOL_HOST"]
//! allow_env = ["MYTOOL_REGION"]        # variables a caller may set
//! timeout_ms = 60000
//! max_output_bytes = 1048576
//! ```
//!
//! A `[run.tools.NAME]` table for a built-in tool replaces only the fields it gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which part of the stored key an injected variable receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPart {
    /// The whole key.
    Secret,
    /// The part before the first `:` (a key stored as `USER:PASSWORD`, e.g. with `--basic`).
    User,
    /// The part after the first `:`.
    Password,
}

impl KeyPart {
    /// The part of `key`; `None` when the key has no `:` and a part was asked for.
    pub fn of(self, key: &str) -> Option<&str> {
        match self {
            KeyPart::Secret => Some(key),
            KeyPart::User => key.split_once(':').map(|(u, _)| u),
            KeyPart::Password => key.split_once(':').map(|(_, p)| p),
        }
    }
}

/// `[run]` in `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Longest run, in milliseconds.
    pub timeout_ms: u64,
    /// Most output (stdout and stderr together) a run may produce, in bytes.
    pub max_output_bytes: u64,
    /// Time between SIGTERM and SIGKILL when a run is stopped, in milliseconds.
    pub kill_grace_ms: u64,
    /// Where binary names are looked up at start, and the tools' `PATH`.
    pub path: String,
    /// Variables passed from gatewayd's environment when set there.
    pub pass_env: Vec<String>,
    /// Most runs under way at once (more are answered `rate_limited`).
    pub max_concurrent: usize,
    /// User-defined tools, and changes to the built-in ones.
    pub tools: BTreeMap<String, ToolConfig>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            timeout_ms: 600_000,
            max_output_bytes: 64 * 1024 * 1024,
            kill_grace_ms: 2_000,
            path: "/usr/local/bin:/usr/bin:/bin".to_owned(),
            pass_env: ["LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ"].map(String::from).to_vec(),
            max_concurrent: 16,
            tools: BTreeMap::new(),
        }
    }
}

/// `[run.tools.NAME]`: every field optional (a built-in tool keeps what is not given).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// An absolute path, or a name looked up in `run.path`.
    pub binary: Option<String>,
    /// The domain whose key is injected.
    pub domain: Option<String>,
    /// Variable name → the part of the key it receives.
    pub inject: Option<BTreeMap<String, KeyPart>>,
    /// Refused subcommands: words, with optional flags (`"auth status -t"`).
    pub deny: Option<Vec<String>>,
    /// Refused flags, anywhere in the arguments (`--hostname`, also as `--hostname=x`).
    pub deny_flags: Option<Vec<String>>,
    /// Variables a caller may never set.
    pub deny_env: Option<Vec<String>>,
    /// Variables a caller may set (`nkmc run --env NAME=VALUE`).
    pub allow_env: Option<Vec<String>>,
    /// This tool's timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// This tool's output cap, in bytes.
    pub max_output_bytes: Option<u64>,
}

/// A tool as configured (before its binary is resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    /// The name `nkmc run` uses.
    pub name: String,
    /// The binary as configured.
    pub binary: String,
    /// The domain whose key is injected.
    pub domain: String,
    /// Injected variables.
    pub inject: BTreeMap<String, KeyPart>,
    /// Refused subcommands.
    pub deny: Vec<String>,
    /// Refused flags.
    pub deny_flags: Vec<String>,
    /// Variables a caller may never set.
    pub deny_env: Vec<String>,
    /// Variables a caller may set.
    pub allow_env: Vec<String>,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// Output cap in bytes.
    pub max_output_bytes: u64,
    /// Built in (rather than defined in config.toml).
    pub builtin: bool,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The built-in tools, with the run defaults for timeout and cap.
pub fn builtin(run: &RunConfig) -> Vec<ToolSpec> {
    let tool = |name: &str, domain: &str, inject: &[(&str, KeyPart)]| ToolSpec {
        name: name.to_owned(),
        binary: name.to_owned(),
        domain: domain.to_owned(),
        inject: inject.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        deny: Vec::new(),
        deny_flags: Vec::new(),
        deny_env: Vec::new(),
        allow_env: Vec::new(),
        timeout_ms: run.timeout_ms,
        max_output_bytes: run.max_output_bytes,
        builtin: true,
    };
    let mut gh = tool("gh", "github.com", &[("GH_TOKEN", KeyPart::Secret)]);
    gh.deny = strings(&[
        "auth token",
        "auth status -t",
        "auth status --show-token",
        "auth git-credential",
        "auth login",
        "auth refresh",
        "alias",
        "extension",
        "config set",
    ]);
    gh.deny_flags = strings(&["--hostname"]);
    gh.deny_env = strings(&["GH_HOST", "GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN", "GH_CONFIG_DIR"]);
    gh.allow_env = strings(&["GH_REPO", "NO_COLOR"]);
    let mut stripe = tool("stripe", "api.stripe.com", &[("STRIPE_API_KEY", KeyPart::Secret)]);
    stripe.deny = strings(&["config", "login"]);
    stripe.deny_flags = strings(&["--api-base"]);
    stripe.deny_env = strings(&["STRIPE_API_BASE"]);
    let mut openai = tool("openai", "api.openai.com", &[("OPENAI_API_KEY", KeyPart::Secret)]);
    openai.deny_flags = strings(&["--api-base", "-b", "--proxy", "-p", "--base-url"]);
    openai.deny_env = strings(&["OPENAI_BASE_URL", "OPENAI_API_BASE"]);
    let mut anthropic = tool("anthropic", "api.anthropic.com", &[("ANTHROPIC_API_KEY", KeyPart::Secret)]);
    anthropic.deny_flags = strings(&["--base-url"]);
    anthropic.deny_env = strings(&["ANTHROPIC_BASE_URL"]);
    let mut aws = tool(
        "aws",
        "aws.amazon.com",
        &[("AWS_ACCESS_KEY_ID", KeyPart::User), ("AWS_SECRET_ACCESS_KEY", KeyPart::Password)],
    );
    aws.deny = strings(&["configure"]);
    aws.deny_flags = strings(&["--endpoint-url", "--no-verify-ssl", "--ca-bundle"]);
    aws.deny_env = strings(&["AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"]);
    aws.allow_env = strings(&["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_DEFAULT_OUTPUT"]);
    vec![gh, stripe, openai, anthropic, aws]
}

/// Why the tool configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ToolConfigError {
    /// A new tool lacks a required field.
    #[error("config: [run.tools.{tool}] needs `{field}` (it is not a built-in tool)")]
    Missing {
        /// The tool.
        tool: String,
        /// The field.
        field: &'static str,
    },
    /// A field's value is not acceptable.
    #[error("config: [run.tools.{tool}]: {message}")]
    Invalid {
        /// The tool.
        tool: String,
        /// What is wrong.
        message: String,
    },
    /// `[run]` itself is not acceptable.
    #[error("config: [run]: {0}")]
    Run(String),
}

/// Whether `name` is a variable the tool environment reserves: never passed from gatewayd,
/// never set by a caller.
pub fn reserved_env(name: &str) -> bool {
    name == "PATH"
        || name == "HOME"
        || name.starts_with("NKMC_")
        || name.starts_with("LD_")
        || name.starts_with("DYLD_")
        || matches!(name, "BASH_ENV" | "ENV" | "SHELLOPTS" | "BASHOPTS" | "PS4" | "IFS")
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every tool: the built-in ones with the config's changes, then the config's own.
pub fn specs(run: &RunConfig) -> Result<Vec<ToolSpec>, ToolConfigError> {
    for name in &run.pass_env {
        if reserved_env(name) || !valid_env_name(name) {
            return Err(ToolConfigError::Run(format!("`{name}` cannot be in pass_env")));
        }
    }
    if run.path.split(':').any(|d| !Path::new(d).is_absolute()) {
        return Err(ToolConfigError::Run("every directory in `path` must be absolute".into()));
    }
    let mut out = builtin(run);
    for (name, c) in &run.tools {
        let invalid = |message: String| ToolConfigError::Invalid { tool: name.clone(), message };
        if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')) {
            return Err(invalid("tool names use letters, digits, `-`, `_` and `.`".into()));
        }
        let spec = match out.iter_mut().find(|t| &t.name == name) {
            Some(t) => t,
            None => {
                let missing = |field| ToolConfigError::Missing { tool: name.clone(), field };
                out.push(ToolSpec {
                    name: name.clone(),
                    binary: c.binary.clone().ok_or_else(|| missing("binary"))?,
                    domain: c.domain.clone().ok_or_else(|| missing("domain"))?,
                    inject: c.inject.clone().ok_or_else(|| missing("inject"))?,
                    deny: Vec::new(),
                    deny_flags: Vec::new(),
                    deny_env: Vec::new(),
                    allow_env: Vec::new(),
                    timeout_ms: run.timeout_ms,
                    max_output_bytes: run.max_output_bytes,
                    builtin: false,
                });
                out.last_mut().ok_or_else(|| invalid("internal: no tool".into()))?
            }
        };
        let fields = c.clone();
        // Each field set in config.toml replaces the built-in one.
        macro_rules! overlay {
            ($($field:ident),*) => {$(
                if let Some(v) = fields.$field {
                    spec.$field = v;
                }
            )*};
        }
        overlay!(binary, domain, inject, deny, deny_flags, deny_env, allow_env, timeout_ms, max_output_bytes);
        if spec.inject.is_empty() {
            return Err(invalid("`inject` names no variable".into()));
        }
        for var in spec.inject.keys().chain(&spec.allow_env) {
            if reserved_env(var) || !valid_env_name(var) {
                return Err(invalid(format!("`{var}` cannot be injected or set by a caller")));
            }
        }
        if spec.deny.iter().any(|d| d.split_whitespace().next().is_none()) {
            return Err(invalid("an empty `deny` entry would refuse everything".into()));
        }
    }
    Ok(out)
}

/// A tool ready to run: its binary resolved when gatewayd started.
#[derive(Debug, Clone)]
pub struct Tool {
    /// What was configured.
    pub spec: ToolSpec,
    /// The binary's canonical absolute path; `None` when it was not found.
    pub path: Option<PathBuf>,
}

/// Finds `binary`: an absolute path as is, a name in the directories of `search`; the
/// result is canonical (symlinks resolved) and an executable regular file.
pub fn resolve(binary: &str, search: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if binary.contains('/') {
        let p = PathBuf::from(binary);
        if !p.is_absolute() {
            return None;
        }
        vec![p]
    } else {
        search.split(':').map(|d| Path::new(d).join(binary)).collect()
    };
    candidates.into_iter().find_map(|p| {
        let canonical = std::fs::canonicalize(&p).ok()?;
        let meta = std::fs::metadata(&canonical).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(canonical)
    })
}

/// The tools of a configuration, resolved now (at gatewayd's start).
#[derive(Debug, Clone)]
pub struct Tools {
    tools: Vec<Tool>,
}

impl Tools {
    /// Resolves every tool's binary in `run.path`.
    pub fn resolve(run: &RunConfig) -> Result<Self, ToolConfigError> {
        let tools = specs(run)?
            .into_iter()
            .map(|spec| {
                let path = resolve(&spec.binary, &run.path);
                if path.is_none() && !spec.builtin {
                    tracing::warn!(tool = %spec.name, binary = %spec.binary, "run: the tool's binary was not found");
                }
                Tool { spec, path }
            })
            .collect();
        Ok(Tools { tools })
    }

    /// A tool by name.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.spec.name == name)
    }

    /// Every tool, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Tool> {
        let mut v: Vec<&Tool> = self.tools.iter().collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> RunConfig {
        #[derive(Deserialize)]
        struct W {
            run: RunConfig,
        }
        toml::from_str::<W>(toml_text).unwrap().run
    }

    #[test]
    fn builtins_and_overrides() {
        let run = parse(
            "[run]\n[run.tools.gh]\ndeny = []\n[run.tools.mine]\nbinary = \"/bin/sh\"\ndomain = \"x.test\"\n\
             inject = { MINE_KEY = \"secret\" }\ntimeout_ms = 5\n",
        );
        let specs = specs(&run).unwrap();
        let gh = specs.iter().find(|t| t.name == "gh").unwrap();
        assert!(gh.deny.is_empty(), "the override replaces the list");
        assert_eq!(gh.deny_flags, ["--hostname"], "fields not given stay");
        let mine = specs.iter().find(|t| t.name == "mine").unwrap();
        assert_eq!((mine.timeout_ms, mine.builtin), (5, false));
        let aws = specs.iter().find(|t| t.name == "aws").unwrap();
        assert_eq!(aws.inject.get("AWS_SECRET_ACCESS_KEY"), Some(&KeyPart::Password));
    }

    #[test]
    fn bad_tools_are_refused() {
        let err = specs(&parse("[run.tools.new]\ndomain = \"x\"\n")).unwrap_err().to_string();
        assert!(err.contains("needs `binary`"), "{err}");
        let err =
            specs(&parse("[run.tools.t]\nbinary = \"sh\"\ndomain = \"x\"\ninject = { LD_PRELOAD = \"secret\" }\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("LD_PRELOAD"), "{err}");
        let err = specs(&parse("[run]\npass_env = [\"NKMC_TOKEN\"]\n")).unwrap_err().to_string();
        assert!(err.contains("pass_env"), "{err}");
        assert!(toml::from_str::<RunConfig>("timeout = 3").is_err());
    }

    #[test]
    fn key_parts() {
        assert_eq!(KeyPart::User.of("AKIA:se:cret"), Some("AKIA"));
        assert_eq!(KeyPart::Password.of("AKIA:se:cret"), Some("se:cret"));
        assert_eq!(KeyPart::Password.of("nocolon"), None);
    }

    #[test]
    fn binaries_resolve_to_canonical_executables() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let search = dir.path().to_str().unwrap();
        let canonical = std::fs::canonicalize(&exe).unwrap();
        assert_eq!(resolve("link", search), Some(canonical.clone()));
        assert_eq!(resolve(exe.to_str().unwrap(), "/nonexistent"), Some(canonical));
        assert_eq!(resolve("plain", search), None, "not executable");
        assert_eq!(resolve("./tool", search), None, "relative paths are refused");
    }
}
