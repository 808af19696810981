//! Using expense-sync as a library: run a pipeline against the built-in
//! simulator and read the summary.
//!
//!     cargo run --example export

use std::path::Path;

use expense_sync::auth::FyleCredentials;
use expense_sync::http::HttpClient;
use expense_sync::pipeline::{self, RunOptions};
use expense_sync::simulator::{SimConfig, Simulator};
use secrecy::SecretString;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Simulator::start(SimConfig {
        expenses: 250,
        ..SimConfig::default()
    })
    .await?;
    let pipeline = expense_sync::config::load_str(
        expense_sync::cli::DEMO_PIPELINE,
        Path::new("pipelines/demo.toml"),
    )?;
    // One client per process: it owns the rate limiter every request shares.
    let http = HttpClient::new(&pipeline.spec.http)?;
    let c = sim.credentials();
    let opts = RunOptions {
        output_dir: Some("out/example".into()),
        credentials: Some(
            FyleCredentials {
                accounts_url: sim.accounts_url().parse()?,
                client_id: c.client_id.clone(),
                client_secret: SecretString::from(c.client_secret.clone()),
                refresh_token: SecretString::from(c.refresh_token.clone()),
            }
            .into(),
        ),
        ..RunOptions::default()
    };
    let outcome = pipeline::run(&pipeline, &http, &opts).await;
    println!("{}", serde_json::to_string_pretty(&outcome.summary)?);
    sim.shutdown().await;
    match outcome.error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
