//! Turning serde's errors into [`Problem`]s that name the exact key: every
//! problem of a section at once, unknown keys with the likely intended one.

use super::Problem;

/// Deserializes a tree, collecting every problem rather than the first:
/// after each error the offending key is taken out and the rest tried again.
/// Returns the value without its bad keys, if that much could be read.
/// Problem keys are prefixed with `prefix` (e.g. `connection`), if not empty.
pub fn deserialize_collecting<T: serde::de::DeserializeOwned>(
    mut tree: toml::Value,
    prefix: &str,
) -> (Option<T>, Vec<Problem>) {
    let full = |key: &str| match (prefix.is_empty(), key) {
        (true, _) => key.to_string(),
        (false, "(top level)") => prefix.to_string(),
        (false, _) => format!("{prefix}.{key}"),
    };
    let mut problems: Vec<Problem> = Vec::new();
    // Each round removes one key, so this bounds the rounds by the file's size too.
    for _ in 0..100 {
        match serde_path_to_error::deserialize::<_, T>(tree.clone()) {
            Ok(spec) => return (Some(spec), problems),
            Err(e) => {
                let (key, message) = locate(e.path().to_string(), e.inner().message());
                if problems.iter().any(|p| p.key == full(&key)) {
                    // Taking a required key out makes it "missing": nothing more to learn.
                    return (None, problems);
                }
                let removed = remove_key(&mut tree, &key);
                problems.push(Problem::new(full(&key), message));
                if !removed {
                    return (None, problems);
                }
            }
        }
    }
    (None, problems)
}

/// A dotted key split into table keys and array indexes: `sinks[0].path` → sinks, 0, path.
pub fn key_segments(key: &str) -> Vec<Result<&str, usize>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Ok(name));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Err(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

fn remove_key(tree: &mut toml::Value, key: &str) -> bool {
    let segments = key_segments(key);
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = tree;
    for seg in parents {
        let next = match (seg, at) {
            (Ok(name), toml::Value::Table(t)) => t.get_mut(*name),
            (Err(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Ok(name), toml::Value::Table(t)) => t.remove(*name).is_some(),
        (Err(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}
/// Turns serde's path and message into (key, message), pointing unknown-field
/// errors at the unknown key itself.
pub fn locate(path: String, message: &str) -> (String, String) {
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
        let unknown = &rest[..end];
        let expected = rest[end + 1..].trim_start_matches(", ");
        let message = match closest(unknown, expected) {
            Some(near) => format!("unknown key; did you mean `{near}`? ({expected})"),
            None => format!("unknown key; {expected}"),
        };
        return (join_once(unknown), message);
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

/// The valid key (backquoted in serde's "expected one of `a`, `b`") closest
/// to `unknown`, if one is close enough to be the likely intent.
fn closest<'a>(unknown: &str, expected: &'a str) -> Option<&'a str> {
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (edit_distance(unknown, candidate), candidate))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting an adjacent swap as one edit (the common typo).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The `config` crate appends its own location text; ours is clearer.
pub fn clean_config_message(message: &str) -> String {
    match message.rfind(" for key `") {
        Some(i) if message.ends_with('`') => message[..i].to_string(),
        _ => message.to_string(),
    }
}
