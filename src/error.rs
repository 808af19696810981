//! Top-level errors and the process exit codes they map to.

use std::fmt;

/// Process exit codes; documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// Everything matching was exported and committed.
    Ok = 0,
    /// An unexpected internal failure (a bug): please report it.
    Internal = 1,
    /// Bad command line or pipeline file; nothing was written.
    Config = 2,
    /// Credentials were refused or the token/cluster endpoints failed.
    Auth = 3,
    /// The source API failed after retries, or refused a request (4xx).
    Source = 4,
    /// A sink could not write or commit its output.
    Sink = 5,
    /// The run committed, but some records were quarantined (see the run summary).
    Partial = 6,
    /// Another run of the same pipeline holds the lock.
    Locked = 7,
    /// The state file is unreadable or inconsistent; it was left untouched.
    State = 8,
    /// A stored connection's refresh token expired or was revoked: run `expense-sync auth login <connection>`.
    Reconnect = 9,
    /// The run committed, but writing the export status back to Fyle failed.
    WriteBack = 10,
    /// Stopped by SIGINT/SIGTERM: nothing committed (unless the commit point was passed), see the summary.
    Interrupted = 130,
}

impl ExitCode {
    /// The numeric code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Every failure a run can end with, each carrying a message written for people.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file or command line is wrong.
    #[error("{0}")]
    Config(#[from] crate::common::ConfigError),
    /// Authentication failed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The source API failed.
    #[error("{0}")]
    Source(String),
    /// A sink failed.
    #[error("{0}")]
    Sink(String),
    /// Another run holds the lock.
    #[error("{0}")]
    Locked(String),
    /// The state file cannot be used.
    #[error("{0}")]
    State(String),
    /// An internal failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// A stored connection must be authorised again by a person (`auth login`).
    #[error("{0}")]
    Reconnect(String),
    /// The run was stopped by a signal (or its cancel token); the message says what was kept.
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Config,
            Error::Auth(_) => ExitCode::Auth,
            Error::Source(_) => ExitCode::Source,
            Error::Sink(_) => ExitCode::Sink,
            Error::Locked(_) => ExitCode::Locked,
            Error::State(_) => ExitCode::State,
            Error::Internal(_) => ExitCode::Internal,
            Error::Reconnect(_) => ExitCode::Reconnect,
            Error::Interrupted(_) => ExitCode::Interrupted,
        }
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}
