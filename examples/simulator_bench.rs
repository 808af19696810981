//! Benchmark: how fast the simulator generates 100k expenses and serves
//! keyset pages over them (a figure to read, not a test to pass):
//!
//!     cargo run --release --example simulator_bench

use std::time::Instant;

use expense_sync::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let t = Instant::now();
    let sim = Simulator::start(SimConfig {
        seed: 1,
        expenses: 100_000,
        rate_limit: None,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let generation = t.elapsed();
    println!("generated 100k expenses in {generation:?}");

    let http = reqwest::Client::new();
    let c = sim.credentials();
    let tok: Value = http
        .post(format!("{}/oauth/token", sim.accounts_url()))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": c.refresh_token, "client_id": c.client_id, "client_secret": c.client_secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = tok["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/platform/v1/admin/expenses", sim.cluster_url());

    let mut cursor: Option<(String, String)> = None;
    let mut times = Vec::new();
    let mut seen = 0usize;
    for page in 0..30 {
        let mut q = vec![
            ("order".to_owned(), "updated_at.asc,id.asc".to_owned()),
            ("limit".to_owned(), "200".to_owned()),
        ];
        q.push((
            "state".to_owned(),
            "in.(APPROVED,PAYMENT_PENDING,PAYMENT_PROCESSING,PAID)".to_owned(),
        ));
        if let Some((t, id)) = &cursor {
            q.push((
                "or".to_owned(),
                format!("(updated_at.gt.\"{t}\",and(updated_at.eq.\"{t}\",id.gt.{id}))"),
            ));
        }
        // Timed up to the last byte; parsing the 1 MB page is the client's cost, not the server's.
        let start = Instant::now();
        let bytes = http
            .get(&url)
            .bearer_auth(&tok)
            .query(&q)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let took = start.elapsed();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        if page > 0 {
            times.push(took);
        } else {
            println!("first page (sorts 100k rows): {took:?}");
        }
        let data = body["data"].as_array().unwrap();
        seen += data.len();
        let last = data.last().unwrap();
        cursor = Some((
            last["updated_at"].as_str().unwrap().to_owned(),
            last["id"].as_str().unwrap().to_owned(),
        ));
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "median keyset page: {median:?}, max {:?}, {seen} records",
        times.last().unwrap()
    );
    sim.shutdown().await;
}
