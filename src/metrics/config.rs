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
    let mut url = Url::parse(base).map_err(|e| {
        format!("`{base}` is not a URL ({e}); write the Pushgateway's base URL, e.g. \"http://pushgateway:9091\"")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{base}` must start with http:// or https://"));
    }
    url.path_segments_mut()
        .map_err(|_| format!("`{base}` cannot have a path appended"))?
        .pop_if_empty()
        .extend(["metrics", "job", "expense_sync", "pipeline", pipeline]);
    Ok(url)
}
