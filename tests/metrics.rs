//! Run metrics: the textfile for node-exporter parses as OpenMetrics, carries
//! the run's counts, keeps the last-success time across a failed run, and the
//! same metrics reach a Pushgateway over HTTP.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::*;
use expense_sync::simulator::Simulator;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

fn pipeline(sim: &Simulator, name: &str, metrics: &str) -> String {
    let text = pipeline_text(sim, name, "", "requests_per_second = 1000");
    format!("{text}\n{metrics}\n")
}

async fn run_bin(sim: &Simulator, file: &Path, args: &[&str], secret: Option<&str>) -> Output {
    let c = sim.credentials();
    tokio::process::Command::new(BIN)
        .arg("run")
        .arg(file)
        // Relative output_dir ("out") lands beside the pipeline file, not in the repository.
        .current_dir(file.parent().unwrap())
        .args(args)
        .env_remove("EXPENSE_SYNC_LOG")
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env(
            "FYLE_CLIENT_SECRET",
            secret.unwrap_or(c.client_secret.as_str()),
        )
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .output()
        .await
        .expect("binary runs")
}

/// A strict check of the OpenMetrics text exposition (the subset we write):
/// every family has HELP and TYPE before its samples, names and labels are
/// well formed, values are numbers, no family repeats, and `# EOF` ends it.
/// Returns sample name → value for the `pipeline` label given.
fn parse_openmetrics(text: &str, pipeline: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "must end with `# EOF`: {text}");
    let body = text.strip_suffix("# EOF\n").unwrap();
    assert!(!body.contains("# EOF"), "`# EOF` only once, at the end");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut families: BTreeMap<String, (bool, Option<String>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(!families.contains_key(name), "family {name} appears twice");
            families.insert(name.to_string(), (false, None));
            current = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert_eq!(current.as_deref(), Some(name), "TYPE follows its HELP");
            assert!(
                ["gauge", "counter", "info", "stateset", "unknown"].contains(&kind),
                "{line}"
            );
            families.get_mut(name).unwrap().1 = Some(kind.to_string());
        } else {
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let family = current.clone().expect("sample after its family");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = series.split_once('{').expect("sample has labels");
            assert_eq!(name, family, "sample belongs to the current family");
            let labels = labels.strip_suffix('}').expect("labels closed");
            assert_eq!(labels, format!("pipeline=\"{pipeline}\""));
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("number: {line}"));
            assert!(v.is_finite());
            let kind = families[name].1.clone().expect("TYPE before samples");
            assert_eq!(kind, "gauge");
            families.get_mut(name).unwrap().0 = true;
            samples.insert(name.to_string(), v);
        }
    }
    assert!(families.values().all(|(has_sample, _)| *has_sample));
    samples
}

/// The same text through the `prometheus-parse` crate (the classic text
/// format the textfile collector and Pushgateway read).
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                other => panic!("{} is not a gauge: {other:?}", s.metric),
            };
            (s.metric, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_file_parses_as_openmetrics_with_the_runs_counts() {
    let sim = simulator(90, 21, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    let prom = dir
        .path()
        .join("textfile")
        .join("expense_sync_{pipeline}.prom");
    std::fs::write(
        &file,
        pipeline(
            &sim,
            "metered",
            &format!("[metrics]\ntextfile = {:?}\n", prom.to_str().unwrap()),
        ),
    )
    .unwrap();
    let o = run_bin(&sim, &file, &[], None).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    let path = dir.path().join("textfile/expense_sync_metered.prom");
    let text = std::fs::read_to_string(&path).unwrap();
    let m = parse_openmetrics(&text, "metered");
    assert_eq!(m, parse_prometheus(&text));
    assert_eq!(m["expense_sync_last_run_success"], 1.0);
    assert_eq!(m["expense_sync_last_run_exit_code"], 0.0);
    assert_eq!(m["expense_sync_last_run_records_in"], 90.0);
    assert_eq!(m["expense_sync_last_run_records_out"], 90.0);
    assert_eq!(m["expense_sync_last_run_quarantined_records"], 0.0);
    assert_eq!(m["expense_sync_last_run_rejected_records"], 0.0);
    assert_eq!(
        m["expense_sync_last_run_http_requests"],
        summary["http"]["requests"].as_f64().unwrap()
    );
    assert_eq!(
        m["expense_sync_last_run_http_retries"],
        summary["http"]["retries"].as_f64().unwrap()
    );
    assert_eq!(m["expense_sync_last_run_http_throttled"], 0.0);
    let bytes: u64 = summary["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let p = o["path"].as_str().unwrap();
            assert_eq!(
                std::fs::metadata(dir.path().join(p)).unwrap().len(),
                o["bytes"].as_u64().unwrap()
            );
            o["bytes"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(m["expense_sync_last_run_bytes_written"], bytes as f64);
    assert!(
        (m["expense_sync_last_run_duration_seconds"]
            - summary["duration_ms"].as_f64().unwrap() / 1000.0)
            .abs()
            < 0.0011
    );
    let now = chrono::Utc::now().timestamp() as f64;
    let last = m["expense_sync_last_success_timestamp_seconds"];
    assert!(last <= now + 1.0 && last > now - 600.0, "{last} vs {now}");
    assert_eq!(last, m["expense_sync_last_run_timestamp_seconds"]);
    // Written under a temporary name and renamed: nothing else is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("textfile"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("expense_sync_metered.prom")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_the_previous_last_success_time() {
    let sim = simulator(20, 22, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(&file, pipeline(&sim, "flaky", "")).unwrap();
    let prom = dir.path().join("flaky.prom");
    let flag = ["--metrics-file", prom.to_str().unwrap()];

    let o = run_bin(&sim, &file, &flag, None).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = parse_openmetrics(&std::fs::read_to_string(&prom).unwrap(), "flaky");

    let o = run_bin(&sim, &file, &flag, Some("not-the-secret")).await;
    assert_eq!(o.status.code(), Some(3));
    let after = parse_openmetrics(&std::fs::read_to_string(&prom).unwrap(), "flaky");
    assert_eq!(after["expense_sync_last_run_success"], 0.0);
    assert_eq!(after["expense_sync_last_run_exit_code"], 3.0);
    assert_eq!(after["expense_sync_last_run_records_out"], 0.0);
    assert!(
        after["expense_sync_last_run_timestamp_seconds"]
            >= before["expense_sync_last_run_timestamp_seconds"]
    );
    assert_eq!(
        after["expense_sync_last_success_timestamp_seconds"],
        before["expense_sync_last_success_timestamp_seconds"]
    );
}

/// One request as the stand-in Pushgateway saw it: method, path, content type, body.
type Seen = (String, String, String, String);

/// A stand-in Pushgateway: records every request.
#[derive(Clone, Default)]
struct Gateway {
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn start_gateway() -> (Gateway, SocketAddr) {
    use http_body_util::BodyExt;
    let gw = Gateway::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = gw.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let ctype = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            g.seen.lock().unwrap().push((
                                method,
                                path,
                                ctype,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (gw, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_to_the_pushgateway_group_of_the_pipeline() {
    let sim = simulator(30, 23, None).await;
    let (gw, addr) = start_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(
        &file,
        pipeline(
            &sim,
            "pushed",
            &format!("[metrics]\npushgateway = \"http://{addr}\"\n"),
        ),
    )
    .unwrap();

    let o = run_bin(&sim, &file, &[], None).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_bin(&sim, &file, &[], Some("not-the-secret")).await;
    assert_eq!(o.status.code(), Some(3));

    let seen = gw.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (method, path, ctype, body) = &seen[0];
    assert_eq!(method, "PUT");
    assert_eq!(path, "/metrics/job/expense_sync/pipeline/pushed");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let m = parse_openmetrics(body, "pushed");
    assert_eq!(m["expense_sync_last_run_records_out"], 30.0);
    assert_eq!(m["expense_sync_last_run_success"], 1.0);
    assert!(m.contains_key("expense_sync_last_success_timestamp_seconds"));

    // A failed run must not overwrite the group's last-success time: POST
    // replaces only the metrics it sends, and it does not send that one.
    let (method, path, _, body) = &seen[1];
    assert_eq!(method, "POST");
    assert_eq!(path, "/metrics/job/expense_sync/pipeline/pushed");
    let m = parse_openmetrics(body, "pushed");
    assert_eq!(m["expense_sync_last_run_success"], 0.0);
    assert!(!m.contains_key("expense_sync_last_success_timestamp_seconds"));
    assert!(!body.contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pushgateway_warns_but_keeps_the_runs_exit_code() {
    let sim = simulator(5, 24, None).await;
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(&file, pipeline(&sim, "nogw", "")).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let o = run_bin(&sim, &file, &["--metrics-push", &url], None).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("warning: cannot push metrics to the Pushgateway at"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn a_bad_pushgateway_url_is_a_config_error_naming_the_key() {
    let text = r#"
[pipeline]
name = "x"
[connection]
accounts_url = "http://127.0.0.1:1"
client_id = "a"
client_secret = { env = "FYLE_CLIENT_SECRET" }
refresh_token = { env = "FYLE_REFRESH_TOKEN" }
[source]
type = "fyle"
resource = "expenses"
[[sinks]]
type = "csv"
path = "x.csv"
[metrics]
pushgateway = "pushgateway:9091"
"#;
    let err = expense_sync::config::load_str(text, Path::new("p.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("metrics.pushgateway"), "{msg}");
    assert!(msg.contains("http://"), "{msg}");
}

/// A vault with one Fyle connection per simulator (named as given); `None`: a refused refresh token.
fn tenant_vault(path: &Path, orgs: &[(&str, Option<&Simulator>)], fallback: &Simulator) {
    use expense_sync::auth::vault::{GrantKind, Profile};
    use expense_sync::auth::{Connection, Vault, VaultError};
    use secrecy::SecretString;
    let vault = Vault::with_key(path, None);
    for (name, sim) in orgs {
        let s = sim.unwrap_or(fallback);
        let c = s.credentials();
        let mut conn = Connection::new(
            Profile::Fyle,
            GrantKind::RefreshToken,
            &s.accounts_url(),
            &c.client_id,
        );
        conn.client_secret = Some(SecretString::from(c.client_secret.clone()));
        let rt = match sim {
            Some(_) => c.refresh_token.clone(),
            None => "revoked-long-ago".to_string(),
        };
        conn.refresh_token = Some(SecretString::from(rt));
        vault
            .update(|all| {
                all.insert(name.to_string(), conn);
                Ok::<_, VaultError>(())
            })
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_pushes_to_its_own_pushgateway_group_and_textfile_with_a_tenant_label() {
    let acme = simulator(20, 31, None).await;
    let globex = simulator(27, 32, None).await;
    let (gw, addr) = start_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.json");
    tenant_vault(
        &vault,
        &[
            ("acme", Some(&acme)),
            ("globex", Some(&globex)),
            ("umbrella", None),
        ],
        &acme,
    );
    let prom = dir.path().join("textfile").join("{tenant}.prom");
    std::fs::create_dir_all(dir.path().join("textfile")).unwrap();
    let text = pipeline(
        &acme,
        "p",
        &format!("[metrics]\ntextfile = {:?}\n", prom.to_str().unwrap()),
    );
    // The connection comes from each tenant's vault entry.
    let start = text.find("[connection]").unwrap();
    let end = start + text[start..].find("\n[http]").unwrap();
    let text = format!(
        "{}[connection]\nvault = \"per-tenant\"\n{}",
        &text[..start],
        &text[end..]
    );
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let o = tokio::process::Command::new(BIN)
        .arg("--vault")
        .arg(&vault)
        .arg("run")
        .arg(&file)
        .args(["--connections", "all", "--metrics-push"])
        .arg(format!("http://{addr}"))
        .current_dir(dir.path())
        .env_remove("EXPENSE_SYNC_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "umbrella fails: {stderr}");
    assert!(!stderr.contains("not supported"), "{stderr}");

    let seen = gw.seen.lock().unwrap().clone();
    let by_path: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.1.as_str(), s)).collect();
    assert_eq!(seen.len(), 3, "one push per tenant: {seen:?}");
    for (tenant, sim) in [
        ("acme", Some(&acme)),
        ("globex", Some(&globex)),
        ("umbrella", None),
    ] {
        let path = format!("/metrics/job/expense_sync/pipeline/p/tenant/{tenant}");
        let (method, _, _, body) = by_path
            .get(path.as_str())
            .unwrap_or_else(|| panic!("no push to {path}: {seen:?}"));
        let labels = format!("{{pipeline=\"p\",tenant=\"{tenant}\"}}");
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains(&labels), "{line}");
        }
        let m = parse_prometheus(body);
        match sim {
            Some(sim) => {
                assert_eq!(method, "PUT");
                let truth = sim.ground_truth("expenses").len() as f64;
                assert_eq!(m["expense_sync_last_run_records_out"], truth, "{tenant}");
                // The per-tenant textfile carries the same labels.
                let file = dir.path().join("textfile").join(format!("{tenant}.prom"));
                let t = std::fs::read_to_string(&file).unwrap();
                assert_eq!(
                    parse_prometheus(&t)["expense_sync_last_run_records_out"],
                    truth
                );
                assert!(t.contains(&labels), "{t}");
            }
            None => {
                assert_eq!(method, "POST", "a failed tenant keeps its last success");
                assert_eq!(m["expense_sync_last_run_success"], 0.0);
            }
        }
    }
}
