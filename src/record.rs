//! The one record model: a JSON object exactly as the API returned it.
//!
//! Numbers keep their original text (`serde_json/arbitrary_precision`), so an
//! amount like `1984.18` reaches a decimal column without touching `f64`.

use serde_json::Value;

/// A record as returned by a source: a JSON object.
pub type Record = Value;

/// A path into a record, such as `employee.user.email` or `locations[0].city`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    /// Parses `a.b[0].c`; keys containing dots or brackets can be quoted: `custom_fields_flattened."Cost Code"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut chars = text.chars().peekable();
        let mut expect_key = true;
        if text.trim().is_empty() {
            return Err("a path must not be empty".into());
        }
        while let Some(&c) = chars.peek() {
            match c {
                '.' if !expect_key => {
                    chars.next();
                    expect_key = true;
                }
                '[' => {
                    chars.next();
                    let mut digits = String::new();
                    for d in chars.by_ref() {
                        if d == ']' {
                            break;
                        }
                        digits.push(d);
                    }
                    let index = digits.trim().parse().map_err(|_| {
                        format!("`[{digits}]` in path `{text}` is not an array index")
                    })?;
                    segments.push(Segment::Index(index));
                    expect_key = false;
                }
                '"' if expect_key => {
                    chars.next();
                    let mut key = String::new();
                    let mut closed = false;
                    for d in chars.by_ref() {
                        if d == '"' {
                            closed = true;
                            break;
                        }
                        key.push(d);
                    }
                    if !closed {
                        return Err(format!("unclosed quote in path `{text}`"));
                    }
                    segments.push(Segment::Key(key));
                    expect_key = false;
                }
                _ if expect_key => {
                    let mut key = String::new();
                    while let Some(&d) = chars.peek() {
                        if d == '.' || d == '[' {
                            break;
                        }
                        key.push(d);
                        chars.next();
                    }
                    if key.is_empty() {
                        return Err(format!("empty segment in path `{text}`"));
                    }
                    segments.push(Segment::Key(key));
                    expect_key = false;
                }
                _ => return Err(format!("unexpected `{c}` in path `{text}`")),
            }
        }
        if expect_key {
            return Err(format!("path `{text}` ends with a dot"));
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// The path of the top-level field `key`, whatever characters it holds.
    pub fn key(key: &str) -> Self {
        Self {
            text: key.to_string(),
            segments: vec![Segment::Key(key.to_string())],
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The object keys along this path, array indexes left out (what an extraction plan keeps).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Index(_) => None,
        })
    }

    /// The keys of this path when it has no array index.
    pub(crate) fn key_only(&self) -> Option<Vec<&str>> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    /// The value at this path, or `None` when any step is missing or null.
    pub fn lookup<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        let mut cur = record;
        for seg in &self.segments {
            cur = match seg {
                Segment::Key(k) => cur.as_object()?.get(k)?,
                Segment::Index(i) => cur.as_array()?.get(*i)?,
            };
        }
        if cur.is_null() { None } else { Some(cur) }
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_and_indexes_resolve() {
        let r = json!({"employee": {"user": {"email": "a@b.c"}}, "locations": [{"city": "Pune"}]});
        assert_eq!(
            FieldPath::parse("employee.user.email").unwrap().lookup(&r),
            Some(&json!("a@b.c"))
        );
        assert_eq!(
            FieldPath::parse("locations[0].city").unwrap().lookup(&r),
            Some(&json!("Pune"))
        );
        assert_eq!(
            FieldPath::parse("locations[3].city").unwrap().lookup(&r),
            None
        );
    }

    #[test]
    fn quoted_keys_may_hold_dots_and_spaces() {
        let r = json!({"custom_fields_flattened": {"Cost.Code X": "CC-1"}});
        let p = FieldPath::parse("custom_fields_flattened.\"Cost.Code X\"").unwrap();
        assert_eq!(p.lookup(&r), Some(&json!("CC-1")));
    }

    #[test]
    fn null_counts_as_missing() {
        let r = json!({"project": null});
        assert_eq!(FieldPath::parse("project.name").unwrap().lookup(&r), None);
        assert_eq!(FieldPath::parse("project").unwrap().lookup(&r), None);
    }

    #[test]
    fn malformed_paths_are_rejected() {
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a.").is_err());
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("a[x]").is_err());
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let v: Value =
            serde_json::from_str(r#"{"amount": 0.1000000000000000055511151231257827}"#).unwrap();
        assert_eq!(
            v["amount"].to_string(),
            "0.1000000000000000055511151231257827"
        );
    }
}
