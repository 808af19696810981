//! Pipeline files: the model, loading (TOML through the `config` crate, with
//! environment overrides), and validation that names the file, the key and
//! what was expected.

pub mod duration;
mod secret;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use secret::SecretRef;

use crate::auth::FyleConnectionConfig;
use crate::http::HttpConfig;
use crate::sinks::SinkConfig;
use crate::sources::SourceConfig;
use crate::transforms::{ColumnSpec, default_columns};

/// Prefix of environment variables that override pipeline keys:
/// `EXPENSE_SYNC__SOURCE__PAGE_SIZE=100` sets `source.page_size`.
pub const ENV_PREFIX: &str = "EXPENSE_SYNC";

/// One thing wrong in a pipeline file: the key and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `source.page_size` or `sinks[1].delimiter`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A pipeline file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.file, .problems))]
pub struct ConfigError {
    /// The file that was read.
    pub file: PathBuf,
    /// What is wrong, key by key.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// An error with a single problem.
    pub fn single(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            problems: vec![Problem::new(key, message)],
        }
    }
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut s = format!("invalid pipeline file {}:", file.display());
    for p in problems {
        s.push_str(&format!("\n  - key `{}`: {}", p.key, p.message));
    }
    s
}

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
    /// `[connection]`.
    pub connection: FyleConnectionConfig,
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
    /// `[writeback]`: mark exported expenses in Fyle after each committed run.
    #[serde(default)]
    pub writeback: Option<crate::sources::fyle::WriteBackConfig>,
    /// `[metrics]`: a textfile for node-exporter and/or a Pushgateway, written at the end of each run.
    #[serde(default)]
    pub metrics: Option<crate::metrics::MetricsConfig>,
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
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| {
            ConfigError::single(origin, "(syntax)", clean_config_message(&e.to_string()))
        })?;
    // `config` layers the file and the environment; its own deserializer
    // blurs which key was wrong, so the merged tree is handed to TOML's,
    // whose errors name the exact key.
    let tree: toml::Value = built.try_deserialize().map_err(|e| {
        ConfigError::single(origin, "(top level)", clean_config_message(&e.to_string()))
    })?;
    let spec: PipelineFile = serde_path_to_error::deserialize(tree).map_err(|e| {
        let (key, message) = locate(e.path().to_string(), e.inner().message());
        ConfigError::single(origin, key, message)
    })?;
    validate(spec, origin)
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
    problems.extend(spec.connection.validate("connection"));
    problems.extend(spec.http.validate("http"));
    if let Some(m) = &spec.metrics {
        problems.extend(m.validate("metrics"));
    }
    problems.extend(spec.source.apply_presets("source"));
    problems.extend(spec.source.validate("source"));
    if spec.columns.is_empty() {
        match default_columns(spec.source.resource()) {
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
    if let Some(wb) = &spec.writeback {
        problems.extend(wb.validate("writeback", spec.source.resource()));
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
        if spec.incremental.is_some()
            && !["{run_id}", "{run_time}", "{window_start}", "{window_end}"]
                .iter()
                .any(|ph| sink.path_template().contains(ph))
        {
            problems.push(Problem::new(
                format!("sinks[{i}].path"),
                "an incremental pipeline writes new files every run, so the path needs a per-run \
                 placeholder: {run_id}, {run_time}, {window_start} or {window_end} \
                 (e.g. \"expenses-{window_end}.csv\")",
            ));
        }
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

/// Deserializes the settings of a section chosen by `type` (`[source]`,
/// `[[sinks]]`) from its table with `type` removed. A derived internally
/// tagged enum would buffer the table and lose the key of any error inside
/// it, so the inner key is carried in the message as "`key`: …", which
/// [`load`] turns back into a full key.
pub fn inner_table<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    table: toml::Table,
) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_string();
        // Unknown and missing fields name their key already.
        if path == "."
            || message.starts_with("unknown field")
            || message.starts_with("missing field")
        {
            E::custom(message)
        } else {
            E::custom(format!("`{path}`: {message}"))
        }
    })
}

/// Turns serde's path and message into (key, message), pointing unknown-field
/// errors at the unknown key itself.
fn locate(path: String, message: &str) -> (String, String) {
    let path = if path == "." { String::new() } else { path };
    let message = clean_config_message(message);
    let join = |field: &str| {
        if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = message.strip_prefix('`')
        && let Some(end) = rest.find("`: ")
    {
        return (join(&rest[..end]), rest[end + 3..].to_string());
    }
    // serde_path_to_error's path may already end with the unknown key.
    let join_once = |field: &str| {
        if path == field || path.ends_with(&format!(".{field}")) {
            path.clone()
        } else {
            join(field)
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        let expected = rest[end + 1..].trim_start_matches(", ");
        return (join_once(&rest[..end]), format!("unknown key; {expected}"));
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(end) = rest.find('`')
    {
        return (
            join_once(&rest[..end]),
            "is required but missing".to_string(),
        );
    }
    (
        if path.is_empty() {
            "(top level)".into()
        } else {
            path
        },
        message,
    )
}

/// The `config` crate appends its own location text; ours is clearer.
fn clean_config_message(message: &str) -> String {
    match message.rfind(" for key `") {
        Some(i) if message.ends_with('`') => message[..i].to_string(),
        _ => message.to_string(),
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
