//! A full export against the simulator over loopback HTTP equals the
//! simulator's ground truth, and the files read back with real readers.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::time::Duration;

use arrow::array::{
    Array, BooleanArray, Date32Array, Decimal128Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use common::*;
use expense_sync::simulator::Faults;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rust_decimal::Decimal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_export_equals_ground_truth_to_the_cent() {
    let sim = simulator(1234, 7, None).await;
    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = run_text(&sim, &pipeline_text(&sim, "full", "", ""), out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    assert_eq!(truth.len(), 1234);

    let (header, rows) = csv_by_id(&out.path().join("full.csv"));
    assert_eq!(header[0], "id");
    let ids: BTreeSet<_> = rows.keys().cloned().collect();
    let truth_ids: BTreeSet<_> = truth.keys().cloned().collect();
    assert_eq!(ids, truth_ids, "exported ids differ from ground truth");
    assert_eq!(outcome.summary.records_out, 1234);

    let amount_col = header.iter().position(|h| h == "amount").unwrap();
    let mut csv_total = Decimal::ZERO;
    let mut truth_total = Decimal::ZERO;
    for (id, row) in &rows {
        let expected = json_decimal(&truth[id]["amount"]);
        let got =
            (!row[amount_col].is_empty()).then(|| row[amount_col].parse::<Decimal>().unwrap());
        assert_eq!(got, expected, "amount of {id}");
        csv_total += got.unwrap_or_default();
        truth_total += expected.unwrap_or_default();
    }
    assert_eq!(csv_total, truth_total);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_keeps_hostile_strings_intact() {
    let sim = simulator(600, 11, None).await;
    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = run_text(&sim, &pipeline_text(&sim, "hostile", "", ""), out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    let (header, rows) = csv_by_id(&out.path().join("hostile.csv"));
    let m = header.iter().position(|h| h == "merchant").unwrap();
    let p = header.iter().position(|h| h == "purpose").unwrap();
    let mut hostile = 0;
    for (id, row) in &rows {
        for (col, field) in [(m, "merchant"), (p, "purpose")] {
            let expected = truth[id][field].as_str().unwrap_or("");
            assert_eq!(row[col], expected, "{field} of {id}");
            if expected.contains([',', '"', '\n', '\r']) || !expected.is_ascii() {
                hostile += 1;
            }
        }
    }
    assert!(
        hostile > 10,
        "the simulator should produce awkward strings; saw {hostile}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_reads_back_with_declared_types_and_exact_values() {
    let sim = simulator(700, 3, None).await;
    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = run_text(&sim, &pipeline_text(&sim, "typed", "", ""), out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);

    let file = File::open(out.path().join("typed.parquet")).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(ty("id"), DataType::Utf8);
    assert_eq!(ty("amount"), DataType::Decimal128(18, 2));
    assert_eq!(
        ty("spent_at"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("spent_on"), DataType::Date32);
    assert_eq!(ty("is_reimbursable"), DataType::Boolean);
    assert_eq!(ty("category_id"), DataType::Int64);

    let mut seen = BTreeSet::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let col = |n: &str| batch.column(schema.index_of(n).unwrap()).clone();
        let ids = col("id");
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let amounts = col("amount");
        let amounts = amounts.as_any().downcast_ref::<Decimal128Array>().unwrap();
        let spent = col("spent_at");
        let spent = spent
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let reimb = col("is_reimbursable");
        let reimb = reimb.as_any().downcast_ref::<BooleanArray>().unwrap();
        let cat = col("category_id");
        let cat = cat.as_any().downcast_ref::<Int64Array>().unwrap();
        let _days = col("spent_on");
        let _days = _days.as_any().downcast_ref::<Date32Array>().unwrap();
        for i in 0..batch.num_rows() {
            let id = ids.value(i).to_string();
            let t = &truth[&id];
            let expected = json_decimal(&t["amount"]);
            let got =
                (!amounts.is_null(i)).then(|| Decimal::from_i128_with_scale(amounts.value(i), 2));
            assert_eq!(got, expected, "amount of {id}");
            match t["spent_at"].as_str() {
                Some(s) => {
                    let want = chrono::DateTime::parse_from_rfc3339(s)
                        .unwrap()
                        .timestamp_micros();
                    assert_eq!(spent.value(i), want, "spent_at of {id}");
                }
                None => assert!(spent.is_null(i)),
            }
            assert_eq!(reimb.value(i), t["is_reimbursable"].as_bool().unwrap());
            match t["category"]["id"].as_i64() {
                Some(c) => assert_eq!(cat.value(i), c),
                None => assert!(cat.is_null(i)),
            }
            assert!(seen.insert(id), "duplicate row in parquet");
        }
    }
    assert_eq!(seen.len(), truth.len());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_429_and_5xx_lose_nothing_and_the_rate_is_never_exceeded() {
    let sim = simulator(3000, 5, Some(10)).await;
    sim.set_faults(Faults {
        error_rate: 0.25,
        burst_429: 4,
        ..Faults::default()
    });
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "faults",
        "",
        "requests_per_second = 10\ninitial_backoff = \"50ms\"\nmax_backoff = \"2s\"\nmax_retries = 20",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let s = &outcome.summary;
    assert!(
        s.http.retries > 0 && s.http.server_errors > 0 && s.http.throttled_429 >= 4,
        "{:?}",
        s.http
    );

    let (_, rows) = csv_by_id(&out.path().join("faults.csv"));
    let truth = truth_by_id(&sim);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        truth.keys().collect::<Vec<_>>()
    );

    let log = sim.request_log();
    for r in &log {
        let limit = r.query.split('&').find_map(|kv| kv.strip_prefix("limit="));
        if let Some(l) = limit {
            assert!(l.parse::<u32>().unwrap() <= 200, "sent limit={l}");
        }
    }
    // The server's own limiter (10/s, bucket of 10) never had to refuse the
    // client: every 429 in the log is one of the 4 injected.
    let throttled = log.iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 4, "the client tripped the server's rate limit");
    // And by arrival times, no five-second stretch holds more than 5 × 10
    // requests (+1 at the window edge); a long window keeps scheduling jitter
    // on a busy machine from masquerading as a burst.
    let mut times: Vec<_> = log.iter().map(|r| r.at).collect();
    times.sort();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(5))
            .count();
        worst = worst.max(n);
    }
    assert!(
        worst <= 51,
        "client sent {worst} requests within five seconds"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_backfill_asks_for_its_pages_plus_a_few_and_is_never_refused() {
    // A limit low enough that the limiter, not the round trip or a debug
    // build's CPU, is what holds requests back, with four workers available.
    let sim = expense_sync::simulator::Simulator::start(expense_sync::simulator::SimConfig {
        seed: 21,
        expenses: 2000,
        rate_limit: Some(2),
        faults: Faults {
            latency: Duration::from_millis(150),
            ..Faults::default()
        },
        ..expense_sync::simulator::SimConfig::default()
    })
    .await
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(&sim, "budget", "concurrency = 4", "requests_per_second = 2");
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    assert_eq!(outcome.summary.records_out as usize, truth.len());

    let log = sim.request_log();
    let refused: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert!(refused.is_empty(), "the server refused {refused:?}");
    let pages_needed = truth.len().div_ceil(200);
    let page_requests = log
        .iter()
        .filter(|r| r.path.ends_with("/admin/expenses") && r.query.contains("limit=200"))
        .count();
    // Each slice split off for a parallel worker ends in a page of its own,
    // usually short; a slice is split off only for an idle worker while
    // requests do not already wait for the limiter.
    assert!(
        page_requests <= pages_needed + 3,
        "{page_requests} page requests for {pages_needed} pages"
    );
    // Besides the pages: the token, and the one-record server clock reading.
    let others: Vec<_> = log
        .iter()
        .filter(|r| !(r.path.ends_with("/admin/expenses") && r.query.contains("limit=200")))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(others.len() <= 3, "requests besides pages: {others:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_in_the_middle_of_a_run_is_survived() {
    let sim = simulator(4000, 9, Some(10)).await;
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "expiry",
        "page_size = 100",
        "requests_per_second = 10",
    );
    let sim_ref = &sim;
    let expire = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sim_ref.expire_tokens();
    };
    let ((_, outcome), ()) = tokio::join!(run_text(&sim, &text, out.path()), expire);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(
        outcome.summary.token_grants >= 2,
        "expected a refresh, got {}",
        outcome.summary.token_grants
    );
    let (_, rows) = csv_by_id(&out.path().join("expiry.csv"));
    assert_eq!(rows.len(), 4000);
    let unauthorized = sim.request_log().iter().filter(|r| r.status == 401).count();
    assert!(
        unauthorized >= 1,
        "the run should have met an expired token"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_from_the_pipeline_file_select_matching_records_only() {
    let sim = simulator(900, 21, None).await;
    let out = tempfile::tempdir().unwrap();
    let extra = "[source.filters]\nstate = \"in.(APPROVED,PAID)\"\n\"source_account->type\" = \"eq.PERSONAL_CASH_ACCOUNT\"";
    let (_, outcome) = run_text(
        &sim,
        &pipeline_text(&sim, "filtered", extra, ""),
        out.path(),
    )
    .await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let expected: BTreeSet<String> = sim
        .ground_truth("expenses")
        .into_iter()
        .filter(|r| matches!(r["state"].as_str(), Some("APPROVED" | "PAID")))
        .filter(|r| r["source_account"]["type"] == "PERSONAL_CASH_ACCOUNT")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!expected.is_empty());
    let (_, rows) = csv_by_id(&out.path().join("filtered.csv"));
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), expected);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secret_is_an_auth_error_and_writes_nothing() {
    let sim = simulator(50, 1, None).await;
    let out = tempfile::tempdir().unwrap();
    let p = expense_sync::config::load_str(
        &pipeline_text(&sim, "badauth", "", ""),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let http = expense_sync::http::HttpClient::new(&p.spec.http).unwrap();
    let mut creds = credentials(&sim);
    creds.client_secret = secrecy::SecretString::from("wrong-secret".to_string());
    let opts = expense_sync::pipeline::RunOptions {
        output_dir: Some(out.path().to_path_buf()),
        credentials: Some(creds.into()),
        ..Default::default()
    };
    let outcome = expense_sync::pipeline::run(&p, &http, &opts).await;
    assert_eq!(outcome.exit_code(), expense_sync::ExitCode::Auth);
    let msg = outcome.error.unwrap().to_string();
    assert!(
        msg.contains("refused the credentials") && msg.contains("401"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-secret"));
    assert!(files_in(out.path()).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approved_preset_selects_what_fyles_integrations_select() {
    let sim = simulator(1000, 23, None).await;
    let out = tempfile::tempdir().unwrap();
    let extra = "preset = \"approved\"\nfund_source = \"reimbursable\"";
    let (_, outcome) = run_text(
        &sim,
        &pipeline_text(&sim, "approved", extra, ""),
        out.path(),
    )
    .await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let expected: BTreeSet<String> = sim
        .ground_truth("expenses")
        .into_iter()
        .filter(|r| {
            matches!(
                r["state"].as_str(),
                Some("APPROVED" | "PAYMENT_PROCESSING" | "PAID")
            )
        })
        .filter(|r| r["source_account"]["type"] == "PERSONAL_CASH_ACCOUNT")
        .filter(|r| r["report_last_approved_at"].is_string())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(expected.len() > 50, "{}", expected.len());
    let (_, rows) = csv_by_id(&out.path().join("approved.csv"));
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), expected);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_resources_export_with_their_default_columns() {
    let sim = simulator(300, 24, None).await;
    for resource in [
        "reports",
        "employees",
        "categories",
        "projects",
        "cost_centers",
    ] {
        let out = tempfile::tempdir().unwrap();
        let text = format!(
            "[pipeline]\nname = \"{resource}\"\n[connection]\naccounts_url = \"{}\"\nclient_id = \"x\"\nclient_secret = {{ env = \"S\" }}\nrefresh_token = {{ env = \"R\" }}\n[source]\ntype = \"fyle\"\nresource = \"{resource}\"\nsafety_lag = \"0s\"\n[[sinks]]\ntype = \"csv\"\npath = \"{{pipeline}}.csv\"\n",
            sim.accounts_url()
        );
        let (_, outcome) = run_text(&sim, &text, out.path()).await;
        assert!(outcome.error.is_none(), "{resource}: {:?}", outcome.error);
        let (header, rows) = read_csv(&out.path().join(format!("{resource}.csv")));
        let truth = sim.ground_truth(resource);
        assert!(!truth.is_empty(), "{resource}");
        assert_eq!(rows.len(), truth.len(), "{resource}");
        let id_col = header.iter().position(|h| h.ends_with("id")).unwrap();
        let ids: BTreeSet<String> = rows.iter().map(|r| r[id_col].clone()).collect();
        let truth_ids: BTreeSet<String> = truth
            .iter()
            .map(|r| r["id"].to_string().trim_matches('"').to_string())
            .collect();
        assert_eq!(ids, truth_ids, "{resource}");
    }
    sim.shutdown().await;
}
