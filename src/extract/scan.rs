//! A byte-level reader for pages and records: the fast path of [`super::decode_page`].
//!
//! serde_json's visitor machinery costs more than the reading itself on a page
//! where most bytes are skipped: every key goes through a visitor and UTF-8
//! validation, every skipped value through `IgnoredAny`. This reader validates
//! the page's UTF-8 once, walks the JSON grammar strictly over bytes (sixteen
//! at a time inside strings), and builds only the wanted values. The records
//! of a page share their shape, so a key is first compared, as bytes, with
//! `"key":` of the key the previous record had at its place, and scanned only
//! when it differs. Anything unusual
//! — a syntax error, a number or a value under [`Need::All`] that is not a
//! plain scalar, the private number key — hands the page back (`None`) to the
//! serde path, which then reports the error or builds the value exactly as
//! before. So this path only ever decides the common case, and errors keep
//! serde_json's messages.

use serde_json::{Map, Value};

use super::{Capture, ColumnTable, FieldSet, Keys, NUMBER_TOKEN, Need, Span};
use crate::record::Record;

/// Nesting deeper than serde_json's own limit goes to the serde path (which rejects it).
const MAX_DEPTH: usize = 120;

/// `HEAD_MASK[n]` keeps the first `n` bytes of a little-endian `u128` (a
/// table: a variable 128-bit shift costs a dozen instructions).
const HEAD_MASK: [u128; 17] = {
    let mut masks = [u128::MAX; 17];
    let mut n = 0;
    while n < 16 {
        masks[n] = (1u128 << (8 * n)) - 1;
        n += 1;
    }
    masks
};

/// Keys up to this long are predicted with their quotes and the `:` after
/// them in one 32-byte comparison (two 16-byte words).
const SHORT_KEY: usize = 29;

/// Why the fast path gave up; the serde path takes over.
struct Bail;

type R<T> = Result<T, Bail>;

/// What a key resolves to: the kept key and what to keep of its value, the capture below it.
type Resolved<'f> = (Option<(&'f String, &'f Need)>, Option<&'f Capture>);

/// What [`page`] reads: `count`, the records, and their captured values.
type PageParts = (Option<Value>, Option<Vec<Record>>, Option<ColumnTable>);

/// Reads `{"count": …, "data": [ … ]}` building `fields.root` of each record
/// and capturing `fields.capture`; `None` when the body is not such a page or
/// not valid JSON.
pub(super) fn page(fields: &FieldSet, body: bytes::Bytes) -> Option<PageParts> {
    let text = simdutf8::basic::from_utf8(&body).ok()?;
    let mut s = Scanner::new(text);
    // Spans are u32 offsets; a page that large is read without a capture.
    let capture =
        (fields.slots > 0 && u32::try_from(body.len()).is_ok()).then_some(&fields.capture);
    if capture.is_some() {
        s.cols = Some(ColumnTable::new(body.clone(), fields, 200));
    }
    // Without a capture the captured fields are built into the records, as the serde path does.
    let need = if capture.is_some() {
        &fields.root
    } else {
        &fields.full
    };
    let (count, data) = s.page(need, capture).ok()?;
    Some((count, data, s.cols))
}

/// One record's JSON text keeping `need`; `None` hands it to the serde path.
pub(super) fn record(need: &Need, text: &str) -> Option<Record> {
    let mut s = Scanner::new(text);
    s.ws();
    let v = s.value(need, 0).ok()?;
    s.ws();
    (s.i == s.b.len()).then_some(v)
}

/// What the keys of one kind of object resolved to in the previous record,
/// by position: the records of a page share their key order, so a key is
/// usually compared with the one seen at its place instead of looked up.
struct Shape<'f> {
    /// The addresses of the object's `Keys` and `Capture` (0: none).
    node: (usize, usize),
    seen: Vec<Seen<'f>>,
}

#[derive(Clone, Copy)]
struct Seen<'f> {
    /// The key's first sixteen bytes (zeros after its end): most keys are
    /// shorter, and compare in one step.
    head: u128,
    /// A short key as compact JSON has it before its value, `"key":`
    /// (zeros after), as two 16-byte words for [`Scanner::predicted`].
    quoted: (u128, u128),
    /// The key's text in the page.
    start: u32,
    len: u32,
    keep: Option<(&'f String, &'f Need)>,
    below: Option<&'f Capture>,
}

/// An object key's place in the page and its first sixteen bytes (zeros after its end).
#[derive(Clone, Copy)]
struct Key {
    start: usize,
    len: usize,
    head: u128,
}

struct Scanner<'a, 'f> {
    b: &'a [u8],
    /// The same bytes, known to be UTF-8.
    text: &'a str,
    i: usize,
    /// Captured values of the records read so far, when capturing.
    cols: Option<ColumnTable>,
    /// Where the current record's row starts in `cols`.
    row: usize,
    shapes: Vec<Shape<'f>>,
}

impl<'a, 'f> Scanner<'a, 'f> {
    fn new(text: &'a str) -> Self {
        Scanner {
            b: text.as_bytes(),
            text,
            i: 0,
            cols: None,
            row: 0,
            shapes: Vec::new(),
        }
    }

    /// The shape memo of objects read with `keys` and `capture`.
    fn shape(&mut self, keys: Option<&'f Keys<Need>>, capture: Option<&'f Capture>) -> usize {
        let node = (
            keys.map_or(0, |k| k as *const _ as usize),
            capture.map_or(0, |c| c as *const _ as usize),
        );
        match self.shapes.iter().position(|s| s.node == node) {
            Some(at) => at,
            None => {
                self.shapes.push(Shape {
                    node,
                    seen: Vec::new(),
                });
                self.shapes.len() - 1
            }
        }
    }

    /// What `key` (the `j`-th of an object whose memo is `seen`) resolves
    /// to: what the previous record's `j`-th key resolved to when it is the
    /// same text, else `look(key text)`.
    #[inline(always)]
    fn resolve(
        &self,
        seen: &mut Vec<Seen<'f>>,
        j: usize,
        key: Key,
        look: impl FnOnce(&str) -> Resolved<'f>,
    ) -> Resolved<'f> {
        if let Some(s) = seen.get(j)
            && s.head == key.head
            && s.len as usize == key.len
            && (key.len <= 16 || self.same_tail(s.start as usize, key.start, key.len))
        {
            return (s.keep, s.below);
        }
        // SAFETY: `text` is UTF-8 and both ends of the key are next to an
        // ASCII quote, so they are char boundaries within it.
        let text = unsafe { self.text.get_unchecked(key.start..key.start + key.len) };
        let (keep, below) = look(text);
        let quoted = Self::quoted(text.as_bytes());
        let entry = Seen {
            head: key.head,
            quoted,
            start: key.start as u32,
            len: key.len as u32,
            keep,
            below,
        };
        if j < seen.len() {
            seen[j] = entry;
        } else if j == seen.len() {
            seen.push(entry);
        }
        (keep, below)
    }

    /// The key at the cursor and what it resolves to, when it is the key the
    /// previous record had at this place (`seen`): read by comparing bytes,
    /// not scanned. That key was read and checked then (no escape, control
    /// character or quote inside, not the private number key), so the same
    /// bytes between quotes are a key as valid. The cursor is left on the value.
    #[inline(always)]
    fn predicted(&mut self, seen: Option<&Seen<'f>>) -> Option<Resolved<'f>> {
        let s = seen?;
        self.known_key(s.quoted, s.start, s.len)
            .then_some((s.keep, s.below))
    }

    /// Whether the bytes at the cursor are a key read before: `len` bytes
    /// at `start` in the page, or for a short key `quoted` (`"key":`); if
    /// so the cursor is moved past the key and its `:` to the value.
    #[inline(always)]
    fn known_key(&mut self, quoted: (u128, u128), start: u32, len: u32) -> bool {
        let n = len as usize;
        let at = self.i;
        if n <= SHORT_KEY {
            // `"key":` and whatever follows, compared up to the colon: one
            // word for most keys, two for the rest.
            let word = |at: usize| {
                self.b
                    .get(at..at + 16)
                    .map(|w| u128::from_le_bytes(w.try_into().expect("16 bytes")))
            };
            let m = n + 3;
            let same = if m <= 16 {
                word(at).is_some_and(|lo| lo & HEAD_MASK[m] == quoted.0)
            } else {
                word(at + 16).is_some_and(|hi| {
                    hi & HEAD_MASK[m - 16] == quoted.1 && word(at) == Some(quoted.0)
                })
            };
            if !same {
                return false;
            }
            self.i = at + n + 3;
            self.ws();
            true
        } else {
            // (A never-matching entry has `len` u32::MAX: no such slice.)
            let Some(text) = self.b.get(at..at + n + 2) else {
                return false;
            };
            if text[0] != b'"' || text[n + 1] != b'"' || !self.same_bytes(at + 1, start as usize, n)
            {
                return false;
            }
            self.i = at + n + 2;
            self.colon().is_ok()
        }
    }

    /// `"key":` (zeros after) as two 16-byte words, for a key of at most
    /// [`SHORT_KEY`] bytes; zeros for a longer one (compared otherwise).
    fn quoted(key: &[u8]) -> (u128, u128) {
        let n = key.len();
        if n > SHORT_KEY {
            return (0, 0);
        }
        let mut quoted = [0u8; 32];
        quoted[0] = b'"';
        quoted[1..=n].copy_from_slice(key);
        quoted[n + 1] = b'"';
        quoted[n + 2] = b':';
        let word = |k: usize| {
            u128::from_le_bytes(quoted[16 * k..16 * k + 16].try_into().expect("16 bytes"))
        };
        (word(0), word(1))
    }

    /// Whether the `n` bytes (at least eight, within the page) at `a` and `b` are equal.
    #[inline(always)]
    fn same_bytes(&self, a: usize, b: usize, n: usize) -> bool {
        let w8 = |at: usize| u64::from_le_bytes(self.b[at..at + 8].try_into().expect("8 bytes"));
        let w16 =
            |at: usize| u128::from_le_bytes(self.b[at..at + 16].try_into().expect("16 bytes"));
        match n {
            8..16 => w8(a) == w8(b) && w8(a + n - 8) == w8(b + n - 8),
            16..=32 => w16(a) == w16(b) && w16(a + n - 16) == w16(b + n - 16),
            _ => self.b[a..a + n] == self.b[b..b + n],
        }
    }

    /// Whether the `len` bytes at `a` and `b` (two keys of at least 16 bytes
    /// whose first 16 are equal) are equal: their last sixteen bytes settle
    /// keys up to 32 bytes long.
    #[inline]
    fn same_tail(&self, a: usize, b: usize, len: usize) -> bool {
        let last16 = |at: usize| {
            u128::from_le_bytes(
                self.b[at + len - 16..at + len]
                    .try_into()
                    .expect("16 bytes"),
            )
        };
        last16(a) == last16(b) && (len <= 32 || self.b[a + 16..a + len] == self.b[b + 16..b + len])
    }

    fn page(
        &mut self,
        need: &'f Need,
        capture: Option<&'f Capture>,
    ) -> R<(Option<Value>, Option<Vec<Record>>)> {
        let (mut count, mut data) = (None, None);
        self.ws();
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                let key = self.member_key()?;
                match key {
                    "count" => {
                        let start = self.i;
                        self.skip(0)?;
                        count = Some(parse_span(&self.text[start..self.i])?);
                    }
                    "data" if self.peek() == Some(b'[') => {
                        data = Some(self.records(need, capture)?)
                    }
                    // Data that is not a list: the serde path decides what that means.
                    "data" => return Err(Bail),
                    _ => self.skip(0)?,
                }
                if self.after_member(b'}')? {
                    break;
                }
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return Err(Bail);
        }
        Ok((count, data))
    }

    fn records(&mut self, need: &'f Need, capture: Option<&'f Capture>) -> R<Vec<Record>> {
        self.i += 1; // '['
        let mut out = Vec::with_capacity(256);
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            if let Some(cols) = self.cols.as_mut() {
                self.row = cols.push_record();
            }
            let record = match (need, self.peek(), capture) {
                (Need::Keys(keys), Some(b'{'), Some(c)) => self.object(keys, 1, Some(c))?,
                _ => self.value(need, 1)?,
            };
            out.push(record);
            if self.after_member(b']')? {
                return Ok(out);
            }
        }
    }

    /// After a member or element: `,` (then `false`, whitespace after it
    /// left to the next key or value) or the closing byte (then `true`).
    #[inline(always)]
    fn after_member(&mut self, close: u8) -> R<bool> {
        match self.peek_past_ws() {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Bail),
        }
    }

    /// The value at the cursor, keeping `need` of it.
    fn value(&mut self, need: &'f Need, depth: usize) -> R<Value> {
        if depth > MAX_DEPTH {
            return Err(Bail);
        }
        match (need, self.peek()) {
            (Need::Keys(keys), Some(b'{')) => self.object(keys, depth, None),
            (Need::Keys(_), Some(b'[')) => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(need, depth + 1)?);
                    if self.after_member(b']')? {
                        return Ok(Value::Array(items));
                    }
                }
            }
            (Need::All, Some(b'{' | b'[')) => {
                let start = self.i;
                self.skip(depth)?;
                parse_span(&self.text[start..self.i])
            }
            _ => self.scalar(),
        }
    }

    /// An object keeping `keys` of it, and capturing what `capture` names below it.
    fn object(
        &mut self,
        keys: &'f Keys<Need>,
        depth: usize,
        capture: Option<&'f Capture>,
    ) -> R<Value> {
        self.i += 1; // '{'
        let mut out = Map::with_capacity(keys.len());
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Object(out));
        }
        let shape = self.shape(Some(keys), capture);
        // The memo is taken while the object is read (an error drops the scanner).
        let mut seen = std::mem::take(&mut self.shapes[shape].seen);
        let mut j = 0;
        let mut met = 0;
        loop {
            let (keep, below) = match self.predicted(seen.get(j)) {
                Some(known) => known,
                None => {
                    let key = self.key_head()?;
                    self.colon()?;
                    self.resolve(&mut seen, j, key, |key| {
                        (
                            keys.get_key_value(key),
                            capture.and_then(|c| c.children.get(key)),
                        )
                    })
                }
            };
            j += 1;
            if let Some(c) = below {
                self.uncapture(c, &mut met);
            }
            match (keep, below) {
                (Some((k, need)), None) => {
                    let v = self.value(need, depth + 1)?;
                    out.insert(k.clone(), v);
                }
                (Some((k, need)), Some(c)) => {
                    let v = self.value_and_capture(need, c, depth + 1)?;
                    out.insert(k.clone(), v);
                }
                (None, Some(c)) => self.capture(c, depth + 1)?,
                (None, None) => self.skip(depth + 1)?,
            }
            if self.after_member(b'}')? {
                self.shapes[shape].seen = seen;
                return Ok(Value::Object(out));
            }
        }
    }

    /// A value both kept (`need`) and captured (`capture`).
    fn value_and_capture(
        &mut self,
        need: &'f Need,
        capture: &'f Capture,
        depth: usize,
    ) -> R<Value> {
        if depth > MAX_DEPTH {
            return Err(Bail);
        }
        let start = self.i;
        let value = match (need, self.peek()) {
            (Need::Keys(keys), Some(b'{')) => self.object(keys, depth, Some(capture))?,
            (Need::All, Some(b'{')) if !capture.children.is_empty() => {
                self.capture_object(capture, depth)?;
                parse_span(&self.text[start..self.i])?
            }
            // Scalars and arrays: nothing is captured inside a list.
            _ => self.value(need, depth)?,
        };
        self.captured(capture, start);
        Ok(value)
    }

    /// Steps over a value, capturing what `capture` names in it.
    fn capture(&mut self, capture: &'f Capture, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Bail);
        }
        let start = self.i;
        if !capture.children.is_empty() && self.peek() == Some(b'{') {
            self.capture_object(capture, depth)?;
        } else {
            self.skip(depth)?;
        }
        self.captured(capture, start);
        Ok(())
    }

    /// Steps over an object (at its `{`), capturing the keys `capture` names.
    fn capture_object(&mut self, capture: &'f Capture, depth: usize) -> R<()> {
        self.i += 1; // '{'
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let shape = self.shape(None, Some(capture));
        let mut seen = std::mem::take(&mut self.shapes[shape].seen);
        let mut j = 0;
        let mut met = 0;
        loop {
            let (_, below) = match self.predicted(seen.get(j)) {
                Some(known) => known,
                None => {
                    let key = self.key_head()?;
                    self.colon()?;
                    self.resolve(&mut seen, j, key, |key| (None, capture.children.get(key)))
                }
            };
            j += 1;
            match below {
                Some(c) => {
                    self.uncapture(c, &mut met);
                    self.capture(c, depth + 1)?;
                }
                None => self.skip(depth + 1)?,
            }
            if self.after_member(b'}')? {
                self.shapes[shape].seen = seen;
                return Ok(());
            }
        }
    }

    /// Records the value from `start` to the cursor in `capture`'s slot.
    #[inline]
    fn captured(&mut self, capture: &Capture, start: usize) {
        if let (Some(slot), Some(cols)) = (capture.slot, self.cols.as_mut()) {
            let span = Span {
                start: start as u32,
                end: self.i as u32,
            };
            cols.set(self.row, slot, span);
        }
    }

    /// Forgets what an earlier occurrence of the same key in this object
    /// captured: the last one wins, as in the tree. `met` marks the object's
    /// captured keys read so far by their first slot (the keys of one object
    /// capture disjoint slots, each slot being captured at one path); a key
    /// met for the first time has nothing to forget, as its slots are still
    /// empty.
    #[inline(always)]
    fn uncapture(&mut self, capture: &Capture, met: &mut u64) {
        if let Some(&slot) = capture.below.first()
            && slot < 64
            && *met & 1 << slot == 0
        {
            *met |= 1 << slot;
            return;
        }
        if let Some(cols) = self.cols.as_mut() {
            for &slot in &capture.below {
                cols.set(self.row, slot, Span::default());
            }
        }
    }

    /// A string, number or literal, built as serde_json builds it.
    fn scalar(&mut self) -> R<Value> {
        match self.peek() {
            Some(b'"') => {
                let start = self.i;
                if self.string()? {
                    parse_span(&self.text[start..self.i])
                } else {
                    Ok(Value::String(self.text[start + 1..self.i - 1].to_owned()))
                }
            }
            Some(b't') => self.literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.number()?;
                parse_span(&self.text[start..self.i])
            }
            _ => Err(Bail),
        }
    }

    /// A member's key and the `:` after it, the cursor left on the value.
    #[inline(always)]
    fn member_key(&mut self) -> R<&'a str> {
        let key = self.key()?;
        self.colon()?;
        Ok(key)
    }

    /// An object key at the cursor, the cursor left after its closing quote.
    /// A key without escapes is read from its first 16-byte block (and the
    /// string scan after it when longer); any other goes through [`Self::key`].
    #[inline(always)]
    fn key_head(&mut self) -> R<Key> {
        self.at_quote()?;
        let start = self.i + 1;
        #[cfg(target_arch = "x86_64")]
        if let Some(block) = self.b.get(start..start + 16) {
            let (specials, quotes) = specials16(block);
            let bytes = u128::from_le_bytes(block.try_into().expect("16 bytes"));
            if specials == 0 {
                // Sixteen plain bytes: the rest as any string's, as if it
                // started just before them (`string` reads from `i + 1`).
                self.i = start + 15;
                if self.string()? {
                    return Err(Bail);
                }
                let len = self.i - 1 - start;
                if len == NUMBER_TOKEN.len()
                    && &self.b[start..start + len] == NUMBER_TOKEN.as_bytes()
                {
                    return Err(Bail);
                }
                return Ok(Key {
                    start,
                    len,
                    head: bytes,
                });
            }
            // The lowest special byte is the closing quote: no escape, no control character.
            if specials & specials.wrapping_neg() & quotes != 0 {
                let len = specials.trailing_zeros() as usize;
                self.i = start + len + 1;
                let head = bytes & HEAD_MASK[len & 15];
                return Ok(Key { start, len, head });
            }
        }
        let key = self.key()?;
        let mut first = [0u8; 16];
        let n = key.len().min(16);
        first[..n].copy_from_slice(&key.as_bytes()[..n]);
        Ok(Key {
            start,
            len: key.len(),
            head: u128::from_le_bytes(first),
        })
    }

    /// An object key without its quotes; keys with escapes (and the private
    /// number key, which serde_json reads as a number) go to the serde path.
    #[inline(always)]
    fn key(&mut self) -> R<&'a str> {
        self.at_quote()?;
        let start = self.i + 1;
        if self.string()? {
            return Err(Bail);
        }
        // SAFETY: `text` is UTF-8 and both ends of the key are next to an
        // ASCII quote, so they are char boundaries within it.
        let key = unsafe { self.text.get_unchecked(start..self.i - 1) };
        if key.len() == NUMBER_TOKEN.len() && key == NUMBER_TOKEN {
            return Err(Bail);
        }
        Ok(key)
    }

    /// Steps over any valid value.
    #[inline(always)]
    fn skip(&mut self, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Bail);
        }
        // Most skipped values are strings and nulls: stepped over here, without a call.
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'n') => self.literal(b"null"),
            _ => self.skip_other(depth),
        }
    }

    /// [`Self::skip`] for containers, numbers and booleans.
    #[inline(never)]
    fn skip_other(&mut self, depth: usize) -> R<()> {
        match self.peek() {
            Some(b'{' | b'[') => self.skip_container(depth),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Bail),
        }
    }

    /// Steps over the object or array at the cursor (at `depth`) in one loop:
    /// a big skipped container (an employee, a list of locations) costs a
    /// call, not a call per nested value. Accepts exactly what the recursive
    /// grammar (`skip` of every member) accepts, depth limit included.
    fn skip_container(&mut self, depth: usize) -> R<()> {
        // Whether the innermost open container is an object, and below it
        // one bit per enclosing open container (innermost lowest). At most
        // MAX_DEPTH + 1 levels are open (checked on opening), fewer than 128.
        let mut object = false;
        let mut outer: u128 = 0;
        let mut open: usize = 0;
        loop {
            // On a value, whitespace before it stepped over.
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(c + 2) {
                        // `{}` or `[]` (`}` and `]` are two past `{` and `[`).
                        self.i += 1;
                    } else {
                        // Its members are values one level deeper.
                        if depth + open >= MAX_DEPTH {
                            return Err(Bail);
                        }
                        outer = outer << 1 | u128::from(object);
                        object = c == b'{';
                        open += 1;
                        if object {
                            self.skipped_key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'n') => self.literal(b"null")?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                // Whitespace after a `,` in a list (`ws_run` stops at any other byte).
                Some(c) if c <= b' ' && open > 0 => {
                    let at = self.i;
                    self.ws_run();
                    if self.i == at {
                        return Err(Bail);
                    }
                    continue;
                }
                _ => return Err(Bail),
            }
            // After a value: close the containers that end here, up to the next value.
            loop {
                if open == 0 {
                    return Ok(());
                }
                match self.peek_past_ws() {
                    Some(b',') => {
                        self.i += 1;
                        if object {
                            self.skipped_key()?;
                        }
                        break;
                    }
                    Some(c) if c == if object { b'}' } else { b']' } => {
                        self.i += 1;
                        open -= 1;
                        object = outer & 1 != 0;
                        outer >>= 1;
                    }
                    _ => return Err(Bail),
                }
            }
        }
    }

    /// Steps over whitespace (usually none) to the `"` opening a key.
    #[inline(always)]
    fn at_quote(&mut self) -> R<()> {
        if self.peek() != Some(b'"') {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(Bail);
            }
        }
        Ok(())
    }

    /// A skipped object's key and the `:` after it, the cursor left on the value.
    #[inline(always)]
    fn skipped_key(&mut self) -> R<()> {
        self.at_quote()?;
        self.string()?;
        self.colon()
    }

    /// The `:` after a key (usually right after it), the cursor left on the value.
    #[inline(always)]
    fn colon(&mut self) -> R<()> {
        if self.peek() == Some(b':') {
            self.i += 1;
        } else {
            self.ws();
            self.eat(b':')?;
        }
        self.ws();
        Ok(())
    }

    /// Steps over a string at the cursor (on its opening quote); says whether it has escapes.
    ///
    /// Inlined into every caller: a string without escapes that ends before
    /// the last sixteen bytes of the input (every key, nearly every value)
    /// costs one or two 16-byte blocks and no call.
    #[inline(always)]
    fn string(&mut self) -> R<bool> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut at = self.i + 1;
        #[cfg(target_arch = "x86_64")]
        while let Some(block) = self.b.get(at..at + 16) {
            let (specials, quotes) = specials16(block);
            if specials != 0 {
                // The lowest special byte decides: the closing quote ends the string.
                if specials & specials.wrapping_neg() & quotes != 0 {
                    self.i = at + specials.trailing_zeros() as usize + 1;
                    return Ok(false);
                }
                at += specials.trailing_zeros() as usize;
                break;
            }
            at += 16;
        }
        self.i = at;
        self.string_rest()
    }

    /// The rest of a string from a cursor inside it (no escape before it):
    /// escapes, control characters and the input's last bytes.
    #[cold]
    #[inline(never)]
    fn string_rest(&mut self) -> R<bool> {
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6).ok_or(Bail)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Bail);
                            }
                            self.i += 6;
                        }
                        _ => return Err(Bail),
                    }
                }
                // A control character, or the end of the input.
                _ => return Err(Bail),
            }
        }
    }

    /// Moves to the next `"`, `\` or control character (or the end), sixteen
    /// bytes at a time with SSE2 (part of every x86-64 CPU).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn skip_plain(&mut self) {
        while let Some(block) = self.b.get(self.i..self.i + 16) {
            let (specials, _) = specials16(block);
            if specials != 0 {
                self.i += specials.trailing_zeros() as usize;
                return;
            }
            self.i += 16;
        }
        self.skip_plain_swar();
    }

    /// [`Self::skip_plain`] where SSE2 is not available.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn skip_plain(&mut self) {
        self.skip_plain_swar();
    }

    /// Moves to the next `"`, `\` or control character (or the end), eight
    /// bytes at a time in a `u64`.
    #[inline]
    fn skip_plain_swar(&mut self) {
        const ONES: u64 = u64::MAX / 255;
        const HIGH: u64 = ONES * 0x80;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let quote = x ^ (ONES * u64::from(b'"'));
            let slash = x ^ (ONES * u64::from(b'\\'));
            // Bytes below 0x20, and zero bytes of `quote`/`slash`: the first set
            // high bit marks the first special byte (later ones may be borrows).
            let hits = (x.wrapping_sub(ONES * 0x20) & !x)
                | (quote.wrapping_sub(ONES) & !quote)
                | (slash.wrapping_sub(ONES) & !slash);
            let hits = hits & HIGH;
            if hits != 0 {
                self.i += (hits.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while let Some(&c) = self.b.get(self.i) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return;
            }
            self.i += 1;
        }
    }

    /// Steps over a number, checking JSON's grammar.
    fn number(&mut self) -> R<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Bail),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Bail);
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Bail);
            }
            self.digits();
        }
        Ok(())
    }

    /// Moves past a run of ASCII digits, eight bytes at a time in a `u64`.
    #[inline]
    fn digits(&mut self) {
        const ONES: u64 = u64::MAX / 255;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            // A byte is a digit (0x30..=0x39) when neither x + 0x46 nor
            // x - 0x30 sets its high bit (bytes from 0x80 set it in one of the
            // two). Carries and borrows start only at a non-digit, so the
            // lowest set bit marks the first non-digit.
            let other = (x.wrapping_add(ONES * 0x46) | x.wrapping_sub(ONES * 0x30)) & (ONES * 0x80);
            if other != 0 {
                self.i += (other.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Bail)
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Steps over whitespace. Compact JSON has none between tokens, so one
    /// comparison (nothing at or below a space) usually settles it.
    #[inline(always)]
    fn ws(&mut self) {
        if matches!(self.peek(), Some(c) if c <= b' ') {
            self.ws_run();
        }
    }

    /// Steps over whitespace and returns the byte after it, read once when
    /// there is none (compact JSON).
    #[inline(always)]
    fn peek_past_ws(&mut self) -> Option<u8> {
        let next = self.peek();
        if matches!(next, Some(c) if c <= b' ') {
            self.ws_run();
            return self.peek();
        }
        next
    }

    /// A run of whitespace at the cursor (indented JSON), sixteen bytes at a time.
    #[inline(never)]
    fn ws_run(&mut self) {
        #[cfg(target_arch = "x86_64")]
        while let Some(block) = self.b.get(self.i..self.i + 16) {
            let other = !whitespace16(block) & 0xffff;
            if other != 0 {
                self.i += other.trailing_zeros() as usize;
                return;
            }
            self.i += 16;
        }
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }
}

/// Bit masks of one 16-byte block (bit n for byte n): bytes that stop plain
/// string text (`"`, `\` and control characters), and of those the quotes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn specials16(block: &[u8]) -> (u32, u32) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    assert!(block.len() >= 16);
    // SAFETY: SSE2 is part of the x86-64 baseline, so these intrinsics exist
    // on every CPU this target runs on; `block` has sixteen readable bytes
    // (checked above, and known to the callers' optimiser), and the
    // unaligned load needs no alignment.
    unsafe {
        let x = _mm_loadu_si128(block.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let slash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
        // min(x, 0x1f) == x exactly for the bytes 0x00..=0x1f (unsigned).
        let control = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
        let specials = _mm_or_si128(_mm_or_si128(quote, slash), control);
        (
            _mm_movemask_epi8(specials) as u32,
            _mm_movemask_epi8(quote) as u32,
        )
    }
}

/// Bit mask of the JSON whitespace bytes (space, `\n`, `\r`, `\t`) of one 16-byte block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn whitespace16(block: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(block.len() >= 16);
    // SAFETY: as in `specials16`.
    unsafe {
        let x = _mm_loadu_si128(block.as_ptr().cast());
        let eq = |c: u8| _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8));
        let ws = _mm_or_si128(
            _mm_or_si128(eq(b' '), eq(b'\n')),
            _mm_or_si128(eq(b'\r'), eq(b'\t')),
        );
        _mm_movemask_epi8(ws) as u32
    }
}

/// A value serde_json must build itself (numbers keep their exact text, escapes are decoded).
fn parse_span(span: &str) -> R<Value> {
    serde_json::from_str(span).map_err(|_| Bail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FieldPath;

    fn need(paths: &[&str]) -> FieldSet {
        let mut s = FieldSet::nothing();
        for p in paths {
            s.add_path(&FieldPath::parse(p).unwrap());
        }
        s
    }

    #[test]
    fn a_plain_page_is_read_by_the_fast_path_as_serde_would() {
        let body = br#" {"count": 2, "offset": 0, "data": [
            {"id": "a\"1", "amount": 1.50, "n": {"x": [1, {"y": null}], "z": "\u00e9"}, "skip": {"deep": [true, false, -0.5e+3]}},
            {"id": "b", "amount": -0, "n": [{"x": 2}, 3], "flag": true}
        ]} "#;
        let need = need(&["id", "amount", "n.x", "flag"]);
        let (count, data, _) = page(&need, bytes::Bytes::from_static(body)).expect("fast path");
        assert_eq!(count, Some(Value::from(2)));
        let full: Value = serde_json::from_slice(body).unwrap();
        let want: Vec<Value> = full["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| need.prune(r))
            .collect();
        assert_eq!(data.unwrap(), want);
    }

    #[test]
    fn string_skipping_stops_at_the_first_quote_backslash_or_control_character() {
        // Every special byte at every offset of runs longer and shorter than
        // one 16-byte block, after plain ASCII and multi-byte UTF-8 text.
        for filler in ["a", "é", "\u{7f}", " "] {
            for len in 0..40 {
                let plain: String = filler.repeat(len);
                for special in ['"', '\\', '\u{0}', '\u{1f}', '\n'] {
                    let text = format!("{plain}{special}tail\"");
                    let mut s = Scanner::new(&text);
                    s.skip_plain();
                    assert_eq!(s.i, plain.len(), "{filler:?} × {len} then {special:?}");
                }
                let mut s = Scanner::new(&plain);
                s.skip_plain();
                assert_eq!(s.i, plain.len(), "{filler:?} × {len} to the end");
            }
        }
    }

    #[test]
    fn invalid_or_unusual_json_is_left_to_serde() {
        let need = need(&["id"]);
        for bad in [
            &br#"{"data": [{"id": 01}]}"#[..],
            br#"{"data": [{"id": 1.}]}"#,
            br#"{"data": [{"id": -}]}"#,
            br#"{"data": [{"id": 1e}]}"#,
            br#"{"data": [{"id": "a\x"}]}"#,
            br#"{"data": [{"id": "\u12"}]}"#,
            b"{\"data\": [{\"x\": \"tab\there\"}]}",
            br#"{"data": [{"id": 1,}]}"#,
            br#"{"data": [{"id": 1}],}"#,
            br#"{"data": [{"id": 1} {"id": 2}]}"#,
            br#"{"data": [{"id": tru}]}"#,
            br#"{"data": [{"id": 1}]} x"#,
            br#"{"data": [{"id": 1}"#,
            br#"{"data": [{"x": "cut"#,
            b"{\"data\": [{\"x\": \"\xff\"}]}",
            br#"{"data": {"id": 1}}"#,
            br#"{"data": [{"$serde_json::private::Number": "1"}]}"#,
            br#"{"data": [{"i\u0064": 1}]}"#,
            br#"[1]"#,
        ] {
            assert!(
                page(&need, bytes::Bytes::from_static(bad)).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn scanner(text: &str) -> Scanner<'_, 'static> {
        Scanner::new(text)
    }

    /// What [`Scanner::string`] must do, one byte at a time: where the string
    /// starting at `i` ends and whether it has escapes; `None` for an invalid one.
    fn string_by_bytes(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
        i += 1;
        let mut escaped = false;
        loop {
            match *b.get(i)? {
                b'"' => return Some((i + 1, escaped)),
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }

    #[test]
    fn strings_ending_anywhere_in_a_block_or_near_the_end_of_the_input_are_stepped_over_exactly() {
        // The closing quote at every position of the first three 16-byte
        // blocks, with 0..20 bytes after it (so the block reaches past the end
        // of the input or not), and an escape, a bad escape, a control
        // character or multi-byte text at every position before it.
        let inserts = [
            "", "\\n", "\\u00e9", "\\\"", "\\x", "\\u12", "\u{1}", "\n", "é", "🍕",
        ];
        for len in 0..48 {
            for insert in inserts {
                for at in [0, len / 2, len] {
                    let body = format!("{}{insert}{}", "a".repeat(at), "b".repeat(len - at));
                    for tail in 0..20 {
                        let text = format!("\"{body}\"{}", "x".repeat(tail));
                        let mut s = scanner(&text);
                        let got = s.string().ok().map(|escaped| (s.i, escaped));
                        assert_eq!(got, string_by_bytes(text.as_bytes(), 0), "{text:?}");
                    }
                    // Cut off before its closing quote: never a string.
                    let text = format!("\"{body}");
                    assert!(scanner(&text).string().is_err(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn whitespace_runs_of_any_length_are_stepped_over_up_to_the_next_token() {
        for len in 0..40 {
            let run: String = (0..len).map(|n| [' ', '\n', '\r', '\t'][n % 4]).collect();
            // A vertical tab and a control character are not JSON whitespace.
            for next in ["", "x", "{\"a\": 1}", "\u{b}", "\u{1f}", "é"] {
                let text = format!("{run}{next}");
                let mut s = scanner(&text);
                s.ws();
                assert_eq!(s.i, run.len(), "{text:?}");
            }
        }
    }

    #[test]
    fn values_are_skipped_exactly_compact_or_indented() {
        let values = [
            r#"{"a": [1, -0.5e+3, "x\"y", {"b": null}], "c": {}, "d": [], "e": true, "f": false}"#,
            r#""a string longer than one sixteen-byte block, twice over: 🍕🍕🍕""#,
            "0",
            "-12.50",
            "1E-7",
            "null",
        ];
        for value in values {
            let tree: Value = serde_json::from_str(value).unwrap();
            for text in [
                serde_json::to_string(&tree).unwrap(),
                serde_json::to_string_pretty(&tree).unwrap(),
                value.to_string(),
            ] {
                for tail in ["", ",", " ]"] {
                    let input = format!("{text}{tail}");
                    let mut s = scanner(&input);
                    assert!(s.skip(0).is_ok(), "{input:?}");
                    assert_eq!(s.i, text.len(), "{input:?}");
                }
            }
        }
    }

    /// The container grammar as [`Scanner::skip`] read it before
    /// `skip_container` (one call per nested value): the reference it must match.
    fn skip_by_recursion(s: &mut Scanner<'_, '_>, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Bail);
        }
        let close = match s.peek() {
            Some(b'{') => b'}',
            Some(b'[') => b']',
            Some(b'"') => return s.string().map(drop),
            Some(b'n') => return s.literal(b"null"),
            Some(b't') => return s.literal(b"true"),
            Some(b'f') => return s.literal(b"false"),
            Some(b'-' | b'0'..=b'9') => return s.number(),
            _ => return Err(Bail),
        };
        s.i += 1;
        s.ws();
        if s.peek() == Some(close) {
            s.i += 1;
            return Ok(());
        }
        loop {
            if close == b'}' {
                if s.peek() != Some(b'"') {
                    return Err(Bail);
                }
                s.string()?;
                s.ws();
                s.eat(b':')?;
                s.ws();
            }
            skip_by_recursion(s, depth + 1)?;
            s.ws();
            match s.peek() {
                Some(b',') => {
                    s.i += 1;
                    s.ws();
                }
                Some(c) if c == close => {
                    s.i += 1;
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }

    /// Where `skip` and the reference stop on `text` from `depth` (`None`: rejected).
    fn skips(text: &str, depth: usize) -> (Option<usize>, Option<usize>) {
        let mut s = scanner(text);
        let fast = s.skip(depth).ok().map(|()| s.i);
        let mut r = scanner(text);
        let slow = skip_by_recursion(&mut r, depth).ok().map(|()| r.i);
        (fast, slow)
    }

    #[test]
    fn skipped_containers_are_accepted_and_ended_exactly_where_the_recursive_grammar_does() {
        let docs = [
            r#"{"a":[1,-0.5e+3,"x\"y",{"b":null}],"c":{},"d":[],"e":true,"f":false,"g":"\u00e9\n","h":[[],[{}],[[1]]]}"#,
            r#"{"id":"ouGmQIHr43OW","user":{"id":"ushGq9nCu9UD","email":"priya.smith@acme-sim.example"},"level":{"id":"lvl00000001","band":"IC"},"custom_fields":[{"id":311001,"name":"Region","value":"EMEA"}],"mobile":null,"n":[0,-0,1E5,2.50e-3]}"#,
            r#"[{"k":"a string longer than one block with an escape \t here and \\ there 🍕","l":[true,false,null]},[],{}]"#,
        ];
        // Bytes that make or break the grammar, put in place of every byte in turn.
        let hostile = [
            b'"', b'\\', b',', b':', b'[', b']', b'{', b'}', b' ', b'\n', 0x01, 0x1f, b'0', b'-',
            b'.', b'e', b'n', b'u', b'/', b'x',
        ];
        for doc in docs {
            let tree: Value = serde_json::from_str(doc).unwrap();
            for text in [
                doc.to_string(),
                serde_json::to_string_pretty(&tree).unwrap(),
            ] {
                let mut cases = vec![text.clone()];
                // Cut off anywhere.
                cases.extend((0..text.len()).filter_map(|k| text.get(..k).map(str::to_string)));
                // One byte replaced anywhere (ASCII bytes only, so the text stays UTF-8).
                for at in (0..text.len()).filter(|&at| text.as_bytes()[at].is_ascii()) {
                    for &h in &hostile {
                        let mut b = text.clone().into_bytes();
                        b[at] = h;
                        cases.push(String::from_utf8(b).unwrap());
                    }
                }
                for case in &cases {
                    let (fast, slow) = skips(case, 0);
                    assert_eq!(fast, slow, "{case:?}");
                    // And serde_json agrees on what is one whole value.
                    let whole = fast.is_some_and(|end| case[end..].trim().is_empty());
                    let serde = serde_json::from_str::<serde::de::IgnoredAny>(case).is_ok();
                    assert_eq!(whole, serde, "{case:?}");
                }
            }
        }
    }

    #[test]
    fn nesting_is_limited_at_the_same_depth_as_before_from_any_starting_depth() {
        for start in [
            0,
            1,
            60,
            MAX_DEPTH - 2,
            MAX_DEPTH - 1,
            MAX_DEPTH,
            MAX_DEPTH + 1,
        ] {
            for n in 1..=(MAX_DEPTH + 5) {
                for (open, inner, close) in [
                    ("[", "", "]"),
                    ("[", "1", "]"),
                    ("{\"k\":", "null", "}"),
                    ("[{\"k\": ", "\"v\"", "}]"),
                ] {
                    let text = format!("{}{inner}{}", open.repeat(n), close.repeat(n));
                    let (fast, slow) = skips(&text, start);
                    assert_eq!(fast, slow, "{n} × {open:?} {inner:?} from depth {start}");
                }
            }
        }
    }

    /// What the serde path builds of `body`'s records keeping `keys`.
    fn serde_records(keys: &[&str], body: &[u8]) -> Option<Vec<Value>> {
        let mut set = FieldSet::nothing();
        for k in keys {
            set.add_key(k);
        }
        let full: Value = serde_json::from_slice(body).ok()?;
        let data = full.get("data")?.as_array()?;
        Some(data.iter().map(|r| set.prune(r)).collect())
    }

    fn fast_records(keys: &[&str], body: &[u8]) -> Option<Vec<Value>> {
        let mut set = FieldSet::nothing();
        for k in keys {
            set.add_key(k);
        }
        page(&set, bytes::Bytes::copy_from_slice(body)).and_then(|(_, data, _)| data)
    }

    #[test]
    fn keys_of_every_length_are_told_apart_from_the_key_the_previous_record_had_at_their_place() {
        // Keys around the 16-byte block and the 32-byte tail compare; each
        // record's second key differs from the previous record's in one byte
        // (first, 15th, 16th, middle, last), in length only, or not at all.
        for len in 0..45usize {
            let base: String = (0..len)
                .map(|n| char::from(b'a' + (n % 26) as u8))
                .collect();
            let mut keys = vec![base.clone(), base.clone()];
            for at in [
                0,
                15,
                16,
                len / 2,
                len.saturating_sub(16),
                len.saturating_sub(1),
            ] {
                if at < len {
                    let mut k = base.clone().into_bytes();
                    k[at] = b'Z';
                    keys.push(String::from_utf8(k).unwrap());
                    keys.push(base.clone());
                }
            }
            keys.push(format!("{base}q"));
            if len > 0 {
                keys.push(base[..len - 1].to_string());
            }
            let records: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(n, k)| format!(r#"{{"x":{n},"{k}":{n}}}"#))
                .collect();
            let compact = format!(r#"{{"data":[{}]}}"#, records.join(","));
            let tree: Value = serde_json::from_str(&compact).unwrap();
            // Compact, indented, and with spaces before the colons.
            for body in [
                compact.clone(),
                serde_json::to_string_pretty(&tree).unwrap(),
                compact.replace("\":", "\" :"),
            ] {
                for wanted in &keys {
                    let want = [wanted.as_str(), "x"];
                    let fast = fast_records(&want, body.as_bytes());
                    assert!(fast.is_some(), "{body}");
                    assert_eq!(
                        fast,
                        serde_records(&want, body.as_bytes()),
                        "{wanted:?} in {body}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_captured_key_met_again_in_its_object_forgets_what_it_captured_the_first_time() {
        let records = [
            r#"{"e":{"user":{"email":"a"},"code":1},"e":{"code":2}}"#,
            r#"{"e":{"code":1,"code":2},"am":1}"#,
            r#"{"am":1,"e":{"user":{"email":"a"}},"am":2}"#,
            r#"{"e":{"user":{"email":"a"},"user":null}}"#,
            r#"{"e":{"user":{"email":"a"}},"x":{"code":3}}"#,
            r#"{"e":{"user":{"email":"a","email":"b"},"code":1,"user":{"x":1}},"am":[1]}"#,
        ];
        let body = format!(r#"{{"data":[{}]}}"#, records.join(","));
        let paths = ["e.code", "e.user.email", "am"];
        // Slots below and past the 64 the repeat check marks in a bit set.
        for base in [0, 61, 64, 100] {
            let mut set = FieldSet::nothing();
            for (n, p) in paths.iter().enumerate() {
                assert!(set.capture_path(&FieldPath::parse(p).unwrap(), base + n));
            }
            let (_, _, cols) = page(&set, bytes::Bytes::from(body.clone())).expect("fast path");
            let cols = cols.expect("captured");
            for (i, text) in records.iter().enumerate() {
                let record: Value = serde_json::from_str(text).unwrap();
                for (n, p) in paths.iter().enumerate() {
                    let span = cols.spans[i * cols.slots + base + n];
                    let got = (span.end > span.start).then(|| {
                        serde_json::from_slice::<Value>(
                            &body.as_bytes()[span.start as usize..span.end as usize],
                        )
                        .unwrap()
                    });
                    let want = FieldPath::parse(p).unwrap().lookup(&record).cloned();
                    assert_eq!(got, want, "{text}: {p} in slot {}", base + n);
                }
            }
        }
    }

    #[test]
    fn keys_with_an_escape_or_control_character_anywhere_are_left_to_serde() {
        for len in 1..40usize {
            for at in 0..len {
                for special in ["\\n", "\\u0061", "\\\"", "\u{1}", "\\x"] {
                    let key: String = (0..len)
                        .map(|n| {
                            if n == at {
                                special.to_string()
                            } else {
                                "k".to_string()
                            }
                        })
                        .collect();
                    let body = format!(r#"{{"data":[{{"{key}":1,"id":2}}]}}"#);
                    assert!(fast_records(&["id"], body.as_bytes()).is_none(), "{body}");
                }
            }
        }
    }

    #[test]
    fn a_page_cut_off_or_with_one_byte_changed_anywhere_is_read_as_serde_reads_it_or_left_to_it() {
        let record = r#"{"id":"tx1","amount":12.30,"is_reimbursable_with_a_long_key_name":true,"report_last_paid_at":null,"employee":{"user":{"email":"a@b","full_name":"A \"B\""},"code":"E1","department":{"name":"Ops"}},"locations":[{"city":"Pune","lat":18.5},{}],"n":null}"#;
        let body = format!(r#"{{"count":2,"offset":0,"data":[{record},{record}]}}"#);
        let keys = [
            "id",
            "amount",
            "employee",
            "n",
            "is_reimbursable_with_a_long_key_name",
            "report_last_paid_at",
        ];
        assert_eq!(
            fast_records(&keys, body.as_bytes()),
            serde_records(&keys, body.as_bytes())
        );
        for k in 0..body.len() {
            assert!(
                fast_records(&keys, &body.as_bytes()[..k]).is_none(),
                "cut at {k}"
            );
        }
        for at in 0..body.len() {
            for h in [
                b'"', b'\\', b',', b':', b'[', b']', b'{', b'}', b' ', 0x01, b'0', b'x',
            ] {
                let mut b = body.clone().into_bytes();
                b[at] = h;
                if let Some(fast) = fast_records(&keys, &b) {
                    assert_eq!(
                        Some(fast),
                        serde_records(&keys, &b),
                        "{}",
                        String::from_utf8_lossy(&b)
                    );
                }
            }
        }
    }

    #[test]
    fn numbers_of_every_grammar_form_are_stepped_over_exactly() {
        let mut numbers = vec![];
        for sign in ["", "-"] {
            for int in 1..=19 {
                let int: String = (0..int)
                    .map(|n| char::from(b"1234567890"[n % 10]))
                    .collect();
                for int in ["0".to_string(), int] {
                    for frac in ["", ".5", ".1234567", ".123456789", ".00000000000000000001"] {
                        for exp in ["", "e5", "E+12", "e-123456789", "E0"] {
                            numbers.push(format!("{sign}{int}{frac}{exp}"));
                        }
                    }
                }
            }
        }
        // Bytes just outside the digits ('/' and ':'), multi-byte text and the end of the input.
        for number in &numbers {
            assert!(serde_json::from_str::<Value>(number).is_ok(), "{number}");
            for next in ["", ",", "}", "]", " ", "/", ":", "\"", "é", "a", ".", "e"] {
                let text = format!("{number}{next}");
                let mut s = scanner(&text);
                let stepped = s.skip(0);
                if (next == "." && !number.contains(['.', 'e', 'E']))
                    || (next == "e" && !number.contains(['e', 'E']))
                {
                    // "1." and "1e" are not numbers.
                    assert!(stepped.is_err(), "{text:?}");
                } else {
                    assert!(stepped.is_ok(), "{text:?}");
                    assert_eq!(s.i, number.len(), "{text:?}");
                }
            }
        }
        for bad in [
            "-", "--1", "+1", ".5", "-.5", "1.", "1.e5", "1e", "1e+", "1E-", "-a", "1.x",
        ] {
            assert!(scanner(bad).skip(0).is_err(), "{bad}");
        }
        // A leading zero ends the number; what follows is the caller's syntax error.
        let mut s = scanner("0123");
        assert!(s.skip(0).is_ok());
        assert_eq!(s.i, 1);
    }
}
