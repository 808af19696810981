//! `[metrics]` as written in a pipeline file: plain settings the config
//! holds, kept apart from the exporting code so that neither needs the runner.

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use crate::common::Problem;

/// `[metrics]` in a pipeline file; `run --metrics-file` / `--metrics-push` override it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File for node-exporter's textfile collector (`{pipeline}` expands to the pipeline name).
    #[serde(default)]
    pub textfile: Option<PathBuf>,
    /// Pushgateway base URL, e.g. `http://pushgateway:9091`.
    #[serde(default)]
    pub pushgateway: Option<String>,
}

impl MetricsConfig {
    /// Problems with the settings, keyed under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(u) = &self.pushgateway
            && let Err(why) = pushgateway_url(u, "check")
        {
            problems.push(Problem::new(format!("{prefix}.pushgateway"), why));
        }
        if self
            .textfile
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty() || p.to_string_lossy().ends_with('/'))
        {
            problems.push(Problem::new(
                format!("{prefix}.textfile"),
                "must name a file, e.g. \"/var/lib/node_exporter/textfile_collector/expense_sync_{pipeline}.prom\"",
            ));
        }
        problems
    }

    /// Whether anything is to be exported.
    pub fn is_enabled(&self) -> bool {
        self.textfile.is_some() || self.pushgateway.is_some()
    }
}

/// The Pushgateway URL of one pipeline's group: `{base}/metrics/job/expense_sync/pipeline/{name}`.
pub fn pushgateway_url(base: &str, pipeline: &str) -> Result<Url, String> {
    pushgateway_group_url(base, &[("pipeline", pipeline)])
}

/// The Pushgateway URL of the group `labels` (after `job="expense_sync"`),
/// e.g. `…/pipeline/{p}/tenant/{t}`. A value the path cannot carry (empty,
/// or with a `/`) is sent base64url-encoded as `{label}@base64/{value}`, as
/// the Pushgateway API defines; other characters are percent-encoded.
pub fn pushgateway_group_url(base: &str, labels: &[(&str, &str)]) -> Result<Url, String> {
    use base64::Engine;
    let mut url = Url::parse(base).map_err(|e| {
        format!("`{base}` is not a URL ({e}); write the Pushgateway's base URL, e.g. \"http://pushgateway:9091\"")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{base}` must start with http:// or https://"));
    }
    let mut segments = vec![
        "metrics".to_string(),
        "job".to_string(),
        "expense_sync".to_string(),
    ];
    for (label, value) in labels {
        if value.is_empty() || value.contains('/') {
            segments.push(format!("{label}@base64"));
            // An empty value must be a single `=` (the path would lose an empty segment).
            let encoded = base64::engine::general_purpose::URL_SAFE.encode(value);
            segments.push(if encoded.is_empty() {
                "=".to_string()
            } else {
                encoded
            });
        } else {
            segments.push(label.to_string());
            segments.push(value.to_string());
        }
    }
    url.path_segments_mut()
        .map_err(|_| format!("`{base}` cannot have a path appended"))?
        .pop_if_empty()
        .extend(&segments);
    Ok(url)
}
