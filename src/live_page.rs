//! The live page at `GET /` on the admin listener, and `/live.json` with the same numbers.
//!
//! Server-rendered HTML that refreshes itself every 5 s, with no JavaScript: the calls in
//! progress and the step each is in, every loaded dialplan drawn as SVG by ivrd itself
//! ([`crate::dialplan::graph::to_svg`]) with how many calls took each edge and how many ended
//! in each outcome over the last hour ([`crate::live`]), the last audit rows, and the last
//! reload. Everything from outside (numbers, call ids, plan text) is escaped; callers are
//! masked as in `/status`; no PIN is ever within reach of this page (the audit has none, and
//! flow variables are never read here).

use crate::admin_http::ReloadRecord;
use crate::dialplan::Dialplan;
use crate::dialplan::graph::{SvgCounts, to_svg, xml_escape as escape};
use crate::live::LiveSnapshot;
use crate::metrics::ActiveCall;
use crate::redact::mask_number;
use crate::store::AuditRow;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

/// Rows of the active-calls table; the rest are counted, not listed.
pub const MAX_CALL_ROWS: usize = 200;
/// Audit rows shown.
pub const AUDIT_ROWS: usize = 20;

/// A call in progress, as `/live.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveCallRow {
    pub call_id: String,
    /// Masked.
    pub caller: String,
    pub dialplan: String,
    /// The step the call is in; `None` before its flow starts and after it ends.
    pub step: Option<String>,
    pub seconds: u64,
}

/// The `/live.json` document: the page's numbers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveDoc {
    #[serde(flatten)]
    pub counts: LiveSnapshot,
    pub active_calls: Vec<LiveCallRow>,
}

/// Joins the metrics' calls in progress with the steps [`crate::live`] knows.
pub fn call_rows(calls: &[ActiveCall], steps: &HashMap<u64, String>) -> Vec<LiveCallRow> {
    calls
        .iter()
        .map(|c| LiveCallRow {
            call_id: c.call_id.clone(),
            caller: c.caller.clone(),
            dialplan: c.dialplan.clone(),
            step: steps.get(&c.id).cloned(),
            seconds: c.seconds,
        })
        .collect()
}

/// What the page shows.
pub struct Page<'a> {
    pub version: &'a str,
    pub health: &'a str,
    pub uptime_seconds: u64,
    pub calls: &'a [LiveCallRow],
    pub plans: &'a [Arc<Dialplan>],
    pub counts: &'a LiveSnapshot,
    /// The newest audit rows, or why they could not be read (`None`: no database here).
    pub audit: Option<Result<Vec<AuditRow>, String>>,
    pub last_reload: Option<ReloadRecord>,
    pub now: SystemTime,
}

/// A Call-ID short enough for a table cell: its first 12 characters.
pub fn short_id(id: &str) -> String {
    let mut chars = id.chars();
    let head: String = chars.by_ref().take(12).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A DOM id fragment for the `index`th picture (marker ids must be unique in the page).
fn svg_id(index: usize) -> String {
    format!("plan{index}")
}

const STYLE: &str = "body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;color:#1f2328}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d0d7de}\
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .7em;border-bottom:1px solid #eaeef2;text-align:left}\
td.num,th.num{text-align:right}.muted{color:#57606a}.bad{color:#cf222e}.good{color:#1a7f37}\
.plan{margin:1em 0 2em}.plan svg{display:block;margin-top:.8em;max-width:100%;height:auto}\
code{background:#f6f8fa;padding:0 .3em}";

/// The page.
pub fn render(p: &Page<'_>) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><title>ivrd live</title><style>{STYLE}</style></head><body>\n\
         <h1>ivrd {} — live</h1>\n<p id=\"summary\" class=\"muted\" data-status=\"{}\">{}, up {}, \
         {} active call{}. Counts cover the last {} minutes. This page refreshes every 5 s.</p>\n",
        escape(p.version),
        escape(p.health),
        escape(p.health),
        ago(p.uptime_seconds),
        p.calls.len(),
        if p.calls.len() == 1 { "" } else { "s" },
        p.counts.window_minutes,
    );
    calls_section(&mut out, p);
    plans_section(&mut out, p);
    audit_section(&mut out, p);
    reload_section(&mut out, p);
    out.push_str("</body></html>\n");
    out
}

fn calls_section(out: &mut String, p: &Page<'_>) {
    let _ = writeln!(
        out,
        "<section id=\"calls\"><h2>Active calls (<span id=\"active-count\">{}</span>)</h2>",
        p.calls.len()
    );
    if p.calls.is_empty() {
        out.push_str("<p class=\"muted\">No calls in progress.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>call</th><th>caller</th><th>dialplan</th><th>step now</th><th class=\"num\">seconds</th></tr>\n",
    );
    for c in p.calls.iter().take(MAX_CALL_ROWS) {
        let step = c.step.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "<tr class=\"call\" data-dialplan=\"{}\" data-step=\"{}\"><td title=\"{}\"><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&c.dialplan),
            escape(step),
            escape(&c.call_id),
            escape(&short_id(&c.call_id)),
            escape(&c.caller),
            escape(&c.dialplan),
            if step.is_empty() {
                "<span class=\"muted\">(not in a step)</span>".to_string()
            } else {
                escape(step)
            },
            c.seconds
        );
    }
    out.push_str("</table>\n");
    if p.calls.len() > MAX_CALL_ROWS {
        let _ = writeln!(
            out,
            "<p class=\"more\" data-more=\"{0}\">… and {0} more calls not listed.</p>",
            p.calls.len() - MAX_CALL_ROWS
        );
    }
    out.push_str("</section>\n");
}

fn outcome_table(out: &mut String, plan: &str, counts: &LiveSnapshot) {
    let outcomes = counts.plans.get(plan).map(|c| &c.outcomes);
    match outcomes {
        Some(o) if !o.is_empty() => {
            let total: u64 = o.values().sum();
            let _ = writeln!(
                out,
                "<table class=\"outcomes\"><tr><th>calls ended, last hour</th><th class=\"num\">{total}</th></tr>"
            );
            for (outcome, n) in o {
                let _ = writeln!(
                    out,
                    "<tr class=\"outcome\" data-plan=\"{}\" data-outcome=\"{}\" data-count=\"{n}\"><td>{}</td><td class=\"num count\">{n}</td></tr>",
                    escape(plan),
                    escape(outcome),
                    escape(outcome)
                );
            }
            out.push_str("</table>\n");
        }
        _ => out.push_str("<p class=\"muted\">No call ended here in the last hour.</p>\n"),
    }
}

fn plans_section(out: &mut String, p: &Page<'_>) {
    out.push_str("<section id=\"plans\"><h2>Dialplans</h2>\n");
    if p.plans.is_empty() && p.counts.plans.is_empty() {
        out.push_str("<p class=\"muted\">No dialplans loaded.</p>\n");
    }
    let steps_now = |plan: &str, step: &str| -> u64 {
        p.calls
            .iter()
            .filter(|c| c.dialplan == plan && c.step.as_deref() == Some(step))
            .count() as u64
    };
    for (i, plan) in p.plans.iter().enumerate() {
        let _ = writeln!(
            out,
            "<div class=\"plan\" data-plan=\"{}\"><h3>{}</h3><p class=\"muted\">{} <code>{}</code></p>",
            escape(&plan.name),
            escape(&plan.name),
            escape(&plan.description),
            escape(&plan.file)
        );
        outcome_table(out, &plan.name, p.counts);
        let empty = crate::live::PlanSnapshot::default();
        let counts = p.counts.plans.get(&plan.name).unwrap_or(&empty);
        let edge = |from: &str, outcome: &str, to: &str| counts.edge(from, outcome, to);
        let active = |step: &str| steps_now(&plan.name, step);
        out.push_str(&to_svg(
            plan,
            &svg_id(i),
            &SvgCounts {
                edge: &edge,
                active: &active,
            },
        ));
        out.push_str("</div>\n");
    }
    // Calls of plans not loaded now (the built-in demo, a plan a reload removed).
    for name in p.counts.plans.keys() {
        if p.plans.iter().any(|pl| &pl.name == name) {
            continue;
        }
        let _ = writeln!(
            out,
            "<div class=\"plan\" data-plan=\"{}\"><h3>{}</h3><p class=\"muted\">not a loaded dialplan (the built-in demo, or removed by a reload): no picture</p>",
            escape(name),
            escape(name)
        );
        outcome_table(out, name, p.counts);
        out.push_str("</div>\n");
    }
    if p.counts.dropped > 0 {
        let _ = writeln!(
            out,
            "<p class=\"bad\">{} events were not counted: too many plans or edges to track.</p>",
            p.counts.dropped
        );
    }
    out.push_str("</section>\n");
}

fn audit_section(out: &mut String, p: &Page<'_>) {
    out.push_str("<section id=\"audit\"><h2>Recent calls (audit)</h2>\n");
    let rows = match &p.audit {
        None => {
            out.push_str("<p class=\"muted\">No audit here.</p></section>\n");
            return;
        }
        Some(Err(e)) => {
            let _ = writeln!(
                out,
                "<p class=\"bad\">The audit could not be read: {}</p></section>",
                escape(e)
            );
            return;
        }
        Some(Ok(rows)) if rows.is_empty() => {
            out.push_str("<p class=\"muted\">No calls yet.</p></section>\n");
            return;
        }
        Some(Ok(rows)) => rows,
    };
    out.push_str(
        "<table><tr><th>ended</th><th>call</th><th>caller</th><th>dialed</th><th>outcome</th><th class=\"num\">seconds</th><th>transfer</th><th>transport</th></tr>\n",
    );
    let now = unix(p.now);
    for r in rows.iter().take(AUDIT_ROWS) {
        let ended = unix(r.ended_at);
        let secs = r
            .ended_at
            .duration_since(r.started_at)
            .unwrap_or_default()
            .as_secs();
        let transfer = match &r.transfer {
            Some(t) => format!(
                "{} ({})",
                t.target,
                t.status.map_or("no answer".to_string(), |s| s.to_string())
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "<tr class=\"audit\" data-outcome=\"{}\"><td title=\"{}\">{} ago</td><td title=\"{}\"><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{secs}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.outcome),
            escape(&httpdate::fmt_http_date(r.ended_at)),
            ago(now.saturating_sub(ended)),
            escape(&r.call_id),
            escape(&short_id(&r.call_id)),
            escape(&mask_number(&r.caller)),
            escape(&r.dialed),
            escape(&r.outcome),
            escape(&transfer),
            escape(r.transport.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table></section>\n");
}

fn reload_section(out: &mut String, p: &Page<'_>) {
    out.push_str("<section id=\"reload\"><h2>Last reload</h2>\n");
    match &p.last_reload {
        None => out.push_str("<p class=\"muted\">No reload since start.</p>\n"),
        Some(r) => {
            let _ = writeln!(
                out,
                "<p class=\"{}\" data-ok=\"{}\">{} ago: {}</p>",
                if r.ok { "good" } else { "bad" },
                r.ok,
                ago(unix(p.now).saturating_sub(r.at)),
                escape(&r.message)
            );
        }
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{EdgeCount, PlanSnapshot};

    fn verify_plan() -> Arc<Dialplan> {
        let src = include_str!("../dialplans/verify.toml");
        let env = crate::dialplan::CheckEnv {
            prompt_exists: &|_, _| true,
            languages: &["en".to_string(), "de".to_string()],
        };
        Arc::new(crate::dialplan::load("verify.toml", src, &env).expect("verify.toml loads"))
    }

    #[test]
    fn everything_from_outside_is_escaped() {
        let evil = "<script>alert('x')</script>&\"";
        let calls = vec![LiveCallRow {
            call_id: format!("{evil}@host"),
            caller: evil.into(),
            dialplan: evil.into(),
            step: Some(evil.into()),
            seconds: 3,
        }];
        let mut counts = LiveSnapshot {
            window_minutes: 60,
            ..Default::default()
        };
        counts.plans.insert(
            evil.into(),
            PlanSnapshot {
                edges: vec![],
                outcomes: [(evil.to_string(), 2)].into(),
            },
        );
        let audit = vec![AuditRow {
            call_id: evil.into(),
            caller: "+49<b>12345678".into(),
            dialed: evil.into(),
            customer_id: None,
            outcome: evil.into(),
            started_at: SystemTime::UNIX_EPOCH,
            ended_at: SystemTime::UNIX_EPOCH,
            dtmf_methods: String::new(),
            detail: None,
            transfer: None,
            transport: Some(evil.into()),
            srtp: None,
        }];
        let html = render(&Page {
            version: "0.1.0",
            health: "ok",
            uptime_seconds: 5,
            calls: &calls,
            plans: &[],
            counts: &counts,
            audit: Some(Ok(audit)),
            last_reload: Some(ReloadRecord {
                at: 0,
                ok: false,
                message: evil.into(),
            }),
            now: SystemTime::now(),
        });
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"),
            "{html}"
        );
        // Audit callers are masked like every other number shown.
        assert!(!html.contains("12345678"), "{html}");
        assert_eq!(escape("a<b>&\"'\u{7}c"), "a&lt;b&gt;&amp;&quot;&#39;c");
    }

    #[test]
    fn the_page_shows_calls_counts_and_the_plan_and_caps_the_call_table() {
        let plan = verify_plan();
        let calls: Vec<LiveCallRow> = (0..MAX_CALL_ROWS + 5)
            .map(|i| LiveCallRow {
                call_id: format!("abcdefghijklmnop-{i}"),
                caller: "+49*********67".into(),
                dialplan: "verify".into(),
                step: Some("ask_pin".into()),
                seconds: 12,
            })
            .collect();
        let mut counts = LiveSnapshot {
            window_minutes: 60,
            ..Default::default()
        };
        counts.plans.insert(
            "verify".into(),
            PlanSnapshot {
                edges: vec![EdgeCount {
                    from: "welcome".into(),
                    outcome: "next".into(),
                    to: "ask_id".into(),
                    count: 7,
                }],
                outcomes: [("verified".to_string(), 4), ("no-input".to_string(), 3)].into(),
            },
        );
        let html = render(&Page {
            version: "0.1.0",
            health: "ok",
            uptime_seconds: 5,
            calls: &calls,
            plans: std::slice::from_ref(&plan),
            counts: &counts,
            audit: None,
            last_reload: None,
            now: SystemTime::now(),
        });
        assert_eq!(html.matches("<tr class=\"call\"").count(), MAX_CALL_ROWS);
        assert!(html.contains("data-more=\"5\""), "{html}");
        assert!(html.contains("<code>abcdefghijkl…</code>"));
        assert!(html.contains(
            "data-plan=\"verify\" data-outcome=\"verified\" data-count=\"4\"><td>verified</td>"
        ));
        assert!(html.contains(
            "data-from=\"welcome\" data-outcome=\"next\" data-to=\"ask_id\" data-count=\"7\""
        ));
        assert!(html.contains(&format!(
            "data-step=\"ask_pin\" data-now=\"{}\"",
            MAX_CALL_ROWS + 5
        )));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(!html.contains("<script"));
    }
}
