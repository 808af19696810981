//! `[source]` with `type = "ringcentral"`, and its `[connection]`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{MAX_PER_PAGE, View};
use crate::auth::Connection;
use crate::auth::presets::{Provider, RINGCENTRAL_URL};
use crate::auth::vault::GrantKind;
use crate::common::{Problem, SecretRef};

/// What a RingCentral source can read.
pub const RESOURCES: &[&str] = &["call-log"];

/// `[source]` for RingCentral: the company call log, one window of `startTime` per run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingCentralSourceConfig {
    /// What to read; `call-log` (the company call log) is the only one.
    #[serde(default = "default_resource")]
    pub resource: String,
    /// Records per request (`perPage`), 1..=1000; large pages spare the Heavy group.
    #[serde(default = "default_per_page")]
    pub per_page: u32,
    /// `Simple`, or `Detailed` for `legs[]` and `billing`.
    #[serde(default)]
    pub view: View,
    /// Only `Inbound` or `Outbound` calls (`direction`); both when absent.
    #[serde(default)]
    pub direction: Option<String>,
    /// Only `Voice` or `Fax` (`type`); both when absent.
    #[serde(default)]
    pub call_type: Option<String>,
    /// How far behind now each window ends: a finished call appears in the
    /// call log 15–30 s after it ends.
    #[serde(default = "default_safety_lag", with = "crate::common::duration")]
    pub safety_lag: Duration,
    /// `[connection]`, parsed by [`RingCentralSourceConfig::parse_connection`].
    #[serde(skip)]
    pub connection: Option<RcConnectionConfig>,
}

fn default_resource() -> String {
    "call-log".into()
}

fn default_per_page() -> u32 {
    MAX_PER_PAGE
}

fn default_safety_lag() -> Duration {
    Duration::from_secs(60)
}

/// `[connection]` of a RingCentral pipeline: a vault connection made by
/// `expense-sync auth add --provider ringcentral` (its access token is reused
/// across runs), or a REST API app's client and JWT credential.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcConnectionConfig {
    /// Name of a connection in the credential vault (`expense-sync auth list`).
    #[serde(default)]
    pub vault: Option<String>,
    /// API server (default `https://platform.ringcentral.com`); without `vault` only.
    #[serde(default)]
    pub server: Option<String>,
    /// The app's client id (not secret: may be inline).
    #[serde(default)]
    pub client_id: Option<SecretRef>,
    /// The app's client secret.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// The user's JWT credential (Developer Console → Credentials).
    #[serde(default)]
    pub jwt: Option<SecretRef>,
}

impl RcConnectionConfig {
    /// Checks what can be checked without reading secrets.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        use crate::common::connection::{check_http_url, check_vault_or_inline};
        let mut p: Vec<Problem> = self
            .server
            .as_deref()
            .and_then(|s| check_http_url(format!("{prefix}.server"), s, RINGCENTRAL_URL))
            .into_iter()
            .collect();
        p.extend(check_vault_or_inline(
            prefix,
            self.vault.as_deref(),
            &[
                ("server", self.server.is_some()),
                ("client_id", self.client_id.is_some()),
                ("client_secret", self.client_secret.is_some()),
                ("jwt", self.jwt.is_some()),
            ],
            &["client_id", "client_secret", "jwt"],
            ", made by `expense-sync auth add --provider ringcentral`",
        ));
        p
    }

    /// The JWT-grant connection the settings describe (not stored: each run
    /// makes one token request; a vault connection reuses its token instead).
    pub fn resolve(&self, prefix: &str) -> Result<Connection, Vec<Problem>> {
        let (Some(id), Some(secret), Some(jwt)) = (&self.client_id, &self.client_secret, &self.jwt)
        else {
            return Err(self.validate(prefix));
        };
        let id = id.resolve(&format!("{prefix}.client_id"), true);
        let secret = secret.resolve(&format!("{prefix}.client_secret"), false);
        let jwt = jwt.resolve(&format!("{prefix}.jwt"), false);
        match (id, secret, jwt) {
            (Ok(id), Ok(secret), Ok(jwt)) => {
                let mut c = Provider::Ringcentral.connection(
                    GrantKind::JwtBearer,
                    self.server.as_deref(),
                    id.expose_secret(),
                );
                c.client_secret = Some(secret);
                c.assertion = Some(jwt);
                Ok(c)
            }
            (id, secret, jwt) => Err([id.err(), secret.err(), jwt.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

impl RingCentralSourceConfig {
    /// Reads `[connection]`; a RingCentral source has no `[writeback]`.
    pub fn parse_connection(
        &mut self,
        connection: Option<&toml::Table>,
        writeback: Option<&toml::Table>,
    ) -> Vec<Problem> {
        let mut p = Vec::new();
        if writeback.is_some() {
            p.push(Problem::new(
                "writeback",
                "RingCentral has no export status to write back; remove [writeback] (it is for Fyle expenses)",
            ));
        }
        let Some(table) = connection else {
            p.push(Problem::new(
                "connection",
                "is required but missing; e.g. [connection] vault = \"ringcentral\" (a connection made by `expense-sync auth add --provider ringcentral`)",
            ));
            return p;
        };
        let (parsed, problems) = crate::common::keys::deserialize_collecting::<RcConnectionConfig>(
            toml::Value::Table(table.clone()),
            "connection",
        );
        p.extend(problems);
        if let Some(c) = parsed {
            p.extend(c.validate("connection"));
            self.connection = Some(c);
        }
        p
    }

    /// Checks the section; keys are prefixed with `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if !RESOURCES.contains(&self.resource.as_str()) {
            p.push(Problem::new(
                format!("{prefix}.resource"),
                format!(
                    "unknown RingCentral resource `{}`; expected one of {}",
                    self.resource,
                    RESOURCES.join(", ")
                ),
            ));
        }
        if !(1..=MAX_PER_PAGE).contains(&self.per_page) {
            p.push(Problem::new(
                format!("{prefix}.per_page"),
                format!(
                    "{} is out of range; the call log serves 1 to {MAX_PER_PAGE} records per page",
                    self.per_page
                ),
            ));
        }
        let one_of = |key: &str, value: &Option<String>, allowed: &[&str]| {
            value
                .as_ref()
                .filter(|v| !allowed.contains(&v.as_str()))
                .map(|v| {
                    Problem::new(
                        format!("{prefix}.{key}"),
                        format!("`{v}` is not one of {}", allowed.join(", ")),
                    )
                })
        };
        p.extend(one_of(
            "direction",
            &self.direction,
            &["Inbound", "Outbound"],
        ));
        p.extend(one_of("call_type", &self.call_type, &["Voice", "Fax"]));
        p
    }

    /// The record field windows follow.
    pub fn cursor(&self) -> &str {
        "startTime"
    }

    /// Query parameters that narrow the selection, besides the window.
    pub fn filter_pairs(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(d) = &self.direction {
            q.push(("direction".into(), d.clone()));
        }
        if let Some(t) = &self.call_type {
            q.push(("type".into(), t.clone()));
        }
        q
    }

    /// What the source selects, part by part, for the selection fingerprint.
    pub fn selection(&self) -> BTreeMap<String, String> {
        let mut parts = BTreeMap::new();
        parts.insert("platform".into(), "ringcentral".into());
        parts.insert("resource".into(), self.resource.clone());
        parts.insert("cursor".into(), self.cursor().into());
        parts.insert("view".into(), format!("{:?}", self.view));
        for (k, v) in self.filter_pairs() {
            parts.insert(format!("filter.{k}"), v);
        }
        parts
    }
}
