//! `CliError`: what went wrong, a hint, and the documented exit code.

use std::fmt;
use std::process::ExitCode;

/// Exit codes (documented in `--help` and `docs/CLI.md`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The server refused the request, or the input was wrong, or the server was unreachable.
    pub const ERROR: u8 = 1;
    /// The command line itself was wrong (unknown option, missing argument).
    pub const USAGE: u8 = 2;
    /// `flagctl diff`: the file and the server differ.
    pub const DIFFERENCES: u8 = 3;
    /// `flagctl refs`, `flagctl stale`: something to act on (a flag without references, an
    /// unknown key, a stale flag).
    pub const FINDINGS: u8 = 3;
}

/// The kinds of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The command line is wrong.
    Usage,
    /// The input (a file, a value) is wrong.
    Input,
    /// The server said no.
    Server,
    /// The server could not be reached.
    Network,
    /// Configuration (server, token) is missing or unreadable.
    Config,
    /// The results could not be written to stdout.
    Output,
    /// Whoever reads stdout closed it before the end (`flagctl export | head -1`): not a
    /// failure, so `main` exits 0 and says nothing.
    BrokenPipe,
}

/// An error for the user: a message naming what and where, and maybe a hint.
#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
    pub details: Vec<String>,
    pub hint: Option<String>,
    /// The server's error code, when the server refused the request: what commands decide on
    /// (never the message, which is for people).
    pub server_code: Option<flag_protocol::ErrorCode>,
}

impl CliError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        CliError {
            kind,
            message: message.into(),
            details: Vec::new(),
            hint: None,
            server_code: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(Kind::Usage, message)
    }

    pub fn input(message: impl Into<String>) -> Self {
        CliError::new(Kind::Input, message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        CliError::new(Kind::Config, message)
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.details.push(detail.into());
        self
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.kind {
            Kind::Usage => exit::USAGE,
            _ => exit::ERROR,
        })
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        for detail in &self.details {
            write!(f, "\n  - {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl From<flag_core::ValidationError> for CliError {
    fn from(error: flag_core::ValidationError) -> Self {
        let mut cli = CliError::input(format!(
            "invalid flag definition ({} problem(s))",
            error.problems.len()
        ));
        cli.details = error.problems.iter().map(ToString::to_string).collect();
        cli
    }
}

pub type Result<T> = std::result::Result<T, CliError>;
