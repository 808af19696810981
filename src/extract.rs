//! Parse once, into what the pipeline reads.
//!
//! A 200-expense page is about a megabyte of JSON, of which a pipeline reads a
//! few dozen fields per record. Building the whole tree of every record (and
//! dropping it again) was most of a run's CPU time. A [`FieldSet`] is compiled
//! from everything a run reads (columns, transforms, the cursor and `id`), and
//! a page is read in one pass that builds only those fields and skips the rest
//! without allocating. The records stay ordinary [`Record`]s, so transforms and
//! projection work unchanged on a small record; values keep their exact JSON
//! text (numbers never pass through `f64`). What the columns, the cursor and
//! `id` read is captured as byte ranges of the page ([`Columns`]) instead of
//! built, so a pipeline without transforms builds no tree at all: its record
//! is an empty object, read through [`RecordRef`].
//!
//! The page's bytes are kept alongside ([`PageSource`]) so that a record which
//! must be quarantined is written as the server sent it, not as the pruned tree.

/// Key lookups happen for every key of every record: a fast non-DoS-resistant
/// hash is fine for keys chosen by the pipeline file.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::record::{FieldPath, Record};

mod scan;

/// The key serde_json (with `arbitrary_precision`) presents a number under, as a one-entry map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The parts of a record a run reads: whole values at some paths, nothing else.
///
/// Most of them are read by the columns alone: those are *captured* — handed
/// over as slices of the page ([`Columns`]) instead of built into the record —
/// so the common record is a handful of small values and a row of offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSet {
    /// What the fast path builds into each record.
    root: Need,
    /// `root` and the captured paths: what the serde path builds (it captures nothing).
    full: Need,
    /// The captured paths as a tree of keys.
    capture: Capture,
    /// Slots per record in a [`Columns`] table (one past the largest captured slot).
    slots: usize,
    /// Top-level keys captured for [`RecordRef`] (`id`, the cursor), with their slots.
    keys: Arc<Vec<(String, usize)>>,
}

/// Captured paths: a slot where a path ends, the keys that go further.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Capture {
    slot: Option<usize>,
    /// Every slot at or below this key, cleared when the key appears again (last one wins).
    below: Vec<usize>,
    children: Keys<Capture>,
}

/// The wanted keys of one object, with a filter that turns most unwanted keys
/// away before hashing them: a record has ~100 keys of which a run reads ~30.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys<T> {
    map: HashMap<String, T>,
    /// A 256-bit Bloom filter of the keys (length, first, middle and last byte).
    bloom: [u64; 4],
}

impl<T> Default for Keys<T> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            bloom: [0; 4],
        }
    }
}

impl<T: Default> Keys<T> {
    /// The entry of `key`, added with `T::default()` when new.
    fn entry(&mut self, key: &str) -> &mut T {
        let bit = Self::bit(key.as_bytes());
        self.bloom[bit / 64] |= 1 << (bit % 64);
        self.map.entry(key.to_string()).or_default()
    }
}

impl<T> Keys<T> {
    #[inline]
    fn bit(key: &[u8]) -> usize {
        let n = key.len();
        let (a, m, z) = match n {
            0 => (0, 0, 0),
            _ => (key[0], key[n / 2], key[n - 1]),
        };
        let h = (n as u32)
            .wrapping_mul(0x9e37_79b1)
            .wrapping_add(u32::from(a).wrapping_mul(0x85eb_ca77))
            .wrapping_add(u32::from(m).wrapping_mul(0xc2b2_ae3d))
            .wrapping_add(u32::from(z).wrapping_mul(0x27d4_eb2f));
        (h >> 24) as usize
    }

    /// The stored key and its value, when `key` is wanted.
    #[inline]
    pub(crate) fn get_key_value(&self, key: &str) -> Option<(&String, &T)> {
        let bit = Self::bit(key.as_bytes());
        if self.bloom[bit / 64] & (1 << (bit % 64)) == 0 {
            return None;
        }
        self.map.get_key_value(key)
    }

    /// The value of `key`, when wanted.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<&T> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// Whether no key is wanted.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many keys are wanted.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    /// The whole value.
    All,
    /// Only these keys of an object, or of every object in an array.
    Keys(Keys<Need>),
}

impl Default for Need {
    /// No key yet.
    fn default() -> Self {
        Need::Keys(Keys::default())
    }
}

impl Default for FieldSet {
    fn default() -> Self {
        Self::everything()
    }
}

impl FieldSet {
    /// Every field: records are parsed in full (a run that cannot say what it reads).
    pub fn everything() -> Self {
        Self {
            root: Need::All,
            full: Need::All,
            capture: Capture::default(),
            slots: 0,
            keys: Arc::default(),
        }
    }

    /// No field yet; add what is read with [`FieldSet::add_path`] and [`FieldSet::add_key`].
    pub fn nothing() -> Self {
        Self {
            root: Need::Keys(Keys::default()),
            full: Need::Keys(Keys::default()),
            capture: Capture::default(),
            slots: 0,
            keys: Arc::default(),
        }
    }

    /// Whether records are kept whole.
    pub fn is_everything(&self) -> bool {
        self.root == Need::All
    }

    /// Keeps the whole value at `path` (array indexes keep that part of every element).
    pub fn add_path(&mut self, path: &FieldPath) {
        add_path(&mut self.root, path);
        add_path(&mut self.full, path);
    }

    /// Hands the value at `path` over as a slice of the page in `slot` of the
    /// page's [`Columns`] instead of building it into the record; `false` (and
    /// the path is kept like [`FieldSet::add_path`]) when it cannot be: an
    /// array index on the way, or a record parsed whole.
    pub fn capture_path(&mut self, path: &FieldPath, slot: usize) -> bool {
        let keys = match path.key_only() {
            Some(keys) if !self.is_everything() && !keys.is_empty() => keys,
            _ => {
                self.add_path(path);
                return false;
            }
        };
        add_path(&mut self.full, path);
        let mut node = &mut self.capture;
        for key in keys {
            node.below.push(slot);
            node = node.children.entry(key);
        }
        node.below.push(slot);
        node.slot = Some(slot);
        self.slots = self.slots.max(slot + 1);
        true
    }

    /// Reads the top-level field `key` through [`RecordRef`]: captured from
    /// the page (in the slot a column already captures it in, or a slot of its
    /// own) so that it need not be built into the record, or kept in the
    /// record when it cannot be captured.
    pub fn capture_key(&mut self, key: &str) {
        if self.keys.iter().any(|(k, _)| k == key) {
            return;
        }
        let slot = match self.capture.children.get(key).and_then(|c| c.slot) {
            Some(slot) => slot,
            None => {
                let slot = self.slots;
                if !self.capture_path(&FieldPath::key(key), slot) {
                    return;
                }
                slot
            }
        };
        Arc::make_mut(&mut self.keys).push((key.to_string(), slot));
    }

    /// Keeps the whole top-level field `key`.
    pub fn add_key(&mut self, key: &str) {
        for need in [&mut self.root, &mut self.full] {
            if let Need::Keys(keys) = need {
                *keys.entry(key) = Need::All;
            }
        }
    }

    /// Parses one record's JSON text, building every field of this set
    /// (captured ones included: there is no page to slice).
    pub fn parse_record(&self, json: &str) -> serde_json::Result<Record> {
        if let Some(record) = scan::record(&self.full, json) {
            return Ok(record);
        }
        let mut de = serde_json::Deserializer::from_str(json);
        let record = NeedSeed(&self.full).deserialize(&mut de)?;
        de.end()?;
        Ok(record)
    }

    /// The part of an already parsed record this set keeps: what
    /// [`FieldSet::parse_record`] builds from the same text.
    pub fn prune(&self, record: &Value) -> Value {
        prune(&self.full, record)
    }
}

fn add_path(root: &mut Need, path: &FieldPath) {
    let mut need = root;
    for key in path.keys() {
        match need {
            Need::All => return,
            Need::Keys(keys) => {
                need = keys.entry(key);
            }
        }
    }
    *need = Need::All;
}

fn prune(need: &Need, value: &Value) -> Value {
    match (need, value) {
        (Need::All, v) => v.clone(),
        (Need::Keys(keys), Value::Object(obj)) => Value::Object(
            obj.iter()
                .filter_map(|(k, v)| keys.get(k.as_str()).map(|n| (k.clone(), prune(n, v))))
                .collect(),
        ),
        (need, Value::Array(items)) => Value::Array(items.iter().map(|v| prune(need, v)).collect()),
        (_, v) => v.clone(),
    }
}

struct NeedSeed<'a>(&'a Need);

impl<'de> DeserializeSeed<'de> for NeedSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Need::All => Value::deserialize(d),
            Need::Keys(keys) => d.deserialize_any(Pruned(keys)),
        }
    }
}

/// Builds a value keeping only `keys` of objects (scalars whole, arrays element by element).
#[derive(Clone, Copy)]
struct Pruned<'a>(&'a Keys<Need>);

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(PrunedSeed(self))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeyProbe(self.0))? {
            match key {
                Probe::Number if first => {
                    let text: String = map.next_value()?;
                    return text
                        .parse::<Number>()
                        .map(Value::Number)
                        .map_err(de::Error::custom);
                }
                Probe::Wanted(k, need) => {
                    let v = map.next_value_seed(NeedSeed(need))?;
                    out.insert(k.to_owned(), v);
                }
                Probe::Skip | Probe::Number => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            first = false;
        }
        Ok(Value::Object(out))
    }
}

struct PrunedSeed<'a>(Pruned<'a>);

impl<'de> DeserializeSeed<'de> for PrunedSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self.0)
    }
}

/// What a key of an object is to the pruning parser, decided without allocating.
enum Probe<'a> {
    Wanted(&'a str, &'a Need),
    Skip,
    Number,
}

struct KeyProbe<'a>(&'a Keys<Need>);

impl<'de, 'a> DeserializeSeed<'de> for KeyProbe<'a> {
    type Value = Probe<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Probe<'a>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for KeyProbe<'a> {
    type Value = Probe<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Probe<'a>, E> {
        Ok(match self.0.get_key_value(v) {
            Some((k, need)) => Probe::Wanted(k, need),
            None if v == NUMBER_TOKEN => Probe::Number,
            None => Probe::Skip,
        })
    }
}

/// A list endpoint's answer `{"count": …, "data": [ … ]}`, read in one pass.
#[derive(Debug)]
pub struct DecodedPage {
    /// `count` as sent, if any.
    pub count: Option<Value>,
    /// The records of `data`, each holding only the fields asked for; `None`
    /// when the body has no `data` list.
    pub data: Option<Vec<Record>>,
    /// The body as received, for [`PageSource`].
    pub body: Bytes,
    /// The captured values of every record of `data`, when the fast path read
    /// the page (the serde path builds them into the records instead).
    pub columns: Option<ColumnTable>,
}

/// Reads a list page keeping only `fields` of each record. A syntax error
/// (a garbled or cut-off body) is an error; a valid body of another shape
/// has `data: None`.
pub fn decode_page(fields: &FieldSet, body: &Bytes) -> serde_json::Result<DecodedPage> {
    if let Some((count, data, columns)) = scan::page(fields, body.clone()) {
        return Ok(DecodedPage {
            count,
            data,
            body: body.clone(),
            columns,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = (&mut de)
        .deserialize_any(PageVisitor(&fields.full))
        .and_then(|p| de.end().map(|_| p));
    let (count, data) = match parsed {
        Ok(p) => p,
        // Valid JSON that is not an object: nothing to page.
        Err(e) if e.is_data() => {
            serde_json::from_slice::<IgnoredAny>(body)?;
            (None, None)
        }
        Err(e) => return Err(e),
    };
    Ok(DecodedPage {
        count,
        data,
        body: body.clone(),
        columns: None,
    })
}

struct PageVisitor<'a>(&'a Need);

impl<'de> Visitor<'de> for PageVisitor<'_> {
    type Value = (Option<Value>, Option<Vec<Record>>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with `count` and `data`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut count, mut data) = (None, None);
        while let Some(key) = map.next_key_seed(PageKeySeed)? {
            match key {
                PageKey::Count => count = Some(map.next_value::<Value>()?),
                PageKey::Data => data = map.next_value_seed(DataSeed(self.0))?,
                PageKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((count, data))
    }
}

enum PageKey {
    Count,
    Data,
    Other,
}

struct PageKeySeed;

impl<'de> DeserializeSeed<'de> for PageKeySeed {
    type Value = PageKey;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PageKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for PageKeySeed {
    type Value = PageKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<PageKey, E> {
        Ok(match v {
            "count" => PageKey::Count,
            "data" => PageKey::Data,
            _ => PageKey::Other,
        })
    }
}

/// `data`: a list of records, or anything else (then `None`).
struct DataSeed<'a>(&'a Need);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Option<Vec<Record>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Option<Vec<Record>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(r) = seq.next_element_seed(NeedSeed(self.0))? {
            records.push(r);
        }
        Ok(Some(records))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Where a captured value lies in the page: a byte range, or nothing (`end == 0`:
/// missing; no JSON value is empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::extract) struct Span {
    pub(in crate::extract) start: u32,
    pub(in crate::extract) end: u32,
}

/// The captured values of a page's records: `slots` spans per `data` element.
#[derive(Debug, Clone, Default)]
pub struct ColumnTable {
    /// The page: the scanner validated exactly these bytes as UTF-8 before
    /// making a table of spans into them (see [`Columns::get`]).
    body: Bytes,
    slots: usize,
    spans: Vec<Span>,
    /// The top-level keys captured for [`RecordRef`], with their slots.
    keys: Arc<Vec<(String, usize)>>,
}

impl ColumnTable {
    /// A table for the page `body`, which must be the text the scanner validated and reads.
    pub(in crate::extract) fn new(body: Bytes, fields: &FieldSet, records: usize) -> Self {
        Self {
            body,
            slots: fields.slots,
            spans: Vec::with_capacity(fields.slots * records),
            keys: fields.keys.clone(),
        }
    }

    /// Starts the next record's row, every slot missing; returns its first index.
    pub(in crate::extract) fn push_record(&mut self) -> usize {
        let at = self.spans.len();
        self.spans.resize(at + self.slots, Span::default());
        at
    }

    pub(in crate::extract) fn set(&mut self, at: usize, slot: usize, span: Span) {
        self.spans[at + slot] = span;
    }

    /// The captured values of the page's `i`-th `data` element.
    pub fn record(&self, i: usize) -> Option<Columns<'_>> {
        let at = i.checked_mul(self.slots)?;
        Some(Columns {
            body: &self.body,
            spans: self.spans.get(at..at + self.slots)?,
            keys: &self.keys,
        })
    }
}

/// One record's captured values: the JSON text of each slot's value, as sent.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    body: &'a [u8],
    spans: &'a [Span],
    keys: &'a [(String, usize)],
}

impl<'a> Columns<'a> {
    /// The JSON text of the value in `slot`; `None` when the record has none there.
    pub fn get(&self, slot: usize) -> Option<&'a str> {
        let span = *self.spans.get(slot)?;
        if span.end == 0 {
            return None;
        }
        let bytes = self.body.get(span.start as usize..span.end as usize)?;
        // SAFETY: a table's body was validated whole as UTF-8 by the scanner
        // that made its spans (a table is built and filled only inside
        // `extract`: its fields are private, its constructor and setters
        // `pub(in crate::extract)`), and every span starts and ends next to an
        // ASCII byte of JSON's grammar, so it is UTF-8 on its own. Checking again
        // cost ~3% of a run.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }

    /// Asks the CPU to start loading this record's captured values (the
    /// page was read on another thread).
    #[inline]
    pub fn prefetch(&self) {
        for span in self.spans.iter().filter(|s| s.end != 0) {
            if let Some(byte) = self.body.get(span.start as usize) {
                crate::common::prefetch::line(byte);
            }
        }
    }

    /// The JSON text of the top-level field `key` when it was captured
    /// ([`FieldSet::capture_key`]): `Some(None)` when the record has none.
    fn key(&self, key: &str) -> Option<Option<&'a str>> {
        let (_, slot) = self.keys.iter().find(|(k, _)| k == key)?;
        Some(self.get(*slot))
    }
}

/// A record as a run reads it: its tree, and the values captured from its
/// page, where the top-level fields read through [`FieldSet::capture_key`]
/// are found when the tree does not hold them.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    tree: &'a Record,
    columns: Option<Columns<'a>>,
}

/// A record's `id`: a text or a number (as its JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordId<'a> {
    /// A JSON string.
    Text(Cow<'a, str>),
    /// A JSON number, exactly as written.
    Number(&'a str),
}

/// A top-level field: in the tree, or JSON text captured from the page.
enum Top<'a> {
    Tree(&'a Value),
    Text(&'a str),
}

impl<'a> RecordRef<'a> {
    /// The record `tree`, with `columns` when its page was read with a capture.
    pub fn new(tree: &'a Record, columns: Option<Columns<'a>>) -> Self {
        Self { tree, columns }
    }

    /// The top-level field `key`, `None` when missing or null.
    fn top(&self, key: &str) -> Option<Top<'a>> {
        match self.columns.and_then(|c| c.key(key)) {
            Some(text) => text.filter(|t| *t != "null").map(Top::Text),
            None => self.tree.get(key).filter(|v| !v.is_null()).map(Top::Tree),
        }
    }

    /// The top-level field `key` when it is a string.
    pub fn str(&self, key: &str) -> Option<Cow<'a, str>> {
        match self.top(key)? {
            Top::Tree(v) => v.as_str().map(Cow::Borrowed),
            Top::Text(t) => json_string(t),
        }
    }

    /// The record's `id` when it is a text or a number.
    pub fn id(&self) -> Option<RecordId<'a>> {
        self.top("id")?.as_id()
    }

    /// The record's `id` as text, for messages, de-duplication and the
    /// write-back: a text as it reads, anything else as compact JSON.
    pub fn id_text(&self) -> String {
        match self.top("id") {
            None => "<no id>".to_string(),
            Some(top) => match top.as_id() {
                Some(RecordId::Text(s)) => s.into_owned(),
                Some(RecordId::Number(n)) => n.to_string(),
                // An object, a list or a boolean: compact, as the tree prints it.
                None => match top {
                    Top::Tree(v) => v.to_string(),
                    Top::Text(t) => serde_json::from_str::<Value>(t)
                        .map_or_else(|_| t.to_string(), |v| v.to_string()),
                },
            },
        }
    }
}

impl<'a> Top<'a> {
    /// The value as an id, when it is a text or a number.
    fn as_id(&self) -> Option<RecordId<'a>> {
        match *self {
            Top::Tree(Value::String(s)) => Some(RecordId::Text(Cow::Borrowed(s))),
            Top::Tree(Value::Number(n)) => Some(RecordId::Number(n.as_str())),
            Top::Tree(_) => None,
            Top::Text(t) if t.starts_with('"') => json_string(t).map(RecordId::Text),
            Top::Text(t)
                if t.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) =>
            {
                Some(RecordId::Number(t))
            }
            Top::Text(_) => None,
        }
    }
}

/// The content of a JSON string's text without escapes (`None` when it is
/// not a string or has escapes).
pub(crate) fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    // Without an early exit the loop is vectorised; captured strings are
    // short, where `contains` (memchr) cost more in its setup than in its search.
    let escaped = inner.bytes().fold(false, |seen, b| seen | (b == b'\\'));
    (!escaped).then_some(inner)
}

/// The content of a captured JSON string's text, escapes read (`None` when it is not a string).
fn json_string(text: &str) -> Option<Cow<'_, str>> {
    match plain_string(text) {
        Some(plain) => Some(Cow::Borrowed(plain)),
        None if text.starts_with('"') => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
        None => None,
    }
}

/// The page a batch of records came from, so a record can be shown as the server sent it.
#[derive(Debug)]
pub struct PageSource {
    body: Bytes,
    /// For each record passed on, its place in the page's `data` list.
    positions: Vec<u32>,
    /// Byte ranges of the `data` elements, found when first asked for (rare: quarantine).
    spans: OnceLock<Option<Vec<Range<usize>>>>,
    /// The captured values of the page's `data` elements.
    columns: Option<ColumnTable>,
}

impl PageSource {
    /// The page `body`, whose `data[positions[i]]` is the `i`-th record passed on.
    pub fn new(body: Bytes, positions: Vec<u32>) -> Self {
        Self {
            body,
            positions,
            spans: OnceLock::new(),
            columns: None,
        }
    }

    /// The same page with the captured values of its `data` elements.
    pub fn with_columns(mut self, columns: Option<ColumnTable>) -> Self {
        self.columns = columns;
        self
    }

    /// The captured values of the `i`-th record passed on, when the page was read with a capture.
    pub fn columns(&self, i: usize) -> Option<Columns<'_>> {
        self.columns
            .as_ref()?
            .record(*self.positions.get(i)? as usize)
    }

    /// The JSON text of the `i`-th record passed on, exactly as the server sent it.
    pub fn original(&self, i: usize) -> Option<&str> {
        let at = *self.positions.get(i)? as usize;
        let spans = self.spans.get_or_init(|| data_spans(&self.body)).as_ref()?;
        let range = spans.get(at)?.clone();
        std::str::from_utf8(&self.body[range]).ok()
    }
}

fn data_spans(body: &[u8]) -> Option<Vec<Range<usize>>> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
    }
    let text = std::str::from_utf8(body).ok()?;
    let page: Data<'_> = serde_json::from_str(text).ok()?;
    let base = text.as_ptr() as usize;
    Some(
        page.data
            .iter()
            .map(|r| {
                let start = r.get().as_ptr() as usize - base;
                start..start + r.get().len()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(paths: &[&str]) -> FieldSet {
        let mut s = FieldSet::nothing();
        for p in paths {
            s.add_path(&FieldPath::parse(p).unwrap());
        }
        s
    }

    #[test]
    fn only_the_named_paths_are_built() {
        let text = r#"{"id":"tx1","amount":12.30,"employee":{"user":{"email":"a@b","name":"A"},"code":7},
            "locations":[{"city":"Pune","x":1},{"city":"Goa"}],"big":{"deep":[1,2,3]}}"#;
        let s = set(&["id", "amount", "employee.user.email", "locations[1].city"]);
        let r = s.parse_record(text).unwrap();
        let want: Value = serde_json::from_str(
            r#"{"id":"tx1","amount":12.30,"employee":{"user":{"email":"a@b"}},
                "locations":[{"city":"Pune"},{"city":"Goa"}]}"#,
        )
        .unwrap();
        assert_eq!(r, want);
        assert_eq!(r["amount"].to_string(), "12.30", "numbers keep their text");
        let full: Value = serde_json::from_str(text).unwrap();
        assert_eq!(s.prune(&full), r);
    }

    #[test]
    fn a_path_into_a_scalar_keeps_the_scalar_as_the_full_parse_would() {
        let text = r#"{"a": 1.50, "b": "x", "c": null, "d": [1, "y", null]}"#;
        let s = set(&["a.x", "b.y", "c.z", "d.e"]);
        let full: Value = serde_json::from_str(text).unwrap();
        let r = s.parse_record(text).unwrap();
        assert_eq!(r, s.prune(&full));
        assert_eq!(r["a"].to_string(), "1.50");
    }

    /// The records of `body` read with `fields`, and the page they came from
    /// (every record passed on, with the captured values).
    fn read_captured(fields: &FieldSet, body: &Bytes) -> (Vec<Value>, PageSource) {
        let page = decode_page(fields, body).unwrap();
        let data = page.data.unwrap();
        let source =
            PageSource::new(page.body, (0..data.len() as u32).collect()).with_columns(page.columns);
        (data, source)
    }

    #[test]
    fn captured_values_are_the_values_the_tree_holds_at_their_paths() {
        // Repeated keys (the last wins, also over a deeper capture), nulls,
        // lists and scalars on the way, escapes, and a path also kept whole.
        let body = Bytes::from_static(
            br#"{"data": [
            {"id": "a", "employee": {"user": {"email": "first"}, "code": 1}, "employee": null},
            {"id": "b", "employee": {"code": 2}, "employee": {"user": {"email": "x\"y"}}},
            {"id": "c", "employee": [{"user": {"email": "in a list"}}], "amount": 1.50},
            {"id": "d", "employee": {"user": "scalar", "code": {"n": [1, 2]}}, "amount": -0},
            {"id": "e", "employee": {"user": {"email": "kept", "email": "last"}, "code": null}},
            "not a record",
            {"id": "f", "employee": {"user": {}}, "amount": 1e3, "id": "g"}
        ], "count": 7}"#,
        );
        let paths = ["employee.user.email", "employee.code", "amount", "id"];
        let mut s = FieldSet::nothing();
        s.add_key("id");
        for (slot, p) in paths.iter().enumerate() {
            assert!(s.capture_path(&FieldPath::parse(p).unwrap(), slot));
        }
        let (data, source) = read_captured(&s, &body);
        let full: Value = serde_json::from_slice(&body).unwrap();
        for (i, record) in full["data"].as_array().unwrap().iter().enumerate() {
            let cols = source.columns(i).expect("read with a capture");
            for (slot, p) in paths.iter().enumerate() {
                let want = FieldPath::parse(p).unwrap().lookup(record);
                let got = cols
                    .get(slot)
                    .map(|t| serde_json::from_str::<Value>(t).unwrap())
                    .filter(|v| !v.is_null());
                assert_eq!(got.as_ref(), want, "record {i}, {p}");
            }
            // Only `id` is built into the record.
            assert_eq!(data[i].get("id"), record.get("id"), "record {i}");
            assert!(data[i].get("employee").is_none() && data[i].get("amount").is_none());
        }
        assert_eq!(source.columns(4).unwrap().get(2), None);
        assert_eq!(source.columns(3).unwrap().get(2), Some("-0"), "exact text");
    }

    #[test]
    fn a_page_the_fast_path_cannot_read_builds_the_captured_paths_into_the_records() {
        let mut s = FieldSet::nothing();
        assert!(s.capture_path(&FieldPath::parse("a.b").unwrap(), 0));
        assert!(!s.capture_path(&FieldPath::parse("c[0].d").unwrap(), 1));
        // An escaped key sends the page to the serde path: no capture, whole values.
        let body = Bytes::from_static(br#"{"data": [{"a": {"b": 1.50}, "\u0063": [{"d": 2}]}]}"#);
        let page = decode_page(&s, &body).unwrap();
        assert!(page.columns.is_none());
        assert_eq!(page.data.unwrap()[0]["a"]["b"].to_string(), "1.50");
        // A record parsed whole captures nothing.
        let mut all = FieldSet::everything();
        assert!(!all.capture_path(&FieldPath::parse("a.b").unwrap(), 0));
    }

    #[test]
    fn records_whose_keys_change_places_or_names_are_read_as_the_tree_reads_them() {
        // Keys are remembered by place from one record to the next: a key of
        // the same length but another name, a key moved, added or left out,
        // and objects of two kinds with the same keys must not mix.
        let body = Bytes::from_static(
            br#"{"data": [
            {"id": "1", "am": 1, "emp": {"code": "a", "name": "A"}, "mgr": {"code": "m1"}},
            {"ix": "2", "am": 2, "emp": {"name": "B", "code": "b"}, "mgr": {"code": "m2"}},
            {"am": 3, "id": "3", "mgr": {"code": "m3"}, "emp": {"cod": "c", "code": "c2"}},
            {"id": "4", "am": 4, "emp": {"code": "d", "name": "D"}, "mgr": {"cods": "x"}},
            {"id": "5", "am": 5, "emp": {"code": "e", "name": "E"}, "mgr": {"code": "m5"}, "am": 55}
        ]}"#,
        );
        let paths = ["emp.code", "emp.name", "mgr.code", "am"];
        let mut s = FieldSet::nothing();
        s.add_key("id");
        s.add_path(&FieldPath::parse("mgr.code").unwrap());
        for (slot, p) in paths.iter().enumerate() {
            assert!(s.capture_path(&FieldPath::parse(p).unwrap(), slot));
        }
        let (data, source) = read_captured(&s, &body);
        let full: Value = serde_json::from_slice(&body).unwrap();
        for (i, record) in full["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                data[i],
                s.prune(record).as_object().map_or(Value::Null, |o| {
                    let mut o = o.clone();
                    o.retain(|k, _| k == "id" || k == "mgr");
                    Value::Object(o)
                }),
                "record {i}"
            );
            let cols = source.columns(i).unwrap();
            for (slot, p) in paths.iter().enumerate() {
                let want = FieldPath::parse(p)
                    .unwrap()
                    .lookup(record)
                    .map(Value::to_string);
                assert_eq!(cols.get(slot).map(str::to_string), want, "record {i}, {p}");
            }
        }
    }

    #[test]
    fn the_key_filter_never_turns_a_wanted_key_away() {
        let mut keys: Keys<u32> = Keys::default();
        let wanted: Vec<String> = (0..300)
            .map(|i| format!("k{i}_{}", "x".repeat(i % 17)))
            .collect();
        for (i, k) in wanted.iter().enumerate() {
            *keys.entry(k) = i as u32;
        }
        *keys.entry("") = 999;
        for (i, k) in wanted.iter().enumerate() {
            assert_eq!(keys.get(k), Some(&(i as u32)), "{k}");
        }
        assert_eq!(keys.get(""), Some(&999));
        assert_eq!(keys.get("k0_ "), None);
        assert_eq!(keys.get("unwanted"), None);
    }

    #[test]
    fn pages_keep_count_and_skip_other_keys() {
        let body = Bytes::from_static(
            br#"{"offset": 0, "data": [{"id": 1, "x": {"y": 2}}, {"id": "b"}], "count": 12}"#,
        );
        let mut s = FieldSet::nothing();
        s.add_key("id");
        let p = decode_page(&s, &body).unwrap();
        assert_eq!(p.count, Some(json!(12)));
        assert_eq!(p.data, Some(vec![json!({"id": 1}), json!({"id": "b"})]));
        let src = PageSource::new(p.body, vec![1, 0]);
        assert_eq!(src.original(0), Some(r#"{"id": "b"}"#));
        assert_eq!(src.original(1), Some(r#"{"id": 1, "x": {"y": 2}}"#));
        assert_eq!(src.original(2), None);
    }

    #[test]
    fn bodies_of_another_shape_have_no_data_and_garbled_ones_fail() {
        let s = FieldSet::everything();
        for body in [&b"[1, 2]"[..], b"{\"data\": {\"a\": 1}}", b"\"x\""] {
            let p = decode_page(&s, &Bytes::copy_from_slice(body)).unwrap();
            assert!(p.data.is_none(), "{}", String::from_utf8_lossy(body));
        }
        let cut = Bytes::from_static(br#"{"count": 3, "data": [{"id": 1}, {"id""#);
        assert!(decode_page(&s, &cut).unwrap_err().is_eof());
        let garbled = Bytes::from_static(br#"{"count": 3, "data": [{"id": 1}} "#);
        assert!(decode_page(&s, &garbled).unwrap_err().is_syntax());
    }
}
