//! Parsing and projecting one 200-record simulator page: the full JSON tree
//! (the old path: parse, clone `data`, project), the extraction plan building
//! every field the columns read into the records, and the run's path (the
//! columns' values captured from the page as byte ranges).
//!
//! `cargo bench --bench page`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use expense_sync::extract::{FieldSet, PageSource, decode_page};
use expense_sync::simulator::{SimConfig, Simulator};
use expense_sync::sources::fyle::default_columns;
use expense_sync::transforms::{Projector, Transforms};
use serde_json::Value;

/// A list page of 200 simulator expenses, as the simulator serves it.
fn page() -> Bytes {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let records = rt.block_on(async {
        let sim = Simulator::start(SimConfig {
            seed: 1,
            expenses: 200,
            float_noise: 0.1,
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        sim.ground_truth("expenses")
    });
    let body = serde_json::json!({"count": records.len(), "offset": 0, "data": records});
    Bytes::from(serde_json::to_vec(&body).expect("serialises"))
}

fn bench(c: &mut Criterion) {
    let body = page();
    let mut projector =
        Projector::new(&default_columns("expenses").expect("defaults")).expect("cols");
    let mut fields = FieldSet::nothing();
    projector.read_fields(&mut fields);
    fields.add_key("updated_at");
    fields.add_key("id");
    let mut captured = FieldSet::nothing();
    projector.capture_fields(&mut captured, &Transforms::default());
    captured.add_key("updated_at");
    captured.add_key("id");

    let mut g = c.benchmark_group("page_200");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("full_tree", |b| {
        b.iter(|| {
            let tree: Value = serde_json::from_slice(black_box(&body)).expect("valid");
            let data = match tree.get("data") {
                Some(Value::Array(a)) => a.clone(),
                _ => unreachable!(),
            };
            let rows: Vec<_> = data.iter().map(|r| projector.project(r)).collect();
            black_box(rows)
        })
    });
    g.bench_function("extraction_plan", |b| {
        b.iter(|| {
            let page = decode_page(&fields, black_box(&body)).expect("valid");
            let rows: Vec<_> = page
                .data
                .expect("data")
                .iter()
                .map(|r| projector.project(r))
                .collect();
            black_box(rows)
        })
    });
    g.bench_function("captured_columns", |b| {
        b.iter(|| {
            let page = decode_page(&captured, black_box(&body)).expect("valid");
            let data = page.data.expect("data");
            let source = PageSource::new(page.body, (0..data.len() as u32).collect())
                .with_columns(page.columns);
            let rows: Vec<_> = data
                .iter()
                .enumerate()
                .map(|(i, r)| projector.project_with(r, source.columns(i)))
                .collect();
            black_box(rows)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
