//! The credential vault read from a mounted Kubernetes Secret
//! (`--vault k8s-secret:DIR`): a temp directory laid out the way kubelet
//! mounts a Secret (each key a symlink into `..data`, itself a symlink to a
//! timestamped directory), the real binary, simulated Fyle orgs as tenants.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::*;
use expense_sync::ExitCode;
use expense_sync::auth::vault::{GrantKind, Profile};
use expense_sync::auth::{Connection, Vault, VaultError, login};
use expense_sync::http::{HttpClient, HttpConfig};
use expense_sync::simulator::{SIM_PASSWORD, SIM_USERNAME, Simulator};
use secrecy::{ExposeSecret, SecretString};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

/// Writes `keys` into `dir` the way kubelet mounts a Secret volume.
fn kubelet_mount(dir: &Path, keys: &[(&str, String)]) {
    let version = "..2026_11_29_04_00_00.123456789";
    std::fs::create_dir_all(dir.join(version)).unwrap();
    for (key, value) in keys {
        std::fs::write(dir.join(version).join(key), value).unwrap();
    }
    std::os::unix::fs::symlink(version, dir.join("..data")).unwrap();
    for (key, _) in keys {
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    // As kubelet mounts it: read-only files and directories.
    use std::os::unix::fs::PermissionsExt;
    for (key, _) in keys {
        let f = dir.join(version).join(key);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    for d in [dir.join(version), dir.to_path_buf()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
}

/// Every entry under `dir` (symlinks not followed): kind, mtime and content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mtime = meta.modified().unwrap();
            let (kind, content) = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                (
                    "link".to_string(),
                    target.to_string_lossy().as_bytes().to_vec(),
                )
            } else if meta.is_dir() {
                todo.push(p.clone());
                ("dir".to_string(), Vec::new())
            } else {
                ("file".to_string(), std::fs::read(&p).unwrap())
            };
            out.insert(p, (kind, mtime, content));
        }
    }
    out
}

/// A Fyle connection to `sim` as an operator writes it into the Secret.
fn fyle_key(sim: &Simulator) -> String {
    let c = sim.credentials();
    serde_json::json!({
        "profile": "fyle",
        "grant": "refresh_token",
        "accounts_url": sim.accounts_url(),
        "client_id": c.client_id,
        "client_secret": c.client_secret,
        "refresh_token": c.refresh_token,
    })
    .to_string()
}

fn tenant_pipeline(name: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
vault = "set-per-tenant"

[http]
requests_per_second = 1000
initial_backoff = "20ms"

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

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

async fn run_bin(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_VAULT")
        .env_remove("EXPENSE_SYNC_VAULT_KEY")
        .env_remove("FYLE_ACCOUNTS_URL")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("EXPENSE_SYNC_SHARDS")
        .env_remove("EXPENSE_SYNC_SHARD_BUDGET")
        .kill_on_drop(true);
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

#[tokio::test]
async fn tenants_run_from_a_mounted_kubernetes_secret_which_is_never_written() {
    let mut sims = Vec::new();
    for i in 0..3 {
        sims.push(simulator(30 + i * 7, 300 + i as u64, None).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("secret");
    // The three forms a Secret key can take: `NAME.json`, `NAME`, and a whole
    // vault file under `vault.json` (here from `auth add`, plain JSON).
    let plain = dir.path().join("plain-vault.json");
    let local = Vault::with_key(&plain, None);
    let c = sims[2].credentials();
    let mut initech = Connection::new(
        Profile::Fyle,
        GrantKind::RefreshToken,
        &sims[2].accounts_url(),
        &c.client_id,
    );
    initech.client_secret = Some(SecretString::from(c.client_secret.clone()));
    initech.refresh_token = Some(SecretString::from(c.refresh_token.clone()));
    local
        .update(|all| {
            all.insert("initech".into(), initech);
            Ok::<_, VaultError>(())
        })
        .unwrap();
    kubelet_mount(
        &mount,
        &[
            ("acme.json", fyle_key(&sims[0])),
            ("globex", fyle_key(&sims[1])),
            ("vault.json", std::fs::read_to_string(&plain).unwrap()),
        ],
    );
    let before = snapshot(&mount);
    let entries_before = std::fs::read_dir(dir.path()).unwrap().count();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, tenant_pipeline("p")).unwrap();
    let out = dir.path().join("out");
    let vault_arg = format!("k8s-secret:{}", mount.display());
    let args = [
        "--vault",
        vault_arg.as_str(),
        "run",
        pipeline.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--connections",
        "all",
        "--summary-format",
        "json",
    ];
    let names = ["acme", "globex", "initech"];
    for round in 0..2 {
        if round == 1 {
            for sim in &sims {
                sim.mutate(4);
            }
        }
        let o = run_bin(&args, dir.path()).await;
        assert_eq!(o.status.code(), Some(0), "round {round}: {}", text(&o));
        let s = summary(&o);
        let ran: Vec<&str> = s["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tenant"].as_str().unwrap())
            .collect();
        assert_eq!(ran, names, "{s}");
        for (name, sim) in names.iter().zip(&sims) {
            assert_exactly_once(&out.join(name), sim);
        }
        // Tokens obtained at run time never reach the output or logs.
        let all = text(&o);
        for sim in &sims {
            let c = sim.credentials();
            assert!(!all.contains(&c.refresh_token) && !all.contains(&c.client_secret));
        }
    }
    // Nothing under the mount changed, and nothing (a lock, a temp file) was put beside it.
    assert_eq!(snapshot(&mount), before, "the Secret mount was written to");
    let entries_after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // p.toml and out/ were added by the test itself.
    assert_eq!(entries_after.len(), entries_before + 2, "{entries_after:?}");
    for sim in sims {
        sim.shutdown().await;
    }
}

/// A standard OAuth 2.0 connection whose refresh token the simulator rotates.
async fn rotating_refresh_token(sim: &Simulator, dir: &Path) -> (Connection, String) {
    let vault = Vault::with_key(&dir.join("login-vault.json"), None);
    let c = sim.credentials();
    let mut conn = Connection::new(
        Profile::Oauth2,
        GrantKind::Password,
        &sim.accounts_url(),
        &c.client_id,
    );
    conn.client_secret = Some(SecretString::from(c.client_secret.clone()));
    conn.username = Some(SIM_USERNAME.into());
    conn.password = Some(SecretString::from(SIM_PASSWORD.to_string()));
    vault
        .update(|all| {
            all.insert("rc".into(), conn.clone());
            Ok::<_, VaultError>(())
        })
        .unwrap();
    let http = HttpClient::new(&HttpConfig {
        requests_per_second: 1000.0,
        ..HttpConfig::default()
    })
    .unwrap();
    login::login_direct(&vault, &http, "rc").await.unwrap();
    let rt = vault.get("rc").unwrap().refresh_token.unwrap();
    (conn, rt.expose_secret().to_string())
}

#[tokio::test]
async fn a_refresh_token_the_server_rotates_fails_with_reconnect_needed_and_points_to_the_object_store_vault()
 {
    let sim = simulator(10, 41, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (conn, rt) = rotating_refresh_token(&sim, dir.path()).await;
    // What an operator would put in the Secret: the app and its refresh token.
    let key = serde_json::json!({
        "profile": "oauth2",
        "grant": "authorization_code",
        "accounts_url": conn.accounts_url,
        "client_id": conn.client_id,
        "client_secret": conn.client_secret.as_ref().unwrap().expose_secret(),
        "refresh_token": rt,
    });
    let mount = dir.path().join("secret");
    kubelet_mount(&mount, &[("rc.json", key.to_string())]);
    let before = snapshot(&mount);
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        tenant_pipeline("p").replace("set-per-tenant", "rc"),
    )
    .unwrap();
    let vault_arg = format!("k8s-secret:{}", mount.display());
    let out = dir.path().join("out");
    let o = run_bin(
        &[
            "--vault",
            &vault_arg,
            "run",
            pipeline.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    let all = text(&o);
    assert_eq!(o.status.code(), Some(ExitCode::Reconnect.code()), "{all}");
    assert!(
        all.contains("connection `rc`")
            && all.contains("read-only Kubernetes Secret")
            && all.contains("--vault s3://"),
        "{all}"
    );
    assert!(!all.contains(&rt), "the refresh token is never shown");
    // The server did rotate it: the Secret's token is spent.
    assert!(!sim.refresh_token_is_live(&rt));
    assert!(
        files_in(&out)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".csv"))
    );
    assert_eq!(snapshot(&mount), before, "the Secret mount was written to");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_secret_key_with_an_unknown_field_is_named_and_changes_to_the_secret_are_refused() {
    let sim = simulator(3, 42, None).await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("secret");
    let mut key: serde_json::Value = serde_json::from_str(&fyle_key(&sim)).unwrap();
    key["refresh-token"] = key["refresh_token"].take();
    kubelet_mount(&mount, &[("acme.json", key.to_string())]);
    let vault = Vault::open(Path::new(&format!("k8s-secret:{}", mount.display())));
    let err = vault.load().unwrap_err().to_string();
    assert!(
        err.contains("acme.json") && err.contains("unknown field `refresh-token`"),
        "{err}"
    );
    // A mount that is not there says where it was looked for and what to check.
    let missing = dir.path().join("not-mounted");
    let err = Vault::open(Path::new(&format!("k8s-secret:{}", missing.display())))
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("mountPath"),
        "{err}"
    );
    // And a read-only vault refuses changes with what to do instead.
    kubelet_mount(&dir.path().join("ok"), &[("acme.json", fyle_key(&sim))]);
    let vault = Vault::open(Path::new(&format!(
        "k8s-secret:{}",
        dir.path().join("ok").display()
    )));
    assert_eq!(vault.load().unwrap().len(), 1);
    let err = vault
        .update(|all| {
            all.remove("acme");
            Ok::<_, VaultError>(())
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("read-only") && err.contains("kubectl"),
        "{err}"
    );
    // The auth commands: list reads it; those that store something are refused.
    let vault_arg = format!("k8s-secret:{}", dir.path().join("ok").display());
    let o = run_bin(&["--vault", &vault_arg, "auth", "list"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("acme"),
        "{}",
        text(&o)
    );
    for args in [["auth", "login", "acme"], ["auth", "remove", "acme"]] {
        let mut all = vec!["--vault", vault_arg.as_str()];
        all.extend(args);
        let o = run_bin(&all, dir.path()).await;
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
        let out = text(&o);
        assert!(out.contains("read-only") && out.contains(args[1]), "{out}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_rotated_refresh_token_beside_a_jwt_credential_falls_back_to_the_jwt_and_warns() {
    let sim = simulator(12, 43, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (conn, rt) = rotating_refresh_token(&sim, dir.path()).await;
    let key = serde_json::json!({
        "profile": "oauth2",
        "grant": "jwt_bearer",
        "accounts_url": conn.accounts_url,
        "client_id": conn.client_id,
        "client_secret": conn.client_secret.as_ref().unwrap().expose_secret(),
        "assertion": sim.issue_jwt_credential(Duration::from_secs(3600)),
        "refresh_token": rt,
    });
    let mount = dir.path().join("secret");
    kubelet_mount(&mount, &[("rc.json", key.to_string())]);
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        tenant_pipeline("p").replace("set-per-tenant", "rc"),
    )
    .unwrap();
    let vault_arg = format!("k8s-secret:{}", mount.display());
    let out = dir.path().join("out");
    let args = [
        "--vault",
        vault_arg.as_str(),
        "run",
        pipeline.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    let o = run_bin(&args, dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!sim.refresh_token_is_live(&rt), "the server rotated it");
    assert!(
        text(&o).contains("Remove refresh_token from the Secret"),
        "{}",
        text(&o)
    );
    assert_exactly_once(&out, &sim);
    // The next run's refresh is refused (spent), and the JWT grant carries it.
    sim.mutate(3);
    let o = run_bin(&args, dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_exactly_once(&out, &sim);
    sim.shutdown().await;
}
