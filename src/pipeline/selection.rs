//! The selection fingerprint: what a pipeline selects (resource, role,
//! cursor, filters with their presets expanded, columns, filter transforms).
//! Stored with the watermark, it lets a run notice that "since the last run"
//! would now mean something different, and stop instead of silently skipping
//! records the new selection adds before the watermark.

use sha2::{Digest, Sha256};

use crate::config::PipelineFile;
use crate::state::{Selection, SelectionChange};
use crate::transforms::TransformSpec;

/// The fingerprint of what `spec` selects.
pub fn fingerprint(spec: &PipelineFile) -> Selection {
    let mut parts = spec.source.selection();
    let mut put = |k: &str, v: String| {
        parts.insert(k.to_string(), v);
    };
    put("columns", digest(&format!("{:?}", spec.columns)));
    let filter_steps: Vec<&TransformSpec> = spec
        .transforms
        .iter()
        .filter(|t| matches!(t, TransformSpec::Filter(_)))
        .collect();
    put("filter transforms", digest(&format!("{filter_steps:?}")));
    Selection(parts)
}

fn digest(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    format!("sha256:{}", hex::encode(&hash[..8]))
}

/// The explanation for a run stopped by a changed selection: what changed and the choices.
pub fn explain(
    changes: &[SelectionChange],
    watermark: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    let shown = |v: &Option<String>| match v {
        None => "(not recorded)".to_string(),
        Some(v) if v.starts_with("sha256:") => "…".to_string(),
        Some(v) if v.is_empty() => "(none)".to_string(),
        Some(v) => format!("`{v}`"),
    };
    let mut lines = Vec::new();
    for c in changes {
        let detail = match (&c.before, &c.after) {
            (Some(b), Some(a)) if b.starts_with("sha256:") && a.starts_with("sha256:") => {
                String::new()
            }
            (b, a) => format!(": {} → {}", shown(b), shown(a)),
        };
        lines.push(format!("      - {}{detail}", c.part));
    }
    let since = watermark.map_or_else(
        || "the watermark".to_string(),
        |w| w.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    format!(
        "the selection changed since the last committed run, so \"since the last run\" no longer \
         means what it did (records the new selection adds that last changed before {since} would \
         never be exported):\n{}\n    Choose one:\n      \
         --full-refresh: export everything again under the new selection;\n      \
         --since <start> --until {since}: backfill what the new selection adds (the state is left \
         alone), then run once with --accept-selection-change;\n      \
         --accept-selection-change: carry on from the watermark under the new selection",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(parts: &[(&str, &str)]) -> Selection {
        Selection(
            parts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_explanation_names_each_changed_part_and_every_choice() {
        let before = sel(&[
            ("source filters", "state=eq.PAID"),
            ("columns", "sha256:00"),
            ("role", "admin"),
        ]);
        let now = sel(&[
            ("source filters", "state=in.(APPROVED,PAID)"),
            ("columns", "sha256:01"),
            ("role", "admin"),
            ("fund_source", "Reimbursable"),
        ]);
        let changes = before.changes(&now);
        let parts: Vec<_> = changes.iter().map(|c| c.part.as_str()).collect();
        assert_eq!(parts, ["columns", "fund_source", "source filters"]);
        let text = explain(&changes, None);
        eprintln!("{text}");
        assert!(text.contains("source filters: `state=eq.PAID` → `state=in.(APPROVED,PAID)`"));
        assert!(text.contains("fund_source: (not recorded) → `Reimbursable`"));
        assert!(text.contains("- columns\n"));
        for choice in ["--full-refresh", "--since", "--accept-selection-change"] {
            assert!(text.contains(choice), "{choice}");
        }
    }
}
