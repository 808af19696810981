//! Object storage (S3 and S3-compatible servers, GCS, Azure) for outputs,
//! state, leases and the vault, through the `object_store` crate.
//!
//! A location such as `s3://bucket/prefix` is opened with the provider's
//! usual environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_ALLOW_HTTP`, …, `GOOGLE_*`, `AZURE_*`). The rest of expense-sync is
//! synchronous where it touches storage (the commit protocol, the vault), so
//! [`Remote`] is a blocking facade: each call runs on the store's own small
//! runtime, on a scoped thread, so it may be called from async code and from
//! blocking threads alike without nesting runtimes.

pub mod lease;
pub mod location;
pub mod state;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

pub use location::OutputLocation;
pub use object_store::UpdateVersion as ObjectVersion;
pub use object_store::path::Path as ObjectKey;

/// Requests in flight for [`Remote::get_many`] and [`Remote::delete_many`].
const MANY_IN_FLIGHT: usize = 16;

/// URL schemes that name object storage rather than a local directory.
const SCHEMES: &[&str] = &[
    "s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://",
];
/// Files larger than this are uploaded in parts.
const MULTIPART_OVER: u64 = 8 * 1024 * 1024;
/// Size of one uploaded part.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How a create-only server-side copy is done on S3 unless `AWS_COPY_IF_NOT_EXISTS`
/// says otherwise: a multipart upload whose one part is an UploadPartCopy of the
/// source, completed with `If-None-Match: *` (AWS S3 and SeaweedFS honour it).
pub const S3_COPY_IF_NOT_EXISTS: &str = "multipart";
/// Environment variables whose names configure a store (`AWS_REGION` → `aws_region`).
const ENV_PREFIXES: &[&str] = &["AWS_", "GOOGLE_", "AZURE_"];

/// Whether `location` names object storage (`s3://…`, `gs://…`, `az://…`).
pub fn is_remote(location: &Path) -> bool {
    let s = location.to_string_lossy();
    SCHEMES.iter().any(|p| s.starts_with(p))
}

/// A failed object-store operation, naming the object and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {message}")]
pub struct StoreError {
    /// The object or location (`s3://bucket/key`).
    pub url: String,
    /// What went wrong.
    pub message: String,
    /// A conditional write lost to another writer (HTTP 412 / object exists).
    pub conflict: bool,
}

/// One object store and the base URL its keys are shown under.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// `scheme://bucket`, for messages.
    base: String,
    /// The key prefix the opened URL pointed at.
    prefix: Key,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base)
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this one may be dropped inside async code.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn error(url: String, e: object_store::Error) -> StoreError {
    let conflict = matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    );
    StoreError {
        url,
        message: e.to_string(),
        conflict,
    }
}

impl Remote {
    /// Opens the store `url` names, configured from the environment.
    pub fn open(url: &str) -> Result<Remote, StoreError> {
        let options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        Self::open_with(url, &options)
    }

    /// Opens the store `url` names with explicit settings (`AWS_ENDPOINT_URL`-style names).
    pub fn open_with(url: &str, settings: &[(String, String)]) -> Result<Remote, StoreError> {
        let fail = |message: String| StoreError {
            url: url.to_string(),
            message,
            conflict: false,
        };
        let parsed = url::Url::parse(url).map_err(|e| fail(format!("not a valid URL: {e}")))?;
        let mut options: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if parsed.scheme().starts_with("s3")
            && !options
                .iter()
                .any(|(k, _)| k == "aws_copy_if_not_exists" || k == "copy_if_not_exists")
        {
            options.push((
                "aws_copy_if_not_exists".to_string(),
                S3_COPY_IF_NOT_EXISTS.to_string(),
            ));
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(|e| {
            fail(format!(
                "cannot open this object store ({e}); check the URL and the AWS_*/GOOGLE_*/AZURE_* \
                 environment (endpoint, region, credentials; AWS_ALLOW_HTTP=true for a plain-HTTP endpoint)"
            ))
        })?;
        let base = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
        Self::with_store(Arc::from(store), &base, prefix)
    }

    /// A store given directly (tests use an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        base: &str,
        prefix: Key,
    ) -> Result<Remote, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("object-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError {
                url: base.to_string(),
                message: format!("cannot start the object-store runtime: {e}"),
                conflict: false,
            })?;
        Ok(Remote {
            store,
            base: base.trim_end_matches('/').to_string(),
            prefix,
            runtime: Some(runtime),
        })
    }

    /// Runs `fut` on the store's runtime and waits for it, from any context.
    fn block<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        let rt = self.runtime.as_ref().expect("runtime lives until drop");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .expect("object-store call panicked")
        })
    }

    /// The underlying store (tests wrap it to observe traffic).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key prefix of the opened URL.
    pub fn prefix(&self) -> &Key {
        &self.prefix
    }

    /// `rel` (slash-separated) under the prefix.
    pub fn key(&self, rel: &str) -> Key {
        let prefix = self.prefix.as_ref().trim_end_matches('/');
        if prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{prefix}/{rel}"))
        }
    }

    /// The key of a URL in this store (`s3://bucket/a/b` → `a/b`), if it is in this store.
    pub fn key_of_url(&self, url: &str) -> Option<Key> {
        let rest = url.strip_prefix(&self.base)?.strip_prefix('/')?;
        Some(Key::from(rest))
    }

    /// How a key is shown to people: `s3://bucket/key`.
    pub fn url(&self, key: &Key) -> String {
        format!("{}/{}", self.base, key.as_ref())
    }

    /// The object's bytes and version, or `None` if it does not exist.
    pub fn get(&self, key: &Key) -> Result<Option<(Bytes, UpdateVersion)>, StoreError> {
        self.block(self.fetch(key))
    }

    /// The bytes of each of `keys`, in their order (`None`: no such object),
    /// a few requests in flight at a time: reading many small objects one
    /// round trip after another would make a run's start slow.
    pub fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        self.block(
            futures::stream::iter(keys)
                .map(|key| async move { Ok(self.fetch(key).await?.map(|(bytes, _)| bytes)) })
                .buffered(MANY_IN_FLIGHT)
                .try_collect(),
        )
    }

    async fn fetch(&self, key: &Key) -> Result<Option<(Bytes, UpdateVersion)>, StoreError> {
        match self.store.get(key).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let bytes = r.bytes().await.map_err(|e| error(self.url(key), e))?;
                Ok(Some((bytes, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(self.url(key), e)),
        }
    }

    /// Writes `bytes` at `key`: `Create` fails if it exists, `Update` if it changed since read.
    pub fn put(&self, key: &Key, bytes: Bytes, mode: PutMode) -> Result<UpdateVersion, StoreError> {
        self.block(async {
            let r = self
                .store
                .put_opts(key, PutPayload::from(bytes), PutOptions::from(mode))
                .await
                .map_err(|e| error(self.url(key), e))?;
            Ok(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })
        })
    }

    /// Whether an object exists at `key`.
    pub fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        self.block(async {
            match self.store.head(key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(error(self.url(key), e)),
            }
        })
    }

    /// Deletes `key`; a missing object is not an error.
    pub fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.block(async {
            match self.store.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(error(self.url(key), e)),
            }
        })
    }

    /// Deletes every one of `keys` (absent ones included), a few at a time.
    pub fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        use futures::{StreamExt, TryStreamExt};
        self.block(
            futures::stream::iter(keys)
                .map(|key| async move {
                    match self.store.delete(key).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(error(self.url(key), e)),
                    }
                })
                .buffer_unordered(MANY_IN_FLIGHT)
                .try_collect::<()>(),
        )
    }

    /// Every key under `prefix`.
    pub fn list(&self, prefix: &Key) -> Result<Vec<Key>, StoreError> {
        use futures::TryStreamExt;
        self.block(async {
            self.store
                .list(Some(prefix))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(|e| error(self.url(prefix), e))
        })
    }

    /// Keys directly under `prefix` (not in its sub-folders), as `list` would show them.
    pub fn list_here(&self, prefix: &Key) -> Result<Vec<Key>, StoreError> {
        self.block(async {
            self.store
                .list_with_delimiter(Some(prefix))
                .await
                .map(|r| r.objects.into_iter().map(|m| m.location).collect())
                .map_err(|e| error(self.url(prefix), e))
        })
    }

    /// Streams the object at `key` into `to` (a plan can be large: it is never
    /// held in memory); `None` if there is no such object.
    pub fn download(&self, key: &Key, to: &mut std::fs::File) -> Result<Option<u64>, StoreError> {
        use futures::TryStreamExt;
        use std::io::Write;
        self.block(async {
            let r = match self.store.get(key).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(error(self.url(key), e)),
            };
            let mut stream = r.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| error(self.url(key), e))?
            {
                to.write_all(&chunk).map_err(|e| StoreError {
                    url: self.url(key),
                    message: format!("cannot write the downloaded object to a local file: {e}"),
                    conflict: false,
                })?;
                n += chunk.len() as u64;
            }
            Ok(Some(n))
        })
    }

    /// Server-side copy that creates `to` only if nothing is there (a lost race
    /// is a `conflict`). The bytes never pass through this process; on S3 this
    /// is a multipart upload of one UploadPartCopy part completed with
    /// `If-None-Match: *` (see [`S3_COPY_IF_NOT_EXISTS`]).
    pub fn copy_create(&self, from: &Key, to: &Key) -> Result<(), StoreError> {
        self.block(async {
            self.store
                .copy_if_not_exists(from, to)
                .await
                .map_err(|e| match e {
                    object_store::Error::NotSupported { .. } => StoreError {
                        url: self.url(to),
                        message: format!(
                            "this store cannot copy an object only if the target does not exist \
                             ({e}); for an S3-compatible server set AWS_COPY_IF_NOT_EXISTS (see README, \
                             Object storage)"
                        ),
                        conflict: false,
                    },
                    e => error(self.url(to), e),
                })
        })
    }

    /// Whether the objects at `a` and `b` hold the same bytes, compared a
    /// window at a time so neither is held in memory; a missing object differs.
    pub fn same_content(&self, a: &Key, b: &Key) -> Result<bool, StoreError> {
        self.block(async {
            let (ha, hb) = futures::join!(self.store.head(a), self.store.head(b));
            let size = |k: &Key, h: object_store::Result<object_store::ObjectMeta>| match h {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(error(self.url(k), e)),
            };
            let (Some(len), Some(len_b)) = (size(a, ha)?, size(b, hb)?) else {
                return Ok(false);
            };
            if len != len_b {
                return Ok(false);
            }
            let mut at = 0u64;
            while at < len {
                let range = at..len.min(at + PART_SIZE as u64);
                let (x, y) = futures::try_join!(
                    async {
                        self.store
                            .get_range(a, range.clone())
                            .await
                            .map_err(|e| error(self.url(a), e))
                    },
                    async {
                        self.store
                            .get_range(b, range.clone())
                            .await
                            .map_err(|e| error(self.url(b), e))
                    }
                )?;
                if x != y {
                    return Ok(false);
                }
                at = range.end;
            }
            Ok(true)
        })
    }

    /// Server-side copy, replacing whatever is at `to`.
    pub fn copy(&self, from: &Key, to: &Key) -> Result<(), StoreError> {
        self.block(async {
            self.store
                .copy(from, to)
                .await
                .map_err(|e| error(self.url(to), e))
        })
    }

    /// Uploads a local file to `key` (in parts when large), replacing what is there.
    pub fn upload_file(&self, local: &Path, key: &Key) -> Result<(), StoreError> {
        use std::io::Read;
        let fail = |what: &str, e: std::io::Error| StoreError {
            url: self.url(key),
            message: format!("cannot {what} {}: {e}", local.display()),
            conflict: false,
        };
        let len = std::fs::metadata(local).map_err(|e| fail("read", e))?.len();
        if len <= MULTIPART_OVER {
            let bytes = std::fs::read(local).map_err(|e| fail("read", e))?;
            return self
                .put(key, Bytes::from(bytes), PutMode::Overwrite)
                .map(|_| ());
        }
        let mut file = std::fs::File::open(local).map_err(|e| fail("open", e))?;
        self.block(async {
            let upload = self
                .store
                .put_multipart(key)
                .await
                .map_err(|e| error(self.url(key), e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(fail("read", e));
                    }
                };
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| error(self.url(key), e))?;
                writer.write(&buf[..n]);
                crate::failpoint::hit("remote-part-uploaded");
            }
            writer
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| error(self.url(key), e))
        })
    }
}
