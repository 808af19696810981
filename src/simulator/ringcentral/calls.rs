//! The simulated company call log: generated records, the list endpoint's
//! parameters, newest-first ordering, `navigation` paging, and the delay
//! before a finished call becomes visible.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, RcSimConfig, api_error, json as json_response};
use crate::simulator::rng::Rng;

/// Largest `perPage` the call log accepts.
pub const MAX_PER_PAGE: usize = 1000;

struct Call {
    start: DateTime<Utc>,
    visible_at: DateTime<Utc>,
    id: String,
    record: Value,
}

pub(crate) struct CallLog {
    calls: Vec<Call>,
}

const NAMES: &[&str] = &[
    "Ana Müller",
    "Bob O'Neil",
    "Chen, Wei",
    "Dana \"DJ\" Jones",
    "Élodie Laurent",
    "",
];

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl CallLog {
    pub(crate) fn generate(
        rng: &mut Rng,
        cfg: &RcSimConfig,
        now: DateTime<Utc>,
        base: &str,
    ) -> Self {
        let mut log = CallLog { calls: Vec::new() };
        let history = cfg.history.as_secs().max(1) as i64;
        for _ in 0..cfg.calls {
            let start = now - chrono::Duration::seconds(rng.range(1, history));
            log.add(rng, cfg, start, base);
        }
        log
    }

    pub(crate) fn add(
        &mut self,
        rng: &mut Rng,
        cfg: &RcSimConfig,
        start: DateTime<Utc>,
        base: &str,
    ) -> String {
        self.add_with(rng, cfg, start, None, base)
    }

    /// A call starting within a second after `start`, lasting `duration` (random when `None`).
    pub(crate) fn add_with(
        &mut self,
        rng: &mut Rng,
        cfg: &RcSimConfig,
        start: DateTime<Utc>,
        duration: Option<std::time::Duration>,
        base: &str,
    ) -> String {
        let start = start + chrono::Duration::milliseconds(rng.range(0, 1000));
        let id = rng.alnum(15);
        let random_ms = rng.range(0, 1_800_000);
        let duration_ms = duration.map_or(random_ms, |d| d.as_millis() as i64);
        let direction = *rng.pick(&["Inbound", "Outbound"]);
        let kind = if rng.chance(0.05) { "Fax" } else { "Voice" };
        let result = *rng.pick(&["Accepted", "Call connected", "Missed", "Voicemail", "Busy"]);
        let number = |rng: &mut Rng| format!("+1650{}", rng.range(1_000_000, 9_999_999));
        let ext = rng.range(101, 130);
        let internal = json!({"phoneNumber": number(rng), "extensionNumber": ext.to_string(),
            "extensionId": (262000000 + ext).to_string(), "name": *rng.pick(NAMES)});
        let external = json!({"phoneNumber": number(rng), "name": *rng.pick(NAMES),
            "location": "Palo Alto, CA"});
        let (from, to) = if direction == "Inbound" {
            (external, internal)
        } else {
            (internal, external)
        };
        let (lo, hi) = cfg.visibility_lag;
        let lag_ms = if hi > lo {
            rng.range(lo.as_millis() as i64, hi.as_millis() as i64)
        } else {
            lo.as_millis() as i64
        };
        let end = start + chrono::Duration::milliseconds(duration_ms);
        let visible_at = end + chrono::Duration::milliseconds(lag_ms);
        let record = json!({
            "uri": format!("{base}/restapi/v1.0/account/~/call-log/{id}"),
            "id": id,
            "sessionId": rng.range(100_000_000, 999_999_999).to_string(),
            "telephonySessionId": format!("s-{}", rng.alnum(20)),
            "startTime": ts(start),
            "duration": duration_ms / 1000,
            "durationMs": duration_ms,
            "type": kind,
            "internalType": "Local",
            "direction": direction,
            "action": "Phone Call",
            "result": result,
            "from": from,
            "to": to,
            "extension": {"id": 262000000 + ext, "uri": format!("{base}/restapi/v1.0/account/~/extension/{}", 262000000 + ext)},
            "transport": "PSTN",
            "lastModifiedTime": ts(visible_at),
            "billing": {"costIncluded": 0.0, "costPurchased": (rng.range(0, 500) as f64) / 100.0},
            "legs": [{"startTime": ts(start), "duration": duration_ms / 1000, "type": kind,
                      "direction": direction, "action": "Phone Call", "result": result,
                      "legType": "Accept", "master": true}],
        });
        self.calls.push(Call {
            start,
            visible_at,
            id: id.clone(),
            record,
        });
        id
    }

    pub(crate) fn ids_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.start >= from && c.start < to)
            .map(|c| c.id.clone())
            .collect()
    }

    pub(crate) fn visible_ids_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.start >= from && c.start < to && c.visible_at <= now)
            .map(|c| c.id.clone())
            .collect()
    }

    /// `GET /restapi/v1.0/account/~/call-log`.
    pub(crate) fn list(&mut self, query: &str, base: &str, now: DateTime<Utc>) -> Response<Body> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let mut one: HashMap<&str, &str> = HashMap::new();
        let mut many: HashMap<&str, Vec<&str>> = HashMap::new();
        for (k, v) in &pairs {
            one.insert(k, v);
            many.entry(k).or_default().push(v);
        }
        let bad = |name: &str, value: &str| {
            api_error(
                StatusCode::BAD_REQUEST,
                "CMN-101",
                &format!("Parameter [{name}] value is invalid"),
                json!({"parameterName": name, "parameterValue": value}),
            )
        };
        let date = |name: &str| -> Result<Option<DateTime<Utc>>, Box<Response<Body>>> {
            match one.get(name) {
                None => Ok(None),
                Some(v) => DateTime::parse_from_rfc3339(v)
                    .map(|d| Some(d.with_timezone(&Utc)))
                    .map_err(|_| Box::new(bad(name, v))),
            }
        };
        let date_to = match date("dateTo") {
            Ok(d) => d.unwrap_or(now),
            Err(r) => return *r,
        };
        // RingCentral's default: the 24 hours before dateTo.
        let date_from = match date("dateFrom") {
            Ok(d) => d.unwrap_or(date_to - chrono::Duration::hours(24)),
            Err(r) => return *r,
        };
        let per_page = match one.get("perPage").copied() {
            None => 100,
            Some("max") => MAX_PER_PAGE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => n,
                _ => return bad("perPage", v),
            },
        };
        let page = match one.get("page").copied() {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => return bad("page", v),
            },
        };
        let detailed = match one.get("view").copied() {
            None | Some("Simple") => false,
            Some("Detailed") => true,
            Some(v) => return bad("view", v),
        };
        let wanted = |key: &str, value: &Value| {
            many.get(key)
                .is_none_or(|vs| vs.iter().any(|v| value.as_str() == Some(*v)))
        };
        let mut hits: Vec<&Call> = self
            .calls
            .iter()
            .filter(|c| c.visible_at <= now && c.start >= date_from && c.start < date_to)
            .filter(|c| wanted("direction", &c.record["direction"]))
            .filter(|c| wanted("type", &c.record["type"]))
            .collect();
        // Newest first.
        hits.sort_by(|a, b| b.start.cmp(&a.start).then_with(|| a.id.cmp(&b.id)));
        let start = (page - 1).saturating_mul(per_page).min(hits.len());
        let end = (start + per_page).min(hits.len());
        let records: Vec<Value> = hits[start..end]
            .iter()
            .map(|c| {
                let mut r = c.record.clone();
                if !detailed && let Some(o) = r.as_object_mut() {
                    o.remove("legs");
                    o.remove("billing");
                }
                r
            })
            .collect();
        let page_uri = |p: usize| {
            let mut u = url::Url::parse(&format!("{base}/restapi/v1.0/account/~/call-log"))
                .expect("base is a URL");
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in &pairs {
                    if k != "page" {
                        q.append_pair(k, v);
                    }
                }
                q.append_pair("page", &p.to_string());
            }
            json!({"uri": u.to_string()})
        };
        let mut navigation = serde_json::Map::new();
        navigation.insert("firstPage".into(), page_uri(1));
        if end < hits.len() {
            navigation.insert("nextPage".into(), page_uri(page + 1));
        }
        if page > 1 {
            navigation.insert("previousPage".into(), page_uri(page - 1));
        }
        json_response(
            StatusCode::OK,
            &json!({
                "uri": page_uri(page)["uri"],
                "records": records,
                "paging": {"page": page, "perPage": per_page, "pageStart": start,
                           "pageEnd": end.saturating_sub(1)},
                "navigation": navigation,
            }),
        )
    }
}
