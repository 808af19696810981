//! The mutable data behind the cluster server: tables, the sort cache, and
//! the mutations tests use to change data while a client pages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

use super::SeekFault;
use super::generate::{self, BULK_UPDATED_AT, Generated};
use super::index;
use super::model::{
    CatKind, Ctx, EXPENSE_COLUMNS, EXPORT_ERROR_TYPES, EXPORT_STATES, Expense, ExportSummary,
    State, flag,
};
use super::query::{self, Table};
use super::reports::{self, REPORT_COLUMNS, Report};
use super::rng::Rng;
use super::values::{Cell, Collation, nav};

/// Admin resources the simulator serves, in the order they are documented.
pub const RESOURCES: [&str; 6] = [
    "expenses",
    "reports",
    "employees",
    "categories",
    "projects",
    "cost_centers",
];

/// Rows kept as JSON values: fine for the small resources (at most a few
/// thousand rows).
pub(crate) struct ValueTable {
    rows: Vec<Value>,
    cols: Vec<String>,
    index: HashMap<String, usize>,
}

impl ValueTable {
    fn new(rows: Vec<Value>) -> Self {
        let cols: Vec<String> = rows
            .first()
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let index = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        ValueTable { rows, cols, index }
    }
}

impl Table for ValueTable {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn resolve(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    fn column_names(&self) -> Vec<&str> {
        self.cols.iter().map(String::as_str).collect()
    }
    fn cell(&self, row: usize, col: usize, path: &[String]) -> Cell<'_> {
        match self.rows[row].get(&self.cols[col]) {
            Some(v) => nav(Cell::Val(v), path),
            None => Cell::Null,
        }
    }
    fn write_row(&self, row: usize, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, &self.rows[row]).expect("serialize row");
    }
}

/// Expenses seen through the query engine.
struct ExpenseTable<'a> {
    ctx: &'a Ctx,
    rows: &'a [Expense],
    names: &'a HashMap<&'static str, usize>,
}

impl Table for ExpenseTable<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn resolve(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }
    fn column_names(&self) -> Vec<&str> {
        EXPENSE_COLUMNS.iter().map(|c| c.0).collect()
    }
    fn cell(&self, row: usize, col: usize, path: &[String]) -> Cell<'_> {
        let e = &self.rows[row];
        let c = EXPENSE_COLUMNS[col].1;
        if !path.is_empty()
            && let Some(cell) = self.ctx.expense_nested(e, c, path)
        {
            return cell;
        }
        nav(self.ctx.expense_cell(e, c), path)
    }
    fn write_row(&self, row: usize, out: &mut Vec<u8>) {
        self.ctx.write_expense(&self.rows[row], out);
    }
}

/// Reports seen through the query engine.
struct ReportTable<'a> {
    ctx: &'a Ctx,
    rows: &'a [Report],
    names: &'a HashMap<&'static str, usize>,
}

impl Table for ReportTable<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn resolve(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }
    fn column_names(&self) -> Vec<&str> {
        REPORT_COLUMNS.iter().map(|c| c.0).collect()
    }
    fn cell(&self, row: usize, col: usize, path: &[String]) -> Cell<'_> {
        nav(
            self.ctx
                .report_cell(row, &self.rows[row], REPORT_COLUMNS[col].1),
            path,
        )
    }
    fn write_row(&self, row: usize, out: &mut Vec<u8>) {
        self.ctx.write_report(row, &self.rows[row], out);
    }
}

type SortCache = Mutex<HashMap<(&'static str, String), (u64, Arc<Vec<u32>>)>>;

/// What the indexed page path keeps per data generation: column kinds, and
/// prefix counts keyed by (resource, order, conditions off the leading column).
#[derive(Default)]
struct IndexCache {
    generation: u64,
    kinds: HashMap<(&'static str, usize, Vec<String>), index::Kind>,
    prefixes: HashMap<(&'static str, String, String), Arc<Vec<u32>>>,
}

/// Distinct filter sets whose prefix counts are kept (4 bytes per row each).
const MAX_PREFIXES: usize = 8;

pub(crate) struct Store {
    ctx: Ctx,
    expenses: Vec<Expense>,
    expense_names: HashMap<&'static str, usize>,
    /// Same index as `ctx.reports`, which is sorted by id.
    reports: Vec<Report>,
    report_names: HashMap<&'static str, usize>,
    employees: ValueTable,
    categories: ValueTable,
    projects: ValueTable,
    cost_centers: ValueTable,
    profile: Value,
    /// Bumped by every mutation; cached sort orders from older generations are stale.
    generation: u64,
    sort_cache: SortCache,
    index_cache: Mutex<IndexCache>,
    last_stamp: i64,
    rng: Rng,
    /// Replaced and deleted expense versions: (id, when replaced, the version before),
    /// so tests can ask what the data looked like at an earlier instant.
    past: std::collections::VecDeque<(String, i64, Vec<u8>)>,
    /// Replacements older than this were dropped to bound memory.
    past_complete_after: i64,
    /// Text order of `order=` and of text comparisons in filters.
    pub(crate) collation: Collation,
    /// Added to the real clock for every stamp (`SimConfig::clock_offset`), in microseconds.
    pub(crate) clock_offset_us: i64,
}

/// Ways a list answer may deviate from the well-behaved default, decided per request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListQuirks {
    /// Cut the page to `1 + n % rows` rows although more remain (an API that caps pages by bytes or time).
    pub(crate) short: Option<u64>,
    /// Added to `count`: a server whose count promises records it never returns.
    pub(crate) count_excess: u64,
    pub(crate) seek: SeekFault,
}

/// The query a server with `seek` bug actually runs for `raw`.
fn apply_seek_fault(raw: &str, seek: SeekFault) -> std::borrow::Cow<'_, str> {
    if seek == SeekFault::None {
        return raw.into();
    }
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match (seek, k.as_ref()) {
            (SeekFault::Ignore, "and" | "or") => {}
            (SeekFault::RepeatBoundary, "and" | "or") => {
                out.append_pair(&k, &v.replace(",id.gt.", ",id.gte."));
            }
            _ => {
                out.append_pair(&k, &v);
            }
        }
    }
    out.finish().into()
}

/// Replaced versions kept for `expenses_as_of`; a long `simulate` session with
/// background changes would otherwise grow without bound.
const MAX_PAST: usize = 50_000;

/// Outcome of a list request.
pub(crate) enum Listed {
    Body(Vec<u8>),
    UnknownResource,
    Invalid(String),
}

impl Store {
    #[cfg(test)]
    pub(crate) fn new(seed: u64, n_expenses: usize) -> Store {
        Store::with_money(seed, n_expenses, ("USD", 2), 0.0, 0.0)
    }

    /// Like [`Store::new`], with the org's currency (code, minor units), a
    /// share of amounts printed with float noise and a share of personal-cash
    /// expenses marked not reimbursable.
    pub(crate) fn with_money(
        seed: u64,
        n_expenses: usize,
        currency: (&'static str, u32),
        float_noise: f64,
        non_reimbursable_cash: f64,
    ) -> Store {
        let Generated {
            mut ctx,
            expenses,
            employees,
            categories,
            projects,
            cost_centers,
            admin,
        } = generate::generate(seed, n_expenses);
        // Amounts are generated as integers of minor units; only their scale changes.
        (ctx.currency, ctx.minor_digits) = currency;
        ctx.float_noise = float_noise;
        ctx.non_reimbursable_cash = non_reimbursable_cash;
        let mut members: Vec<Vec<&Expense>> = vec![Vec::new(); ctx.reports.len()];
        for e in &expenses {
            if let Some(r) = e.report {
                members[r as usize].push(e);
            }
        }
        let reports: Vec<Report> = members
            .iter()
            .enumerate()
            .map(|(r, m)| {
                reports::summarize(
                    m,
                    reports::generated_updated_at(ctx.reports[r].created_at, m),
                )
            })
            .collect();
        let profile = generate::my_profile(&ctx, admin);
        Store {
            expense_names: EXPENSE_COLUMNS
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (*n, i))
                .collect(),
            expenses,
            reports,
            report_names: REPORT_COLUMNS
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (*n, i))
                .collect(),
            employees: ValueTable::new(employees),
            categories: ValueTable::new(categories),
            projects: ValueTable::new(projects),
            cost_centers: ValueTable::new(cost_centers),
            profile,
            generation: 0,
            sort_cache: Mutex::new(HashMap::new()),
            index_cache: Mutex::new(IndexCache::default()),
            last_stamp: BULK_UPDATED_AT,
            rng: Rng::new(seed ^ 0x005E_ED0F_4D17),
            past: std::collections::VecDeque::new(),
            past_complete_after: i64::MIN,
            collation: Collation::C,
            clock_offset_us: 0,
            ctx,
        }
    }

    pub(crate) fn profile(&self) -> &Value {
        &self.profile
    }

    fn expense_table(&self) -> ExpenseTable<'_> {
        ExpenseTable {
            ctx: &self.ctx,
            rows: &self.expenses,
            names: &self.expense_names,
        }
    }

    fn report_table(&self) -> ReportTable<'_> {
        ReportTable {
            ctx: &self.ctx,
            rows: &self.reports,
            names: &self.report_names,
        }
    }

    fn value_table(&self, resource: &str) -> Option<(&'static str, &ValueTable)> {
        Some(match resource {
            "employees" => ("employees", &self.employees),
            "categories" => ("categories", &self.categories),
            "projects" => ("projects", &self.projects),
            "cost_centers" => ("cost_centers", &self.cost_centers),
            _ => return None,
        })
    }

    /// Answers `GET /platform/v1/admin/{resource}?{raw_query}`.
    pub(crate) fn list(&self, resource: &str, raw_query: &str, quirks: ListQuirks) -> Listed {
        let result = if resource == "expenses" {
            self.list_table("expenses", &self.expense_table(), raw_query, quirks)
        } else if resource == "reports" {
            self.list_table("reports", &self.report_table(), raw_query, quirks)
        } else if let Some((key, t)) = self.value_table(resource) {
            self.list_table(key, t, raw_query, quirks)
        } else {
            return Listed::UnknownResource;
        };
        match result {
            Ok(body) => Listed::Body(body),
            Err(m) => Listed::Invalid(m),
        }
    }

    fn list_table<T: Table>(
        &self,
        key: &'static str,
        t: &T,
        raw: &str,
        quirks: ListQuirks,
    ) -> Result<Vec<u8>, String> {
        let q = query::parse_query(&apply_seek_fault(raw, quirks.seek), t)?;
        let perm = self.sorted(key, t, &q);
        let (count, mut page) = match self.run_indexed(key, t, &q, &perm) {
            Some(answer) => answer,
            None => query::run(t, &q, &perm, self.collation)?,
        };
        if let Some(n) = quirks.short
            && page.len() > 1
        {
            page.truncate(1 + (n % page.len() as u64) as usize);
        }
        let count = count as u64 + quirks.count_excess;
        let mut out = Vec::with_capacity(64 + page.len() * 4096);
        out.extend_from_slice(
            format!("{{\"count\":{count},\"offset\":{},\"data\":[", q.offset).as_bytes(),
        );
        for (i, row) in page.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            t.write_row(*row as usize, &mut out);
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// [`index::run_indexed`] with this store's caches.
    fn run_indexed<T: Table>(
        &self,
        key: &'static str,
        t: &T,
        q: &query::Query,
        perm: &Arc<Vec<u32>>,
    ) -> Option<index::Answer> {
        let mut cache = self.index_cache.lock().expect("index cache");
        if cache.generation != self.generation {
            *cache = IndexCache {
                generation: self.generation,
                ..IndexCache::default()
            };
        }
        let cache = &mut *cache;
        let coll = self.collation;
        let kinds = &mut cache.kinds;
        let prefixes = &mut cache.prefixes;
        index::run_indexed(
            t,
            q,
            perm,
            coll,
            &mut |c| {
                *kinds
                    .entry((key, c.col, c.path.clone()))
                    .or_insert_with(|| index::column_kind(t, c))
            },
            &mut |rest| {
                let k = (key, q.order_key.clone(), format!("{rest:?}"));
                if let Some(p) = prefixes.get(&k) {
                    return Some(p.clone());
                }
                let p = Arc::new(index::prefix_counts(t, rest, perm, coll).ok()?);
                if prefixes.len() >= MAX_PREFIXES {
                    prefixes.clear();
                }
                prefixes.insert(k, p.clone());
                Some(p)
            },
        )
    }

    fn sorted<T: Table>(&self, key: &'static str, t: &T, q: &query::Query) -> Arc<Vec<u32>> {
        let cache_key = (key, q.order_key.clone());
        if let Some((generation, perm)) =
            self.sort_cache.lock().expect("sort cache").get(&cache_key)
            && *generation == self.generation
        {
            return perm.clone();
        }
        let perm = Arc::new(query::sort_perm(t, &q.order, self.collation));
        let mut cache = self.sort_cache.lock().expect("sort cache");
        // Bounded: one entry per distinct order per resource, old generations dropped.
        cache.retain(|_, (g, _)| *g == self.generation);
        cache.insert(cache_key, (self.generation, perm.clone()));
        perm
    }

    /// Every current record of a resource, sorted by id.
    pub(crate) fn ground_truth(&self, resource: &str) -> Vec<Value> {
        fn render<T: Table>(t: &T) -> Vec<Value> {
            (0..t.len())
                .map(|i| {
                    let mut buf = Vec::with_capacity(4096);
                    t.write_row(i, &mut buf);
                    serde_json::from_slice(&buf).expect("rendered row is valid JSON")
                })
                .collect()
        }
        match resource {
            "expenses" => return render(&self.expense_table()),
            "reports" => return render(&self.report_table()),
            _ => {}
        }
        self.value_table(resource)
            .map(|(_, t)| t.rows.clone())
            .unwrap_or_default()
    }

    fn remember_version(&mut self, i: usize, replaced_at: i64) {
        let mut buf = Vec::with_capacity(4096);
        self.expense_table().write_row(i, &mut buf);
        let id = self.expenses[i].id.to_string();
        self.past.push_back((id, replaced_at, buf));
        if self.past.len() > MAX_PAST
            && let Some((_, dropped_at, _)) = self.past.pop_front()
        {
            self.past_complete_after = dropped_at;
        }
    }

    /// Expenses as they were at `at` (unix microseconds): for each id, the
    /// version replaced first after `at`, else the current one; sorted by id.
    pub(crate) fn expenses_as_of(&self, at: i64) -> Vec<Value> {
        assert!(
            at >= self.past_complete_after,
            "the simulator no longer remembers versions that old (it keeps the last {MAX_PAST} changes)"
        );
        let mut by_id: std::collections::BTreeMap<String, Value> = self
            .ground_truth("expenses")
            .into_iter()
            .map(|v| (v["id"].as_str().unwrap_or_default().to_string(), v))
            .collect();
        let mut first_after: HashMap<&str, (i64, &Vec<u8>)> = HashMap::new();
        for (id, replaced_at, before) in &self.past {
            if *replaced_at > at {
                let slot = first_after
                    .entry(id.as_str())
                    .or_insert((*replaced_at, before));
                if *replaced_at < slot.0 {
                    *slot = (*replaced_at, before);
                }
            }
        }
        for (id, (_, before)) in first_after {
            let v = serde_json::from_slice(before).expect("remembered row is valid JSON");
            by_id.insert(id.to_string(), v);
        }
        // Deleted at or before `at` (and not replaced since): gone then too.
        by_id.into_values().collect()
    }

    /// A fresh `updated_at`: wall-clock now, but strictly after every
    /// timestamp handed out before, so mutated rows never tie with old ones.
    fn stamp(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp_micros() + self.clock_offset_us;
        self.last_stamp = now.max(self.last_stamp + 1);
        self.last_stamp
    }

    fn pick_distinct(&mut self, n: usize) -> Vec<usize> {
        let len = self.expenses.len();
        let n = n.min(len);
        // Partial Fisher–Yates over indices.
        let mut idx: Vec<usize> = (0..len).collect();
        for i in 0..n {
            let j = i + self.rng.below((len - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx
    }

    pub(crate) fn mutate(&mut self, n: usize) {
        self.mutate_with(n, false);
    }

    /// Changes `n` expenses in one bulk update: all get the same `updated_at`.
    pub(crate) fn bulk_update(&mut self, n: usize) {
        self.mutate_with(n, true);
    }

    fn mutate_with(&mut self, n: usize, one_instant: bool) {
        let picked = self.pick_distinct(n);
        let mut touched_reports = Vec::new();
        let shared = one_instant.then(|| self.stamp());
        for i in picked {
            let now = shared.unwrap_or_else(|| self.stamp());
            self.remember_version(i, now);
            let advance = self.rng.chance(0.5);
            let new_units = self.rng.range(500, 50_000);
            let e = &mut self.expenses[i];
            let advanced = advance && advance_state(e, now);
            if !advanced {
                change_amount(&self.ctx, e, new_units);
            }
            e.updated_at = now;
            if let Some(r) = e.report {
                touched_reports.push((r, now, i));
            }
        }
        self.refresh_reports(&touched_reports);
        self.generation += 1;
    }

    pub(crate) fn delete(&mut self, n: usize) -> Vec<String> {
        let mut picked = self.pick_distinct(n);
        picked.sort_unstable_by(|a, b| b.cmp(a));
        let now = self.stamp();
        let mut ids = Vec::with_capacity(picked.len());
        let mut touched = Vec::new();
        for i in picked {
            self.remember_version(i, now);
            let e = self.expenses.remove(i);
            if let Some(r) = e.report {
                touched.push((r, now, usize::MAX));
            }
            ids.push(e.id);
        }
        self.refresh_reports(&touched);
        self.generation += 1;
        ids.sort();
        ids
    }

    /// Recomputes changed reports; a changed expense's own report embed gets the new total.
    fn refresh_reports(&mut self, touched: &[(u32, i64, usize)]) {
        if touched.is_empty() {
            return;
        }
        let mut totals: HashMap<u32, i64> = touched.iter().map(|t| (t.0, 0)).collect();
        for e in &self.expenses {
            if let Some(r) = e.report
                && let Some(t) = totals.get_mut(&r)
            {
                *t += e.amount;
            }
        }
        for &(r, _, i) in touched {
            if i != usize::MAX {
                self.expenses[i].report_amount = totals[&r];
            }
        }
        let mut latest: HashMap<u32, i64> = HashMap::new();
        for &(r, at, _) in touched {
            let slot = latest.entry(r).or_insert(at);
            *slot = (*slot).max(at);
        }
        for (r, at) in latest {
            let members: Vec<&Expense> = self
                .expenses
                .iter()
                .filter(|e| e.report == Some(r))
                .collect();
            self.reports[r as usize] = reports::summarize(&members, at);
        }
    }
}

/// Why a write-back was refused: a plain validation message, or per-row
/// problems reported as Fyle's `BulkError`.
pub(crate) enum WriteBackError {
    Invalid(String),
    Bulk(Value),
}

impl Store {
    /// `POST /admin/expenses/accounting_export_summary/bulk`: records each
    /// item's export state on its expense. All-or-nothing, and `updated_at`
    /// is left alone so an exporter's own write-back does not re-trigger it.
    pub(crate) fn export_summary_bulk(&mut self, body: &Value) -> Result<(), WriteBackError> {
        let invalid = |m: String| WriteBackError::Invalid(m);
        let obj = body.as_object().ok_or_else(|| {
            invalid("request body must be a JSON object like {\"data\": [...]}".into())
        })?;
        if let Some(k) = obj.keys().find(|k| k.as_str() != "data") {
            return Err(invalid(format!("unexpected field \"{k}\" in request body")));
        }
        let items = obj
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("\"data\" is required and must be a list".into()))?;
        let mut updates = Vec::with_capacity(items.len());
        let mut problems = Vec::new();
        for (row, item) in items.iter().enumerate() {
            let mut bad = |key: &str, message: String| {
                problems.push(serde_json::json!({"row": row, "key": key, "message": message}));
            };
            let Some(item) = item.as_object() else {
                bad("data", "each item must be an object".into());
                continue;
            };
            let id = item.get("id").and_then(Value::as_str);
            let state = item
                .get("state")
                .and_then(Value::as_str)
                .and_then(|s| EXPORT_STATES.iter().find(|x| **x == s).copied());
            let error_type = match item.get("error_type") {
                Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => EXPORT_ERROR_TYPES
                    .iter()
                    .find(|x| **x == s.as_str())
                    .map(|x| Some(*x))
                    .ok_or(()),
                _ => Err(()),
            };
            let url = item.get("url").and_then(Value::as_str);
            let pos = id.and_then(|id| {
                self.expenses
                    .binary_search_by(|e| e.id.as_str().cmp(id))
                    .ok()
            });
            match (id, pos) {
                (None, _) => bad("id", "id is required and must be a string".into()),
                (Some(id), None) => bad("id", format!("expense {id} does not exist")),
                _ => {}
            }
            if state.is_none() {
                bad(
                    "state",
                    format!("state must be one of {}", EXPORT_STATES.join(", ")),
                );
            }
            if error_type.is_err() {
                bad(
                    "error_type",
                    format!(
                        "error_type must be null or one of {}",
                        EXPORT_ERROR_TYPES.join(", ")
                    ),
                );
            }
            if url.is_none() {
                bad("url", "url is required and must be a string".into());
            }
            if let (Some(pos), Some(state), Ok(error_type), Some(url)) =
                (pos, state, error_type, url)
            {
                updates.push((
                    pos,
                    ExportSummary {
                        state,
                        error_type,
                        url: url.to_owned(),
                    },
                ));
            }
        }
        if !problems.is_empty() {
            return Err(WriteBackError::Bulk(serde_json::json!({
                "error": "BulkError",
                "message": format!("{} of {} items are invalid; nothing was saved", problems.len(), items.len()),
                "data": problems,
            })));
        }
        let now = chrono::Utc::now().timestamp_micros() + self.clock_offset_us;
        for (pos, summary) in updates {
            let e = &mut self.expenses[pos];
            if summary.state == "COMPLETE" {
                e.flags |= flag::EXPORTED;
                e.exported_at = Some(now);
            }
            e.export_summary = Some(Box::new(summary));
        }
        self.generation += 1;
        Ok(())
    }
}

/// Moves an expense one step along the approval workflow, stamping the
/// matching timestamps; false when it cannot move on its own.
fn advance_state(e: &mut Expense, now: i64) -> bool {
    let next = match e.state {
        State::Draft => State::Complete,
        State::Complete if e.report.is_some() => {
            e.submitted_at = Some(now);
            State::ApproverPending
        }
        State::ApproverPending => {
            e.approved_at = Some(now);
            State::Approved
        }
        State::Approved => State::PaymentPending,
        State::PaymentPending => {
            e.settled_at = Some(now);
            State::PaymentProcessing
        }
        State::PaymentProcessing => {
            e.paid_at = Some(now);
            State::Paid
        }
        _ => return false,
    };
    e.state = next;
    true
}

fn change_amount(ctx: &Ctx, e: &mut Expense, units: i64) {
    let kind = e
        .category
        .map_or(CatKind::Plain, |c| ctx.categories[c as usize].kind);
    let old = e.amount;
    if kind == CatKind::Mileage && e.distance_tenths.is_some() {
        let d = units / 20 + 1;
        e.distance_tenths = Some(d);
        e.amount = Ctx::mileage_amount(d);
    } else if let Some((c, _)) = e.foreign {
        let cu = &ctx.currencies[c as usize];
        let fa = Decimal::new(units, cu.decimals);
        let home = (fa * cu.rate).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        e.foreign = Some((c, fa));
        e.amount = (home * Decimal::from(100))
            .trunc()
            .to_i64()
            .unwrap_or(0)
            .max(1);
    } else {
        e.amount = if old < 0 { -units } else { units };
    }
    if e.amount == old {
        e.amount += 1;
    }
    if e.tax.is_some() {
        e.tax = Some((e.amount.abs() * 5 + 52) / 105 * e.amount.signum());
    }
    e.split_group_amount += e.amount - old;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(store: &Store, resource: &str, q: &str) -> Value {
        match store.list(resource, q, ListQuirks::default()) {
            Listed::Body(b) => serde_json::from_slice(&b).unwrap(),
            Listed::Invalid(m) => panic!("invalid: {m}"),
            Listed::UnknownResource => panic!("unknown"),
        }
    }

    #[test]
    fn fast_nested_paths_agree_with_rendered_json() {
        let store = Store::new(3, 300);
        let t = store.expense_table();
        let truth = store.ground_truth("expenses");
        let paths: &[(&str, &[&str])] = &[
            ("report", &["id"]),
            ("report", &["seq_num"]),
            ("report", &["state"]),
            ("report", &["last_approved_at"]),
            ("report", &["last_paid_at"]),
            ("report", &["last_submitted_at"]),
            ("report", &["amount"]),
            ("custom_fields_flattened", &["client_code"]),
            ("custom_fields_flattened", &["attendees"]),
            ("custom_fields_flattened", &["invoice_date"]),
            ("custom_fields_flattened", &["billable_to_client"]),
        ];
        for (row, rendered) in truth.iter().enumerate() {
            for (col, path) in paths {
                let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                let fast = t.cell(row, t.resolve(col).unwrap(), &path).to_value();
                let mut slow = &rendered[*col];
                for p in &path {
                    slow = slow.get(p).unwrap_or(&Value::Null);
                }
                assert_eq!(&fast, slow, "{col}->{path:?} of {}", rendered["id"]);
            }
        }
    }

    fn assert_report_totals(store: &Store) {
        let expenses = store.ground_truth("expenses");
        for r in store.ground_truth("reports") {
            let id = r["id"].as_str().unwrap();
            let members: Vec<&Value> = expenses.iter().filter(|e| e["report_id"] == id).collect();
            assert_eq!(r["num_expenses"], members.len());
            let sum: Decimal = members
                .iter()
                .map(|e| e["amount"].to_string().parse::<Decimal>().unwrap())
                .sum();
            let amount: Decimal = r["amount"].to_string().parse().unwrap();
            assert_eq!(amount, sum, "report {id}");
        }
    }

    #[test]
    fn report_totals_match_their_expenses_before_and_after_changes() {
        let mut store = Store::new(5, 400);
        assert_report_totals(&store);
        store.mutate(40);
        store.delete(10);
        assert_report_totals(&store);
        // A changed expense's report moves on with it.
        let newest = body(
            &store,
            "expenses",
            "order=updated_at.desc&report_id=not.is.null&limit=1",
        );
        let e = &newest["data"][0];
        let q = format!("id=eq.{}", e["report_id"].as_str().unwrap());
        let report = &body(&store, "reports", &q)["data"][0];
        assert!(report["updated_at"].as_str() >= e["updated_at"].as_str());
        assert_eq!(report["amount"], e["report"]["amount"]);
    }

    #[test]
    fn mutate_stamps_strictly_increasing_updated_at_and_changes_something() {
        let mut store = Store::new(9, 200);
        let before = store.ground_truth("expenses");
        let max_before = before
            .iter()
            .map(|e| e["updated_at"].as_str().unwrap().to_owned())
            .max()
            .unwrap();
        store.mutate(10);
        let after = store.ground_truth("expenses");
        let changed: Vec<(&Value, &Value)> =
            before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        assert_eq!(changed.len(), 10);
        let mut stamps: Vec<String> = Vec::new();
        for (old, new) in changed {
            assert!(old["amount"] != new["amount"] || old["state"] != new["state"]);
            let ts = new["updated_at"].as_str().unwrap().to_owned();
            assert!(
                ts > max_before,
                "{ts} must be after every earlier updated_at"
            );
            stamps.push(ts);
        }
        stamps.sort();
        stamps.dedup();
        assert_eq!(
            stamps.len(),
            10,
            "every mutated expense gets its own instant"
        );
    }

    #[test]
    fn a_bulk_update_gives_every_changed_expense_one_shared_updated_at() {
        let mut store = Store::new(10, 300);
        let before = store.ground_truth("expenses");
        store.bulk_update(60);
        let after = store.ground_truth("expenses");
        let stamps: std::collections::BTreeSet<&str> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(_, b)| b["updated_at"].as_str().unwrap())
            .collect();
        assert_eq!(stamps.len(), 1, "{stamps:?}");
        let tie = after
            .iter()
            .filter(|e| stamps.contains(e["updated_at"].as_str().unwrap()))
            .count();
        assert_eq!(tie, 60);
    }

    #[test]
    fn short_pages_and_an_inflated_count_are_opt_in() {
        let store = Store::new(12, 100);
        let q = "order=updated_at.asc,id.asc&limit=50";
        let normal = body(&store, "expenses", q);
        assert_eq!(normal["data"].as_array().unwrap().len(), 50);
        assert_eq!(normal["count"], 100);
        let quirky = match store.list(
            "expenses",
            q,
            ListQuirks {
                short: Some(6),
                count_excess: 3,
                seek: SeekFault::None,
            },
        ) {
            Listed::Body(b) => serde_json::from_slice::<Value>(&b).unwrap(),
            _ => panic!("list failed"),
        };
        assert_eq!(quirky["data"].as_array().unwrap().len(), 7);
        assert_eq!(quirky["count"], 103);
        assert_eq!(quirky["data"][0], normal["data"][0]);
    }

    #[test]
    fn delete_removes_exactly_those_ids() {
        let mut store = Store::new(11, 100);
        let gone = store.delete(7);
        assert_eq!(gone.len(), 7);
        let left = store.ground_truth("expenses");
        assert_eq!(left.len(), 93);
        assert!(
            left.iter()
                .all(|e| !gone.contains(&e["id"].as_str().unwrap().to_owned()))
        );
        let page = body(&store, "expenses", "limit=200");
        assert_eq!(page["count"], 93);
    }

    /// Both answers of one query: the indexed path (`None`: it declined) and the full scan.
    fn fast_and_slow(
        store: &Store,
        raw: &str,
    ) -> (Option<index::Answer>, Result<index::Answer, String>) {
        let t = store.expense_table();
        let q = query::parse_query(raw, &t).unwrap();
        let perm = store.sorted("expenses", &t, &q);
        let fast = store.run_indexed("expenses", &t, &q, &perm);
        (fast, query::run(&t, &q, &perm, store.collation))
    }

    #[test]
    fn the_indexed_page_path_answers_exactly_what_the_full_scan_answers() {
        let mut store = Store::new(21, 3000);
        store.bulk_update(150);
        store.mutate(200);
        store.delete(40);
        let mut rng = Rng::new(77);
        let stamps: Vec<String> = store
            .ground_truth("expenses")
            .iter()
            .map(|e| e["updated_at"].as_str().unwrap().to_owned())
            .collect();
        let ids: Vec<String> = store
            .ground_truth("expenses")
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let enc = |s: &str| s.replace('+', "%2B");
        let mut declined = 0;
        for round in 0..400 {
            let mut parts = Vec::new();
            let (a, b) = (rng.pick(&stamps).clone(), rng.pick(&stamps).clone());
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            if rng.chance(0.7) {
                parts.push(format!("updated_at=gte.{}", enc(&lo)));
            }
            if rng.chance(0.7) {
                parts.push(format!("updated_at=lt.{}", enc(&hi)));
            }
            if rng.chance(0.6) {
                let at = rng.pick(&stamps).clone();
                let id = rng.pick(&ids).clone();
                parts.push(format!(
                    "and=(or(updated_at.gt.{t},and(updated_at.eq.{t},id.gt.{id})))",
                    t = enc(&at)
                ));
            }
            match rng.below(5) {
                0 => parts.push("state=in.(APPROVED,PAYMENT_PROCESSING,PAID)".into()),
                1 => parts.push("amount=gt.100".into()),
                2 => parts.push("report_id=not.is.null".into()),
                3 => parts.push(format!("updated_at=neq.{}", enc(&lo))),
                _ => {}
            }
            if rng.chance(0.1) {
                parts.push(format!("not.or=(updated_at.eq.{},amount.lt.50)", enc(&hi)));
            }
            let order = match rng.below(4) {
                0 => "updated_at.desc,id.desc",
                1 => "spent_at.asc,id.asc",
                2 => "amount.desc",
                _ => "updated_at.asc,id.asc",
            };
            parts.push(format!("order={order}"));
            parts.push(format!("limit={}", 1 + rng.below(200)));
            parts.push(format!(
                "offset={}",
                [0, 0, 1, 7, 150, 2900][rng.below(6) as usize]
            ));
            let raw = parts.join("&");
            let (fast, slow) = fast_and_slow(&store, &raw);
            match fast {
                Some(fast) => assert_eq!(fast, slow.unwrap(), "round {round}: {raw}"),
                None => declined += 1,
            }
        }
        assert_eq!(declined, 0, "every one of these queries can be indexed");
        // The pager's way through the whole table: every record once, in order.
        let mut seen = Vec::new();
        let mut seek: Option<(String, String)> = None;
        loop {
            let mut raw = "order=updated_at.asc,id.asc&limit=200&offset=0".to_string();
            if let Some((at, id)) = &seek {
                raw.push_str(&format!(
                    "&and=(or(updated_at.gt.{t},and(updated_at.eq.{t},id.gt.{id})))",
                    t = enc(at)
                ));
            }
            let (fast, slow) = fast_and_slow(&store, &raw);
            let (count, page) = fast.expect("the pager's query is indexed");
            assert_eq!((count, page.clone()), slow.unwrap());
            for &r in &page {
                let e = &store.expenses[r as usize];
                seen.push(e.id.to_string());
                seek = Some((super::super::values::fmt_ts(e.updated_at), e.id.to_string()));
            }
            if count <= page.len() {
                break;
            }
        }
        assert_eq!(seen.len(), store.expenses.len());
    }

    #[test]
    fn sort_cache_is_invalidated_by_mutation() {
        let mut store = Store::new(13, 100);
        let q = "order=updated_at.desc,id.desc&limit=1";
        let before = body(&store, "expenses", q)["data"][0]["updated_at"].clone();
        assert_eq!(
            before.as_str().unwrap(),
            super::super::values::fmt_ts(BULK_UPDATED_AT)
        );
        store.mutate(1);
        let newest = body(&store, "expenses", q)["data"][0]["updated_at"].clone();
        assert!(newest.as_str().unwrap() > before.as_str().unwrap());
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore = "manual timing"]
    fn time_list_pieces() {
        let store = Store::new(1, 100_000);
        let t = store.expense_table();
        let q0 = "order=updated_at.asc,id.asc&limit=200&state=in.(APPROVED,PAYMENT_PENDING,PAYMENT_PROCESSING,PAID)";
        let _ = store.list("expenses", q0, ListQuirks::default());
        let q = format!(
            "{q0}&or=(updated_at.gt.%222024-10-01T00:00:00.123456%2B00:00%22,and(updated_at.eq.%222024-10-01T00:00:00.123456%2B00:00%22,id.gt.txAAA))"
        );
        let s = Instant::now();
        let parsed = query::parse_query(&q, &t).unwrap();
        let perm = store.sorted("expenses", &t, &parsed);
        println!("parse+perm {:?}", s.elapsed());
        let s = Instant::now();
        let (count, page) = query::run(&t, &parsed, &perm, Collation::C).unwrap();
        println!("run {:?} count {count}", s.elapsed());
        let s = Instant::now();
        let mut out = Vec::new();
        for r in &page {
            t.write_row(*r as usize, &mut out);
        }
        println!("render {:?} {} bytes", s.elapsed(), out.len());
    }
}

#[cfg(test)]
mod mem {
    use super::*;

    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .and_then(|l| l.split_whitespace().nth(1).map(|n| n.parse().unwrap()))
            .unwrap()
    }

    #[test]
    #[ignore = "manual memory check"]
    fn memory_of_100k() {
        let before = rss_kb();
        let store = Store::new(1, 100_000);
        let after = rss_kb();
        println!(
            "store: {} MB for {} expenses, {} reports; expense row {} bytes",
            (after - before) / 1024,
            store.expenses.len(),
            store.reports.len(),
            std::mem::size_of::<Expense>()
        );
    }
}
