//! What went wrong with a request, in words a user can act on.

use std::time::Duration;

/// A request that failed for good (after any retries).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server refused the credentials (401, or Fyle's 498 "expired token").
    #[error("{method} {url} answered HTTP {status}: {message}")]
    Unauthorized {
        /// Request method.
        method: String,
        /// URL without query secrets.
        url: String,
        /// 401 or 498.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// A 4xx other than 401/429: the request itself is wrong; retrying will not help.
    #[error("{method} {url} answered HTTP {status}{}: {message}", error_kind.as_deref().map(|e| format!(" {e}")).unwrap_or_default())]
    Rejected {
        /// Request method.
        method: String,
        /// URL (query included; it never carries secrets).
        url: String,
        /// HTTP status.
        status: u16,
        /// Fyle's `error` field (e.g. `ValidationError`), when present.
        error_kind: Option<String>,
        /// The server's `message`, or the start of the body.
        message: String,
    },
    /// Retries ran out on 429, 5xx, timeouts or connection failures.
    #[error("{method} {url} failed after {attempts} attempts over {:.1}s; last error: {last}", elapsed.as_secs_f64())]
    RetriesExhausted {
        /// Request method.
        method: String,
        /// URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
    /// The server answered with a redirect that is not followed: a redirect
    /// may turn a POST into a body-less GET or carry credentials to another host.
    #[error(
        "{method} {url} answered HTTP {status} redirecting to {location}; redirects are not followed \
             (only 307/308 to the same scheme, host and port are, re-sending the same request). \
             Nothing was sent there: configure the final URL instead"
    )]
    Redirected {
        /// Request method.
        method: String,
        /// URL that redirected.
        url: String,
        /// 3xx status.
        status: u16,
        /// The `Location` header, as sent (or `(no Location header)`).
        location: String,
    },
    /// A request that must not be repeated failed after it may have reached
    /// the server, so whether the server acted on it is unknown.
    #[error(
        "{method} {url} failed after the request may have reached the server ({reason}); it was not repeated"
    )]
    OutcomeUnknown {
        /// Request method.
        method: String,
        /// URL.
        url: String,
        /// What went wrong (reset, timeout, cut-off body, 5xx).
        reason: String,
    },
    /// The request could not even be built (a bug or a bad URL in the pipeline file).
    #[error("cannot build request to {url}: {message}")]
    Invalid {
        /// URL.
        url: String,
        /// Why.
        message: String,
    },
}

impl HttpError {
    /// HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Unauthorized { status, .. }
            | HttpError::Rejected { status, .. }
            | HttpError::Redirected { status, .. } => Some(*status),
            _ => None,
        }
    }
}
