//! Many tenants in one process and across shard processes: each tenant is a
//! simulated Fyle org behind its own vault connection; one pipeline file runs
//! for all of them with its own state and outputs per tenant.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use expense_sync::ExitCode;
use expense_sync::auth::vault::{GrantKind, Profile};
use expense_sync::auth::{Connection, Vault, VaultError};
use expense_sync::http::HttpClient;
use expense_sync::pipeline::{RunOptions, RunStatus};
use expense_sync::simulator::Simulator;
use expense_sync::tenants::{self, Tenant};
use secrecy::SecretString;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

/// One pipeline for every tenant: the vault connection is set per tenant.
fn tenant_pipeline(name: &str, rps: u32, page_size: u32) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
vault = "set-per-tenant"

[http]
requests_per_second = {rps}
initial_backoff = "20ms"

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
page_size = {page_size}

[incremental]
lookback = "2s"

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "updated_at"
path = "updated_at"

[[sinks]]
type = "csv"
path = "{{pipeline}}-{{run_id}}.csv"
"#
    )
}

/// Stores a Fyle connection to `sim` as `name`; `good = false` stores a refresh token the org refuses.
fn add_connection(vault: &Vault, name: &str, sim: &Simulator, good: bool) {
    let c = sim.credentials();
    let mut conn = Connection::new(
        Profile::Fyle,
        GrantKind::RefreshToken,
        &sim.accounts_url(),
        &c.client_id,
    );
    conn.client_secret = Some(SecretString::from(c.client_secret.clone()));
    let rt = if good {
        c.refresh_token.clone()
    } else {
        "revoked-long-ago".to_string()
    };
    conn.refresh_token = Some(SecretString::from(rt));
    vault
        .update(|all| {
            all.insert(name.to_string(), conn);
            Ok::<_, VaultError>(())
        })
        .unwrap();
}

async fn orgs(n: usize, expenses: usize) -> Vec<Simulator> {
    let mut sims = Vec::new();
    for i in 0..n {
        sims.push(simulator(expenses + i * 7, 100 + i as u64, None).await);
    }
    sims
}

async fn run_bin(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("FYLE_ACCOUNTS_URL")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("EXPENSE_SYNC_SHARDS")
        .env_remove("EXPENSE_SYNC_SHARD_BUDGET")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the binary answers within two minutes")
        .expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON summary ({e}): {}", text(o)))
}

/// Tenant name → its summary, from a multi-tenant JSON summary.
fn by_tenant(s: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    s["tenants"]
        .as_array()
        .expect("tenants array")
        .iter()
        .map(|t| (t["tenant"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

#[tokio::test]
async fn every_connection_runs_as_a_tenant_with_its_own_outputs_and_state_and_a_failing_one_is_isolated()
 {
    let sims = orgs(3, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let vault = Vault::open(&vault_path);
    let names = ["acme", "globex", "initech"];
    for (name, sim) in names.iter().zip(&sims) {
        add_connection(&vault, name, sim, true);
    }
    add_connection(&vault, "umbrella", &sims[0], false);
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, tenant_pipeline("p", 1000, 200)).unwrap();
    let out = dir.path().join("out");
    let vault_arg = vault_path.to_str().unwrap();
    let args = [
        "--vault",
        vault_arg,
        "run",
        pipeline.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--connections",
        "all",
    ];
    let o = run_bin(&args, dir.path(), &[]).await;
    let s = summary(&o);
    let tenants = by_tenant(&s);
    assert_eq!(
        tenants.keys().collect::<Vec<_>>(),
        ["acme", "globex", "initech", "umbrella"],
        "{}",
        text(&o)
    );
    // The refused connection fails alone; the process reports it.
    let bad = &tenants["umbrella"];
    assert_eq!(bad["status"], "failed", "{bad}");
    assert_eq!(o.status.code(), bad["exit_code"].as_i64().map(|c| c as i32));
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(s["exit_code"], bad["exit_code"]);
    assert_eq!(s["tenants_failed"], 1);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tenant umbrella:"),
        "{}",
        text(&o)
    );
    assert!(!out.join("umbrella").join("p.state.json").exists());
    for (name, sim) in names.iter().zip(&sims) {
        let t = &tenants[*name];
        assert_eq!(t["status"], "ok", "{name}: {t}");
        let truth = sim.ground_truth("expenses").len() as u64;
        assert_eq!(t["records_out"].as_u64(), Some(truth), "{name}");
        assert_exactly_once(&out.join(name), sim);
        assert!(out.join(name).join("p.state.json").exists(), "{name}");
        // Each tenant's request counters are its own, not the process's.
        assert!(t["http"]["requests"].as_u64().unwrap() < 10, "{name}: {t}");
    }

    // The next run is incremental per tenant; the text summary has a line each.
    sims[1].mutate(5);
    let mut args2 = args.to_vec();
    let last = args2.len() - 1;
    args2[last] = "acme,globex";
    args2.extend(["--summary-format", "text"]);
    let o = run_bin(&args2, dir.path(), &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("[tenant acme]: ok"), "{stdout}");
    assert!(lines[1].contains("[tenant globex]"), "{stdout}");
    assert!(
        lines[2].contains("2 tenant(s)") && lines[2].contains("2 committed"),
        "{stdout}"
    );
    assert_exactly_once(&out.join("globex"), &sims[1]);
    for sim in sims {
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_shared_state_path_without_tenant_is_refused_before_any_tenant_runs() {
    let sims = orgs(1, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    add_connection(&Vault::open(&vault_path), "acme", &sims[0], true);
    let text_ = tenant_pipeline("p", 1000, 200).replace(
        "name = \"p\"",
        "name = \"p\"\nstate_path = \"state/p.state.json\"",
    );
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, text_).unwrap();
    let o = run_bin(
        &[
            "--vault",
            vault_path.to_str().unwrap(),
            "run",
            pipeline.to_str().unwrap(),
            "--connections",
            "acme",
        ],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(
        o.status.code(),
        Some(ExitCode::Config.code()),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("pipeline.state_path"), "{}", text(&o));
    assert!(sims[0].request_log().is_empty());
}

#[tokio::test]
async fn shards_started_like_an_indexed_job_export_every_tenant_exactly_once() {
    const SHARDS: usize = 3;
    let sims = orgs(9, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let vault = Vault::open(&vault_path);
    let names: Vec<String> = (0..sims.len()).map(|i| format!("org-{i:02}")).collect();
    for (i, (name, sim)) in names.iter().zip(&sims).enumerate() {
        // One tenant's credentials were revoked: it must fail alone.
        add_connection(&vault, name, sim, i != 4);
    }
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, tenant_pipeline("p", 1000, 200)).unwrap();
    let out = dir.path().join("out");
    // Every pod of an Indexed Job runs the same command; only the index differs.
    let run_window = || async {
        let pods = (0..SHARDS).map(|i| {
            let (vault_path, pipeline, out, dir) = (&vault_path, &pipeline, &out, dir.path());
            async move {
                let index = i.to_string();
                run_bin(
                    &[
                        "--vault",
                        vault_path.to_str().unwrap(),
                        "run",
                        pipeline.to_str().unwrap(),
                        "--output-dir",
                        &format!("{}/{{tenant}}", out.display()),
                        "--connections",
                        "all",
                        "--tenant-concurrency",
                        "2",
                    ],
                    dir,
                    &[
                        ("JOB_COMPLETION_INDEX", &index),
                        ("EXPENSE_SYNC_SHARDS", &SHARDS.to_string()),
                        ("EXPENSE_SYNC_SHARD_BUDGET", &SHARDS.to_string()),
                    ],
                )
                .await
            }
        });
        futures::future::join_all(pods).await
    };
    let pods = run_window().await;
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, o) in pods.iter().enumerate() {
        let s = summary(o);
        assert_eq!(s["shard"], format!("{i}/{SHARDS}"), "{}", text(o));
        assert_eq!(s["tenants_selected"], sims.len());
        for (name, t) in by_tenant(&s) {
            assert!(
                owner.insert(name.clone(), i).is_none(),
                "{name} run by two shards"
            );
            let expected = if name == names[4] { "failed" } else { "ok" };
            assert_eq!(t["status"], expected, "{name}: {t}");
        }
        let has_bad = by_tenant(&s).contains_key(&names[4]);
        assert_eq!(
            o.status.code() == Some(0),
            !has_bad,
            "shard {i}: {}",
            text(o)
        );
    }
    assert_eq!(
        owner.keys().cloned().collect::<BTreeSet<_>>(),
        names.iter().cloned().collect::<BTreeSet<_>>(),
        "every tenant ran on some shard"
    );
    assert!(
        owner.values().collect::<BTreeSet<_>>().len() > 1,
        "the tenants spread over shards: {owner:?}"
    );
    for (i, (name, sim)) in names.iter().zip(&sims).enumerate() {
        if i != 4 {
            assert_exactly_once(&out.join(name), sim);
        }
    }

    // The next window: the same assignment, and still exactly once.
    for sim in &sims {
        sim.mutate(3);
    }
    let pods = run_window().await;
    for (i, o) in pods.iter().enumerate() {
        for name in by_tenant(&summary(o)).keys() {
            assert_eq!(owner[name], i, "{name} moved between windows");
        }
    }
    for (i, (name, sim)) in names.iter().zip(&sims).enumerate() {
        if i != 4 {
            assert_exactly_once(&out.join(name), sim);
        }
    }
}

#[tokio::test]
async fn small_tenants_finish_while_a_big_backfill_is_still_paging() {
    let big = simulator(1500, 7, None).await;
    let small = orgs(3, 60).await;
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let vault = Vault::open(&vault_path);
    add_connection(&vault, "big", &big, true);
    let mut list = vec![Tenant::of_connection("big")];
    for (i, sim) in small.iter().enumerate() {
        let name = format!("small-{i}");
        add_connection(&vault, &name, sim, true);
        list.push(Tenant::of_connection(&name));
    }
    let p =
        expense_sync::config::load_str(&tenant_pipeline("p", 80, 25), Path::new("p.toml")).unwrap();
    // One process-wide client: every tenant shares its budget of 80 requests/s.
    let http = HttpClient::new(&p.spec.http).unwrap();
    let opts = RunOptions {
        output_dir: Some(dir.path().join("out")),
        vault: Some(vault_path),
        ..RunOptions::default()
    };
    let runs = tenants::run_all(&p, &http, &opts, &list, 4).await.unwrap();
    for r in &runs {
        assert_eq!(
            r.outcome.summary.status,
            RunStatus::Ok,
            "{:?}",
            r.outcome.error
        );
    }
    // The data requests of all orgs in the order they arrived.
    let mut log: Vec<(std::time::Instant, &str)> = big
        .request_log()
        .into_iter()
        .filter(|r| r.server == "cluster")
        .map(|r| (r.at, "big"))
        .collect();
    for (i, sim) in small.iter().enumerate() {
        let name: &str = ["small-0", "small-1", "small-2"][i];
        log.extend(
            sim.request_log()
                .into_iter()
                .filter(|r| r.server == "cluster")
                .map(|r| (r.at, name)),
        );
    }
    log.sort_by_key(|(at, _)| *at);
    let order: Vec<&str> = log.iter().map(|(_, t)| *t).collect();
    let big_total = order.iter().filter(|t| **t == "big").count();
    assert!(big_total > 50, "the big tenant pages a lot: {big_total}");
    let last_small = order.iter().rposition(|t| *t != "big").unwrap();
    let big_after = order[last_small..].iter().filter(|t| **t == "big").count();
    assert!(
        big_after > big_total / 2,
        "the small tenants finished only after {} of the big tenant's {big_total} requests: {order:?}",
        big_total - big_after
    );
}

#[tokio::test]
async fn state_tenant_shows_the_state_of_one_tenant_wherever_its_template_puts_it() {
    let sims = orgs(2, 15).await;
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let vault = Vault::open(&vault_path);
    add_connection(&vault, "acme", &sims[0], true);
    add_connection(&vault, "globex", &sims[1], true);
    // State kept apart from the outputs, templated by tenant; a tenants file
    // moves globex's outputs (and so where its default state would be).
    let file_text = tenant_pipeline("p", 1000, 200).replace(
        "name = \"p\"",
        "name = \"p\"\noutput_dir = \"exports/{tenant}\"",
    );
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, file_text).unwrap();
    let tenants_file = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants_file,
        "[[tenants]]\nname = \"acme\"\n\n[[tenants]]\nname = \"globex\"\noutput_dir = \"elsewhere/{tenant}-files\"\n",
    )
    .unwrap();
    let vault_arg = vault_path.to_str().unwrap();
    let p = pipeline.to_str().unwrap();
    let tf = tenants_file.to_str().unwrap();
    let o = run_bin(
        &["--vault", vault_arg, "run", p, "--tenants", tf],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let runs = by_tenant(&summary(&o));

    for (tenant, file) in [
        ("acme", "exports/acme/p.state.json"),
        ("globex", "elsewhere/globex-files/p.state.json"),
    ] {
        let o = run_bin(
            &["state", p, "--tenants", tf, "--tenant", tenant],
            dir.path(),
            &[],
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(file)).unwrap()).unwrap();
        assert!(shown["watermark"].is_string(), "{tenant}: {shown}");
        assert_eq!(shown["watermark"], on_disk["watermark"], "{tenant}");
        assert_eq!(runs[tenant]["status"], "ok");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(file),
            "{}",
            text(&o)
        );
    }
    // Without a tenants file the tenant gets the pipeline's own template.
    let o = run_bin(&["state", p, "--tenant", "acme"], dir.path(), &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A template without --tenant cannot name a file: say what to add.
    let o = run_bin(&["state", p], dir.path(), &[]).await;
    assert_eq!(
        o.status.code(),
        Some(ExitCode::Config.code()),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("--tenant"), "{}", text(&o));
    // An unknown tenant in the tenants file is named.
    let o = run_bin(
        &["state", p, "--tenants", tf, "--tenant", "nobody"],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(
        o.status.code(),
        Some(ExitCode::Config.code()),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("nobody"), "{}", text(&o));
    for sim in sims {
        sim.shutdown().await;
    }
}
