//! Outputs, state, leases and the vault in object storage, against a real
//! S3-compatible server (SeaweedFS, started per test) and the real binary.

mod common;

use std::path::Path;
use std::time::Duration;

use common::s3::S3Server;
use common::*;
use expense_sync::simulator::Simulator;

use common::store::{
    BIN, assert_exactly_once_in, leftovers, remote_pipeline as pipeline, run_bin, state_json,
    stderr,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_s3_equals_ground_truth_and_reads_back_with_csv_and_parquet_readers() {
    scenarios::export_equals_ground_truth(&S3Server::start("exports").await, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_on_one_pipeline_commit_exactly_once() {
    scenarios::racing_commit_exactly_once(&S3Server::start("racing").await).await;
}

/// Runs killed at each step of the remote commit; the lease of the killed
/// run blocks the next one until it expires, then recovery leaves the
/// outputs exactly once and no temporary object behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_upload_or_mid_commit_leaves_exactly_once_outputs_and_no_temporaries() {
    scenarios::killed_runs_leave_exactly_once(&S3Server::start("crashes").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_killed_run_is_taken_over_only_after_it_expires() {
    scenarios::lease_taken_over_only_after_expiry(&S3Server::start("leases").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_a_vault_in_object_storage_lose_no_rotated_token() {
    scenarios::vault_updates_lose_no_rotated_token(&S3Server::start("vaults").await).await;
}

/// Stores a Fyle connection to `sim` as `name` in the vault at `path`.
fn add_tenant(path: &Path, name: &str, sim: &Simulator) {
    use expense_sync::auth::vault::{GrantKind, Profile};
    use expense_sync::auth::{Connection, Vault, VaultError};
    use secrecy::SecretString;
    let c = sim.credentials();
    let mut conn = Connection::new(
        Profile::Fyle,
        GrantKind::RefreshToken,
        &sim.accounts_url(),
        &c.client_id,
    );
    conn.client_secret = Some(SecretString::from(c.client_secret.clone()));
    conn.refresh_token = Some(SecretString::from(c.refresh_token.clone()));
    Vault::open(path)
        .update(|all| {
            all.insert(name.to_string(), conn);
            Ok::<_, VaultError>(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_of_many_tenants_commit_each_tenant_once_under_its_own_prefix_in_the_store() {
    let s3 = S3Server::start("tenants").await;
    let names = ["acme", "globex", "initech", "umbrella"];
    let mut sims = Vec::new();
    for i in 0..names.len() {
        sims.push(simulator(60 + 11 * i, 200 + i as u64, None).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.json");
    for (name, sim) in names.iter().zip(&sims) {
        add_tenant(&vault, name, sim);
    }
    // The file's own [connection] is replaced by each tenant's vault connection.
    let text = pipeline(&sims[0], "p", &s3.url("orgs/{tenant}"))
        .replace(
            &format!("accounts_url = \"{}\"", sims[0].accounts_url()),
            "vault = \"per-tenant\"",
        )
        .replace("client_id = { env = \"FYLE_CLIENT_ID\" }\n", "")
        .replace("client_secret = { env = \"FYLE_CLIENT_SECRET\" }\n", "")
        .replace("refresh_token = { env = \"FYLE_REFRESH_TOKEN\" }\n", "");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();

    // Two shard processes, started as an Indexed Job starts its pods.
    let run_shards = || async {
        let mut outs = Vec::new();
        for index in ["0", "1"] {
            let mut cmd = tokio::process::Command::new(BIN);
            cmd.arg("--vault")
                .arg(&vault)
                .arg("run")
                .arg(&file)
                .args(["--connections", "all", "--shards", "2"])
                .current_dir(dir.path())
                .env("JOB_COMPLETION_INDEX", index)
                .env(
                    "EXPENSE_SYNC_SPOOL_DIR",
                    dir.path().join(format!("spool{index}")),
                )
                .env_remove("EXPENSE_SYNC_LOG")
                .env_remove("FYLE_ACCOUNTS_URL")
                .env_remove("EXPENSE_SYNC_SHARDS")
                .kill_on_drop(true);
            for (k, v) in s3.env() {
                cmd.env(k, v);
            }
            outs.push(cmd.output());
        }
        futures::future::join_all(outs).await
    };
    for round in 0..2 {
        let mut ran = Vec::new();
        for o in run_shards().await {
            let o = o.unwrap();
            assert!(o.status.success(), "round {round}: {}", stderr(&o));
            let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            for t in s["tenants"].as_array().unwrap() {
                assert_eq!(t["status"], "ok", "{t}");
                ran.push(t["tenant"].as_str().unwrap().to_string());
            }
        }
        ran.sort();
        assert_eq!(
            ran, names,
            "round {round}: each tenant run by exactly one shard"
        );
        for (name, sim) in names.iter().zip(&sims) {
            let prefix = format!("orgs/{name}");
            assert_exactly_once_in(&s3, &prefix, sim).await;
            let state = state_json(&s3, &format!("{prefix}/p.state.json")).await;
            assert!(state["watermark"].is_string(), "{name}: {state}");
            assert!(leftovers(&s3, &prefix).await.is_empty(), "{name}");
        }
        for sim in &sims {
            sim.mutate(4);
        }
        // Windows end at the server's clock, which `Date` shows to the second:
        // the next scheduled run comes after these changes are a second old.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for sim in sims {
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tenant_reads_one_tenants_state_object_from_the_store() {
    let s3 = S3Server::start("tenstate").await;
    let sim = simulator(25, 331, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.json");
    add_tenant(&vault, "acme", &sim);
    let text = pipeline(&sim, "p", &s3.url("orgs/{tenant}"))
        .replace(
            &format!("accounts_url = \"{}\"", sim.accounts_url()),
            "vault = \"per-tenant\"",
        )
        .replace("client_id = { env = \"FYLE_CLIENT_ID\" }\n", "")
        .replace("client_secret = { env = \"FYLE_CLIENT_SECRET\" }\n", "")
        .replace("refresh_token = { env = \"FYLE_REFRESH_TOKEN\" }\n", "");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let bin = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("--vault")
            .arg(&vault)
            .args(args)
            .current_dir(dir.path())
            .env("EXPENSE_SYNC_SPOOL_DIR", dir.path().join("spool"))
            .env_remove("EXPENSE_SYNC_LOG")
            .env_remove("FYLE_ACCOUNTS_URL")
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("EXPENSE_SYNC_SHARDS")
            .kill_on_drop(true);
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        cmd.output()
    };
    let f = file.to_str().unwrap();
    let o = bin(&["run", f, "--connections", "acme"]).await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = bin(&["state", f, "--tenant", "acme"]).await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stored = state_json(&s3, "orgs/acme/p.state.json").await;
    assert!(shown["watermark"].is_string(), "{shown}");
    assert_eq!(shown["watermark"], stored["watermark"]);
    assert!(
        stderr(&o).contains("orgs/acme/p.state.json"),
        "{}",
        stderr(&o)
    );
    sim.shutdown().await;
}

/// Temporary upload keys under `prefix` (`.expense-sync-tmp/…/{run_id}/…`).
async fn temporaries(s3: &S3Server, prefix: &str) -> std::collections::BTreeSet<String> {
    s3.keys(prefix)
        .await
        .into_iter()
        .filter(|k| k.contains(".expense-sync-tmp"))
        .collect()
}

/// Starts a run and, once it has uploaded its first temporary object, waits
/// `delay(elapsed_so_far)` and sends it SIGKILL. Returns whether the kill
/// landed (the process died of it) and how long the run went on after its
/// first upload when it was not killed.
async fn run_and_kill_after_first_upload(
    file: &Path,
    sim: &Simulator,
    s3: &S3Server,
    prefix: &str,
    delay: Option<Duration>,
) -> (bool, Duration) {
    let c = sim.credentials();
    let before = temporaries(s3, prefix).await;
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg(file)
        .current_dir(file.parent().unwrap())
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env("FYLE_CLIENT_SECRET", &c.client_secret)
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .env(
            "EXPENSE_SYNC_SPOOL_DIR",
            file.parent().unwrap().join("spool"),
        )
        .env("EXPENSE_SYNC_LEASE_TTL", "2s")
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_FAILPOINT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Watch the store for this run's first temporary object: from then on
    // it is uploading and committing.
    let uploading = loop {
        if child.try_wait().unwrap().is_some() {
            break None;
        }
        if temporaries(s3, prefix)
            .await
            .difference(&before)
            .next()
            .is_some()
        {
            break Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let Some(started) = uploading else {
        let status = child.wait().await.unwrap();
        panic!("the run ended ({status}) before it uploaded anything");
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
        // A real SIGKILL: no handler, no cleanup, no flush.
        let _ = child.start_kill();
    }
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    (status.signal() == Some(9), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_sigkilled_at_random_instants_of_upload_and_commit_leave_exactly_once_outputs() {
    let s3 = S3Server::start("sigkill").await;
    let sim = simulator(300, 77, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let prefix = "killed";
    std::fs::write(&file, pipeline(&sim, "kill", &s3.url(prefix))).unwrap();
    // How long uploading and committing take here, measured on a whole run.
    let (_, phase) = run_and_kill_after_first_upload(&file, &sim, &s3, prefix, None).await;
    let mut landed = 0;
    for round in 0..6 {
        sim.mutate(25);
        // The killed run's lease must expire before the next run may start.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let at = phase.mul_f64(rand::random_range(0.0..1.0));
        let (killed, _) = run_and_kill_after_first_upload(&file, &sim, &s3, prefix, Some(at)).await;
        eprintln!("round {round}: SIGKILL {at:?} into the upload/commit: landed={killed}");
        landed += usize::from(killed);
    }
    assert!(landed > 0, "no kill landed inside a run");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for attempt in 0..2 {
        let o = run_bin(&file, &sim, &s3, &[("EXPENSE_SYNC_LEASE_TTL", "2s")]).await;
        assert!(o.status.success(), "rerun {attempt}: {}", stderr(&o));
    }
    assert_exactly_once_in(&s3, prefix, &sim).await;
    assert_eq!(
        leftovers(&s3, prefix).await,
        Vec::<String>::new(),
        "temporary objects or a lease left behind"
    );
    sim.shutdown().await;
}

/// Placing a committed object copies it inside the store: a file larger than
/// the multipart threshold is never downloaded into this process, reads back
/// identical, and a repeated place (a rerun after a crash between the copy and
/// the temporary's removal) is a no-op that still removes the temporary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_a_file_larger_than_the_multipart_threshold_copies_it_in_the_store() {
    scenarios::large_file_is_placed_by_a_copy_in_the_store(&S3Server::start("placing").await).await;
}
