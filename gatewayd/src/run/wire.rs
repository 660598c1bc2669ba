//! The JSON carried by `/v1/proxy/*`: the exec request, how a run ended, the tool list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The first frame of `POST /v1/proxy/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The tool's name (`gh`).
    pub tool: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables the caller sets (only the tool's `allow_env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The tool exited by itself (`code`).
    Exited,
    /// The tool was killed by a signal it did not get from nkmc (`signal`).
    Signaled,
    /// nkmc killed it at the timeout.
    Timeout,
    /// nkmc killed it when its output went over the cap.
    OutputLimit,
    /// nkmc killed it because gatewayd shut down.
    Shutdown,
}

/// The last frame of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Why it ended.
    pub reason: ExitReason,
    /// The exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Output bytes the tool produced (before masking).
    pub output_bytes: u64,
    /// What happened, for people, when nkmc stopped the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ExitStatus {
    /// The exit code `nkmc run` ends with: the tool's own; 128 + signal when a signal
    /// ended it; 124 at the timeout, 125 at the output cap, 143 when gatewayd shut down.
    pub fn shell_code(&self) -> i32 {
        match self.reason {
            ExitReason::Exited => self.code.unwrap_or(1),
            ExitReason::Signaled => 128 + self.signal.unwrap_or(0),
            ExitReason::Timeout => 124,
            ExitReason::OutputLimit => 125,
            ExitReason::Shutdown => 143,
        }
    }
}

/// One tool of `GET /v1/proxy/tools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    /// Its name.
    pub name: String,
    /// The domain whose key it gets.
    pub domain: String,
    /// The binary, resolved when gatewayd started; `None` when it was not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The binary as configured.
    pub binary: String,
    /// Injected variable names (never values).
    pub inject: Vec<String>,
    /// Refused subcommands.
    pub deny: Vec<String>,
    /// Refused flags.
    pub deny_flags: Vec<String>,
    /// Variables callers may not set.
    pub deny_env: Vec<String>,
    /// Variables callers may set.
    pub allow_env: Vec<String>,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// Output cap in bytes.
    pub max_output_bytes: u64,
    /// `builtin` or `config`.
    pub source: String,
}

/// `GET /v1/proxy/tools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolList {
    /// The tools the caller may run, by name.
    pub tools: Vec<ToolInfo>,
}
