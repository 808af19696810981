//! Outputs, state, leases and the vault in object storage, against a real
//! S3-compatible server (SeaweedFS, started per test) and the real binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::s3::S3Server;
use common::*;
use expense_sync::simulator::{Faults, SimConfig, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");
/// Exit code of a run refused because another run holds the pipeline.
const EXIT_LOCKED: i32 = 7;

/// An incremental pipeline with outputs in `output_dir`: a CSV and a Parquet file per run.
fn pipeline(sim: &Simulator, name: &str, output_dir: &str) -> String {
    let text = incremental_text(sim, name, "page_size = 50")
        .replace(
            "[pipeline]\n",
            &format!("[pipeline]\noutput_dir = \"{output_dir}\"\n"),
        )
        .replace(
            "path = \"{pipeline}-{run_id}.csv\"",
            "path = \"csv/{pipeline}-{run_id}.csv\"",
        );
    format!(
        "{text}\n[[sinks]]\ntype = \"parquet\"\npath = \"parquet/{{pipeline}}-{{run_id}}.parquet\"\n"
    )
}

async fn run_bin(file: &Path, sim: &Simulator, s3: &S3Server, env: &[(&str, &str)]) -> Output {
    let c = sim.credentials();
    let spool = file.parent().unwrap().join("spool");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg(file)
        .current_dir(file.parent().unwrap())
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env("FYLE_CLIENT_SECRET", &c.client_secret)
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .env("EXPENSE_SYNC_SPOOL_DIR", &spool)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_FAILPOINT")
        .env_remove("EXPENSE_SYNC_LEASE_TTL")
        .kill_on_drop(true);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every (id, updated_at) in the committed CSV objects under `prefix/csv/`, with counts.
async fn committed_versions(s3: &S3Server, prefix: &str) -> BTreeMap<(String, String), usize> {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = BTreeMap::new();
    for key in s3.keys(&format!("{prefix}/csv")).await {
        assert!(key.ends_with(".csv"), "unexpected object {key}");
        let local = dir.path().join("f.csv");
        std::fs::write(&local, s3.read(&key).await).unwrap();
        for r in read_csv(&local).1 {
            *seen.entry((r[0].clone(), r[1].clone())).or_insert(0) += 1;
        }
    }
    seen
}

/// Every current expense version is in the committed CSV objects once, and no other.
async fn assert_exactly_once_in(s3: &S3Server, prefix: &str, sim: &Simulator) {
    let seen = committed_versions(s3, prefix).await;
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "versions delivered twice: {doubled:?}");
    let missing: Vec<_> = truth_versions(sim)
        .into_iter()
        .filter(|v| !seen.contains_key(v))
        .collect();
    assert!(
        missing.is_empty(),
        "{} current versions never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
}

/// Temporary objects and leases a finished run must not leave behind.
async fn leftovers(s3: &S3Server, prefix: &str) -> Vec<String> {
    s3.keys(prefix)
        .await
        .into_iter()
        .filter(|k| k.contains(".expense-sync-tmp") || k.ends_with(".lease"))
        .collect()
}

async fn state_json(s3: &S3Server, key: &str) -> serde_json::Value {
    serde_json::from_slice(&s3.read(key).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_s3_equals_ground_truth_and_reads_back_with_csv_and_parquet_readers() {
    let s3 = S3Server::start("exports").await;
    let sim = simulator(230, 31, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(&sim, "lake", &s3.url("acme/out"))).unwrap();

    let o = run_bin(&file, &sim, &s3, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<&str> = summary["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("s3://exports/acme/out/")),
        "the summary names the objects: {paths:?}"
    );

    // Ground truth, field by field, from the downloaded CSV.
    let truth = truth_by_id(&sim);
    let csv_keys = s3.keys("acme/out/csv").await;
    assert_eq!(csv_keys.len(), 1, "{csv_keys:?}");
    let local = dir.path().join("got.csv");
    std::fs::write(&local, s3.read(&csv_keys[0]).await).unwrap();
    let (header, rows) = csv_by_id(&local);
    assert_eq!(header, ["id", "updated_at", "amount"]);
    assert_eq!(rows.len(), truth.len());
    for (id, row) in &rows {
        let t = &truth[id];
        assert_eq!(row[1], t["updated_at"].as_str().unwrap(), "{id}");
        assert_eq!(
            row[2].parse::<rust_decimal::Decimal>().unwrap(),
            json_decimal(&t["amount"]).unwrap(),
            "{id}"
        );
    }
    // The Parquet object, read back with the parquet reader.
    let pq_keys = s3.keys("acme/out/parquet").await;
    assert_eq!(pq_keys.len(), 1, "{pq_keys:?}");
    let bytes = s3.read(&pq_keys[0]).await;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, truth.len());

    // The state object records the run; nothing temporary is left.
    let st = state_json(&s3, "acme/out/lake.state.json").await;
    assert_eq!(st["runs"].as_array().unwrap().len(), 1);
    assert!(st["pending"].is_null());
    assert!(st["watermark"].is_string());
    assert!(leftovers(&s3, "acme/out").await.is_empty());
    assert!(
        !dir.path().join("spool").exists()
            || std::fs::read_dir(dir.path().join("spool/expense-sync-spool"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        "the local spool is removed after the run"
    );

    // An incremental second run adds only what changed: exactly once overall.
    sim.mutate(15);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = run_bin(&file, &sim, &s3, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_exactly_once_in(&s3, "acme/out", &sim).await;
    assert_eq!(s3.keys("acme/out/csv").await.len(), 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_on_one_pipeline_commit_exactly_once() {
    let s3 = S3Server::start("racing").await;
    // Slow pages keep the first run inside its window while the second starts.
    let sim = Simulator::start(SimConfig {
        seed: 5,
        expenses: 300,
        faults: Faults {
            latency: Duration::from_millis(150),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(&sim, "race", &s3.url("out"))).unwrap();

    let first = run_bin(&file, &sim, &s3, &[]);
    let second = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        run_bin(&file, &sim, &s3, &[]).await
    };
    let (a, b) = tokio::join!(first, second);
    let codes = [a.status.code(), b.status.code()];
    assert_eq!(
        codes.iter().filter(|c| **c == Some(0)).count(),
        1,
        "exactly one run commits: {codes:?}\n{}\n{}",
        stderr(&a),
        stderr(&b)
    );
    assert_eq!(codes[1], Some(EXIT_LOCKED), "{}", stderr(&b));
    assert!(
        stderr(&b).contains("another run of pipeline `race` is in progress"),
        "{}",
        stderr(&b)
    );
    let st = state_json(&s3, "out/race.state.json").await;
    assert_eq!(st["runs"].as_array().unwrap().len(), 1);
    assert_exactly_once_in(&s3, "out", &sim).await;
    assert!(leftovers(&s3, "out").await.is_empty());
    sim.shutdown().await;
}

/// Runs killed at each step of the remote commit; the lease of the killed
/// run blocks the next one until it expires, then recovery leaves the
/// outputs exactly once and no temporary object behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_upload_or_mid_commit_leaves_exactly_once_outputs_and_no_temporaries() {
    let s3 = S3Server::start("crashes").await;
    for (i, point) in [
        "remote-uploaded#1",
        "before-commit",
        "after-pending",
        "remote-placed#1",
        "after-commit",
    ]
    .into_iter()
    .enumerate()
    {
        let sim = simulator(120, 40 + i as u64, None).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        let prefix = format!("case{i}");
        std::fs::write(&file, pipeline(&sim, "crash", &s3.url(&prefix))).unwrap();
        let ttl = [("EXPENSE_SYNC_LEASE_TTL", "2s")];

        let o = run_bin(
            &file,
            &sim,
            &s3,
            &[ttl[0], ("EXPENSE_SYNC_FAILPOINT", point)],
        )
        .await;
        assert!(
            !o.status.success(),
            "{point}: the run should have crashed: {}",
            stderr(&o)
        );
        sim.mutate(10);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Wait out the dead run's lease, then run twice: recovery, then a normal run.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        for attempt in 0..2 {
            let o = run_bin(&file, &sim, &s3, &ttl).await;
            assert!(o.status.success(), "{point} run {attempt}: {}", stderr(&o));
        }
        assert_exactly_once_in(&s3, &prefix, &sim).await;
        assert_eq!(
            leftovers(&s3, &prefix).await,
            Vec::<String>::new(),
            "{point}: temporary objects or a lease left behind"
        );
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_killed_run_is_taken_over_only_after_it_expires() {
    let s3 = S3Server::start("leases").await;
    let sim = simulator(60, 8, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(&sim, "leased", &s3.url("out"))).unwrap();
    let ttl = ("EXPENSE_SYNC_LEASE_TTL", "4s");

    let o = run_bin(
        &file,
        &sim,
        &s3,
        &[ttl, ("EXPENSE_SYNC_FAILPOINT", "before-commit")],
    )
    .await;
    assert!(!o.status.success(), "{}", stderr(&o));
    let killed_at = std::time::Instant::now();
    assert!(
        s3.keys("out")
            .await
            .contains(&"out/leased.state.json.lease".to_string())
    );

    // Before the expiry: refused, naming the dead holder.
    let o = run_bin(&file, &sim, &s3, &[ttl]).await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(4),
        "the machine was too slow to try within the lease"
    );
    assert_eq!(o.status.code(), Some(EXIT_LOCKED), "{}", stderr(&o));
    assert!(stderr(&o).contains("held by pid"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("taken over once it expires"),
        "{}",
        stderr(&o)
    );

    // After it: taken over, and the run commits.
    tokio::time::sleep(
        Duration::from_secs(4).saturating_sub(killed_at.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let o = run_bin(&file, &sim, &s3, &[ttl]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("took over an expired lease"),
        "{}",
        stderr(&o)
    );
    assert_exactly_once_in(&s3, "out", &sim).await;
    assert!(leftovers(&s3, "out").await.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_a_vault_in_object_storage_lose_no_rotated_token() {
    use expense_sync::auth::vault::{Connection, GrantKind, Profile, Vault};
    use expense_sync::store::Remote;
    use secrecy::{ExposeSecret, SecretString};

    let s3 = S3Server::start("vaults").await;
    let url = s3.url("tenants/vault.json");
    let env = s3.env();
    let open = || {
        Vault::with_remote(
            Path::new(&url),
            SecretString::from("vault passphrase"),
            Remote::open_with(&url, &env).unwrap(),
        )
    };
    const TENANTS: usize = 6;
    const ROTATIONS: usize = 4;
    open()
        .update(|all| {
            for t in 0..TENANTS {
                let mut c = Connection::new(
                    Profile::Fyle,
                    GrantKind::RefreshToken,
                    "https://accounts.example",
                    &format!("client-{t}"),
                );
                c.refresh_token = Some(SecretString::from(format!("tenant-{t}-token-0")));
                all.insert(format!("tenant-{t}"), c);
            }
            Ok::<_, expense_sync::auth::vault::VaultError>(())
        })
        .unwrap();

    // One "process" (its own vault handle, its own reads) per tenant, all rotating at once.
    let handles: Vec<_> = (0..TENANTS)
        .map(|t| {
            let vault = open();
            std::thread::spawn(move || {
                for r in 1..=ROTATIONS {
                    vault
                        .update(|all| {
                            let c = all.get_mut(&format!("tenant-{t}")).unwrap();
                            c.refresh_token =
                                Some(SecretString::from(format!("tenant-{t}-token-{r}")));
                            Ok::<_, expense_sync::auth::vault::VaultError>(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let all = open().load().unwrap();
    for t in 0..TENANTS {
        let token = all[&format!("tenant-{t}")]
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string();
        assert_eq!(token, format!("tenant-{t}-token-{ROTATIONS}"));
    }
    // Encrypted at rest: no token in the object's bytes.
    let raw = String::from_utf8_lossy(&s3.read("tenants/vault.json").await).into_owned();
    assert!(!raw.contains("token-"), "{raw}");
    assert!(raw.contains("chacha20poly1305"), "{raw}");
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

/// A store that counts the object bytes this process downloads through it.
#[derive(Debug)]
struct CountingStore {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    downloaded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let head = options.head;
        let r = self.inner.get_opts(location, options).await?;
        if !head {
            self.downloaded.fetch_add(
                r.range.end - r.range.start,
                std::sync::atomic::Ordering::SeqCst,
            );
        }
        Ok(r)
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A planned file whose temporary object holds `len` pseudo-random bytes.
fn large_planned_file(
    target: &expense_sync::store::state::RemoteTarget,
    dir: &Path,
    len: usize,
) -> (expense_sync::state::PlannedFile, Vec<u8>) {
    use rand::{RngCore, SeedableRng};
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(len as u64).fill_bytes(&mut bytes);
    let local = dir.join("big.bin");
    std::fs::write(&local, &bytes).unwrap();
    let remote = target.remote();
    let temp = target.temp_key("big", "r1", "big.bin");
    remote.upload_file(&local, &temp).unwrap();
    let planned = expense_sync::state::PlannedFile {
        temp: std::path::PathBuf::from(temp.as_ref()),
        final_path: std::path::PathBuf::from(remote.key("big.bin").as_ref()),
        replace: false,
    };
    (planned, bytes)
}

/// Placing a committed object copies it inside the store: a file larger than
/// the multipart threshold is never downloaded into this process, reads back
/// identical, and a repeated place (a rerun after a crash between the copy and
/// the temporary's removal) is a no-op that still removes the temporary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_a_file_larger_than_the_multipart_threshold_copies_it_in_the_store() {
    use expense_sync::state::Target;
    use expense_sync::store::{ObjectKey, Remote, state::RemoteTarget};
    use std::sync::atomic::{AtomicU64, Ordering};
    let s3 = S3Server::start("placing").await;
    let dir = tempfile::tempdir().unwrap();
    let downloaded = std::sync::Arc::new(AtomicU64::new(0));
    let settings: Vec<(String, String)> = s3.env();
    let opened = Remote::open_with(&s3.url("out"), &settings).unwrap();
    let counting = CountingStore {
        inner: opened.store().clone(),
        downloaded: downloaded.clone(),
    };
    let remote = std::sync::Arc::new(
        Remote::with_store(
            std::sync::Arc::new(counting),
            &format!("s3://{}", s3.bucket),
            ObjectKey::from("out"),
        )
        .unwrap(),
    );
    let (mut target, _) = tokio::task::block_in_place(|| {
        RemoteTarget::load(remote.clone(), remote.key("big.state.json"), "big", "u")
    })
    .unwrap();
    let len = 20 * 1024 * 1024 + 123;
    let (planned, bytes) =
        tokio::task::block_in_place(|| large_planned_file(&target, dir.path(), len));

    downloaded.store(0, Ordering::SeqCst);
    tokio::task::block_in_place(|| target.place(&planned)).unwrap();
    let placing = downloaded.load(Ordering::SeqCst);
    assert!(
        placing < 1024 * 1024,
        "placing downloaded {placing} bytes of a {len}-byte object"
    );
    assert_eq!(s3.read("out/big.bin").await.as_ref(), bytes.as_slice());
    assert!(leftovers(&s3, "out").await.is_empty());

    // A crash after the copy, before the temporary was removed: the rerun's
    // place finds the same content at the final key and only cleans up.
    let temp = planned.temp.to_string_lossy().into_owned();
    s3.write(&temp, &bytes).await;
    tokio::task::block_in_place(|| target.place(&planned)).unwrap();
    assert_eq!(s3.read("out/big.bin").await.as_ref(), bytes.as_slice());
    assert!(leftovers(&s3, "out").await.is_empty());

    // Different content at the final key is never replaced.
    let mut other = bytes.clone();
    other[len - 1] ^= 1;
    s3.write(&temp, &other).await;
    let e = tokio::task::block_in_place(|| target.place(&planned)).unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(s3.read("out/big.bin").await.as_ref(), bytes.as_slice());
}
