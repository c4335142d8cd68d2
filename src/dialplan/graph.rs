//! Pictures of a dialplan: Graphviz DOT and Mermaid flowcharts of its steps and labelled
//! transitions, for reviews and runbooks (`ivrd graph verify.toml | dot -Tsvg > verify.svg`,
//! or paste the Mermaid text into a Markdown file).
//!
//! Every step is a node labelled with its name and type; every transition is an edge
//! labelled with its outcome (`next`, `on_failure`, a menu key, a branch condition). Steps
//! that end the call are drawn differently, and a transfer gets an edge to a "transferred"
//! end node, so the picture shows every way out. A missing transition is drawn as an edge
//! to a red "missing" node rather than left out: the picture should not look finer than
//! the plan is.

use super::model::{Action, Dialplan};
use std::fmt::Write;

/// The plan as a Graphviz `digraph`.
pub fn to_dot(plan: &Dialplan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_id(&plan.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
    out.push_str("  \"(start)\" [shape=circle, label=\"start\", style=filled, fillcolor=black, fontcolor=white];\n");
    let _ = writeln!(out, "  \"(start)\" -> {};", dot_id(&plan.start.step));
    let mut transferred = false;
    let mut missing = false;
    for step in &plan.steps {
        let shape = match step.action {
            Action::Hangup { .. } => ", shape=doubleoctagon",
            Action::Transfer { .. } => ", shape=box, style=\"rounded,bold\"",
            Action::Branch { .. } | Action::Menu(_) => ", shape=diamond, style=solid",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  {} [label={}{shape}];",
            dot_id(&step.name),
            dot_id(&format!("{}\n({})", step.name, step.action.kind()))
        );
        for t in step.action.transitions() {
            let to = match t.target {
                Some(target) => dot_id(&target.step),
                None => {
                    missing = true;
                    "\"(missing)\"".to_string()
                }
            };
            let _ = writeln!(
                out,
                "  {} -> {to} [label={}];",
                dot_id(&step.name),
                dot_id(t.label)
            );
        }
        if let Action::Transfer { .. } = step.action {
            transferred = true;
            let _ = writeln!(
                out,
                "  {} -> \"(transferred)\" [label=\"transferred\"];",
                dot_id(&step.name)
            );
        }
    }
    if transferred {
        out.push_str("  \"(transferred)\" [shape=doublecircle, label=\"transferred\"];\n");
    }
    if missing {
        out.push_str(
            "  \"(missing)\" [shape=octagon, color=red, fontcolor=red, label=\"missing!\"];\n",
        );
    }
    out.push_str("}\n");
    out
}

/// The plan as a Mermaid `flowchart`.
pub fn to_mermaid(plan: &Dialplan) -> String {
    // Mermaid ids cannot hold every character a step name can; number the steps instead
    // and keep the names as labels.
    let id = |name: &str| -> String {
        plan.steps
            .iter()
            .position(|s| s.name == name)
            .map_or_else(|| "missing".to_string(), |i| format!("s{i}"))
    };
    let mut out = String::from("flowchart TD\n");
    out.push_str("  start((start))\n");
    let _ = writeln!(out, "  start --> {}", id(&plan.start.step));
    let mut transferred = false;
    let mut missing = false;
    for step in &plan.steps {
        let label = mermaid_text(&format!("{}<br/>({})", step.name, step.action.kind()));
        let node = match step.action {
            Action::Hangup { .. } => format!("{}[[\"{label}\"]]", id(&step.name)),
            Action::Branch { .. } | Action::Menu(_) => format!("{}{{\"{label}\"}}", id(&step.name)),
            _ => format!("{}(\"{label}\")", id(&step.name)),
        };
        let _ = writeln!(out, "  {node}");
        for t in step.action.transitions() {
            let to = match t.target {
                Some(target) if plan.step(&target.step).is_some() => id(&target.step),
                _ => {
                    missing = true;
                    "missing".to_string()
                }
            };
            let _ = writeln!(
                out,
                "  {} -->|\"{}\"| {to}",
                id(&step.name),
                mermaid_text(t.label)
            );
        }
        if let Action::Transfer { .. } = step.action {
            transferred = true;
            let _ = writeln!(out, "  {} -->|\"transferred\"| transferred", id(&step.name));
        }
    }
    if transferred {
        out.push_str("  transferred(((transferred)))\n");
    }
    if missing {
        out.push_str("  missing[\"missing!\"]\n  style missing stroke:#d00,color:#d00\n");
    }
    out
}

/// A DOT id: always quoted, so any step name or label is safe.
fn dot_id(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text inside a quoted Mermaid label: quotes and the characters Mermaid parses become
/// HTML entities.
fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '|' => out.push_str("#124;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{plan, shipped};
    use super::*;

    #[test]
    fn the_shipped_plans_are_drawn_completely() {
        for name in ["verify", "demo"] {
            let plan = shipped(name).unwrap();
            let dot = to_dot(&plan);
            let mermaid = to_mermaid(&plan);
            assert!(dot.starts_with(&format!("digraph \"{name}\" {{")) && dot.ends_with("}\n"));
            assert!(mermaid.starts_with("flowchart TD\n"));
            assert!(!dot.contains("(missing)") && !mermaid.contains("missing"));
            let id = |n: &str| format!("s{}", plan.steps.iter().position(|s| s.name == n).unwrap());
            for step in &plan.steps {
                assert!(dot.contains(&format!(
                    "\"{}\" [label=\"{}\\n({})\"",
                    step.name,
                    step.name,
                    step.action.kind()
                )));
                assert!(mermaid.contains(&format!("{}<br/>({})", step.name, step.action.kind())));
                for t in step.action.transitions() {
                    let to = &t.target.unwrap().step;
                    let label = dot_id(t.label);
                    assert!(
                        dot.contains(&format!("\"{}\" -> \"{to}\" [label={label}];", step.name)),
                        "{name}: {} -{}-> {to} missing from\n{dot}",
                        step.name,
                        t.label
                    );
                    let edge = format!(
                        "  {} -->|\"{}\"| {}",
                        id(&step.name),
                        mermaid_text(t.label),
                        id(to)
                    );
                    assert!(
                        mermaid.contains(&edge),
                        "{name}: {edge} missing from\n{mermaid}"
                    );
                }
            }
            assert_eq!(dot.matches(" -> ").count(), mermaid.matches(" -->").count());
        }
        let verify = to_dot(&shipped("verify").unwrap());
        assert!(verify.contains("\"to_queue\" -> \"(transferred)\""));
        assert!(verify.contains("\"ask_id\" -> \"fallback\" [label=\"on_failure\"];"));
        let demo = to_mermaid(&shipped("demo").unwrap());
        // Branch conditions are edge labels, with Mermaid's special characters escaped.
        assert!(demo.contains("-->|\"${round} == '2'\"|"), "{demo}");
    }

    #[test]
    fn missing_transitions_are_drawn_as_missing() {
        let plan = {
            let mut p = plan(
                "[dialplan]\nname = \"m\"\nstart = \"a\"\n[steps.a]\ngoto = \"b\"\n[steps.b]\nhangup = []\n",
            );
            if let Action::Goto { target } = &mut p.steps[0].action {
                *target = None;
            }
            p
        };
        assert!(to_dot(&plan).contains("\"a\" -> \"(missing)\" [label=\"goto\"];"));
        assert!(to_mermaid(&plan).contains("s0 -->|\"goto\"| missing"));
        assert_eq!(dot_id("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(mermaid_text("x|\"#"), "x#124;#quot;#35;");
    }
}
