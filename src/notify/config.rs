//! `[[notify]]` as written in a pipeline file, and what notifying did: plain
//! data the config and the run summary hold, kept apart from the sending
//! code so that neither needs the runner.

use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

use crate::common::{Problem, SecretRef};

/// Message format of a `[[notify]]` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// RingCentral team messaging incoming webhook: an Adaptive Card.
    Ringcentral,
    /// Any JSON webhook: the run summary as JSON.
    Webhook,
}

/// When to notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NotifyWhen {
    /// After every run.
    #[default]
    Always,
    /// Only when the run did not fully succeed (partial, failed, interrupted).
    Problems,
}

/// One `[[notify]]` section of a pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Message format.
    pub kind: NotifyKind,
    /// Webhook URL; a secret reference, since whoever has it can post.
    pub url: SecretRef,
    /// When to send.
    #[serde(default)]
    pub on: NotifyWhen,
}

impl NotifyConfig {
    /// Checks the entry without reading its secret (at load time).
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        self.url
            .check_shape(&format!("{prefix}.url"), false)
            .into_iter()
            .collect()
    }

    /// Reads the webhook URL (for `expense-sync check`): a reference that does
    /// not resolve, or a value that is no http(s) URL, is a problem of the file.
    pub fn resolve(&self, prefix: &str) -> Result<Url, Problem> {
        let key = format!("{prefix}.url");
        let url = self.url.resolve(&key, false)?;
        match Url::parse(url.expose_secret()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
            Ok(_) | Err(_) => Err(Problem::new(
                key,
                "the secret it names is not an http(s) URL (the value is not shown: it is a secret)",
            )),
        }
    }
}

/// What happened to the notifications of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NotifySummary {
    /// Notifications delivered.
    pub sent: u64,
    /// Notifications that failed (each logged with the reason).
    pub failed: u64,
    /// Why each failed (never the webhook URL: it is a secret).
    pub errors: Vec<String>,
}
