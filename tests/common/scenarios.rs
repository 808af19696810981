//! Object-storage scenarios every real store must pass (SeaweedFS for S3,
//! Azurite for Azure), run against the real binary.

use std::time::Duration;

use expense_sync::simulator::{Faults, SimConfig, Simulator};

use super::store::{
    EXIT_LOCKED, TestStore, assert_exactly_once_in, leftovers, remote_pipeline as pipeline,
    run_bin, state_json, stderr,
};
use super::*;

/// An export (CSV and Parquet) to `store` equals ground truth, field by
/// field, read back with the real readers; an incremental rerun adds only what
/// changed. `env` is added to the store's environment.
pub async fn export_equals_ground_truth(store: &impl TestStore, env: &[(&str, &str)]) {
    let sim = simulator(230, 31, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(&sim, "lake", &store.url("acme/out"))).unwrap();

    let o = run_bin(&file, &sim, store, env).await;
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
            .all(|p| p.starts_with(&format!("{}/", store.url("acme/out")))),
        "the summary names the objects: {paths:?}"
    );

    // Ground truth, field by field, from the downloaded CSV.
    let truth = truth_by_id(&sim);
    let csv_keys = store.keys("acme/out/csv").await;
    assert_eq!(csv_keys.len(), 1, "{csv_keys:?}");
    let local = dir.path().join("got.csv");
    std::fs::write(&local, store.read(&csv_keys[0]).await).unwrap();
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
    let pq_keys = store.keys("acme/out/parquet").await;
    assert_eq!(pq_keys.len(), 1, "{pq_keys:?}");
    let bytes = store.read(&pq_keys[0]).await;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, truth.len());

    // The state object records the run; nothing temporary is left.
    let st = state_json(store, "acme/out/lake.state.json").await;
    assert_eq!(st["runs"].as_array().unwrap().len(), 1);
    assert!(st["pending"].is_null());
    assert!(st["watermark"].is_string());
    assert!(leftovers(store, "acme/out").await.is_empty());
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
    let o = run_bin(&file, &sim, store, env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_exactly_once_in(store, "acme/out", &sim).await;
    assert_eq!(store.keys("acme/out/csv").await.len(), 2);
    sim.shutdown().await;
}

/// Of two processes racing on one pipeline, exactly one commits; the other stops, locked.
pub async fn racing_commit_exactly_once(store: &impl TestStore) {
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
    std::fs::write(&file, pipeline(&sim, "race", &store.url("out"))).unwrap();

    let first = run_bin(&file, &sim, store, &[]);
    let second = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        run_bin(&file, &sim, store, &[]).await
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
    let st = state_json(store, "out/race.state.json").await;
    assert_eq!(st["runs"].as_array().unwrap().len(), 1);
    assert_exactly_once_in(store, "out", &sim).await;
    assert!(leftovers(store, "out").await.is_empty());
    sim.shutdown().await;
}

/// Runs killed at each step of the remote commit; the lease of the killed
/// run blocks the next one until it expires, then recovery leaves the
/// outputs exactly once and no temporary object behind.
pub async fn killed_runs_leave_exactly_once(store: &impl TestStore) {
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
        std::fs::write(&file, pipeline(&sim, "crash", &store.url(&prefix))).unwrap();
        let ttl = [("EXPENSE_SYNC_LEASE_TTL", "2s")];

        let o = run_bin(
            &file,
            &sim,
            store,
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
            let o = run_bin(&file, &sim, store, &ttl).await;
            assert!(o.status.success(), "{point} run {attempt}: {}", stderr(&o));
        }
        assert_exactly_once_in(store, &prefix, &sim).await;
        assert_eq!(
            leftovers(store, &prefix).await,
            Vec::<String>::new(),
            "{point}: temporary objects or a lease left behind"
        );
        sim.shutdown().await;
    }
}

/// The lease of a killed run refuses the next run until it expires, then is taken over.
pub async fn lease_taken_over_only_after_expiry(store: &impl TestStore) {
    let sim = simulator(60, 8, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(&sim, "leased", &store.url("out"))).unwrap();
    let ttl = ("EXPENSE_SYNC_LEASE_TTL", "4s");

    let o = run_bin(
        &file,
        &sim,
        store,
        &[ttl, ("EXPENSE_SYNC_FAILPOINT", "before-commit")],
    )
    .await;
    assert!(!o.status.success(), "{}", stderr(&o));
    let killed_at = std::time::Instant::now();
    assert!(
        store
            .keys("out")
            .await
            .contains(&"out/leased.state.json.lease".to_string())
    );

    // Before the expiry: refused, naming the dead holder.
    let o = run_bin(&file, &sim, store, &[ttl]).await;
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
    let o = run_bin(&file, &sim, store, &[ttl]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("took over an expired lease"),
        "{}",
        stderr(&o)
    );
    assert_exactly_once_in(store, "out", &sim).await;
    assert!(leftovers(store, "out").await.is_empty());
    sim.shutdown().await;
}

/// A planned file whose temporary object holds `len` pseudo-random bytes.
fn large_planned_file(
    target: &expense_sync::store::state::RemoteTarget,
    dir: &std::path::Path,
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
pub async fn large_file_is_placed_by_a_copy_in_the_store(store: &impl TestStore) {
    use expense_sync::state::Target;
    use expense_sync::store::{ObjectKey, Remote, state::RemoteTarget};
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let downloaded = std::sync::Arc::new(AtomicU64::new(0));
    let settings: Vec<(String, String)> = store.env();
    let opened = Remote::open_with(&store.url("out"), &settings).unwrap();
    let counting = super::store::CountingStore {
        inner: opened.store().clone(),
        downloaded: downloaded.clone(),
    };
    let remote = std::sync::Arc::new(
        Remote::with_store(
            std::sync::Arc::new(counting),
            opened.url(&ObjectKey::from("")).trim_end_matches('/'),
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
    assert_eq!(store.read("out/big.bin").await.as_ref(), bytes.as_slice());
    assert!(leftovers(store, "out").await.is_empty());

    // A crash after the copy, before the temporary was removed: the rerun's
    // place finds the same content at the final key and only cleans up.
    let temp = planned.temp.to_string_lossy().into_owned();
    store.write(&temp, &bytes).await;
    tokio::task::block_in_place(|| target.place(&planned)).unwrap();
    assert_eq!(store.read("out/big.bin").await.as_ref(), bytes.as_slice());
    assert!(leftovers(store, "out").await.is_empty());

    // Different content at the final key is never replaced.
    let mut other = bytes.clone();
    other[len - 1] ^= 1;
    store.write(&temp, &other).await;
    let e = tokio::task::block_in_place(|| target.place(&planned)).unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(store.read("out/big.bin").await.as_ref(), bytes.as_slice());
}

/// Processes rotating the tokens of their tenants in one vault object at once
/// lose no rotation (conditional puts), and the object is encrypted at rest.
pub async fn vault_updates_lose_no_rotated_token(store: &impl TestStore) {
    use expense_sync::auth::vault::{Connection, GrantKind, Profile, Vault};
    use expense_sync::store::Remote;
    use secrecy::{ExposeSecret, SecretString};

    let url = store.url("tenants/vault.json");
    let env = store.env();
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
    let raw = String::from_utf8_lossy(&store.read("tenants/vault.json").await).into_owned();
    assert!(!raw.contains("token-"), "{raw}");
    assert!(raw.contains("chacha20poly1305"), "{raw}");
}
