//! Pipeline file errors come all at once, each with where it is: file, line
//! and column for values in the file, the variable for environment overrides,
//! and the closest valid key for a typo.

use std::path::Path;
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

fn check_offline(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["check", "--offline", file.to_str().unwrap()])
        .current_dir(file.parent().unwrap())
        .env_remove("EXPENSE_SYNC_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const GOOD: &str = r#"[pipeline]
name = "cfg"

[connection]
client_id = "x"
client_secret = { env = "S" }
refresh_token = { env = "R" }

[source]
type = "fyle"
resource = "expenses"

[[sinks]]
type = "csv"
path = "x.csv"
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f
}

#[test]
fn every_problem_is_reported_at_once_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text_in = GOOD
        .replace(
            "resource = \"expenses\"",
            "resource = \"expenses\"\npag_size = 50\nconcurrency = \"four\"",
        )
        .replace("path = \"x.csv\"", "path = \"x.csv\"\ndelimiter = \"ab\"")
        .replace("[connection]", "[http]\nmax_retries = -1\n\n[connection]");
    let file = write(dir.path(), "many.toml", &text_in);
    let o = check_offline(&file, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    let line_of = |needle: &str| text_in.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (key, at) in [
        (
            "source.pag_size",
            format!("many.toml:{}:1", line_of("pag_size")),
        ),
        (
            "source.concurrency",
            format!("many.toml:{}:15", line_of("concurrency")),
        ),
        (
            "sinks[0].delimiter",
            format!("many.toml:{}:13", line_of("delimiter")),
        ),
        (
            "http.max_retries",
            format!("many.toml:{}:15", line_of("max_retries")),
        ),
    ] {
        let line = t
            .lines()
            .find(|l| l.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("{key} is reported: {t}"));
        assert!(line.contains(&at), "{key} is located at {at}: {t}");
    }
}

#[test]
fn unknown_keys_suggest_the_closest_valid_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "typo.toml",
        &GOOD.replace(
            "resource = \"expenses\"",
            "resource = \"expenses\"\npage_sise = 50",
        ),
    );
    let o = check_offline(&file, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("did you mean `page_size`?"), "{t}");
}

#[test]
fn environment_overrides_are_blamed_on_the_variable_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "env.toml", GOOD);
    let o = check_offline(
        &file,
        &[
            ("EXPENSE_SYNC__SOURCE__PAGE_SIZE", "500"),
            ("EXPENSE_SYNC__SOURCE__CONCURENCY", "2"),
        ],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    let line = |key: &str| {
        t.lines()
            .find(|l| l.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("{key} is reported: {t}"))
            .to_string()
    };
    let size = line("source.page_size");
    assert!(
        size.contains("environment variable EXPENSE_SYNC__SOURCE__PAGE_SIZE")
            && !size.contains("env.toml:"),
        "{t}"
    );
    let typo = line("source.concurency");
    assert!(
        typo.contains("environment variable EXPENSE_SYNC__SOURCE__CONCURENCY")
            && typo.contains("did you mean `concurrency`?"),
        "{t}"
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "syntax.toml",
        &GOOD.replace("resource = \"expenses\"", "resource = \"expenses"),
    );
    let o = check_offline(&file, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    let line = GOOD
        .lines()
        .position(|l| l.starts_with("resource"))
        .unwrap()
        + 1;
    assert!(t.contains(&format!("syntax.toml:{line}:")), "{t}");
}
