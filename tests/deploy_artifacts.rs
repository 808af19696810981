//! The deployment artefacts (Dockerfile, cron, systemd units, Kubernetes
//! manifests) have what a safe scheduled job needs, their example pipelines
//! are valid, and the CLI prints shell completions and a man page.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Dockerfile instructions (continuation lines joined, comments dropped).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(t);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_bakes_in_no_secret() {
    let ins = instructions(&read("Dockerfile"));
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].ends_with(" AS builder"),
        "builder on the official rust image: {}",
        froms[0]
    );
    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("distroless") || runtime.contains("slim"),
        "slim runtime: {runtime}"
    );
    // Everything after the last FROM is the runtime stage.
    let last_from = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let stage = &ins[last_from..];
    let user = stage
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "non-root user: {user}");
    let entry = stage
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, a)| a.clone())
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry).expect("exec-form ENTRYPOINT");
    assert!(entry[0].ends_with("/expense-sync"), "{entry:?}");
    assert!(
        stage
            .iter()
            .any(|(op, a)| op == "COPY" && a.starts_with("--from=builder")),
        "the runtime copies the binary from the builder"
    );
    for (op, arg) in &ins {
        let upper = arg.to_uppercase();
        if op == "ENV" || op == "ARG" {
            for word in ["SECRET", "TOKEN", "PASSWORD", "VAULT_KEY"] {
                assert!(
                    !upper.contains(word),
                    "{op} {arg} looks like a baked-in secret"
                );
            }
        }
        if op == "COPY" && !arg.starts_with("--from") {
            // Every build-context source exists, and none is a secret or state.
            let parts: Vec<&str> = arg.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(repo(src).exists(), "COPY {src}: not in the repository");
                assert!(
                    !src.contains("vault") && !src.contains(".env"),
                    "COPY {src}"
                );
            }
        }
    }
    assert!(
        ins.iter()
            .any(|(op, a)| op == "RUN" && a.contains("cargo build --release --locked")),
        "the builder builds the locked release binary"
    );
}

#[test]
fn dockerignore_keeps_build_output_state_and_secrets_out_of_the_context() {
    let text = read(".dockerignore");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in [
        "target/",
        ".git/",
        "**/.env",
        "**/vault*.json",
        "**/*.state.json",
    ] {
        assert!(
            lines.contains(&needed),
            "{needed} missing from .dockerignore"
        );
    }
    for kept in ["Cargo.toml", "src/", "pipelines/", "Cargo.lock"] {
        assert!(
            !lines.contains(&kept),
            "{kept} is needed by the build and must not be ignored"
        );
    }
}

fn yaml_docs(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

#[test]
fn kubernetes_cronjob_forbids_overlap_runs_non_root_and_mounts_secret_and_volume() {
    let docs = yaml_docs("deploy/kubernetes/cronjob.yaml");
    for d in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "apiVersion: {d:?}");
        assert!(d["metadata"]["name"].as_str().is_some(), "metadata.name");
    }
    let cj = of_kind(&docs, "CronJob");
    assert_eq!(cj["apiVersion"].as_str(), Some("batch/v1"));
    let spec = &cj["spec"];
    assert_eq!(spec["concurrencyPolicy"].as_str(), Some("Forbid"));
    let schedule = spec["schedule"].as_str().unwrap();
    assert_eq!(schedule.split_whitespace().count(), 5, "{schedule}");

    let job = &spec["jobTemplate"]["spec"];
    let pod = &job["template"]["spec"];
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert!(psc["runAsUser"].as_i64().unwrap() > 0);

    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(c["image"].as_str().is_some());
    let csc = &c["securityContext"];
    assert_eq!(csc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(csc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let requests = &c["resources"]["requests"];
    assert!(requests["cpu"].as_str().is_some() && requests["memory"].as_str().is_some());
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    // No secret value in the environment.
    for e in c["env"].as_vec().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_uppercase();
        assert!(
            !name.contains("SECRET") && !name.contains("TOKEN"),
            "secret in env: {name}"
        );
    }
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");

    // Volumes: the Secret, the PVC declared in the same file, the ConfigMap with the pipeline.
    let volumes: BTreeMap<&str, &Yaml> = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            assert!(
                volumes.contains_key(name),
                "mount of undeclared volume {name}"
            );
            (name, m["mountPath"].as_str().unwrap())
        })
        .collect();
    let secret_volume = volumes
        .iter()
        .find(|(_, v)| v["secret"]["secretName"].as_str().is_some())
        .map(|(n, _)| *n)
        .expect("credentials come from a Secret");
    let pvc_volume = volumes
        .iter()
        .find(|(_, v)| v["persistentVolumeClaim"]["claimName"].as_str().is_some())
        .expect("state on a PersistentVolumeClaim");
    let pvc = of_kind(&docs, "PersistentVolumeClaim");
    assert_eq!(
        pvc_volume.1["persistentVolumeClaim"]["claimName"].as_str(),
        pvc["metadata"]["name"].as_str()
    );
    let data_dir = mounts[pvc_volume.0];

    // The pipeline in the ConfigMap is valid, keeps state and outputs on the
    // volume, and reads every secret from the mounted Secret.
    let cm = of_kind(&docs, "ConfigMap");
    let config_volume = volumes
        .iter()
        .find(|(_, v)| v["configMap"]["name"].as_str() == cm["metadata"]["name"].as_str())
        .map(|(n, _)| *n)
        .expect("the ConfigMap is mounted");
    let config_dir = mounts[config_volume];
    let pipeline_arg = Path::new(args[1]);
    assert_eq!(pipeline_arg.parent().unwrap(), Path::new(config_dir));
    let key = pipeline_arg.file_name().unwrap().to_str().unwrap();
    let text = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap has no {key}"));
    let p = expense_sync::config::load_str(text, Path::new(key)).expect("pipeline is valid");
    assert!(p.spec.pipeline.output_dir.starts_with(data_dir));
    assert!(
        p.state_path(&p.spec.pipeline.output_dir)
            .starts_with(data_dir)
    );
    let secret_dir = mounts[secret_volume];
    for (k, v) in text.lines().filter_map(|l| l.split_once(" = ")) {
        if ["client_id", "client_secret", "refresh_token"].contains(&k.trim()) {
            assert!(
                v.contains(&format!("file = \"{secret_dir}/")),
                "{k} must be read from the Secret at {secret_dir}: {v}"
            );
        }
    }
}

/// Checks one sharded Job spec: Indexed, one pod per shard, the shard count
/// and budget passed to every pod, the vault key from a Secret.
fn assert_sharded_job(job: &Yaml, docs: &[Yaml]) {
    assert_eq!(job["completionMode"].as_str(), Some("Indexed"));
    let completions = job["completions"].as_i64().expect("completions");
    assert!(completions > 1);
    assert_eq!(job["parallelism"].as_i64(), Some(completions));
    let pod = &job["template"]["spec"];
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &Yaml> = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["EXPENSE_SYNC_SHARDS"]["value"].as_str(),
        Some(completions.to_string().as_str()),
        "every pod must know the shard count"
    );
    assert!(env.contains_key("EXPENSE_SYNC_SHARD_BUDGET"));
    let key = &env["EXPENSE_SYNC_VAULT_KEY"];
    assert!(key["value"].is_badvalue(), "the vault key is no literal");
    assert!(key["valueFrom"]["secretKeyRef"]["name"].as_str().is_some());
    let requests = &c["resources"]["requests"];
    assert!(requests["memory"].as_str().is_some() && requests["cpu"].as_str().is_some());
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--connections") || args.contains(&"--tenants"));
    // The pipeline in the ConfigMap is valid and gives each tenant its own outputs.
    let cm = of_kind(docs, "ConfigMap");
    let key = Path::new(args[1]).file_name().unwrap().to_str().unwrap();
    let text = cm["data"][key].as_str().expect("pipeline in the ConfigMap");
    let p = expense_sync::config::load_str(text, Path::new(key)).expect("pipeline is valid");
    assert!(
        p.spec
            .pipeline
            .output_dir
            .to_string_lossy()
            .contains("{tenant}")
    );
}

#[test]
fn kubernetes_sharded_jobs_are_indexed_one_pod_per_shard_and_never_overlap() {
    let docs = yaml_docs("deploy/kubernetes/sharded.yaml");
    let cj = of_kind(&docs, "CronJob");
    assert_eq!(cj["spec"]["concurrencyPolicy"].as_str(), Some("Forbid"));
    assert_sharded_job(&cj["spec"]["jobTemplate"]["spec"], &docs);
    assert_sharded_job(&of_kind(&docs, "Job")["spec"], &docs);
    let pvc = of_kind(&docs, "PersistentVolumeClaim");
    let modes = pvc["spec"]["accessModes"].as_vec().unwrap();
    assert!(
        modes.iter().any(|m| m.as_str() == Some("ReadWriteMany")),
        "pods of several nodes share the volume"
    );
}

#[test]
fn kubernetes_secret_vault_shards_read_connections_from_a_read_only_secret_without_a_shared_volume()
{
    let docs = yaml_docs("deploy/kubernetes/sharded-secret-vault.yaml");
    let cj = of_kind(&docs, "CronJob");
    assert_eq!(cj["spec"]["concurrencyPolicy"].as_str(), Some("Forbid"));
    let job = &cj["spec"]["jobTemplate"]["spec"];
    assert_eq!(job["completionMode"].as_str(), Some("Indexed"));
    let completions = job["completions"].as_i64().unwrap();
    assert_eq!(job["parallelism"].as_i64(), Some(completions));
    let pod = &job["template"]["spec"];
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &Yaml> = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["EXPENSE_SYNC_SHARDS"]["value"].as_str(),
        Some(completions.to_string().as_str())
    );
    // The vault names the mount of a Secret volume, mounted read-only.
    let vault = env["EXPENSE_SYNC_VAULT"]["value"].as_str().unwrap();
    let dir = vault
        .strip_prefix(expense_sync::auth::vault::SECRET_DIR_PREFIX)
        .unwrap_or_else(|| panic!("the vault is a mounted Secret: {vault}"));
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volumes = pod["volumes"].as_vec().unwrap();
    let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert!(volume["secret"]["secretName"].as_str().is_some());
    assert!(
        volumes
            .iter()
            .all(|v| v["persistentVolumeClaim"].is_badvalue()),
        "no shared volume: outputs and state are in object storage"
    );
    let cm = of_kind(&docs, "ConfigMap");
    let (key, text) = cm["data"].as_hash().unwrap().iter().next().unwrap();
    let key = key.as_str().unwrap();
    let p = expense_sync::config::load_str(text.as_str().unwrap(), Path::new(key))
        .expect("pipeline is valid");
    let out = p.spec.pipeline.output_dir.to_string_lossy().into_owned();
    assert!(
        out.starts_with("s3://") && out.contains("{tenant}"),
        "{out}"
    );
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--connections"));
    assert!(args[1].ends_with(key));
}

/// `key=value` lines of a unit file, grouped by section (keys may repeat).
fn unit(path: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = String::new();
    for line in read(path).lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        let (k, v) = t.split_once('=').unwrap_or_else(|| panic!("{path}: {t}"));
        sections
            .entry(current.clone())
            .or_default()
            .push((k.to_string(), v.to_string()));
    }
    sections
}

fn values<'a>(
    u: &'a BTreeMap<String, Vec<(String, String)>>,
    sec: &str,
    key: &str,
) -> Vec<&'a str> {
    u.get(sec)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_service_loads_credentials_and_is_hardened() {
    let s = unit("deploy/systemd/expense-sync@.service");
    assert_eq!(values(&s, "Service", "Type"), ["oneshot"]);
    let user = values(&s, "Service", "User");
    assert!(
        user.len() == 1 && user[0] != "root",
        "runs as its own user: {user:?}"
    );
    let creds = values(&s, "Service", "LoadCredential");
    let names: Vec<&str> = creds.iter().map(|c| c.split(':').next().unwrap()).collect();
    for needed in ["fyle_client_id", "fyle_client_secret", "fyle_refresh_token"] {
        assert!(names.contains(&needed), "LoadCredential={needed}:… missing");
    }
    let exec = values(&s, "Service", "ExecStart");
    assert_eq!(exec.len(), 1);
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert!(
        argv[0].ends_with("/expense-sync") && argv[1] == "run",
        "{exec:?}"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(values(&s, "Service", key), [value], "{key}");
    }
    // Nothing secret is put in the environment.
    for e in values(&s, "Service", "Environment") {
        let upper = e.to_uppercase();
        assert!(!upper.contains("SECRET") && !upper.contains("TOKEN"), "{e}");
    }
    let t = unit("deploy/systemd/expense-sync@.timer");
    assert_eq!(values(&t, "Timer", "OnCalendar").len(), 1);
    assert_eq!(values(&t, "Timer", "Persistent"), ["true"]);
    assert_eq!(values(&t, "Install", "WantedBy"), ["timers.target"]);
}

#[test]
fn systemd_units_pass_systemd_analyze_verify_where_available() {
    let available = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        println!("skipped: systemd-analyze is not installed on this machine");
        return;
    }
    // verify checks ExecStart= exists; point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    for name in ["expense-sync@.service", "expense-sync@.timer"] {
        let text =
            read(&format!("deploy/systemd/{name}")).replace("/usr/local/bin/expense-sync", BIN);
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let o = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("expense-sync@approved-expenses.service"))
        .arg(dir.path().join("expense-sync@approved-expenses.timer"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    // verify exits 0 on unknown keys and bad values; its warnings name the file.
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("expense-sync@"))
        .collect();
    assert!(
        o.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_example_pipeline_reads_its_secrets_from_the_credentials_directory() {
    let sim = simulator(15, 61, None).await;
    let creds = tempfile::tempdir().unwrap();
    let c = sim.credentials();
    for (name, value) in [
        ("fyle_client_id", &c.client_id),
        ("fyle_client_secret", &c.client_secret),
        ("fyle_refresh_token", &c.refresh_token),
    ] {
        std::fs::write(creds.path().join(name), format!("{value}\n")).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(BIN)
        .arg("run")
        .arg(repo("deploy/systemd/approved-expenses.toml"))
        .args(["--output-dir", out.path().to_str().unwrap()])
        .args(["--summary-format", "text"])
        .env_remove("EXPENSE_SYNC_LOG")
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .env("EXPENSE_SYNC__CONNECTION__ACCOUNTS_URL", sim.accounts_url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.starts_with("expense-sync approved-expenses: ok"),
        "{stdout}"
    );

    // Outside systemd the variable is unset: the error says which and why.
    let o = tokio::process::Command::new(BIN)
        .arg("run")
        .arg(repo("deploy/systemd/approved-expenses.toml"))
        .args(["--output-dir", out.path().to_str().unwrap()])
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("EXPENSE_SYNC__CONNECTION__ACCOUNTS_URL", sim.accounts_url())
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("${CREDENTIALS_DIRECTORY}, which is not set")
            && stderr.contains("LoadCredential="),
        "{stderr}"
    );
}

#[test]
fn cron_example_lines_have_a_schedule_a_user_and_an_expense_sync_run() {
    let text = read("deploy/cron/expense-sync.cron");
    let mut jobs = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, _)) = line.split_once('=')
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() > 6, "{line}");
        for f in &fields[..5] {
            assert!(
                f.chars().all(|c| c.is_ascii_digit() || ",-*/".contains(c)),
                "bad time field {f} in {line}"
            );
        }
        assert_ne!(fields[5], "root", "runs as its own user");
        let command = fields[6..].join(" ");
        assert!(command.contains("expense-sync run "), "{command}");
        // cron turns an unescaped % into a newline.
        assert!(!command.contains('%'), "{command}");
        jobs += 1;
    }
    assert_eq!(jobs, 1);
}

#[tokio::test]
async fn completions_name_every_subcommand_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let o = tokio::process::Command::new(BIN)
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        assert!(
            o.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8(o.stdout).unwrap();
        for sub in [
            "run",
            "check",
            "demo",
            "simulate",
            "state",
            "auth",
            "completions",
            "man",
        ] {
            assert!(text.contains(sub), "{shell} completion lacks `{sub}`");
        }
        // fish spells long options `-l summary-format`.
        assert!(text.contains("summary-format"), "{shell}");
    }
    let o = tokio::process::Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[tokio::test]
async fn man_page_is_roff_naming_the_subcommands() {
    let o = tokio::process::Command::new(BIN)
        .arg("man")
        .output()
        .await
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.starts_with(".ie") || text.starts_with(".TH"),
        "{}",
        &text[..80]
    );
    assert!(text.contains(".TH expense-sync 1"), "{}", &text[..200]);
    // The SUBCOMMANDS section lists each as `expense\-sync\-NAME(1)`.
    for sub in [
        "run",
        "check",
        "state",
        "demo",
        "auth",
        "simulate",
        "completions",
        "man",
    ] {
        assert!(
            text.contains(&format!("expense\\-sync\\-{sub}(1)")),
            "man page lacks {sub}"
        );
    }
}

/// `kubernetes-validate` from `$KUBERNETES_VALIDATE`, else `.ci/venv`
/// (installed by `.ci/setup.sh`, which the test runs when it is missing).
fn kubernetes_validate() -> PathBuf {
    match std::env::var_os("KUBERNETES_VALIDATE").map(PathBuf::from) {
        Some(tool) if common::tools::runs(&tool) => tool,
        _ => common::tools::venv_tool("kubernetes-validate"),
    }
}

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let tool = kubernetes_validate();
    let o = std::process::Command::new(tool)
        .arg("--strict")
        .arg(repo("deploy/kubernetes/cronjob.yaml"))
        .arg(repo("deploy/kubernetes/sharded.yaml"))
        .arg(repo("deploy/kubernetes/sharded-secret-vault.yaml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "kubernetes-validate --strict: {text}");
    for kind in [
        "cronjob/",
        "persistentvolumeclaim/",
        "configmap/",
        "job/expense-sync-tenants-backfill",
        "cronjob/expense-sync-tenants",
        "cronjob/expense-sync-tenants-secret-vault",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind} was validated: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn man_dir_writes_a_page_for_every_subcommand_the_main_page_names() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for page in [
        "expense-sync.1",
        "expense-sync-run.1",
        "expense-sync-check.1",
        "expense-sync-auth.1",
        "expense-sync-simulate.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is a roff page");
    }
    let run = std::fs::read_to_string(dir.path().join("expense-sync-run.1")).unwrap();
    assert!(
        run.contains("dry\\-run"),
        "the run page documents its flags"
    );
}
