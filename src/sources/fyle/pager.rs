//! Keyset (seek) paging on (cursor, id) inside a fixed time window.
//!
//! Offset paging over data that changes skips records: when a record on an
//! earlier page moves, every later record shifts one place and one is never
//! seen. Seeking from the last (cursor, id) seen cannot skip, and the fixed
//! upper bound keeps records that change mid-run out of this run (they are
//! in the next window) instead of chasing them.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use super::{FyleClient, FyleError, FyleSourceConfig};
use crate::extract::{FieldSet, PageSource, RecordId, RecordRef, decode_page};
pub use crate::sources::{Page, PagerStats, Window};

/// The position of a record in the server's (cursor, id) order, as the
/// server wrote it: the pager never compares ids itself, because their
/// order is the database's text collation, which the client cannot know.
#[derive(Debug, Clone)]
struct Key {
    at: DateTime<Utc>,
    /// The cursor exactly as the server wrote it, so the seek condition matches it exactly.
    text: String,
    /// The id as a filter literal (`txAbC…` or `42`).
    id_literal: String,
    /// The id as JSON text, as errors quote it.
    id_json: String,
}

impl Key {
    fn of(record: &RecordRef<'_>, cursor_field: &str) -> Result<Key, FyleError> {
        let (text, at) = instant_of(record, cursor_field)?;
        let id = id_of(record, &text)?;
        let (id_literal, id_json) = match id {
            RecordId::Text(s) => (literal(&s), Value::String(s.into_owned()).to_string()),
            RecordId::Number(n) => (n.to_string(), n.to_string()),
        };
        Ok(Key {
            at,
            text: text.into_owned(),
            id_literal,
            id_json,
        })
    }
}

/// A record's cursor text and the instant it names.
fn instant_of<'r>(
    record: &RecordRef<'r>,
    cursor_field: &str,
) -> Result<(Cow<'r, str>, DateTime<Utc>), FyleError> {
    let text = record.str(cursor_field).ok_or_else(|| {
        FyleError::Protocol(format!(
            "record {} has no `{cursor_field}` timestamp to page by; \
             set source.cursor_field to a timestamp every record has",
            record.id_text()
        ))
    })?;
    let at = crate::common::instant::parse_rfc3339(&text).ok_or_else(|| {
        let reason = DateTime::parse_from_rfc3339(&text)
            .err()
            .map_or_else(String::new, |e| format!(" ({e})"));
        FyleError::Protocol(format!(
            "record {}: `{cursor_field}` = `{text}` is not an RFC 3339 timestamp{reason}",
            record.id_text()
        ))
    })?;
    Ok((text, at))
}

/// A record's id, which paging past it needs (a text or a number).
fn id_of<'r>(record: &RecordRef<'r>, cursor_text: &str) -> Result<RecordId<'r>, FyleError> {
    record.id().ok_or_else(|| {
        FyleError::Protocol(format!(
            "a record without an `id` was returned (cursor {cursor_text}); cannot page past it"
        ))
    })
}

/// Ids delivered at one cursor instant, kept for the current page and the
/// one before only: a seek past the last record can be repeated by the next
/// page, never by a later one, so a backfill whose records share one instant
/// (a bulk update of a million) holds at most two pages of ids, not all of them.
#[derive(Debug, Default)]
struct TieIds {
    current: HashSet<String>,
    previous: HashSet<String>,
}

impl TieIds {
    /// Starts a new page: what the page before delivered is still checked against.
    fn next_page(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }

    /// Forgets everything: the cursor moved to a later instant.
    fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    /// Whether `id` is new at this instant, remembering it.
    fn insert(&mut self, id: String) -> bool {
        !self.previous.contains(&id) && self.current.insert(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Which records of a page are new, in the server's order after `seek`, and
/// how many repeat one delivered at the same instant; an error when the page
/// is not in cursor order.
///
/// An id is remembered only once a second record shares its instant, or at
/// the end of the page (the next page may repeat it): most records have an
/// instant of their own, and remembering each cost an allocation.
fn fresh_records(
    data: &[RecordRef<'_>],
    cursor: &str,
    path: &str,
    seek: Option<&Key>,
    tie: &mut TieIds,
) -> Result<(Vec<bool>, u64), FyleError> {
    let mut keep = Vec::with_capacity(data.len());
    let mut duplicates = 0;
    let mut prev = seek.map(|k| k.at);
    let mut unremembered: Option<RecordId<'_>> = None;
    // What "already delivered" is remembered by: the id's text tagged with its
    // kind, so a numeric id and a text id never collide (not JSON: printing
    // it through serde_json's formatter cost more than the rest of the check).
    let id_text = |id: RecordId<'_>| {
        let (kind, text) = match &id {
            RecordId::Text(s) => ('s', s.as_ref()),
            RecordId::Number(n) => ('n', *n),
        };
        let mut key = String::with_capacity(1 + text.len());
        key.push(kind);
        key.push_str(text);
        key
    };
    tie.next_page();
    for (i, record) in data.iter().enumerate() {
        let (text, at) = instant_of(record, cursor)?;
        let id = id_of(record, &text)?;
        // Instants compare the same under every collation, so this check
        // is safe where comparing ids would not be.
        if let Some(p) = prev
            && at < p
        {
            let prev_text = match i {
                0 => seek.map(|k| k.text.clone()).unwrap_or_default(),
                _ => instant_of(&data[i - 1], cursor)?.0.into_owned(),
            };
            return Err(FyleError::Protocol(format!(
                "GET {path} returned record {} with {cursor} = {text} after one with {prev_text}; \
                 the server does not order by `{cursor}.asc,id.asc` or ignores the seek \
                 filter, so paging cannot be trusted to see every record",
                Key::of(record, cursor)?.id_json,
            )));
        }
        let fresh = if prev.is_none_or(|p| at > p) {
            tie.clear();
            unremembered = Some(id);
            true
        } else {
            if let Some(r) = unremembered.take() {
                tie.insert(id_text(r));
            }
            tie.insert(id_text(id))
        };
        prev = Some(at);
        duplicates += u64::from(!fresh);
        keep.push(fresh);
    }
    if let Some(r) = unremembered {
        tie.insert(id_text(r));
    }
    Ok((keep, duplicates))
}

/// Formats an instant the way Fyle writes timestamps.
pub fn fyle_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// A value as a literal inside `and=(…)`/`or=(…)`: bare, as Fyle's own
/// clients write timestamps and ids there, and double-quoted only when the
/// grammar needs it (a separator, a quote, whitespace or a reserved word).
pub fn literal(s: &str) -> String {
    let reserved = ["null", "true", "false", "not", "and", "or"]
        .iter()
        .any(|w| s.eq_ignore_ascii_case(w));
    let needs_quotes = s.is_empty()
        || reserved
        || s.chars()
            .any(|c| matches!(c, ',' | '(' | ')' | '"' | '\\') || c.is_whitespace());
    if needs_quotes {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

/// A piece of the window one worker pages through.
#[derive(Debug, Clone)]
struct Slice {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// Work shared by the workers of one window: a queue of slices that grows
/// when a busy worker splits off the far half of what it has left.
struct Shared {
    queue: Mutex<VecDeque<Slice>>,
    /// Slices queued or being paged; the window is done when it reaches 0.
    outstanding: AtomicUsize,
    idle: AtomicUsize,
    failed: AtomicBool,
    total_reported: AtomicBool,
    wake: Notify,
    stats: Mutex<PagerStats>,
}

impl Shared {
    fn push(&self, slice: Slice) {
        self.outstanding.fetch_add(1, AtomicOrdering::SeqCst);
        self.queue.lock().expect("queue lock").push_back(slice);
        self.wake.notify_waiters();
    }

    async fn next(&self) -> Option<Slice> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.failed.load(AtomicOrdering::SeqCst) {
                return None;
            }
            if let Some(s) = self.queue.lock().expect("queue lock").pop_front() {
                return Some(s);
            }
            if self.outstanding.load(AtomicOrdering::SeqCst) == 0 {
                return None;
            }
            self.idle.fetch_add(1, AtomicOrdering::SeqCst);
            notified.await;
            self.idle.fetch_sub(1, AtomicOrdering::SeqCst);
        }
    }

    fn done(&self) {
        self.outstanding.fetch_sub(1, AtomicOrdering::SeqCst);
        self.wake.notify_waiters();
    }

    fn fail(&self) {
        self.failed.store(true, AtomicOrdering::SeqCst);
        self.wake.notify_waiters();
    }
}

/// Pages through `window` of the configured resource with up to
/// `cfg.concurrency` requests in flight, sending each page to `tx`.
///
/// The window starts as one slice. Whenever a worker learns (from the
/// server's `count`) that its slice still holds more than two pages while
/// another worker sits idle and the rate limiter is not what holds requests
/// back, it splits the rest of its time range in half and queues the far
/// half, so a large backfill runs at the rate limit rather than at one round
/// trip per page, with few more requests than pages. Slices never overlap, and each
/// is paged by keyset, so splitting cannot skip or repeat a record.
///
/// Returns when the window is exhausted, or early (without error) if the
/// receiver has gone away because the run is stopping.
///
/// Each record holds only `fields` (everything when the caller cannot say what it reads).
pub async fn fetch_window(
    client: &FyleClient,
    cfg: &FyleSourceConfig,
    fields: &Arc<FieldSet>,
    window: Window,
    tx: &mpsc::Sender<Page>,
) -> Result<PagerStats, FyleError> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        outstanding: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        total_reported: AtomicBool::new(false),
        wake: Notify::new(),
        stats: Mutex::new(PagerStats::default()),
    });
    shared.push(Slice {
        from: window.from,
        to: window.to,
    });
    let workers = cfg.concurrency.max(1) as usize;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (client, cfg, tx, shared) = (client.clone(), cfg.clone(), tx.clone(), shared.clone());
        let fields = fields.clone();
        set.spawn(async move {
            while let Some(slice) = shared.next().await {
                let result = fetch_slice(&client, &cfg, &fields, slice, &tx, &shared).await;
                shared.done();
                if let Err(e) = result {
                    shared.fail();
                    return Err(e);
                }
            }
            Ok(())
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(FyleError::Protocol(format!(
                "a paging task stopped unexpectedly: {e}"
            )))
        });
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let stats = *shared.stats.lock().expect("stats lock");
    Ok(stats)
}

/// The query of the first page of `window`: what a run asks first (shown by `run --dry-run`).
pub fn first_page_query(cfg: &FyleSourceConfig, window: Window) -> Vec<(String, String)> {
    page_query(cfg, window.from, window.to, None)
}

/// The query of one page of the slice `[from, to)`, after `seek` if given.
fn page_query(
    cfg: &FyleSourceConfig,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    seek: Option<&Key>,
) -> Vec<(String, String)> {
    let cursor = cfg.cursor();
    let mut query = cfg.filter_pairs();
    if let Some(from) = from {
        query.push((cursor.to_string(), format!("gte.{}", fyle_timestamp(from))));
    }
    if let Some(to) = to {
        query.push((cursor.to_string(), format!("lt.{}", fyle_timestamp(to))));
    }
    if let Some(k) = seek {
        query.push((
            "and".into(),
            format!(
                "(or({cursor}.gt.{t},and({cursor}.eq.{t},id.gt.{id})))",
                t = literal(&k.text),
                id = k.id_literal
            ),
        ));
    }
    query.push(("order".into(), format!("{cursor}.asc,id.asc")));
    query.push(("limit".into(), cfg.page_size.to_string()));
    query.push(("offset".into(), "0".into()));
    query
}

async fn fetch_slice(
    client: &FyleClient,
    cfg: &FyleSourceConfig,
    fields: &Arc<FieldSet>,
    mut slice: Slice,
    tx: &mpsc::Sender<Page>,
    shared: &Shared,
) -> Result<(), FyleError> {
    let path = format!("{}/{}", cfg.role, cfg.resource);
    let cursor = cfg.cursor();
    // The last record the server returned: the next page starts after it, in
    // the server's own order.
    let mut seek: Option<Key> = None;
    // Ids delivered at the cursor instant `seek` sits on, in this page and the
    // one before. A correct server never repeats them; one that treats `gt` as
    // `gte` at a boundary repeats the record it was asked to seek past, and
    // this keeps such a repeat from being delivered twice.
    let mut tie = TieIds::default();
    let mut first = true;
    loop {
        let query = page_query(cfg, slice.from, slice.to, seek.as_ref());
        if shared.failed.load(AtomicOrdering::SeqCst) {
            return Ok(());
        }
        let decode_fields = fields.clone();
        let page = client
            .get_decoded(&path, &query, move |body| decode_page(&decode_fields, body))
            .await?;
        let count = page
            .count
            .as_ref()
            .and_then(|c| c.to_string().parse::<u64>().ok());
        let data = match page.data {
            Some(data) => data,
            None => {
                return Err(FyleError::Protocol(format!(
                    "GET {path} answered without a `data` list"
                )));
            }
        };
        let returned = data.len() as u64;
        let position = |k: &Option<Key>| match k {
            Some(k) => format!("after ({cursor} = {}, id = {})", k.text, k.id_literal),
            None => "from the start of the slice".to_string(),
        };
        let before = seek.clone();
        let (keep, duplicates) = {
            let table = page.columns.as_ref();
            let refs: Vec<RecordRef<'_>> = (data.iter().enumerate())
                .map(|(i, r)| RecordRef::new(r, table.and_then(|t| t.record(i))))
                .collect();
            let fresh = fresh_records(&refs, cursor, &path, seek.as_ref(), &mut tie)?;
            // The next page starts after the last record returned, repeated or not.
            if let Some(last) = refs.last() {
                seek = Some(Key::of(last, cursor)?);
            }
            fresh
        };
        let mut records = Vec::with_capacity(data.len());
        let mut positions = Vec::with_capacity(data.len());
        for (position, (record, fresh)) in data.into_iter().zip(keep).enumerate() {
            if fresh {
                records.push(record);
                positions.push(position as u32);
            }
        }
        let delivered = records.len() as u64;
        {
            let mut st = shared.stats.lock().expect("stats lock");
            st.pages += 1;
            st.records += delivered;
            st.duplicates += duplicates;
        }
        debug!(path, records = delivered, count, "page");
        // Only one slice exists when the first response arrives: its count is the window's.
        let total = (first && !shared.total_reported.swap(true, AtomicOrdering::SeqCst))
            .then_some(count)
            .flatten();
        first = false;
        if (!records.is_empty() || total.is_some())
            && tx
                .send(Page {
                    records,
                    total,
                    source: Some(PageSource::new(page.body, positions).with_columns(page.columns)),
                })
                .await
                .is_err()
        {
            return Ok(());
        }
        // `count` is what matched this request, seek included: the records
        // from this page onward. The slice is done only when the server
        // agrees nothing is left beyond this page; a page shorter than
        // `limit` alone proves nothing (some servers cap pages by size or time).
        match count {
            Some(c) if c <= returned => return Ok(()),
            None if returned == 0 => return Ok(()),
            Some(c) if returned == 0 => {
                return Err(FyleError::Protocol(format!(
                    "GET {path} answered an empty page {} although its count says {c} more \
                     records match; stopping rather than leave them out silently. \
                     The server is not paging consistently: run again, and report it to \
                     the API provider if it persists",
                    position(&before)
                )));
            }
            _ => {}
        }
        if delivered == 0 {
            return Err(FyleError::Protocol(format!(
                "GET {path} returned only records it had returned before ({returned} of them, {}) \
                 although {}; the seek filter does not advance, so paging would never finish",
                position(&before),
                count.map_or("the page was not empty".to_string(), |c| format!(
                    "its count says {c} match"
                ))
            )));
        }
        // Split off the far half of what is left when it is worth a second
        // worker. Every slice ends in a page of its own, usually short: a
        // split costs about one request, so none is made while requests
        // already wait for the rate limiter, or pages wait for the stage
        // after this one (more in flight would not be done any sooner).
        let remaining = count.unwrap_or(0).saturating_sub(returned);
        if remaining > 2 * cfg.page_size as u64
            && shared.idle.load(AtomicOrdering::SeqCst) > 0
            && tx.capacity() > 0
            && !client.session().http().rate_bound()
            && let (Some(k), Some(to)) = (&seek, slice.to)
        {
            let span = to - k.at;
            let min_slice = chrono::Duration::from_std(cfg.min_slice).unwrap_or_default();
            if span >= min_slice * 2 && span > chrono::Duration::microseconds(2) {
                let mid = k.at + span / 2;
                debug!(from = %mid, to = %to, "splitting slice");
                slice.to = Some(mid);
                shared.push(Slice {
                    from: Some(mid),
                    to: Some(to),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs `check` on `records` read as the pager reads them: built into
    /// the tree (a page parsed whole), and captured from a page of their
    /// JSON text with no tree at all (the fast path).
    fn both_ways(records: &[Value], mut check: impl FnMut(&[RecordRef<'_>])) {
        let tree: Vec<RecordRef<'_>> = records.iter().map(|r| RecordRef::new(r, None)).collect();
        check(&tree);
        let mut fields = FieldSet::nothing();
        fields.capture_key("updated_at");
        fields.capture_key("id");
        let texts: Vec<String> = records.iter().map(Value::to_string).collect();
        let body = bytes::Bytes::from(format!("{{\"data\": [{}]}}", texts.join(",")));
        let page = decode_page(&fields, &body).expect("a valid page");
        let table = page.columns.as_ref().expect("read with a capture");
        let data = page.data.expect("a data list");
        let captured: Vec<RecordRef<'_>> = (data.iter().enumerate())
            .map(|(i, r)| {
                assert_eq!(r, &json!({}), "nothing is built into the record");
                RecordRef::new(r, table.record(i))
            })
            .collect();
        check(&captured);
    }

    #[test]
    fn keys_keep_the_cursor_text_and_the_id_as_sent() {
        let records = [
            json!({"id": "txAbC", "updated_at": "2024-01-01T00:00:00.000001+00:00"}),
            json!({"id": 10, "updated_at": "2024-01-01T00:00:00Z"}),
            json!({"id": "tx\"q\\é", "updated_at": "2024-01-01T00:00:00Z"}),
        ];
        both_ways(&records, |r| {
            let k = Key::of(&r[0], "updated_at").unwrap();
            assert_eq!(k.text, "2024-01-01T00:00:00.000001+00:00");
            assert_eq!(k.id_literal, "txAbC");
            assert_eq!(k.id_json, "\"txAbC\"");
            let n = Key::of(&r[1], "updated_at").unwrap();
            assert_eq!(n.id_literal, "10");
            assert_ne!(
                n.id_json, "\"10\"",
                "a numeric id and a text id never collide"
            );
            // Escapes are read as the text they stand for.
            let e = Key::of(&r[2], "updated_at").unwrap();
            assert_eq!(e.id_literal, literal("tx\"q\\é"));
            assert_eq!(e.id_json, r#""tx\"q\\é""#);
        });
    }

    #[test]
    fn ids_at_one_instant_are_kept_for_two_pages_and_a_repeated_boundary_is_caught() {
        let mut tie = TieIds::default();
        for page in 0..50 {
            tie.next_page();
            if page > 0 {
                // A server treating `gt` as `gte` repeats the last record of the page before.
                assert!(!tie.insert(format!("id-{}-{}", page - 1, 199)));
            }
            for i in 0..200 {
                assert!(tie.insert(format!("id-{page}-{i}")));
            }
            assert!(
                !tie.insert(format!("id-{page}-7")),
                "a repeat inside the page"
            );
            assert!(tie.len() <= 400, "page {page}: {} ids held", tie.len());
        }
        tie.clear();
        assert_eq!(tie.len(), 0);
    }

    #[test]
    fn repeats_at_one_instant_are_caught_within_a_page_and_across_the_next() {
        let rec = |id: &str, at: &str| json!({"id": id, "updated_at": at});
        let (t1, t2) = ("2024-01-01T00:00:00Z", "2024-01-01T00:00:01+00:00");
        let page1 = [rec("a", t1), rec("b", t1), rec("a", t1), rec("c", t2)];
        let page2 = [rec("c", t2), rec("d", t2)];
        // The same instant written with another offset is the same instant.
        let page3 = [rec("d", "2024-01-01T01:00:01+01:00"), rec("e", t2)];
        // A numeric id and a text id with the same digits are two records.
        let mixed = [
            json!({"id": "10", "updated_at": t2}),
            json!({"id": 10, "updated_at": t2}),
            json!({"id": 10, "updated_at": t2}),
        ];
        let back = [rec("f", t1)];
        let pages = [&page1[..], &page2, &page3, &mixed, &back].concat();
        both_ways(&pages, |all| {
            let (page1, rest) = all.split_at(4);
            let (page2, rest) = rest.split_at(2);
            let (page3, rest) = rest.split_at(2);
            let (mixed, back) = rest.split_at(3);
            let mut tie = TieIds::default();
            let (keep, dups) = fresh_records(page1, "updated_at", "p", None, &mut tie).unwrap();
            assert_eq!(keep, [true, true, false, true]);
            assert_eq!(dups, 1);
            // A server treating `gt` as `gte` repeats the last record, alone at its instant.
            let seek = Key::of(&page1[3], "updated_at").unwrap();
            let (keep, _) = fresh_records(page2, "updated_at", "p", Some(&seek), &mut tie).unwrap();
            assert_eq!(keep, [false, true]);
            let seek = Key::of(&page2[1], "updated_at").unwrap();
            let (keep, _) = fresh_records(page3, "updated_at", "p", Some(&seek), &mut tie).unwrap();
            assert_eq!(keep, [false, true]);
            let seek = Key::of(&page3[1], "updated_at").unwrap();
            let (keep, _) = fresh_records(mixed, "updated_at", "p", Some(&seek), &mut tie).unwrap();
            assert_eq!(keep, [true, true, false]);
            let e = fresh_records(back, "updated_at", "p", Some(&seek), &mut tie).unwrap_err();
            assert!(
                e.to_string().contains(&format!(
                    "record \"f\" with updated_at = {t1} after one with {t2}"
                )),
                "{e}"
            );
        });
    }

    #[test]
    fn missing_cursor_or_id_is_explained() {
        let records = [
            json!({"id": "tx1"}),
            json!({"id": "tx2", "updated_at": null}),
            json!({"id": "tx3", "updated_at": 1700000000}),
            json!({"updated_at": "2024-01-01T00:00:00Z"}),
            json!({"id": null, "updated_at": "2024-01-01T00:00:00Z"}),
            json!({"id": true, "updated_at": "2024-01-01T00:00:00Z"}),
            json!({"id": "tx7", "updated_at": "yesterday"}),
        ];
        both_ways(&records, |r| {
            let error = |i: usize| Key::of(&r[i], "updated_at").unwrap_err().to_string();
            for (i, id) in ["tx1", "tx2", "tx3"].iter().enumerate() {
                assert!(
                    error(i).contains(&format!("record {id} has no `updated_at`")),
                    "{}",
                    error(i)
                );
            }
            for i in [3, 4, 5] {
                assert!(
                    error(i).contains("a record without an `id`"),
                    "{}",
                    error(i)
                );
            }
            assert!(
                error(6).contains("record tx7: `updated_at` = `yesterday` is not an RFC 3339"),
                "{}",
                error(6)
            );
        });
    }

    #[test]
    fn timestamps_are_written_like_fyle() {
        let t = DateTime::parse_from_rfc3339("2024-03-05T10:22:33.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(fyle_timestamp(t), "2024-03-05T10:22:33.500000+00:00");
    }

    #[test]
    fn literals_are_bare_unless_the_grammar_needs_quotes() {
        assert_eq!(
            literal("2024-03-05T10:22:33.500000+00:00"),
            "2024-03-05T10:22:33.500000+00:00"
        );
        assert_eq!(literal("txAbC09"), "txAbC09");
        assert_eq!(literal("a,b"), "\"a,b\"");
        assert_eq!(literal("f(x)"), "\"f(x)\"");
        assert_eq!(literal("two words"), "\"two words\"");
        assert_eq!(literal("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(literal("NULL"), "\"NULL\"");
        assert_eq!(literal(""), "\"\"");
    }
}
