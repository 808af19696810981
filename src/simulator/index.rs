//! Serving a page of a large table in time about the page size: the sort
//! permutation is searched for the range the filter allows on the leading
//! `order` column (binary search), and the count of the other conditions is
//! read from a cached prefix sum along the permutation.
//!
//! [`run_indexed`] answers exactly what [`query::run`] answers, or `None`
//! when it cannot be sure to (a column whose comparisons could fail or
//! disagree with the sort, a condition that might raise an error on a row it
//! would skip); the caller then runs the full scan.

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::Arc;

use serde_json::Value;

use super::query::{self, CmpOp, ColRef, Expr, Op, Query, Table};
use super::values::{Cell, Collation, Lit, cmp_lit, looks_like_date};

/// A list answer: how many rows match, and the rows of the requested page.
pub(crate) type Answer = (usize, Vec<u32>);

/// What every non-null cell of a column is, as far as comparing it with a
/// literal can fail or disagree with `order=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ts,
    Num,
    /// Text that never looks like a date, so it compares by collation alone.
    Text,
    /// Mixed, JSON, or all null: the fast path stays away.
    Other,
}

/// Scans a column once (the caller caches the answer per data generation).
pub(crate) fn column_kind<T: Table>(t: &T, c: &ColRef) -> Kind {
    let mut kind = None;
    for row in 0..t.len() {
        let cell = t.cell(row, c.col, &c.path);
        let k = match &cell {
            Cell::Null => continue,
            Cell::Ts(_) => Kind::Ts,
            Cell::Int(_) | Cell::Money(_) | Cell::Dec(_) => Kind::Num,
            Cell::Str(s) => text_kind(s),
            Cell::Val(Value::Null) | Cell::Owned(Value::Null) => continue,
            Cell::Val(Value::String(s)) | Cell::Owned(Value::String(s)) => text_kind(s),
            _ => Kind::Other,
        };
        match kind {
            _ if k == Kind::Other => return Kind::Other,
            None => kind = Some(k),
            Some(p) if p != k => return Kind::Other,
            Some(_) => {}
        }
    }
    kind.unwrap_or(Kind::Other)
}

fn text_kind(s: &str) -> Kind {
    if looks_like_date(s) {
        Kind::Other
    } else {
        Kind::Text
    }
}

fn lit_fits(kind: Kind, lit: &Lit) -> bool {
    match kind {
        Kind::Ts => lit.is_timestamp(),
        Kind::Num => lit.is_number(),
        Kind::Text => true,
        Kind::Other => false,
    }
}

/// Whether evaluating `op` on any cell of a column of `kind` cannot fail.
fn cannot_fail(kind: Kind, op: &Op) -> bool {
    match op {
        Op::IsNull | Op::IsBool(_) => true,
        Op::Cmp(_, lit) => lit_fits(kind, lit),
        Op::In(lits) => lits.iter().all(|l| lit_fits(kind, l)),
        Op::Like(_) => kind == Kind::Text,
        Op::Contains(_) | Op::Overlaps(_) => false,
    }
}

fn same_col(a: &ColRef, b: &ColRef) -> bool {
    a.col == b.col && a.path == b.path
}

fn mentions(e: &Expr, c: &ColRef) -> bool {
    match e {
        Expr::And(items) | Expr::Or(items) => items.iter().any(|i| mentions(i, c)),
        Expr::Not(inner) => mentions(inner, c),
        Expr::Leaf(l, _) => same_col(l, c),
    }
}

fn intersect(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    let r = a.start.max(b.start)..a.end.min(b.end);
    if r.is_empty() { r.start..r.start } else { r }
}

/// Positions `lo..hi` of the permutation, searched by a predicate that holds on a prefix.
fn partition(r: Range<usize>, mut pred: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (r.start, r.end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The leading sort column seen along the permutation.
struct Lead<'a, T: Table> {
    t: &'a T,
    perm: &'a [u32],
    col: &'a ColRef,
    desc: bool,
    kind: Kind,
    /// Positions of the non-null keys (nulls sit at one end).
    block: Range<usize>,
    coll: Collation,
}

impl<T: Table> Lead<'_, T> {
    fn ord(&self, pos: usize, lit: &Lit) -> Ordering {
        let cell = self
            .t
            .cell(self.perm[pos] as usize, self.col.col, &self.col.path);
        // Checked by `lit_fits` and `block`: neither an error nor NULL here.
        cmp_lit(&cell, lit, self.coll)
            .ok()
            .flatten()
            .unwrap_or(Ordering::Equal)
    }

    /// The positions where `key op lit` holds: one run of the non-null block,
    /// since the permutation orders keys as the comparison does.
    fn cmp_range(&self, op: CmpOp, lit: &Lit) -> Range<usize> {
        let b = self.block.clone();
        let (n0, n1) = (b.start, b.end);
        if self.desc {
            let gt_end = partition(b.clone(), |p| self.ord(p, lit) == Ordering::Greater);
            let ge_end = partition(b, |p| self.ord(p, lit) != Ordering::Less);
            match op {
                CmpOp::Gt => n0..gt_end,
                CmpOp::Gte => n0..ge_end,
                CmpOp::Eq => gt_end..ge_end,
                CmpOp::Lt => ge_end..n1,
                CmpOp::Lte => gt_end..n1,
                CmpOp::Neq => n0..n1,
            }
        } else {
            let lt_end = partition(b.clone(), |p| self.ord(p, lit) == Ordering::Less);
            let le_end = partition(b, |p| self.ord(p, lit) != Ordering::Greater);
            match op {
                CmpOp::Lt => n0..lt_end,
                CmpOp::Lte => n0..le_end,
                CmpOp::Eq => lt_end..le_end,
                CmpOp::Gt => le_end..n1,
                CmpOp::Gte => lt_end..n1,
                CmpOp::Neq => n0..n1,
            }
        }
    }
}

/// Bounds of where `e` is true along the permutation: every row where it is
/// true lies in the first range, and it is true on every row of the second.
/// `None` when some condition might fail on a row the fast path would skip.
fn bounds<T: Table>(
    e: &Expr,
    lead: &Lead<'_, T>,
    kind_of: &mut dyn FnMut(&ColRef) -> Kind,
) -> Option<(Range<usize>, Range<usize>)> {
    let all = 0..lead.perm.len();
    let none = 0..0;
    Some(match e {
        Expr::And(items) => {
            let (mut sup, mut sub) = (all.clone(), all);
            for i in items {
                let (a, b) = bounds(i, lead, kind_of)?;
                sup = intersect(&sup, &a);
                sub = intersect(&sub, &b);
            }
            (sup, sub)
        }
        Expr::Or(items) => {
            let (mut sup, mut sub): (Option<Range<usize>>, Range<usize>) = (None, none);
            for i in items {
                let (a, b) = bounds(i, lead, kind_of)?;
                if !a.is_empty() {
                    sup = Some(match sup {
                        Some(s) => s.start.min(a.start)..s.end.max(a.end),
                        None => a,
                    });
                }
                if b.len() > sub.len() {
                    sub = b;
                }
            }
            (sup.unwrap_or(0..0), sub)
        }
        Expr::Not(inner) => {
            bounds(inner, lead, kind_of)?;
            (all, none)
        }
        Expr::Leaf(c, op) if same_col(c, lead.col) => {
            if !cannot_fail(lead.kind, op) {
                return None;
            }
            match op {
                Op::Cmp(CmpOp::Neq, _) => (lead.block.clone(), none),
                Op::Cmp(cmp, lit) => {
                    let r = lead.cmp_range(*cmp, lit);
                    (r.clone(), r)
                }
                _ => (all, none),
            }
        }
        Expr::Leaf(c, op) => {
            if !cannot_fail(kind_of(c), op) {
                return None;
            }
            (all, none)
        }
    })
}

/// Prefix counts along the permutation of the rows matching `rest`
/// (`out[i]` rows among `perm[..i]`); built once per data generation.
pub(crate) fn prefix_counts<T: Table>(
    t: &T,
    rest: &Expr,
    perm: &[u32],
    coll: Collation,
) -> Result<Vec<u32>, String> {
    let mut out = Vec::with_capacity(perm.len() + 1);
    let mut n = 0u32;
    out.push(0);
    for &row in perm {
        if query::eval(rest, t, row as usize, coll)? == Some(true) {
            n += 1;
        }
        out.push(n);
    }
    Ok(out)
}

/// Splits a query's conditions into those on the leading `order` column and the rest.
pub(crate) fn split_filter(q: &Query) -> Option<(Vec<&Expr>, Expr)> {
    let lead = &q.order.first()?.col;
    let Expr::And(items) = &q.filter else {
        return None;
    };
    let (on_lead, rest): (Vec<&Expr>, Vec<&Expr>) = items.iter().partition(|i| mentions(i, lead));
    Some((on_lead, Expr::And(rest.into_iter().cloned().collect())))
}

/// The count and page of `q`, as [`query::run`] gives them, in time about
/// the page size plus the rows at the range's edges; `None` when the full
/// scan must decide. `kind_of` and `prefix` are the caller's caches; `prefix`
/// gets the conditions not on the leading column (`None`: there are none).
pub(crate) fn run_indexed<T: Table>(
    t: &T,
    q: &Query,
    perm: &[u32],
    coll: Collation,
    kind_of: &mut dyn FnMut(&ColRef) -> Kind,
    prefix: &mut dyn FnMut(&Expr) -> Option<Arc<Vec<u32>>>,
) -> Option<Answer> {
    let term = q.order.first()?;
    let (on_lead, rest) = split_filter(q)?;
    let kind = kind_of(&term.col);
    if kind == Kind::Other || perm.len() != t.len() || perm.len() >= u32::MAX as usize {
        return None;
    }
    let key_null = |p: usize| {
        t.cell(perm[p] as usize, term.col.col, &term.col.path)
            .is_null()
    };
    let n = perm.len();
    let block = if term.nulls_first {
        partition(0..n, key_null)..n
    } else {
        0..partition(0..n, |p| !key_null(p))
    };
    let lead = Lead {
        t,
        perm,
        col: &term.col,
        desc: term.desc,
        kind,
        block,
        coll,
    };
    let (mut sup, mut sub) = (0..n, 0..n);
    for item in &on_lead {
        let (a, b) = bounds(item, &lead, kind_of)?;
        sup = intersect(&sup, &a);
        sub = intersect(&sub, &b);
    }
    // Where the conditions on the leading column hold for sure, only the rest decide.
    let sub = if sub.is_empty() {
        sup.start..sup.start
    } else {
        intersect(&sup, &sub)
    };
    let pre = match &rest {
        Expr::And(items) if items.is_empty() => None,
        rest => Some(prefix(rest)?),
    };
    let matched_inside = |p: usize| pre.as_ref().is_none_or(|c| c[p + 1] > c[p]);
    let inside_before = |p: usize| match &pre {
        Some(c) => (c[p] - c[sub.start]) as usize,
        None => p - sub.start,
    };
    let mut count = 0usize;
    let mut page = Vec::with_capacity(q.limit.min(256));
    let mut take = |row: u32, count: &mut usize, page: &mut Vec<u32>| {
        if *count >= q.offset && page.len() < q.limit {
            page.push(row);
        }
        *count += 1;
    };
    // The edges: rows the leading conditions may or may not accept.
    let edge = |r: Range<usize>,
                count: &mut usize,
                page: &mut Vec<u32>,
                take: &mut dyn FnMut(u32, &mut usize, &mut Vec<u32>)|
     -> Option<()> {
        for p in r {
            let row = perm[p];
            if query::eval(&q.filter, t, row as usize, coll).ok()? == Some(true) {
                take(row, count, page);
            }
        }
        Some(())
    };
    edge(sup.start..sub.start, &mut count, &mut page, &mut take)?;
    let inside = inside_before(sub.end);
    if page.len() < q.limit && count + inside > q.offset {
        let skip = q.offset.saturating_sub(count);
        let mut p = partition(sub.clone(), |p| inside_before(p + 1) <= skip);
        let mut seen = count + skip;
        while p < sub.end && page.len() < q.limit {
            if matched_inside(p) {
                if seen >= q.offset {
                    page.push(perm[p]);
                }
                seen += 1;
            }
            p += 1;
        }
    }
    count += inside;
    edge(sub.end..sup.end, &mut count, &mut page, &mut take)?;
    Some((count, page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::query::tests::Rows;
    use serde_json::json;

    fn both(t: &Rows, raw: &str) -> (Result<Answer, String>, Option<Answer>) {
        let q = query::parse_query(raw, t).unwrap();
        let perm = query::sort_perm(t, &q.order, Collation::C);
        let slow = query::run(t, &q, &perm, Collation::C);
        let fast = run_indexed(
            t,
            &q,
            &perm,
            Collation::C,
            &mut |c| column_kind(t, c),
            &mut |rest| {
                prefix_counts(t, rest, &perm, Collation::C)
                    .ok()
                    .map(Arc::new)
            },
        );
        (slow, fast)
    }

    #[test]
    fn text_keys_with_nulls_page_alike_in_both_directions() {
        let t = Rows(
            ["b", "a", "d", "c", "b", "e"]
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let k = if i == 3 { Value::Null } else { json!(k) };
                    json!({"id": format!("r{i}"), "k": k, "n": i % 2})
                })
                .collect(),
            vec!["id", "k", "n"],
        );
        for q in [
            "order=k.asc&k=gte.b&limit=2",
            "order=k.desc&k=lt.d&n=eq.0",
            "order=k.asc.nullsfirst&or=(k.gt.b,and(k.eq.b,id.gt.r0))",
            "order=k.desc.nullslast&k=neq.b&offset=1",
            "order=k.asc&not.or=(k.eq.a,k.eq.e)",
        ] {
            let (slow, fast) = both(&t, q);
            assert_eq!(fast, Some(slow.unwrap()), "{q}");
        }
    }

    #[test]
    fn a_condition_that_could_fail_on_a_skipped_row_takes_the_full_scan() {
        let t = Rows(
            vec![
                json!({"t": "x", "k": 1}),
                json!({"t": "2024-01-01", "k": 2}),
            ],
            vec!["t", "k"],
        );
        // `t` holds a date on one row only: comparing it with text fails there.
        let (slow, fast) = both(&t, "order=k.asc&and=(k.gt.1,t.eq.zz)");
        assert!(slow.is_err());
        assert_eq!(fast, None);
    }
}
