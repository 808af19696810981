//! Checks every source's `[connection]` shares: a URL setting, and the rule
//! that a connection is either a stored vault connection or inline secrets.

use url::Url;

use super::Problem;

/// A problem when `value` (the setting `key`) is not an http(s) URL.
pub fn check_http_url(key: String, value: &str, example: &str) -> Option<Problem> {
    match Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => None,
        _ => Some(Problem::new(
            key,
            format!("`{value}` is not an http(s) URL; expected e.g. \"{example}\""),
        )),
    }
}

/// Either `vault` names a stored connection and none of `inline` is given, or
/// every one of `required` is given. `inline` lists (key, given) pairs;
/// `add_hint` says how a vault connection is made.
pub fn check_vault_or_inline(
    prefix: &str,
    vault: Option<&str>,
    inline: &[(&str, bool)],
    required: &[&str],
    add_hint: &str,
) -> Vec<Problem> {
    let mut p = Vec::new();
    match vault {
        Some(name) => {
            if name.is_empty() {
                p.push(Problem::new(
                    format!("{prefix}.vault"),
                    "is empty; give the name of a stored connection (see `expense-sync auth list`)",
                ));
            }
            for (k, _) in inline.iter().filter(|(_, given)| *given) {
                p.push(Problem::new(
                    format!("{prefix}.{k}"),
                    "cannot be combined with connection.vault: the vault connection carries its own settings and credentials; remove one of them",
                ));
            }
        }
        None => {
            for (k, _) in inline
                .iter()
                .filter(|(k, given)| !given && required.contains(k))
            {
                p.push(Problem::new(
                    format!("{prefix}.{k}"),
                    format!("is required but missing (or use a stored connection: vault = \"name\"{add_hint})"),
                ));
            }
        }
    }
    p
}
