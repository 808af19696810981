//! What the object-storage tests need from any real store server (SeaweedFS
//! for S3, Azurite for Azure), and the checks they share: run the binary
//! against the store, read back what it committed, find what it left.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use expense_sync::simulator::Simulator;

/// The real binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");
/// Exit code of a run refused because another run holds the pipeline.
pub const EXIT_LOCKED: i32 = 7;

/// A running store server with one bucket or container.
#[allow(async_fn_in_trait)]
pub trait TestStore: Sync {
    /// The environment a process needs to reach the server.
    fn env(&self) -> Vec<(String, String)>;
    /// The URL of `prefix` in the bucket (`s3://bucket/prefix`, `az://container/prefix`).
    fn url(&self, prefix: &str) -> String;
    /// A client for the bucket, to inspect what a run left.
    fn store(&self) -> Arc<dyn ObjectStore>;

    /// Every key under `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let p = Key::from(prefix);
        let mut keys: Vec<String> = self
            .store()
            .list(Some(&p))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// The bytes at `key`.
    async fn read(&self, key: &str) -> bytes::Bytes {
        self.store()
            .get(&Key::from(key))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .bytes()
            .await
            .unwrap()
    }

    /// Writes `bytes` at `key`.
    async fn write(&self, key: &str, bytes: &[u8]) {
        self.store()
            .put(&Key::from(key), bytes.to_vec().into())
            .await
            .unwrap();
    }
}

/// An incremental pipeline with outputs in `output_dir`: a CSV and a Parquet file per run.
pub fn remote_pipeline(sim: &Simulator, name: &str, output_dir: &str) -> String {
    let text = super::incremental_text(sim, name, "page_size = 50")
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

/// Runs `expense-sync run FILE` against `sim` with `store`'s environment and `env`.
pub async fn run_bin(
    file: &Path,
    sim: &Simulator,
    store: &impl TestStore,
    env: &[(&str, &str)],
) -> Output {
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
    for (k, v) in store.env() {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

/// A process's stderr, for messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every (id, updated_at) in the committed CSV objects under `prefix/csv/`, with counts.
pub async fn committed_versions(
    store: &impl TestStore,
    prefix: &str,
) -> BTreeMap<(String, String), usize> {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = BTreeMap::new();
    for key in store.keys(&format!("{prefix}/csv")).await {
        assert!(key.ends_with(".csv"), "unexpected object {key}");
        let local = dir.path().join("f.csv");
        std::fs::write(&local, store.read(&key).await).unwrap();
        for r in super::read_csv(&local).1 {
            *seen.entry((r[0].clone(), r[1].clone())).or_insert(0) += 1;
        }
    }
    seen
}

/// Every current expense version is in the committed CSV objects once, and no other.
pub async fn assert_exactly_once_in(store: &impl TestStore, prefix: &str, sim: &Simulator) {
    let seen = committed_versions(store, prefix).await;
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "versions delivered twice: {doubled:?}");
    let missing: Vec<_> = super::truth_versions(sim)
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
pub async fn leftovers(store: &impl TestStore, prefix: &str) -> Vec<String> {
    store
        .keys(prefix)
        .await
        .into_iter()
        .filter(|k| k.contains(".expense-sync-tmp") || k.ends_with(".lease"))
        .collect()
}

/// The state object at `key`, parsed.
pub async fn state_json(store: &impl TestStore, key: &str) -> serde_json::Value {
    serde_json::from_slice(&store.read(key).await).unwrap()
}

/// A store that counts the object bytes this process downloads through it.
#[derive(Debug)]
pub struct CountingStore {
    /// The store counted.
    pub inner: std::sync::Arc<dyn object_store::ObjectStore>,
    /// Bytes downloaded so far (object bodies, not metadata).
    pub downloaded: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
