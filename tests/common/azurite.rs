//! A real Azure Blob Storage endpoint for tests: one Azurite (Microsoft's
//! emulator, `azurite-blob`) per test, on a free loopback port, in a temporary directory,
//! killed on drop.
//!
//! The binary comes from `$AZURITE_BIN`, else `.ci/node_modules/.bin/azurite-blob`
//! (installed by `.ci/setup.sh` from npm, run by the first test that needs it).
//! If it cannot be installed the test fails, saying so: never skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::azure::MicrosoftAzureBuilder;

/// The emulator's well-known account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (public, documented by Microsoft for Azurite).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service with one container.
pub struct Azurite {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A container that exists.
    pub container: String,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `azurite-blob` script, or a panic that says how to install it.
pub fn azurite_bin() -> PathBuf {
    let path = std::env::var_os("AZURITE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::tools::ci_tool("node_modules/.bin/azurite-blob"));
    assert!(
        path.is_file(),
        "Azurite (`azurite-blob`) not found at {}: the Azure tests need a real Azure Blob endpoint. \
         Run `bash .ci/setup.sh` (installs npm's azurite into .ci/node_modules; needs Node.js), \
         or set AZURITE_BIN",
        path.display()
    );
    path
}

impl Azurite {
    /// Starts the emulator and creates `container` (3–63 lowercase letters, digits, dashes).
    pub async fn start(container: &str) -> Azurite {
        let bin = azurite_bin();
        let mut last = String::new();
        // A port found free can be taken by a parallel test before Azurite
        // binds it; such a server exits, and the next attempt uses a fresh port.
        for _attempt in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let port = super::tools::free_port();
            let log = std::fs::File::create(dir.path().join("azurite.log")).unwrap();
            let child = Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--skipApiVersionCheck", "--loose"])
                .arg("--location")
                .arg(dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = Azurite {
                child,
                dir,
                endpoint: format!("http://127.0.0.1:{port}"),
                container: container.to_string(),
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(status) => last = format!("exited with {status}; log:\n{}", server.log()),
            }
        }
        panic!("Azurite did not start in 4 attempts; the last one {last}");
    }

    /// The emulator switch the way Azurite's documentation gives it
    /// (`AZURE_STORAGE_USE_EMULATOR` with `AZURITE_BLOB_STORAGE_URL`, read from
    /// the process environment by object_store): it wins over [`TestStore::env`].
    pub fn emulator_env(&self) -> [(&'static str, &str); 2] {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURITE_BLOB_STORAGE_URL", &self.endpoint),
        ]
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }

    /// Waits until the container is created (object_store has no call for it:
    /// a signed Create Container request).
    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            let got = self.create_container(&client).await;
            match got {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(60) => {
                    panic!("Azurite did not become ready in 60 s: {e}\n{}", self.log())
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(status);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn create_container(&self, client: &reqwest::Client) -> Result<(), String> {
        use base64::Engine;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::STANDARD;
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        // Shared Key: the verb, eleven empty standard headers, the x-ms-
        // headers and the resource (path-style: the account appears twice).
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{}\nrestype:container",
            self.container
        );
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(ACCOUNT_KEY).unwrap()).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = b64.encode(mac.finalize().into_bytes());
        let r = client
            .put(format!(
                "{}/{ACCOUNT}/{}?restype=container",
                self.endpoint, self.container
            ))
            .header("x-ms-date", &date)
            .header("x-ms-version", version)
            .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"))
            .header("content-length", "0")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            201 | 409 => Ok(()),
            s => Err(format!(
                "Create Container: HTTP {s}: {}",
                r.text().await.unwrap_or_default()
            )),
        }
    }
}

impl super::store::TestStore for Azurite {
    /// Configured like a real account (name, key, endpoint): what a user of
    /// Azure sets, and what an in-process `Remote::open_with` can use.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), ACCOUNT_KEY.into()),
            (
                "AZURE_STORAGE_ENDPOINT".into(),
                format!("{}/{ACCOUNT}", self.endpoint),
            ),
            ("AZURE_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    fn url(&self, prefix: &str) -> String {
        format!("az://{}/{prefix}", self.container)
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            MicrosoftAzureBuilder::new()
                .with_account(ACCOUNT)
                .with_access_key(ACCOUNT_KEY)
                .with_endpoint(format!("{}/{ACCOUNT}", self.endpoint))
                .with_container_name(&self.container)
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }
}
