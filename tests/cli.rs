//! The real binary: exit codes, error messages, the demo, and secrets kept
//! out of everything it prints.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

async fn run_bin(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sim_env(sim: &expense_sync::simulator::Simulator) -> Vec<(&'static str, String)> {
    let c = sim.credentials();
    vec![
        ("FYLE_CLIENT_ID", c.client_id.clone()),
        ("FYLE_CLIENT_SECRET", c.client_secret.clone()),
        ("FYLE_REFRESH_TOKEN", c.refresh_token.clone()),
    ]
}

#[tokio::test]
async fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["demo", "--help"],
        vec!["simulate", "--help"],
    ] {
        let o = run_bin(&cmd, dir.path(), &[]).await;
        assert!(o.status.success(), "{cmd:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{cmd:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_writes_real_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(
        &["demo", "--out", "demo-out", "--expenses", "300"],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let csv_path = dir.path().join("demo-out/demo-expenses.csv");
    let parquet_path = dir.path().join("demo-out/demo-expenses.parquet");
    let (header, rows) = read_csv(&csv_path);
    assert!(header.len() > 10, "default columns: {header:?}");
    assert!(!rows.is_empty());
    assert!(
        std::fs::read(&csv_path)
            .unwrap()
            .starts_with(b"\xEF\xBB\xBF"),
        "demo CSV has a BOM for Excel"
    );
    let f = std::fs::File::open(&parquet_path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    assert_eq!(
        reader.metadata().file_metadata().num_rows() as usize,
        rows.len()
    );
    assert!(
        text(&o).contains("demo-expenses.csv"),
        "demo says where the files are"
    );
}

#[tokio::test]
async fn bad_pipeline_files_name_the_file_and_key_and_exit_2_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[pipeline]
name = "bad"
output_dir = "out"

[connection]
client_id = "x"
client_secret = { env = "S" }
refresh_token = { env = "R" }

[source]
type = "fyle"
resource = "expenses"
PAGE

[[sinks]]
type = "csv"
path = "x.csv"
SINK
"#;
    let cases = [
        ("page_size = 500", "", "source.page_size", "200"),
        ("resource2 = \"x\"", "", "source.resource2", "unknown"),
        ("", "delimiter = \"ab\"", "sinks[0].delimiter", ""),
        ("page_size = \"many\"", "", "source.page_size", ""),
        ("safety_lag = \"soon\"", "", "source.safety_lag", "duration"),
    ];
    for (i, (page, sink, key, words)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, base.replace("PAGE", page).replace("SINK", sink)).unwrap();
        let o = run_bin(&["run", file.to_str().unwrap()], dir.path(), &[]).await;
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "case {i}: {t}");
        assert!(
            t.contains(&format!("bad{i}.toml")),
            "case {i} names the file: {t}"
        );
        assert!(t.contains(key), "case {i} names key {key}: {t}");
        assert!(t.contains(words), "case {i} says `{words}`: {t}");
    }
    // An unknown resource and a zero rate in one file: both reported.
    let file = dir.path().join("multi.toml");
    std::fs::write(
        &file,
        base.replace("PAGE", "")
            .replace("SINK", "")
            .replace("resource = \"expenses\"", "resource = \"expense\"")
            + "\n[http]\nrequests_per_second = 0\n",
    )
    .unwrap();
    let o = run_bin(&["run", file.to_str().unwrap()], dir.path(), &[]).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("source.resource") && t.contains("http.requests_per_second"),
        "{t}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "nothing may be written for a bad file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_secret_in_pipeline_file_is_refused() {
    let sim = simulator(10, 1, None).await;
    let dir = tempfile::tempdir().unwrap();
    let text_in = pipeline_text(&sim, "inline", "", "").replace(
        "client_secret = { env = \"FYLE_CLIENT_SECRET\" }",
        "client_secret = \"do-not-put-me-here\"",
    );
    let file = dir.path().join("inline.toml");
    std::fs::write(&file, text_in).unwrap();
    let env = sim_env(&sim);
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &env,
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("connection.client_secret") && t.contains("env ="),
        "{t}"
    );
    assert!(!t.contains("do-not-put-me-here"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_summary_and_errors_never_contain_secrets() {
    let sim = simulator(450, 2, Some(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.toml");
    std::fs::write(&file, pipeline_text(&sim, "secret", "page_size = 50", "")).unwrap();
    let env = sim_env(&sim);
    let mut env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Everything at trace, our crate and every library below it.
    env.push(("EXPENSE_SYNC_LOG", "trace"));
    let summary = dir.path().join("summary.json");
    let o = run_bin(
        &[
            "run",
            file.to_str().unwrap(),
            "--output-dir",
            "o",
            "--summary",
            summary.to_str().unwrap(),
        ],
        dir.path(),
        &env,
    )
    .await;
    let mut all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "trace logging was on"
    );
    all.push_str(&std::fs::read_to_string(&summary).unwrap());
    let creds = sim.credentials();
    for secret in [&creds.client_secret, &creds.refresh_token] {
        assert!(
            !all.contains(secret.as_str()),
            "a secret leaked into the output"
        );
    }
    // Access tokens are JWTs: base64url of `{"` starts every one of them.
    assert!(
        !all.contains("eyJ"),
        "an access token leaked into the output"
    );

    // A failing run (bad refresh token) at trace level leaks nothing either.
    let mut bad_env = env.clone();
    bad_env.retain(|(k, _)| *k != "FYLE_REFRESH_TOKEN");
    bad_env.push(("FYLE_REFRESH_TOKEN", "refresh-token-that-is-wrong-1234"));
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o2"],
        dir.path(),
        &bad_env,
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(!t.contains("refresh-token-that-is-wrong-1234"));
    assert!(!t.contains(creds.client_secret.as_str()));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_credentials_cluster_roles_and_resource() {
    let sim = simulator(40, 4, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("check.toml");
    std::fs::write(&file, pipeline_text(&sim, "check", "", "")).unwrap();
    let env = sim_env(&sim);
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_bin(&["check", file.to_str().unwrap()], dir.path(), &env).await;
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("cluster is") && t.contains("roles:") && t.contains("admin/expenses answers"),
        "{t}"
    );

    let o = run_bin(
        &["check", file.to_str().unwrap()],
        dir.path(),
        &[("FYLE_CLIENT_ID", "x")],
    )
    .await;
    let t = text(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "unset secrets are a config error: {t}"
    );
    assert!(t.contains("FYLE_CLIENT_SECRET is not set"), "{t}");
    sim.shutdown().await;
}

#[tokio::test]
async fn environment_overrides_pipeline_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.toml");
    std::fs::write(
        &file,
        "[pipeline]\nname = \"env\"\n[connection]\nclient_id = \"x\"\nclient_secret = { env = \"S\" }\nrefresh_token = { env = \"R\" }\n[source]\ntype = \"fyle\"\nresource = \"expenses\"\n[[sinks]]\ntype = \"csv\"\npath = \"x.csv\"\n",
    )
    .unwrap();
    let ok = run_bin(
        &["check", "--offline", file.to_str().unwrap()],
        dir.path(),
        &[],
    )
    .await;
    assert!(ok.status.success(), "{}", text(&ok));
    let o = run_bin(
        &["check", "--offline", file.to_str().unwrap()],
        dir.path(),
        &[("EXPENSE_SYNC__SOURCE__PAGE_SIZE", "500")],
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("source.page_size") && t.contains("500"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_csv_is_formula_protected_for_excel() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(&["demo", "--out", "d"], dir.path(), &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    let (_, rows) = read_csv(&dir.path().join("d/demo-expenses.csv"));
    let cells: Vec<&String> = rows.iter().flatten().collect();
    for risky in ["@Home Deli", "+1 Taxi", "-5% discount"] {
        assert!(
            !cells.iter().any(|c| c.starts_with(risky)),
            "{risky} written raw, Excel would run it as a formula"
        );
        assert!(
            cells.iter().any(|c| c.starts_with(&format!("'{risky}"))),
            "{risky} is in the demo data, protected"
        );
    }
}

/// Reads the simulator's stdout until `export NAME=value` lines for every name appear.
async fn exported_vars(
    stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    names: &[&str],
) -> (Vec<(String, String)>, String) {
    let mut seen = Vec::new();
    let mut all = String::new();
    while seen.len() < names.len() {
        let line = stdout
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("simulator stopped: {all}"));
        all.push_str(&line);
        all.push('\n');
        if let Some((k, v)) = line
            .strip_prefix("export ")
            .and_then(|rest| rest.split_once('='))
            && names.contains(&k)
        {
            seen.push((k.to_string(), v.to_string()));
        }
    }
    (seen, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_port_0_serves_on_free_ports_and_its_exports_work_as_printed() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["simulate", "--port", "0", "--expenses", "12"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let names = [
        "FYLE_ACCOUNTS_URL",
        "FYLE_CLIENT_ID",
        "FYLE_CLIENT_SECRET",
        "FYLE_REFRESH_TOKEN",
    ];
    let (vars, all) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        exported_vars(&mut lines, &names),
    )
    .await
    .expect("simulator announces itself");
    let cluster = all
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster server:"))
        .expect("cluster announced")
        .trim()
        .to_string();
    let accounts = vars[0].1.clone();
    for url in [&accounts, &cluster] {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(port > 1, "{url} is a real port: {all}");
        std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{url} answers: {e}"));
    }
    // The pipeline file points elsewhere (a closed port): FYLE_ACCOUNTS_URL overrides it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nname = \"p\"\n[connection]\naccounts_url = \"http://127.0.0.1:{closed}\"\n\
             client_id = {{ env = \"FYLE_CLIENT_ID\" }}\nclient_secret = {{ env = \"FYLE_CLIENT_SECRET\" }}\n\
             refresh_token = {{ env = \"FYLE_REFRESH_TOKEN\" }}\n[source]\ntype = \"fyle\"\nresource = \"expenses\"\n\
             [[sinks]]\ntype = \"csv\"\npath = \"x.csv\"\n"
        ),
    )
    .unwrap();
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = run_bin(&["check", file.to_str().unwrap()], dir.path(), &env).await;
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains(&accounts) && t.contains("12 record(s)"), "{t}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn unknown_log_level_is_refused_with_the_valid_values() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(
        &["--log-level", "verbose", "check", "--offline", "x.toml"],
        dir.path(),
        &[],
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("verbose"), "{t}");
    for level in ["error", "warn", "info", "debug", "trace"] {
        assert!(t.contains(level), "lists {level}: {t}");
    }
}

fn assert_json_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    let s = String::from_utf8_lossy(stderr);
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{s}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_prints_the_final_error_and_demo_lines_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(
        &["--log-format", "json", "check", "--offline", "missing.toml"],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    let lines = assert_json_lines(&o.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l.to_string().contains("missing.toml") && l["level"] == "ERROR"),
        "{lines:?}"
    );
    let o = run_bin(
        &[
            "--log-format",
            "json",
            "demo",
            "--out",
            "d",
            "--expenses",
            "20",
        ],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let lines = assert_json_lines(&o.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l.to_string().contains("demo-expenses.csv")),
        "the demo still says where its files are: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_silences_the_demo_and_verbose_turns_on_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(
        &["-q", "demo", "--out", "q", "--expenses", "20"],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(o.stderr.is_empty(), "{}", text(&o));
    let o = run_bin(
        &["-v", "demo", "--out", "v", "--expenses", "20"],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("DEBUG") && !t.contains("TRACE"), "{t}");
    // expense-sync logs nothing at trace level yet: -vv is accepted and at least as detailed.
    let o = run_bin(
        &["-vv", "demo", "--out", "vv", "--expenses", "20"],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("DEBUG"), "{}", text(&o));
    let o = run_bin(&["-q", "-v", "demo"], dir.path(), &[]).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "-q and -v contradict: {}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_color_turns_off_colours_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: util-linux `script` (a pseudo-terminal) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let on_tty = |no_color: bool| {
        let mut cmd = std::process::Command::new("script");
        cmd.args([
            "-qec",
            &format!("{BIN} -v demo --out o --expenses 5"),
            "/dev/null",
        ])
        .current_dir(dir.path())
        .env_remove("NO_COLOR")
        .env_remove("EXPENSE_SYNC_LOG");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.output().unwrap()
    };
    let coloured = on_tty(false);
    assert!(coloured.status.success(), "{}", text(&coloured));
    assert!(text(&coloured).contains("\x1b["), "a terminal gets colours");
    let plain = on_tty(true);
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(!text(&plain).contains("\x1b["), "{}", text(&plain));
}
