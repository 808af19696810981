//! Secret references: pipeline files name where a secret lives (an
//! environment variable or a file), never the secret itself.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use super::Problem;

/// Where to read a secret from: `{ env = "FYLE_CLIENT_SECRET" }` or `{ file = "/run/secrets/fyle" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretRef {
    /// `{ env = "NAME" }` or `{ file = "path" }`.
    Ref {
        /// Environment variable holding the secret.
        #[serde(default)]
        env: Option<String>,
        /// File holding the secret (trailing newline trimmed); `${VAR}` in the
        /// path expands, e.g. `${CREDENTIALS_DIRECTORY}/fyle_client_secret` under systemd.
        #[serde(default)]
        file: Option<PathBuf>,
    },
    /// A value written inline; refused for secrets, allowed for plain values like a client id.
    Inline(String),
}

impl SecretRef {
    /// What is wrong with the reference itself, found without reading the
    /// secret (at load time): an inline secret, or not exactly one of `env`/`file`.
    pub fn check_shape(&self, key: &str, allow_inline: bool) -> Option<Problem> {
        match self {
            SecretRef::Inline(_) if allow_inline => None,
            SecretRef::Ref {
                env: Some(_),
                file: None,
            }
            | SecretRef::Ref {
                env: None,
                file: Some(_),
            } => None,
            // Resolving these fails without reading anything, with the right message.
            other => other.resolve(key, allow_inline).err(),
        }
    }

    /// Reads the secret. `allow_inline` is true only for values that are not secret.
    pub fn resolve(&self, key: &str, allow_inline: bool) -> Result<SecretString, Problem> {
        match self {
            SecretRef::Inline(v) if allow_inline => Ok(SecretString::from(v.clone())),
            SecretRef::Inline(_) => Err(Problem::new(
                key,
                "secrets must not be written in pipeline files; use { env = \"VARIABLE\" } or { file = \"/path/to/secret\" }",
            )),
            SecretRef::Ref {
                env: Some(var),
                file: None,
            } => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
                Ok(_) => Err(Problem::new(
                    key,
                    format!("environment variable {var} is empty"),
                )),
                Err(_) => Err(Problem::new(
                    key,
                    format!("environment variable {var} is not set; export it before running"),
                )),
            },
            SecretRef::Ref {
                env: None,
                file: Some(path),
            } => {
                let path = expand_vars(path).map_err(|m| Problem::new(key, m))?;
                read_secret_file(key, &path)
            }
            SecretRef::Ref { .. } => Err(Problem::new(
                key,
                "give exactly one of `env` or `file`, e.g. { env = \"FYLE_CLIENT_SECRET\" }",
            )),
        }
    }
}

/// Expands `${NAME}` from the environment, so a path can follow a directory
/// the service manager chooses (systemd's `$CREDENTIALS_DIRECTORY`).
fn expand_vars(path: &std::path::Path) -> Result<PathBuf, String> {
    let text = path.to_string_lossy();
    let mut out = String::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in secret file path `{text}`"))?;
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => {
                let hint = if name == "CREDENTIALS_DIRECTORY" {
                    "; systemd sets it for a unit with LoadCredential="
                } else {
                    ""
                };
                return Err(format!(
                    "secret file path `{text}` uses ${{{name}}}, which is not set{hint}"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(PathBuf::from(out))
}

fn read_secret_file(key: &str, path: &std::path::Path) -> Result<SecretString, Problem> {
    match std::fs::read_to_string(path) {
        Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
        Ok(_) => Err(Problem::new(
            key,
            format!("secret file {} is empty", path.display()),
        )),
        Err(e) => Err(Problem::new(
            key,
            format!("cannot read secret file {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn inline_secrets_are_refused_with_advice() {
        let p = SecretRef::Inline("hunter2".into())
            .resolve("connection.client_secret", false)
            .unwrap_err();
        assert_eq!(p.key, "connection.client_secret");
        assert!(p.message.contains("{ env ="));
        assert!(!p.message.contains("hunter2"));
    }

    #[test]
    fn file_secrets_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "abc\n").unwrap();
        let s = SecretRef::Ref {
            env: None,
            file: Some(f),
        }
        .resolve("k", false)
        .unwrap();
        assert_eq!(s.expose_secret(), "abc");
    }

    #[test]
    fn unset_variable_in_a_secret_path_is_named() {
        let p = SecretRef::Ref {
            env: None,
            file: Some("${EXPENSE_SYNC_TEST_SURELY_UNSET}/secret".into()),
        }
        .resolve("k", false)
        .unwrap_err();
        assert!(
            p.message
                .contains("${EXPENSE_SYNC_TEST_SURELY_UNSET}, which is not set"),
            "{}",
            p.message
        );
    }

    #[test]
    fn missing_variable_is_named() {
        let p = SecretRef::Ref {
            env: Some("EXPENSE_SYNC_TEST_SURELY_UNSET".into()),
            file: None,
        }
        .resolve("k", false)
        .unwrap_err();
        assert!(
            p.message
                .contains("EXPENSE_SYNC_TEST_SURELY_UNSET is not set")
        );
    }
}
