//! Deterministic data generation: the same seed and size always give the
//! same organisation, byte for byte.

use std::collections::HashSet;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use super::model::{
    Account, CatKind, Category, Ctx, Currency, Custom, Embedded, Employee, Expense, ReportInfo,
    State, TRAVEL_TYPES, flag,
};
use super::rng::Rng;
use super::values::fmt_ts;

const US: i64 = 1_000_000;
const HOUR: i64 = 3600 * US;
const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z
pub(crate) const WINDOW_START: i64 = 1_704_067_200 * US;
/// 2025-06-30T00:00:00Z: every generated timestamp is at or before this.
pub(crate) const WINDOW_END: i64 = 1_751_241_600 * US;
/// A nightly bulk job touched many expenses at this one instant, so clients
/// paging on (updated_at, id) meet ties larger than a page.
pub(crate) const BULK_UPDATED_AT: i64 = WINDOW_END - 2 * HOUR + 123_456;

pub(crate) const ORG_NAME: &str = "Acme Simulated Inc.";
pub(crate) const ORG_DOMAIN: &str = "acme-sim.example";

/// Plain merchants, then the awkward ones real data has.
const MERCHANTS: &[&str] = &[
    "Uber",
    "Lyft",
    "Starbucks",
    "Delta Air Lines",
    "Marriott",
    "Amazon Web Services",
    "Office Depot",
    "Hilton",
    "Shell",
    "WeWork",
    "Zoom",
    "Slack",
    "Hertz",
    "Chipotle",
    "FedEx",
    "United Airlines",
    "Amtrak",
    "Hyatt",
    "Costco",
    "Staples",
];
const AWKWARD_MERCHANTS: &[&str] = &[
    "Café ☕",
    "東京タワー",
    "O'Brien \"The Pub\", Ltd.",
    "Smith, Jones & Co",
    "Two-line\nBistro",
    "CRLF Diner\r\nSuite 5",
    "=SUM(A1:A9)",
    "+1 Taxi",
    "-Minus Café",
    "@Home Deli",
    "Zürich Hauptbahnhof",
    "Ελληνικό Καφέ",
    "Пекарня «Хлеб»",
    "مطعم السلام",
    "🍕 Pizza Place",
    "Tab\tSeparated Bar",
    "  Padded Merchant  ",
    "Back\\slash Bar",
    "Semi;colon Store",
    "Very Long Merchant Name Incorporated International Holdings Worldwide Limited Partnership Company of America and Canada, Europe, Middle East & Africa Division (Consolidated)",
];
const PURPOSES: &[&str] = &[
    "Client dinner",
    "Team offsite",
    "Conference travel",
    "Airport transfer",
    "Office supplies",
    "Software subscription",
    "Customer visit",
    "Training course",
    "Hotel stay for onsite",
    "Team lunch",
];
const AWKWARD_PURPOSES: &[&str] = &[
    "Dinner with client, discussed Q3 \"renewal\"",
    "Line one\nline two",
    "CRLF note\r\nsecond line",
    "Team lunch 🎉",
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "-5% discount applied",
    "+review pending",
    "@channel snacks",
    "Réunion à Paris — budget approuvé",
    "出張 大阪",
];
const CLIENT_CODES: &[&str] = &[
    "ACME-01",
    "GLOBEX-7",
    "INITECH",
    "UMBRELLA, Inc.",
    "=1+1",
    "Ünïcode-Ω",
];
const COST_CODES: &[&str] = &["GL-6100", "GL-6200", "GL-6300", "GL-7100"];
const APPROVER_COMMENTS: &[&str] = &[
    "Approved, thanks",
    "Please attach the itemised receipt next time",
    "OK — within policy",
];
const SOURCES: &[&str] = &["WEBAPP", "MOBILE", "EMAIL", "CORPORATE_CARD", "BULK_UPLOAD"];
const REPORT_TITLES: &[&str] = &[
    "Business trip to London",
    "March expenses",
    "Client visit, NYC",
    "Conference: RustConf 2024",
    "Q2 \"misc\" expenses",
    "Déplacement Zürich",
    "Offsite 🎉",
];

const FIRST_NAMES: &[&str] = &[
    "John", "Maria", "Wei", "Aarav", "Sofia", "Liam", "Chloé", "José", "Yuki", "Olu", "Siobhán",
    "Mateo", "Anna", "Zoë", "Björn", "Priya", "Ahmed", "Emma", "Noah", "Hana",
];
const LAST_NAMES: &[&str] = &[
    "Doe",
    "García",
    "Chen",
    "Sharma",
    "Rossi",
    "O'Brien",
    "Müller",
    "Núñez",
    "山田",
    "Okafor",
    "Smith",
    "Kowalski",
    "Dubois",
    "Nguyen",
    "Andersson",
    "Patel",
    "Haddad",
    "Brown",
    "Jones",
    "Kim",
];
const DEPARTMENTS: &[(&str, Option<&str>)] = &[
    ("Sales", Some("Outbound Sales")),
    ("Engineering", None),
    ("Finance", Some("Accounts Payable")),
    ("Marketing", None),
    ("Operations", Some("EMEA")),
];
const LEVELS: [&str; 3] = ["Associate I", "Senior", "Principal"];
const TITLES: &[&str] = &[
    "Account Executive",
    "Software Engineer",
    "Accountant",
    "Branch Manager",
    "Analyst",
];
const LOCATIONS: &[&str] = &[
    "San Francisco HQ",
    "London Office",
    "Bangalore Ofc",
    "Remote",
];

/// (name, sub category, system category, kind)
const CATEGORIES: &[(&str, Option<&str>, &str, CatKind)] = &[
    ("Food", None, "Food", CatKind::Plain),
    ("Travel", Some("Flight"), "Airlines", CatKind::Flight),
    ("Travel", Some("Taxi"), "Taxi", CatKind::Taxi),
    ("Travel", Some("Train"), "Train", CatKind::Train),
    ("Lodging", Some("Hotel"), "Lodging", CatKind::Hotel),
    ("Mileage", None, "Mileage", CatKind::Mileage),
    ("Office Supplies", None, "Office Supplies", CatKind::Plain),
    ("Software", Some("SaaS"), "Software", CatKind::Plain),
    (
        "Meals & Entertainment",
        None,
        "Entertainment",
        CatKind::Plain,
    ),
    ("Internet", None, "Internet", CatKind::Plain),
    ("Phone", None, "Phone", CatKind::Plain),
    ("Training", None, "Training", CatKind::Plain),
    ("Conferences", None, "Others", CatKind::Plain),
    ("Fuel", None, "Fuel", CatKind::Plain),
    ("Parking, Tolls", None, "Parking", CatKind::Plain),
    ("Courier", None, "Others", CatKind::Plain),
    ("Client Gifts", None, "Others", CatKind::Plain),
    ("Bank Charges", None, "Others", CatKind::Plain),
    ("Rent", None, "Others", CatKind::Plain),
    ("Unspecified", None, "Unspecified", CatKind::Plain),
];
const PROJECTS: &[(&str, Option<&str>)] = &[
    ("Website Redesign", None),
    ("Café Relaunch", Some("Phase 1")),
    ("Projekt Müller", None),
    ("東京 Expansion", None),
    ("Acme, Globex merger", None),
    ("Internal", Some("Tooling")),
    ("Client \"Initech\"", None),
    ("Mobile App", Some("iOS")),
    ("Mobile App", Some("Android")),
    ("Data Platform", None),
    ("Q3 Campaign", None),
    ("R&D", None),
    ("Onboarding", None),
    ("Security Audit", None),
    ("Legacy Migration", None),
];
const COST_CENTERS: &[(&str, Option<&str>)] = &[
    ("Sales & Marketing", Some("CC-100")),
    ("R&D", Some("CC-200")),
    ("G&A", Some("CC-300")),
    ("Operations, EMEA", Some("CC-400")),
    ("Customer Success", None),
    ("Zentrale Verwaltung", Some("CC-600")),
    ("Finance", Some("CC-700")),
    ("Legal \"Shared\"", Some("CC-800")),
];

/// Everything the simulator serves, freshly generated.
pub(crate) struct Generated {
    pub(crate) ctx: Ctx,
    /// Sorted by id.
    pub(crate) expenses: Vec<Expense>,
    pub(crate) employees: Vec<Value>,
    pub(crate) categories: Vec<Value>,
    pub(crate) projects: Vec<Value>,
    pub(crate) cost_centers: Vec<Value>,
    pub(crate) admin: usize,
}

struct Ids {
    seen: HashSet<String>,
}

impl Ids {
    fn make(&mut self, rng: &mut Rng, prefix: &str) -> String {
        loop {
            let id = format!("{prefix}{}", rng.alnum(10));
            if self.seen.insert(id.clone()) {
                return id;
            }
        }
    }
}

fn midnight(us: i64) -> i64 {
    us - us.rem_euclid(DAY)
}

fn month_seq(us: i64) -> (i32, u32) {
    use chrono::Datelike;
    let d = chrono::DateTime::from_timestamp_micros(us).expect("in range");
    (d.year(), d.month())
}

fn random_id_int(rng: &mut Rng, base: i64, i: usize) -> i64 {
    base + i as i64 * 37 + rng.range(0, 30)
}

pub(crate) fn generate(seed: u64, n_expenses: usize) -> Generated {
    let mut root = Rng::new(seed);
    let mut ids = Ids {
        seen: HashSet::with_capacity(n_expenses * 2 + 1000),
    };
    let mut rng = root.fork(1);
    let org_id = ids.make(&mut rng, "or");

    let currencies = vec![
        cur("EUR", "1.0850", 2),
        cur("GBP", "1.2710", 2),
        cur("INR", "0.01198", 2),
        cur("JPY", "0.006712", 0),
        cur("CAD", "0.7342", 2),
        cur("AUD", "0.6610", 2),
        cur("SGD", "0.7420", 2),
        cur("CHF", "1.1280", 2),
    ];

    // ---- departments
    let departments: Vec<(String, Value, Value)> = DEPARTMENTS
        .iter()
        .enumerate()
        .map(|(i, (name, sub))| {
            let id = ids.make(&mut rng, "dept");
            let code = format!("D{:02}", i + 1);
            let display = match sub {
                Some(s) => format!("{name} / {s}"),
                None => (*name).to_owned(),
            };
            let embed = json!({"id": id, "code": code, "name": name, "sub_department": sub, "display_name": display});
            let emp_embed = json!({"id": id, "code": code, "name": name, "sub_department": sub});
            (id, embed, emp_embed)
        })
        .collect();

    // ---- categories, projects, cost centers
    let created_base = WINDOW_START - 200 * DAY;
    let mut categories = Vec::new();
    let mut category_values = Vec::new();
    for (i, (name, sub, system, kind)) in CATEGORIES.iter().enumerate() {
        let id = random_id_int(&mut rng, 145_800, i);
        let display = match sub {
            Some(s) => format!("{name} / {s}"),
            None => (*name).to_owned(),
        };
        let code = if i % 4 == 3 {
            None
        } else {
            Some(format!("CAT-{:02}", i + 1))
        };
        let embed = json!({
            "id": id, "system_category": system, "name": name, "sub_category": sub,
            "code": code, "display_name": display,
        });
        let created = created_base + rng.range(0, 30 * DAY);
        category_values.push(json!({
            "created_at": fmt_ts(created),
            "updated_at": fmt_ts(created + rng.range(0, 90 * DAY)),
            "id": id,
            "org_id": org_id,
            "display_name": display,
            "code": code,
            "is_enabled": i != CATEGORIES.len() - 2,
            "name": name,
            "sub_category": sub,
            "system_category": system,
            "restricted_project_ids": null,
            "restricted_spender_user_ids": null,
        }));
        categories.push(Category {
            id,
            name: (*name).to_owned(),
            kind: *kind,
            embed,
        });
    }
    let mut projects = Vec::new();
    let mut project_values = Vec::new();
    for (i, (name, sub)) in PROJECTS.iter().enumerate() {
        let id = random_id_int(&mut rng, 301_200, i);
        let display = match sub {
            Some(s) => format!("{name} / {s}"),
            None => (*name).to_owned(),
        };
        let code = if i % 5 == 4 {
            None
        } else {
            Some(format!("PRJ-{:03}", i + 1))
        };
        let created = created_base + rng.range(0, 60 * DAY);
        project_values.push(json!({
            "created_at": fmt_ts(created),
            "updated_at": fmt_ts(created + rng.range(0, 90 * DAY)),
            "id": id,
            "org_id": org_id,
            "name": name,
            "sub_project": sub,
            "display_name": display,
            "is_enabled": true,
            "code": code,
            "description": if i % 3 == 0 { Some(format!("{display}: budget line, \"approved\"")) } else { None },
            "restricted_spender_user_ids": null,
            "approver_user_ids": [],
            "approver_users": [],
            "category_ids": null,
            "default_billable": i % 4 == 0,
        }));
        projects.push(Embedded {
            id,
            embed: json!({"id": id, "name": name, "sub_project": sub, "code": code, "display_name": display}),
        });
    }
    let mut cost_centers = Vec::new();
    let mut cost_center_values = Vec::new();
    for (i, (name, code)) in COST_CENTERS.iter().enumerate() {
        let id = random_id_int(&mut rng, 9_100, i);
        let created = created_base + rng.range(0, 60 * DAY);
        cost_center_values.push(json!({
            "created_at": fmt_ts(created),
            "updated_at": fmt_ts(created + rng.range(0, 90 * DAY)),
            "id": id,
            "org_id": org_id,
            "name": name,
            "is_enabled": i != 5,
            "code": code,
            "description": if i % 2 == 0 { Some(format!("{name} cost center")) } else { None },
            "restricted_spender_user_ids": null,
        }));
        cost_centers.push(Embedded {
            id,
            embed: json!({"id": id, "name": name, "code": code}),
        });
    }

    // ---- employees
    let n_emp = (n_expenses / 50).max(5);
    let mut erng = root.fork(2);
    let mut employees = Vec::with_capacity(n_emp);
    let mut employee_values = Vec::with_capacity(n_emp);
    let mut emails = HashSet::new();
    for i in 0..n_emp {
        let first = *erng.pick(FIRST_NAMES);
        let last = *erng.pick(LAST_NAMES);
        let full_name = format!("{first} {last}");
        let mut local = ascii_local(&format!("{first}.{last}"));
        if local.ends_with('.') || local.is_empty() {
            local.push_str(&format!("user{i}"));
        }
        let mut email = format!("{local}@{ORG_DOMAIN}");
        if !emails.insert(email.clone()) {
            email = format!("{local}{i}@{ORG_DOMAIN}");
            emails.insert(email.clone());
        }
        let id = ids.make(&mut erng, "ou");
        let user_id = ids.make(&mut erng, "us");
        let account_ids = [
            ids.make(&mut erng, "acc"),
            ids.make(&mut erng, "acc"),
            ids.make(&mut erng, "acc"),
        ];
        let card_id = ids.make(&mut erng, "bacc");
        let card_number = format!("xxxx-{:04}", erng.range(0, 10_000));
        let code = if erng.chance(0.9) {
            Some(format!("E{:05}", 10_000 + i))
        } else {
            None
        };
        let dept = erng.below(departments.len() as u64) as usize;
        let title = *erng.pick(TITLES);
        let location = *erng.pick(LOCATIONS);
        let business_unit = if erng.chance(0.7) {
            Some("Finance ops")
        } else {
            None
        };
        // Team leads approve their team of eight; the first lead approves themself-free by pointing at the admin.
        let manager = if i % 8 == 0 {
            if i == 0 { 1.min(n_emp - 1) } else { 0 }
        } else {
            i - i % 8
        };
        let joined = WINDOW_START - erng.range(30 * DAY, 1500 * DAY);
        let region = *erng.pick(&["EMEA", "AMER", "APAC"]);
        let user_embed = json!({"id": user_id, "email": email, "full_name": full_name});
        let level = json!({"id": format!("lvl{:08}", i % 3), "name": LEVELS[i % 3], "band": "IC"});
        let embed = json!({
            "id": id,
            "user_id": user_id,
            "user": user_embed,
            "code": code,
            "org_id": org_id,
            "org_name": ORG_NAME,
            "department_id": departments[dept].0,
            "department": departments[dept].1,
            "level": level,
            "location": location,
            "title": title,
            "business_unit": business_unit,
            "custom_fields": [{"id": 311_001, "name": "Region", "value": region}],
            "flattened_custom_field": {"region": region},
            "has_accepted_invite": true,
            "is_enabled": true,
            "mobile": if i % 3 == 0 { Some(format!("+1415555{:04}", i % 10_000)) } else { None },
            "joined_at": fmt_ts(joined),
        });
        let report_embed = json!({
            "id": id,
            "user_id": user_id,
            "user": user_embed,
            "code": code,
            "org_id": org_id,
            "department_id": departments[dept].0,
            "department": departments[dept].1,
            "ach_account": {},
            "business_unit": business_unit,
            "location": location,
            "title": title,
        });
        let account_embeds = [
            json!({"id": account_ids[0], "type": Account::Cash.type_name()}),
            json!({"id": account_ids[1], "type": Account::Card.type_name()}),
            json!({"id": account_ids[2], "type": Account::Advance.type_name()}),
        ];
        let roles: Vec<&str> = if i == 0 {
            vec![
                "FYLER",
                "APPROVER",
                "ADMIN",
                "ACCOUNTANT",
                "PAYMENT_PROCESSOR",
                "OWNER",
            ]
        } else if i % 8 == 0 {
            vec!["FYLER", "APPROVER"]
        } else {
            vec!["FYLER"]
        };
        employee_values.push((
            i,
            json!({
                "created_at": fmt_ts(joined),
                "updated_at": fmt_ts(joined + erng.range(0, 400 * DAY)),
                "id": id,
                "business_unit": business_unit,
                "code": code,
                "custom_fields": [{"id": 311_001, "name": "Region", "value": region}],
                "department": departments[dept].2,
                "department_id": departments[dept].0,
                "is_enabled": i % 17 != 16,
                "joined_at": fmt_ts(joined),
                "level": level,
                "level_id": level["id"],
                "location": location,
                "org_id": org_id,
                "roles": roles,
                "special_email": format!("receipts+{}@fyle.ai", user_id.to_lowercase()),
                "title": title,
                "user_id": user_id,
                "user": user_embed,
                "mileage_rate_ids": [],
                "mileage_rates": [],
                "cost_center_ids": [],
                "cost_centers": [],
                "per_diem_rate_ids": [],
                "per_diem_rates": [],
                "project_ids": [],
                "projects": [],
                "approver_user_ids": [],
                "approver_users": [],
                "has_accepted_invite": i % 11 != 10,
                "branch_account": null,
                "branch_ifsc": null,
                "mobile": embed["mobile"],
                "locale": {"abbreviation": "UTC", "offset": "00:00:00", "timezone": "Etc/UTC"},
                "mileage_settings": null,
                "ach_account": null,
                "delegatees": [],
                "category_ids": [],
                "categories": [],
                "flattened_custom_field": {"region": region},
                "is_mobile_verified": false,
            }),
        ));
        employees.push(Employee {
            id,
            user_id,
            email,
            full_name,
            manager,
            account_ids,
            card_id,
            card_number,
            user_embed,
            embed,
            report_embed,
            account_embeds,
        });
    }
    // Approver lists need every employee's user embed, so fill them in afterwards.
    let employee_values: Vec<Value> = employee_values
        .into_iter()
        .map(|(i, mut v)| {
            let mgr = &employees[employees[i].manager];
            v["approver_user_ids"] = json!([mgr.user_id]);
            v["approver_users"] = json!([mgr.user_embed]);
            v
        })
        .collect();

    let mut ctx = Ctx {
        org_id,
        org_name: ORG_NAME,
        currency: "USD",
        minor_digits: 2,
        float_noise: 0.0,
        non_reimbursable_cash: 0.0,
        employees,
        categories,
        projects,
        cost_centers,
        reports: Vec::new(),
        currencies,
        tax_group_id: String::new(),
        tpa_id: String::new(),
    };
    ctx.tax_group_id = ids.make(&mut rng, "tg");
    ctx.tpa_id = format!("tpa{}", rng.alnum(10));

    // ---- expenses and reports
    let mut xrng = root.fork(3);
    let mut expenses: Vec<Expense> = Vec::with_capacity(n_expenses);
    // Per employee: (report index, expenses still to add) of the report being filled.
    let mut open: Vec<Option<(u32, u32)>> = vec![None; n_emp];
    let mut report_state: Vec<State> = Vec::new();
    let mut report_times: Vec<[i64; 5]> = Vec::new();
    let mut report_seq_by_month: std::collections::HashMap<(i32, u32), u32> = Default::default();
    let mut expense_seq_by_month: std::collections::HashMap<(i32, u32), u32> = Default::default();

    for _ in 0..n_expenses {
        let r = &mut xrng;
        let emp = r.below(n_emp as u64) as u32;
        let reported = r.chance(0.8);
        let state;
        let mut report = None;
        let created_at;
        let mut times = [0i64; 5]; // submitted, approved, payment pending, settled, paid
        if reported {
            let (rep, left) = match open[emp as usize] {
                Some((rep, left)) if left > 0 => (rep, left),
                _ => {
                    let rep = ctx.reports.len() as u32;
                    let st = [
                        State::Complete,
                        State::ApproverPending,
                        State::Approved,
                        State::PaymentPending,
                        State::PaymentProcessing,
                        State::Paid,
                    ][r.weighted(&[8, 14, 14, 10, 14, 40])];
                    let t0 = r.range(WINDOW_START + 20 * DAY, WINDOW_END - 40 * DAY);
                    let submitted = t0 + r.range(HOUR, 3 * DAY);
                    let approved = submitted + r.range(HOUR, 5 * DAY);
                    let pending = approved + r.range(60 * US, DAY);
                    let settled = pending + r.range(HOUR, 7 * DAY);
                    let paid = settled + r.range(HOUR, 4 * DAY);
                    let (y, m) = month_seq(t0);
                    let seq = report_seq_by_month.entry((y, m)).or_insert(0);
                    *seq += 1;
                    let seq_num = format!("C/{y}/{m:02}/R/{seq}");
                    let id = ids.make(r, "rp");
                    let reim = ids.make(r, "reim");
                    ctx.reports.push(ReportInfo {
                        id,
                        seq_num,
                        title: if r.chance(0.9) {
                            Some(*r.pick(REPORT_TITLES))
                        } else {
                            None
                        },
                        emp,
                        created_at: t0,
                        reimbursement_id: reim,
                        reimbursement_seq_num: format!("P/{y}/{m:02}/{}", rep + 1),
                    });
                    report_state.push(st);
                    report_times.push([submitted, approved, pending, settled, paid]);
                    (
                        rep,
                        1 + r.weighted(&[5, 10, 15, 20, 20, 12, 8, 6, 4]) as u32,
                    )
                }
            };
            open[emp as usize] = Some((rep, left - 1));
            report = Some(rep);
            state = report_state[rep as usize];
            times = report_times[rep as usize];
            let t0 = ctx.reports[rep as usize].created_at;
            created_at = t0 - r.range(0, 20 * DAY);
        } else {
            state = [State::Draft, State::Complete, State::Unreportable][r.weighted(&[10, 8, 2])];
            created_at = r.range(WINDOW_START + 20 * DAY, WINDOW_END - 40 * DAY);
        }
        let spent_at = midnight(created_at - r.range(0, 10 * DAY));
        let added_to_report_at = report.map(|rep| {
            let t0 = ctx.reports[rep as usize].created_at;
            t0.max(created_at) + r.range(0, 60 * US)
        });
        let (mut submitted_at, mut approved_at, mut settled_at, mut paid_at) =
            (None, None, None, None);
        let mut updated_at = created_at
            + if r.chance(0.5) {
                0
            } else {
                r.range(US, 3 * DAY)
            };
        if report.is_some() {
            updated_at = added_to_report_at.unwrap_or(updated_at).max(updated_at);
            // Expenses change with their report, so siblings share updated_at exactly.
            if state >= State::ApproverPending {
                submitted_at = Some(times[0]);
                updated_at = times[0];
            }
            if state.is_approved() {
                approved_at = Some(times[1]);
                updated_at = times[1];
            }
            if state >= State::PaymentPending {
                updated_at = times[2];
            }
            if state.is_settled() {
                settled_at = Some(times[3]);
                updated_at = times[3];
            }
            if state == State::Paid {
                paid_at = Some(times[4]);
                updated_at = times[4];
            }
        }
        if r.chance(0.1) {
            // edited later by an admin (recategorised, etc.)
            updated_at += r.range(US, 20 * DAY);
        }
        if r.chance(0.08) {
            updated_at = BULK_UPDATED_AT;
        }
        updated_at = updated_at.min(BULK_UPDATED_AT);

        // category and amount
        let category = if r.chance(0.97) {
            Some(r.below(ctx.categories.len() as u64) as u16)
        } else {
            None
        };
        let kind = category.map_or(CatKind::Plain, |c| ctx.categories[c as usize].kind);
        let mut foreign = None;
        let mut distance_tenths = None;
        let amount = if kind == CatKind::Mileage {
            let d = r.range(10, 3000);
            distance_tenths = Some(d);
            Ctx::mileage_amount(d)
        } else if r.chance(0.12) {
            let c = r.below(ctx.currencies.len() as u64) as u8;
            let cu = &ctx.currencies[c as usize];
            let units = if cu.decimals == 0 {
                r.range(300, 90_000)
            } else {
                r.range(100, 200_000)
            };
            let fa = Decimal::new(units, cu.decimals);
            let home =
                (fa * cu.rate).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
            foreign = Some((c, fa));
            (home * Decimal::from(100))
                .trunc()
                .to_i64()
                .unwrap_or(0)
                .max(1)
        } else {
            match r.weighted(&[60, 20, 8, 4, 1, 3]) {
                0 => r.range(500, 15_000),
                1 => r.range(15_000, 200_000),
                2 => r.range(1, 501) * 100,
                3 => *r.pick(&[10, 10, 25, 50, 99, 1]),
                4 => *r.pick(&[12_345_678, 1_000_000, 4_999_999, 15_000_000]),
                _ => -r.range(500, 30_000),
            }
        };
        let tax = if r.chance(0.3) && amount > 0 {
            // 5% GST included in the total, rounded to the cent
            Some((amount * 5 + 52) / 105)
        } else {
            None
        };

        let account = match r.weighted(&[70, 27, 3]) {
            0 => Account::Cash,
            1 => Account::Card,
            _ => Account::Advance,
        };
        let merchant = match r.weighted(&[85, 10, 5]) {
            0 => Some(*r.pick(MERCHANTS)),
            1 => Some(*r.pick(AWKWARD_MERCHANTS)),
            _ => None,
        };
        let purpose = match r.weighted(&[84, 8, 8]) {
            0 => Some(*r.pick(PURPOSES)),
            1 => Some(*r.pick(AWKWARD_PURPOSES)),
            _ => None,
        };
        let project = if r.chance(0.8) {
            Some(r.below(ctx.projects.len() as u64) as u16)
        } else {
            None
        };
        let cost_center = if r.chance(0.75) {
            Some(r.below(ctx.cost_centers.len() as u64) as u16)
        } else {
            None
        };
        let custom = if r.chance(0.7) {
            Some(Custom {
                client_code: if r.chance(0.6) {
                    Some(*r.pick(CLIENT_CODES))
                } else {
                    None
                },
                cost_code: if state == State::Draft || r.chance(0.2) {
                    None
                } else {
                    Some(*r.pick(COST_CODES))
                },
                attendees: if r.chance(0.5) {
                    Some(r.range(1, 12))
                } else {
                    None
                },
                travel_types: (r.below(1 << TRAVEL_TYPES.len())) as u8,
                invoice_date: if r.chance(0.4) { Some(spent_at) } else { None },
                billable_to_client: if r.chance(0.8) {
                    Some(r.chance(0.3))
                } else {
                    None
                },
            })
        } else {
            None
        };
        let mut flags = 0u16;
        let mut set = |f: u16, p: f64, r: &mut Rng| {
            if r.chance(p) {
                flags |= f;
            }
        };
        set(flag::BILLABLE, if project.is_some() { 0.3 } else { 0.0 }, r);
        set(flag::RECEIPT, 0.65, r);
        set(flag::PDF, 0.4, r);
        set(flag::MANUALLY_FLAGGED, 0.03, r);
        set(flag::POLICY_FLAGGED, 0.06, r);
        set(
            flag::VERIFIED,
            if state.is_approved() { 0.5 } else { 0.0 },
            r,
        );
        set(
            flag::RECONCILED,
            if account == Account::Card { 0.6 } else { 0.0 },
            r,
        );
        set(flag::RECEIPT_MANDATORY, 0.5, r);
        set(flag::EXTRACTED, 0.4, r);
        set(flag::DUPLICATE, 0.01, r);
        set(flag::AUTO_MATCHED, 0.7, r);
        set(flag::ROUND_TRIP, 0.4, r);
        set(flag::BREAKFAST, 0.5, r);
        let exported_at = if state == State::Paid && r.chance(0.5) {
            flags |= flag::EXPORTED;
            paid_at.map(|p| p + r.range(HOUR, DAY))
        } else {
            None
        };
        let (y, m) = month_seq(created_at);
        let seq = expense_seq_by_month.entry((y, m)).or_insert(0);
        *seq += 1;
        let id = ids.make(r, "tx");
        expenses.push(Expense {
            split_group_id: id.clone(),
            id,
            seq_num: format!("E/{y}/{m:02}/T/{seq}"),
            emp,
            category,
            project,
            cost_center,
            report,
            account,
            state,
            created_at,
            updated_at,
            spent_at,
            added_to_report_at,
            submitted_at,
            approved_at,
            settled_at,
            paid_at,
            exported_at,
            merchant,
            purpose,
            amount,
            foreign,
            tax,
            distance_tenths,
            nights: 1 + r.below(4) as u8,
            report_amount: 0,
            split_group_amount: amount,
            is_split: false,
            custom,
            flags,
            source: SOURCES[r.below(SOURCES.len() as u64) as usize],
            approver_comment: if state.is_approved() && r.chance(0.2) {
                Some(*r.pick(APPROVER_COMMENTS))
            } else {
                None
            },
            invoice_number: if r.chance(0.15) {
                Some(r.range(1, 100_000) as u32)
            } else {
                None
            },
            cities: (r.below(8) as u8, r.below(8) as u8),
            export_summary: None,
        });
    }

    // Split expenses: a few neighbours of the same employee and report become
    // one split group, keyed by the first expense's id as Fyle does.
    let mut srng = root.fork(4);
    let mut i = 0;
    while i + 1 < expenses.len() {
        let parts = 2 + srng.below(2) as usize;
        if srng.chance(0.02) && i + parts <= expenses.len() {
            let group = &mut expenses[i..i + parts];
            let lead = group[0].clone();
            for e in group.iter_mut() {
                e.emp = lead.emp;
                e.report = lead.report;
                e.state = lead.state;
                e.created_at = lead.created_at;
                e.updated_at = lead.updated_at;
                e.spent_at = lead.spent_at;
                e.added_to_report_at = lead.added_to_report_at;
                e.submitted_at = lead.submitted_at;
                e.approved_at = lead.approved_at;
                e.settled_at = lead.settled_at;
                e.paid_at = lead.paid_at;
                e.exported_at = lead.exported_at;
                e.account = lead.account;
                e.merchant = lead.merchant;
                e.foreign = None;
                e.distance_tenths = None;
                e.split_group_id = lead.id.clone();
                e.is_split = true;
                if e.flags & flag::EXPORTED != lead.flags & flag::EXPORTED {
                    e.flags ^= flag::EXPORTED;
                }
                if e.amount <= 0 {
                    e.amount = -e.amount + 100;
                }
            }
            let total: i64 = group.iter().map(|e| e.amount).sum();
            for e in group.iter_mut() {
                e.split_group_amount = total;
                if e.tax.is_some() {
                    e.tax = Some((e.amount * 5 + 52) / 105);
                }
            }
            i += parts;
        } else {
            i += 1;
        }
    }
    // Categories of split parts may be mileage while the amount no longer is.
    for e in &mut expenses {
        let kind = e
            .category
            .map_or(CatKind::Plain, |c| ctx.categories[c as usize].kind);
        if kind == CatKind::Mileage && e.distance_tenths.is_none() {
            e.category = Some(0);
        }
    }

    // Report totals (snapshot into each expense's report embed).
    let mut totals = vec![0i64; ctx.reports.len()];
    for e in &expenses {
        if let Some(r) = e.report {
            totals[r as usize] += e.amount;
        }
    }
    for e in &mut expenses {
        if let Some(r) = e.report {
            e.report_amount = totals[r as usize];
        }
    }

    // Reports are served sorted by id; renumber so index order is id order.
    let mut order: Vec<usize> = (0..ctx.reports.len()).collect();
    order.sort_by(|&a, &b| ctx.reports[a].id.cmp(&ctx.reports[b].id));
    let mut new_index = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new as u32;
    }
    let mut infos: Vec<Option<ReportInfo>> = std::mem::take(&mut ctx.reports)
        .into_iter()
        .map(Some)
        .collect();
    ctx.reports = order
        .iter()
        .map(|&old| infos[old].take().expect("each report once"))
        .collect();
    for e in &mut expenses {
        if let Some(r) = e.report.as_mut() {
            *r = new_index[*r as usize];
        }
    }

    expenses.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut employee_values = employee_values;
    employee_values.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Generated {
        ctx,
        expenses,
        employees: employee_values,
        categories: category_values,
        projects: project_values,
        cost_centers: cost_center_values,
        admin: 0,
    }
}

fn cur(code: &'static str, rate: &str, decimals: u32) -> Currency {
    Currency {
        code,
        rate: rate.parse().expect("rate literal"),
        decimals,
    }
}

/// An ASCII e-mail local part for a display name ("Chloé Núñez" → "chloe.nunez").
fn ascii_local(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let mapped = match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' => "a",
            'é' | 'è' | 'ê' | 'ë' => "e",
            'í' | 'ì' | 'î' | 'ï' => "i",
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' => "o",
            'ú' | 'ù' | 'û' | 'ü' => "u",
            'ñ' => "n",
            'ç' => "c",
            'Ö' => "o",
            '\'' => "",
            c if c.is_ascii_alphanumeric() || c == '.' => {
                out.push(c.to_ascii_lowercase());
                continue;
            }
            _ => "",
        };
        out.push_str(mapped);
    }
    out
}

/// The `/spender/my_profile` body for the admin user.
pub(crate) fn my_profile(ctx: &Ctx, admin: usize) -> Value {
    let emp = &ctx.employees[admin];
    json!({
        "data": {
            "user_id": emp.user_id,
            "org_id": ctx.org_id,
            "org": {"id": ctx.org_id, "name": ctx.org_name, "domain": ORG_DOMAIN, "currency": ctx.currency},
            "user": emp.user_embed,
            "roles": ["FYLER", "APPROVER", "ADMIN", "ACCOUNTANT", "PAYMENT_PROCESSOR", "OWNER"],
        }
    })
}
