//! Pipeline files: the model, loading (TOML through the `config` crate, with
//! environment overrides), and validation that names the file, the key and
//! what was expected.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::common::{ConfigError, Problem, SecretRef, duration, inner_table};

use crate::common::keys::{clean_config_message, deserialize_collecting, key_segments};

use crate::http::HttpConfig;
use crate::sinks::SinkConfig;
use crate::sources::SourceConfig;
use crate::transforms::ColumnSpec;

/// Prefix of environment variables that override pipeline keys:
/// `EXPENSE_SYNC__SOURCE__PAGE_SIZE=100` sets `source.page_size`.
pub const ENV_PREFIX: &str = "EXPENSE_SYNC";

/// Environment variable that overrides `connection.accounts_url` (what
/// `expense-sync simulate` prints), unless `EXPENSE_SYNC__CONNECTION__ACCOUNTS_URL` is set.
pub const ACCOUNTS_URL_ENV: &str = "FYLE_ACCOUNTS_URL";

/// `[pipeline]`: the pipeline's name and where its outputs go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name used in file names, state and logs (letters, digits, `-`, `_`).
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Directory that relative sink paths are resolved against.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// State file; default `{output_dir}/{name}.state.json`.
    #[serde(default)]
    pub state_path: Option<PathBuf>,
}

/// `[incremental]`: export only what changed since the last committed run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalConfig {
    /// Each run starts this long before the previous run's upper bound, to
    /// catch changes committed late with older timestamps; versions already
    /// delivered are de-duplicated.
    #[serde(default = "default_lookback", with = "duration")]
    pub lookback: std::time::Duration,
    /// Where the first run starts (RFC 3339); default: the beginning.
    #[serde(default)]
    pub start: Option<chrono::DateTime<chrono::Utc>>,
}

fn default_lookback() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("out")
}

/// A pipeline file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// `[pipeline]`.
    pub pipeline: PipelineSection,
    /// `[connection]`, as written: its shape is the source's, which parses it
    /// (the parsed form lives in `source`).
    #[serde(default)]
    pub connection: Option<toml::Table>,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[source]`.
    pub source: SourceConfig,
    /// `[incremental]`; absent means every run exports the whole selection.
    #[serde(default)]
    pub incremental: Option<IncrementalConfig>,
    /// `[[columns]]`; empty means the resource's default columns.
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
    /// `[[transforms]]`: filters, mappings and derived fields applied in order before `columns`.
    #[serde(default)]
    pub transforms: Vec<crate::transforms::TransformSpec>,
    /// `[[sinks]]`.
    pub sinks: Vec<SinkConfig>,
    /// `[writeback]`, as written: Fyle's "mark exported expenses after each
    /// committed run", parsed by the source (the parsed form lives in `source`).
    #[serde(default)]
    pub writeback: Option<toml::Table>,
    /// `[metrics]`: a textfile for node-exporter and/or a Pushgateway, written at the end of each run.
    #[serde(default)]
    pub metrics: Option<crate::metrics::config::MetricsConfig>,
    /// `[[notify]]`: post the run summary to team chat or a webhook after each run.
    #[serde(default)]
    pub notify: Vec<crate::notify::config::NotifyConfig>,
}

/// A loaded and validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Where it was read from.
    pub file: PathBuf,
    /// The sections, with default columns filled in.
    pub spec: PipelineFile,
}

impl Pipeline {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.spec.pipeline.name
    }

    /// The directory relative paths in the file (mapping tables) are resolved against: the file's own.
    pub fn base_dir(&self) -> PathBuf {
        base_dir(&self.file)
    }

    /// The state file, given the output directory in force.
    pub fn state_path(&self, output_dir: &Path) -> PathBuf {
        self.spec
            .pipeline
            .state_path
            .clone()
            .unwrap_or_else(|| output_dir.join(format!("{}.state.json", self.name())))
    }
}

/// Reads, overrides from the environment, and validates a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single(path, "(file)", format!("cannot read the file: {e}")))?;
    load_str(&text, path)
}

/// Like [`load`], for text already in memory; `origin` names it in errors.
pub fn load_str(text: &str, origin: &Path) -> Result<Pipeline, ConfigError> {
    let overrides = env_overrides();
    let place = |mut problems: Vec<Problem>| ConfigError {
        problems: {
            for p in &mut problems {
                p.origin = p.origin.take().or_else(|| {
                    where_is(
                        &p.key,
                        p.message.starts_with("unknown key"),
                        text,
                        origin,
                        &overrides,
                    )
                });
            }
            problems
        },
        file: origin.to_path_buf(),
    };
    // TOML's own parser first: its syntax errors carry the position.
    if let Err(e) = toml::de::DeTable::parse(text) {
        let mut p = Problem::new("(syntax)", e.message().trim().to_string());
        p.origin = e.span().map(|s| position(text, origin, s.start));
        return Err(place(vec![p]));
    }
    // FYLE_ACCOUNTS_URL is Fyle's: another platform's connection has no such key.
    let fyle_source = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("source")?.get("type")?.as_str().map(|k| k == "fyle"))
        .unwrap_or(true);
    let accounts_url = std::env::var(ACCOUNTS_URL_ENV)
        .ok()
        .filter(|_| fyle_source)
        .filter(|v| !v.trim().is_empty())
        .filter(|_| std::env::var_os("EXPENSE_SYNC__CONNECTION__ACCOUNTS_URL").is_none());
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .set_override_option("connection.accounts_url", accounts_url)
        .and_then(|b| b.build())
        .map_err(|e| {
            place(vec![Problem::new(
                "(syntax)",
                clean_config_message(&e.to_string()),
            )])
        })?;
    // `config` layers the file and the environment; its own deserializer
    // blurs which key was wrong, so the merged tree is handed to TOML's,
    // whose errors name the exact key.
    let tree: toml::Value = built.try_deserialize().map_err(|e| {
        place(vec![Problem::new(
            "(top level)",
            clean_config_message(&e.to_string()),
        )])
    })?;
    match deserialize_collecting::<PipelineFile>(tree, "") {
        (Some(spec), problems) if problems.is_empty() => {
            validate(spec, origin).map_err(|e| place(e.problems))
        }
        // The rest of the file, without the bad keys, is checked too.
        (Some(spec), mut problems) => {
            if let Err(e) = validate(spec, origin) {
                problems.extend(e.problems);
            }
            Err(place(problems))
        }
        (None, problems) => Err(place(problems)),
    }
}

/// `EXPENSE_SYNC__…` variables in force, with the dotted key each one sets.
fn env_overrides() -> Vec<(String, String)> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut out: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter_map(|k| {
            let key = k.strip_prefix(&prefix)?.to_lowercase().replace("__", ".");
            Some((k, key))
        })
        .collect();
    if std::env::var(ACCOUNTS_URL_ENV).is_ok_and(|v| !v.trim().is_empty())
        && !out.iter().any(|(_, k)| k == "connection.accounts_url")
    {
        out.push((ACCOUNTS_URL_ENV.into(), "connection.accounts_url".into()));
    }
    out
}

/// Where the value at `key` came from: the environment variable that set it,
/// else its `file:line:column` (the key itself for an unknown key, else the value).
fn where_is(
    key: &str,
    at_key: bool,
    text: &str,
    file: &Path,
    overrides: &[(String, String)],
) -> Option<String> {
    let covers = |set: &str| {
        key == set
            || key
                .strip_prefix(set)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    if let Some((var, _)) = overrides.iter().find(|(_, set)| covers(set)) {
        return Some(format!("environment variable {var}"));
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut value: Option<&toml::Spanned<toml::de::DeValue>> = None;
    let mut span = None;
    for seg in key_segments(key) {
        let next = match (seg, value.map(|v| v.get_ref())) {
            (Ok(name), None) => table
                .iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(k, v)| (k.span(), v)),
            (Ok(name), Some(toml::de::DeValue::Table(t))) => t
                .iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(k, v)| (k.span(), v)),
            (Err(i), Some(v @ toml::de::DeValue::Array(_))) => {
                v.get(i).map(|item| (item.span(), item))
            }
            _ => None,
        };
        let Some((key_span, v)) = next else { break };
        span = Some(if at_key { key_span } else { v.span() });
        if let toml::de::DeValue::Table(t) = v.get_ref() {
            table = t;
        }
        value = Some(v);
    }
    span.map(|s| position(text, file, s.start))
}

/// `file:line:column` (both from 1) of byte `offset` in `text`.
fn position(text: &str, file: &Path, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, l)| l)
        .chars()
        .count()
        + 1;
    format!("{}:{line}:{column}", file.display())
}

fn validate(mut spec: PipelineFile, origin: &Path) -> Result<Pipeline, ConfigError> {
    let mut problems = Vec::new();
    let name = &spec.pipeline.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        problems.push(Problem::new(
            "pipeline.name",
            format!("`{name}` must be non-empty and use only letters, digits, `-` and `_` (it is used in file names)"),
        ));
    }
    problems.extend(
        spec.source
            .parse_sections(spec.connection.as_ref(), spec.writeback.as_ref()),
    );
    problems.extend(spec.http.validate("http"));
    if let Some(m) = &spec.metrics {
        problems.extend(m.validate("metrics"));
    }
    for (i, n) in spec.notify.iter().enumerate() {
        problems.extend(n.validate(&format!("notify[{i}]")));
    }
    problems.extend(spec.source.apply_presets("source"));
    problems.extend(spec.source.validate("source"));
    if spec.columns.is_empty() {
        match spec.source.default_columns() {
            Some(cols) => spec.columns = cols,
            None => problems.push(Problem::new(
                "columns",
                format!(
                    "resource `{}` has no default column set; list the columns with [[columns]] name = \"…\", path = \"…\"",
                    spec.source.resource()
                ),
            )),
        }
    }
    if !spec.columns.is_empty()
        && let Err(ps) = crate::transforms::Projector::new(&spec.columns)
    {
        problems.extend(ps);
    }
    if let Err(ps) = crate::transforms::Transforms::new(&spec.transforms, &base_dir(origin)) {
        problems.extend(ps);
    }
    if spec.sinks.is_empty() {
        problems.push(Problem::new(
            "sinks",
            "at least one [[sinks]] is needed, e.g. type = \"csv\", path = \"expenses.csv\"",
        ));
    }
    if spec.source.after_commit_needs_ids() {
        // A rejected record can only be marked ERROR if the push names it.
        for (i, sink) in spec.sinks.iter().enumerate() {
            if let SinkConfig::Http(h) = sink
                && crate::sinks::http::id_column_index(
                    &h.id_column,
                    spec.columns.iter().map(|c| c.name.as_str()),
                )
                .is_none()
            {
                problems.push(Problem::new(
                    format!("sinks[{i}].id_column"),
                    format!(
                        "column `{}` does not exist; with [writeback], the HTTP sink needs a column holding the expense id",
                        h.id_column
                    ),
                ));
            }
        }
    }
    let mut paths = std::collections::HashMap::new();
    let column_names: Vec<&str> = spec.columns.iter().map(|c| c.name.as_str()).collect();
    for (i, sink) in spec.sinks.iter().enumerate() {
        problems.extend(sink.validate(&format!("sinks[{i}]")));
        problems.extend(sink.validate_columns(&format!("sinks[{i}]"), &column_names));
        problems
            .extend(sink.validate_run_unique(&format!("sinks[{i}]"), spec.incremental.is_some()));
        if let Some(prev) = paths.insert(sink.path_template().to_string(), i) {
            problems.push(Problem::new(
                format!("sinks[{i}].path"),
                format!("the same path as sinks[{prev}]; two sinks cannot write one file"),
            ));
        }
    }
    if problems.is_empty() {
        Ok(Pipeline {
            file: origin.to_path_buf(),
            spec,
        })
    } else {
        Err(ConfigError {
            file: origin.to_path_buf(),
            problems,
        })
    }
}

fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[pipeline]
name = "t"

[connection]
client_id = "id"
client_secret = { env = "S" }
refresh_token = { env = "R" }

[source]
type = "fyle"
resource = "expenses"

[[sinks]]
type = "csv"
path = "x.csv"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        load_str(text, Path::new("p.toml")).unwrap_err().problems
    }

    #[test]
    fn a_good_file_loads_with_default_columns() {
        let p = load_str(GOOD, Path::new("p.toml")).unwrap();
        assert!(p.spec.columns.len() > 10);
        assert_eq!(p.spec.http.requests_per_second, 10.0);
    }

    #[test]
    fn unknown_keys_are_named_once() {
        let p = problems(&format!(
            "{GOOD}\n[[columns]]\nname = \"a\"\npath = \"id\"\nscael = 2\n"
        ));
        assert_eq!(p[0].key, "columns[0].scael", "{p:?}");
        let p = problems(&GOOD.replace(
            "resource = \"expenses\"",
            "resource = \"expenses\"\nresourse = 1",
        ));
        assert_eq!(p[0].key, "source.resourse", "{p:?}");
        let p = problems(&format!("{GOOD}\n[extra]\na = 1\n"));
        assert_eq!(p[0].key, "extra", "{p:?}");
    }

    #[test]
    fn wrong_types_name_the_key_and_the_expectation() {
        let p = problems(&GOOD.replace(
            "resource = \"expenses\"",
            "resource = \"expenses\"\npage_size = \"many\"",
        ));
        assert_eq!(p[0].key, "source.page_size", "{p:?}");
        assert!(!p[0].message.contains("for key"), "{p:?}");
        let p = problems(&GOOD.replace("path = \"x.csv\"", "path = \"x.csv\"\nbom = \"yes\""));
        assert!(
            p[0].key.starts_with("sinks[0]") && format!("{p:?}").contains("bom"),
            "{p:?}"
        );
    }

    #[test]
    fn missing_sections_are_named() {
        let p = problems(&GOOD.replace("[source]\ntype = \"fyle\"\nresource = \"expenses\"\n", ""));
        assert_eq!(p[0].key, "source", "{p:?}");
        assert!(p[0].message.contains("missing"), "{p:?}");
    }
}
