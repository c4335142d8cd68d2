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
            Action::Hangup { .. } | Action::Return { .. } => ", shape=doubleoctagon",
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
        if let Some((entry, how)) = other_plan(&step.action) {
            let node = dot_id(&format!("(plan {entry})"));
            let _ = writeln!(
                out,
                "  {node} [shape=component, label={}];\n  {} -> {node} [label={}, style=dashed];",
                dot_id(&format!("plan {entry}")),
                dot_id(&step.name),
                dot_id(how),
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
        if let Some((entry, how)) = other_plan(&step.action) {
            let _ = writeln!(
                out,
                "  {} -.->|\"{how}\"| p{}[/\"plan {}\"/]",
                id(&step.name),
                plan.steps
                    .iter()
                    .position(|s| s.name == step.name)
                    .unwrap_or(0),
                mermaid_text(&entry.to_string())
            );
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

/// A `call` or `goto` into another plan: where, and which of the two (drawn as an edge to a
/// node for that plan; a section of the same plan is an ordinary edge).
fn other_plan(action: &Action) -> Option<(&super::model::Entry, &'static str)> {
    match action {
        Action::Call { entry, .. } if entry.plan.is_some() => Some((entry, "call")),
        Action::GotoPlan { entry } => Some((entry, "goto")),
        _ => None,
    }
}

/// What [`to_svg`] writes on the picture besides the plan: how many calls took each edge
/// (`from`, the outcome as the interpreter names it, `to`), and how many calls are in each
/// step now.
pub struct SvgCounts<'a> {
    pub edge: &'a dyn Fn(&str, &str, &str) -> u64,
    pub active: &'a dyn Fn(&str) -> u64,
}

impl SvgCounts<'static> {
    /// No counts: the plan alone (`ivrd graph --format svg`, tests).
    pub const NONE: SvgCounts<'static> = SvgCounts {
        edge: &|_, _, _| 0,
        active: &|_| 0,
    };
}

/// The outcome the interpreter reports (`FlowEvent::Transition`'s `outcome`, `${STEP.outcome}`)
/// for the `index`th of `action.transitions()`: `on_failure` is `failure`, a menu key is the
/// key, the first branch case is `case-1`, a goto is `next`.
pub fn run_outcome(action: &Action, index: usize, t: &super::model::Transition<'_>) -> String {
    match t.key {
        "options" => t.label.to_string(),
        "hotkeys" => format!("hotkey {}", t.label),
        "goto" if matches!(action, Action::Branch { .. }) => format!("case-{}", index + 1),
        "goto" => "next".to_string(),
        key => key.strip_prefix("on_").unwrap_or(key).to_string(),
    }
}

/// Text for XML and HTML: `&`, `<`, `>`, `"` and `'` as entities, control characters other
/// than tab and newline left out (XML 1.0 cannot carry them).
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A box on the picture.
struct SvgNode {
    name: String,
    kind: &'static str,
    class: &'static str,
    depth: usize,
    x: f64,
    y: f64,
    w: f64,
}

struct SvgEdge {
    from: usize,
    to: usize,
    label: String,
    outcome: String,
    count: u64,
}

const NODE_H: f64 = 40.0;
const ROW_GAP: f64 = 80.0;
const COL_GAP: f64 = 36.0;
const MARGIN: f64 = 20.0;
const TOP: f64 = 50.0;
/// Roughly the advance of one character at the picture's font sizes.
const CHAR_W: f64 = 7.0;

/// The plan as an SVG picture, laid out by ivrd itself (no Graphviz): steps in rows by their
/// distance from the start (breadth first), each row ordered by where its steps' parents
/// are, edges as curves down to the next rows, and edges back up (retries, loops) as arcs
/// on the right. Each edge says its outcome and, from `counts`, how many calls took it;
/// each step how many calls are in it now. `id` makes the picture's marker ids unique in a
/// page with several pictures (letters, digits, `-` and `_`).
pub fn to_svg(plan: &Dialplan, id: &str, counts: &SvgCounts<'_>) -> String {
    let mut nodes: Vec<SvgNode> = plan
        .steps
        .iter()
        .map(|s| SvgNode {
            name: s.name.clone(),
            kind: s.action.kind(),
            class: match s.action {
                Action::Hangup { .. } => "step end",
                Action::Transfer { .. } => "step transfer",
                Action::Branch { .. } | Action::Menu(_) => "step choice",
                _ => "step",
            },
            depth: usize::MAX,
            x: 0.0,
            y: 0.0,
            w: 0.0,
        })
        .collect();
    let index = |nodes: &[SvgNode], name: &str| nodes.iter().position(|n| n.name == name);
    let mut edges: Vec<SvgEdge> = Vec::new();
    let mut sinks: Vec<usize> = Vec::new();
    // Sinks: one "missing" node for the plan, one "transferred" node under each transfer.
    let mut sink = |nodes: &mut Vec<SvgNode>, name: &str, class: &'static str| -> usize {
        if let Some(i) = sinks.iter().copied().find(|&i| nodes[i].name == name)
            && name != crate::live::TRANSFERRED
        {
            return i;
        }
        nodes.push(SvgNode {
            name: name.to_string(),
            kind: "",
            class,
            depth: usize::MAX,
            x: 0.0,
            y: 0.0,
            w: 0.0,
        });
        sinks.push(nodes.len() - 1);
        nodes.len() - 1
    };
    for (from, step) in plan.steps.iter().enumerate() {
        for (i, t) in step.action.transitions().iter().enumerate() {
            let outcome = run_outcome(&step.action, i, t);
            let target = t.target.and_then(|t| index(&nodes, &t.step));
            let (to, to_name) = match target {
                Some(to) => (to, nodes[to].name.clone()),
                None => (sink(&mut nodes, "(missing)", "step missing"), String::new()),
            };
            edges.push(SvgEdge {
                from,
                to,
                label: t.label.to_string(),
                count: if to_name.is_empty() {
                    0
                } else {
                    (counts.edge)(&step.name, &outcome, &to_name)
                },
                outcome,
            });
        }
        if let Action::Transfer { .. } = step.action {
            let to = sink(&mut nodes, crate::live::TRANSFERRED, "step sink");
            edges.push(SvgEdge {
                from,
                to,
                label: "transferred".into(),
                outcome: "transferred".into(),
                count: (counts.edge)(&step.name, "transferred", crate::live::TRANSFERRED),
            });
        }
    }

    // Rows: breadth first from the start; steps nothing reaches, then the sinks, below.
    let mut order: Vec<usize> = Vec::new();
    if let Some(start) = index(&nodes, &plan.start.step) {
        nodes[start].depth = 0;
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            order.push(n);
            for e in edges.iter().filter(|e| e.from == n) {
                if nodes[e.to].depth == usize::MAX && !sinks.contains(&e.to) {
                    nodes[e.to].depth = nodes[n].depth + 1;
                    queue.push_back(e.to);
                }
            }
        }
    }
    let mut last = order.iter().map(|&n| nodes[n].depth).max().unwrap_or(0);
    let unreached: Vec<usize> = (0..nodes.len())
        .filter(|&n| nodes[n].depth == usize::MAX && !sinks.contains(&n))
        .collect();
    if !unreached.is_empty() {
        last += 1;
        for &n in &unreached {
            nodes[n].depth = last;
            order.push(n);
        }
    }
    for &n in &sinks {
        let parent = edges.iter().find(|e| e.to == n).map(|e| e.from);
        nodes[n].depth = match parent {
            Some(p) if nodes[n].name == crate::live::TRANSFERRED => nodes[p].depth + 1,
            _ => last + 1,
        };
        order.push(n);
    }
    let rows = nodes.iter().map(|n| n.depth).max().unwrap_or(0) + 1;
    let mut row_members: Vec<Vec<usize>> = vec![Vec::new(); rows];
    for &n in &order {
        row_members[nodes[n].depth].push(n);
    }
    for n in nodes.iter_mut() {
        let chars = n.name.chars().count().max(n.kind.chars().count() + 2) as f64;
        n.w = (chars * CHAR_W + 24.0).max(80.0);
    }
    // Place each row left to right; then order the next row by its parents' centres (one
    // top-down pass of the barycentre heuristic: fewer crossings, still predictable).
    let mut widest: f64 = 0.0;
    for (r, members) in row_members.iter_mut().enumerate() {
        if r > 0 {
            let centre = |n: usize, nodes: &[SvgNode]| -> f64 {
                let parents: Vec<f64> = edges
                    .iter()
                    .filter(|e| e.to == n && nodes[e.from].depth < r)
                    .map(|e| nodes[e.from].x + nodes[e.from].w / 2.0)
                    .collect();
                if parents.is_empty() {
                    f64::MAX
                } else {
                    parents.iter().sum::<f64>() / parents.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize, usize)> = members
                .iter()
                .enumerate()
                .map(|(i, &n)| (centre(n, &nodes), i, n))
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            *members = keyed.into_iter().map(|(_, _, n)| n).collect();
        }
        let mut x = MARGIN;
        for &n in members.iter() {
            nodes[n].x = x;
            nodes[n].y = TOP + r as f64 * (NODE_H + ROW_GAP);
            x += nodes[n].w + COL_GAP;
        }
        widest = widest.max(x - COL_GAP);
    }
    // Centre every row under the widest.
    for members in &row_members {
        let Some(&last) = members.last() else {
            continue;
        };
        let shift = (widest - (nodes[last].x + nodes[last].w)) / 2.0;
        for &n in members {
            nodes[n].x += shift;
        }
    }

    // Where edges leave and arrive: spread over the box's bottom and top edges.
    let down = |e: &SvgEdge| nodes[e.to].depth > nodes[e.from].depth;
    let spread = |node: usize, pick: &dyn Fn(&SvgEdge) -> bool, me: usize| -> f64 {
        let mine: Vec<usize> = (0..edges.len()).filter(|&i| pick(&edges[i])).collect();
        let k = mine.iter().position(|&i| i == me).unwrap_or(0);
        nodes[node].x + nodes[node].w * (k as f64 + 1.0) / (mine.len() as f64 + 1.0)
    };
    let mut back = 0usize;
    let mut paths = String::new();
    let mut labels = String::new();
    let mut right: f64 = widest;
    for (i, e) in edges.iter().enumerate() {
        let (from, to) = (&nodes[e.from], &nodes[e.to]);
        let (d, lx, ly) = if down(e) {
            let sx = spread(e.from, &|o: &SvgEdge| o.from == e.from && down(o), i);
            let ex = spread(e.to, &|o: &SvgEdge| o.to == e.to && down(o), i);
            let (sy, ey) = (from.y + NODE_H, to.y);
            let bend = ROW_GAP / 2.0;
            (
                format!(
                    "M{sx:.1},{sy:.1} C{sx:.1},{:.1} {ex:.1},{:.1} {ex:.1},{ey:.1}",
                    sy + bend,
                    ey - bend
                ),
                (sx + ex) / 2.0,
                (sy + ey) / 2.0,
            )
        } else if to.depth == from.depth && e.from != e.to {
            // Along the row: a straight line between the facing sides.
            let y = from.y + NODE_H / 2.0;
            let (sx, ex) = if to.x > from.x {
                (from.x + from.w, to.x)
            } else {
                (from.x, to.x + to.w)
            };
            (
                format!("M{sx:.1},{y:.1} L{ex:.1},{y:.1}"),
                (sx + ex) / 2.0,
                from.y - 9.0,
            )
        } else {
            // Back up: an arc out of the source's right side, up a lane
            // right of every box in the rows it passes, into the target's right side.
            back += 1;
            let sx = from.x + from.w;
            let ex = to.x + to.w;
            let side = |node: usize, pick: &dyn Fn(&SvgEdge) -> bool| -> f64 {
                let mine: Vec<usize> = (0..edges.len()).filter(|&j| pick(&edges[j])).collect();
                let k = mine.iter().position(|&j| j == i).unwrap_or(0);
                nodes[node].y + NODE_H * (k as f64 + 1.0) / (mine.len() as f64 + 1.0)
            };
            let sy = side(e.from, &|o: &SvgEdge| o.from == e.from && !down(o));
            let ey = side(e.to, &|o: &SvgEdge| o.to == e.to && !down(o));
            let (top, bottom) = (to.depth.min(from.depth), to.depth.max(from.depth));
            let clear = nodes
                .iter()
                .filter(|n| n.depth >= top && n.depth <= bottom)
                .map(|n| n.x + n.w)
                .fold(sx.max(ex), f64::max);
            let lane = clear + 16.0 + 10.0 * (back % 8) as f64;
            // The curve's rightmost point (t = 1/2) is on the lane.
            let cx = (lane - 0.125 * (sx + ex)) / 0.75;
            right = right.max(lane + 10.0);
            let stagger = 14.0 * ((back % 3) as f64 - 1.0);
            (
                format!("M{sx:.1},{sy:.1} C{cx:.1},{sy:.1} {cx:.1},{ey:.1} {ex:.1},{ey:.1}"),
                lane,
                (sy + ey) / 2.0 + stagger,
            )
        };
        let text = if e.count > 0 {
            format!("{} · {}", e.label, e.count)
        } else {
            e.label.clone()
        };
        let taken = if e.count > 0 { " taken" } else { "" };
        let width = 1.0 + (e.count as f64).ln_1p().min(5.0);
        let _ = writeln!(
            paths,
            "<g class=\"edge{taken}\" data-from=\"{}\" data-outcome=\"{}\" data-to=\"{}\" data-count=\"{}\"><title>{} -{}-&gt; {}: {} in the last hour</title><path d=\"{d}\" stroke-width=\"{width:.1}\" marker-end=\"url(#{id}-arrow)\"/></g>",
            xml_escape(&from.name),
            xml_escape(&e.outcome),
            xml_escape(&to.name),
            e.count,
            xml_escape(&from.name),
            xml_escape(&e.label),
            xml_escape(&to.name),
            e.count,
        );
        let tw = text.chars().count() as f64 * 6.0 + 6.0;
        right = right.max(lx + tw / 2.0);
        let _ = writeln!(
            labels,
            "<g class=\"label{taken}\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{tw:.1}\" height=\"14\" rx=\"3\"/><text x=\"{lx:.1}\" y=\"{:.1}\">{}</text></g>",
            lx - tw / 2.0,
            ly - 8.0,
            ly + 3.0,
            xml_escape(&text)
        );
    }

    let height = TOP + rows as f64 * (NODE_H + ROW_GAP) - ROW_GAP + MARGIN;
    let width = right + MARGIN;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plan-graph\" data-plan=\"{}\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"Helvetica, Arial, sans-serif\">",
        xml_escape(&plan.name)
    );
    let _ = writeln!(
        out,
        "<defs><marker id=\"{id}-arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"9\" markerHeight=\"9\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>"
    );
    out.push_str("<style>.edge path{fill:none;stroke:#bbb}.edge.taken path{stroke:#1f6feb}.label rect{fill:#fff;opacity:.85}.label text{font-size:10px;text-anchor:middle;fill:#777}.label.taken text{fill:#1f4e9e;font-weight:bold}.step rect{fill:#f6f8fa;stroke:#57606a}.step.end rect{fill:#ffeef0}.step.transfer rect{fill:#eef7ee;stroke-width:2}.step.choice rect{fill:#fff8e6}.step.sink rect{fill:#dafbe1}.step.missing rect{fill:#fff;stroke:#d00}.step text{font-size:12px;text-anchor:middle}.step .kind{font-size:10px;fill:#57606a}.step .now{font-size:10px;fill:#fff}.now-badge{fill:#cf222e}</style>\n");
    if let Some(start) = index(&nodes, &plan.start.step) {
        let n = &nodes[start];
        let cx = n.x + n.w / 2.0;
        let _ = writeln!(
            out,
            "<g class=\"start\"><circle cx=\"{cx:.1}\" cy=\"14\" r=\"7\" fill=\"#222\"/><path d=\"M{cx:.1},21 L{cx:.1},{:.1}\" stroke=\"#555\" marker-end=\"url(#{id}-arrow)\"/></g>",
            n.y
        );
    }
    out.push_str(&paths);
    for n in &nodes {
        let cx = n.x + n.w / 2.0;
        let now = if n.kind.is_empty() {
            0
        } else {
            (counts.active)(&n.name)
        };
        let label = if n.name == "(missing)" {
            "missing!"
        } else {
            n.name.as_str()
        };
        let _ = write!(
            out,
            "<g class=\"{}\" data-step=\"{}\" data-now=\"{now}\"><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{NODE_H}\" rx=\"6\"/>",
            n.class,
            xml_escape(&n.name),
            xml_escape(&n.name),
            n.x,
            n.y,
            n.w,
        );
        if n.kind.is_empty() {
            let _ = write!(
                out,
                "<text x=\"{cx:.1}\" y=\"{:.1}\">{}</text>",
                n.y + NODE_H / 2.0 + 4.0,
                xml_escape(label)
            );
        } else {
            let _ = write!(
                out,
                "<text x=\"{cx:.1}\" y=\"{:.1}\">{}</text><text class=\"kind\" x=\"{cx:.1}\" y=\"{:.1}\">({})</text>",
                n.y + 16.0,
                xml_escape(label),
                n.y + 31.0,
                n.kind
            );
        }
        if now > 0 {
            let bx = n.x + n.w;
            let _ = write!(
                out,
                "<circle class=\"now-badge\" cx=\"{bx:.1}\" cy=\"{:.1}\" r=\"9\"/><text class=\"now\" x=\"{bx:.1}\" y=\"{:.1}\">{now}</text>",
                n.y,
                n.y + 3.5
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str(&labels);
    out.push_str("</svg>\n");
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

    /// Parses `svg` as XML (quick-xml): every tag closed in order, attributes well formed,
    /// only the five predefined entities and numeric references.
    fn assert_well_formed(svg: &str) {
        let mut reader = quick_xml::Reader::from_str(svg);
        let mut depth = 0i32;
        let mut elements = 0;
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(quick_xml::events::Event::Start(e)) => {
                    depth += 1;
                    elements += 1;
                    for a in e.attributes() {
                        let a = a.unwrap_or_else(|err| panic!("bad attribute: {err}\n{svg}"));
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .unwrap_or_else(|err| panic!("bad attribute value: {err}\n{svg}"));
                    }
                }
                Ok(quick_xml::events::Event::Empty(e)) => {
                    elements += 1;
                    for a in e.attributes() {
                        let a = a.unwrap_or_else(|err| panic!("bad attribute: {err}\n{svg}"));
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .unwrap_or_else(|err| panic!("bad attribute value: {err}\n{svg}"));
                    }
                }
                Ok(quick_xml::events::Event::End(_)) => depth -= 1,
                Ok(quick_xml::events::Event::Text(t)) => {
                    t.decode()
                        .unwrap_or_else(|err| panic!("bad text: {err}\n{svg}"));
                }
                Ok(quick_xml::events::Event::GeneralRef(r)) => {
                    let name = String::from_utf8_lossy(&r).into_owned();
                    assert!(
                        ["amp", "lt", "gt", "quot", "apos"].contains(&name.as_str())
                            || r.resolve_char_ref().is_ok_and(|c| c.is_some()),
                        "unknown entity &{name}; in\n{svg}"
                    );
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "not well-formed XML at {}: {e}\n{svg}",
                    reader.buffer_position()
                ),
            }
            assert!(depth >= 0, "more end tags than start tags\n{svg}");
        }
        assert_eq!(depth, 0, "unclosed elements\n{svg}");
        assert!(elements > 0);
    }

    #[test]
    fn the_svg_of_the_shipped_plans_has_every_step_and_edge_and_is_xml() {
        for name in ["verify", "demo"] {
            let plan = shipped(name).unwrap();
            let svg = to_svg(&plan, "p0", &SvgCounts::NONE);
            assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
            assert_well_formed(&svg);
            for step in &plan.steps {
                assert!(
                    svg.contains(&format!("data-step=\"{}\"", xml_escape(&step.name))),
                    "{name}: step {} missing",
                    step.name
                );
                for (i, t) in step.action.transitions().iter().enumerate() {
                    let edge = format!(
                        "data-from=\"{}\" data-outcome=\"{}\" data-to=\"{}\"",
                        xml_escape(&step.name),
                        xml_escape(&run_outcome(&step.action, i, t)),
                        xml_escape(&t.target.unwrap().step)
                    );
                    assert!(svg.contains(&edge), "{name}: {edge} missing\n{svg}");
                    assert!(svg.contains(&format!(">{}</text>", xml_escape(t.label))));
                }
            }
            let edges: usize = plan
                .steps
                .iter()
                .map(|s| {
                    s.action.transitions().len()
                        + usize::from(matches!(s.action, Action::Transfer { .. }))
                })
                .sum();
            assert_eq!(svg.matches("<g class=\"edge").count(), edges);
            assert!(!svg.contains("data-step=\"(missing)\""));
        }
        // Every box inside the picture, none on top of another.
        let plan = shipped("verify").unwrap();
        let svg = to_svg(&plan, "p0", &SvgCounts::NONE);
        let num = |s: &str, key: &str| -> f64 {
            let at = s.find(&format!(" {key}=\"")).unwrap() + key.len() + 3;
            s[at..s[at..].find('"').unwrap() + at].parse().unwrap()
        };
        let (w, h) = (num(&svg, "width"), num(&svg, "height"));
        let boxes: Vec<(f64, f64, f64)> = svg
            .match_indices("<rect x=")
            .map(|(i, _)| &svg[i..])
            .filter(|r| r[..r.find("/>").unwrap()].contains("height=\"40\""))
            .map(|r| (num(r, "x"), num(r, "y"), num(r, "width")))
            .collect();
        assert_eq!(
            boxes.len(),
            plan.steps.len() + 2,
            "steps and (transferred) twice"
        );
        for (i, a) in boxes.iter().enumerate() {
            assert!(a.0 >= 0.0 && a.0 + a.2 <= w && a.1 >= 0.0 && a.1 + 40.0 <= h);
            for b in &boxes[i + 1..] {
                assert!(
                    a.1 != b.1 || a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0,
                    "overlapping boxes {a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn the_svg_shows_counts_and_escapes_names() {
        let plan = plan(
            "[dialplan]\nname = \"x<&>\"\nstart = \"a\"\n[steps.a]\nmenu = [\"p\"]\noptions = { \"1\" = \"b\" }\non_failure = \"b\"\n[steps.b]\nbranch = [{ if = \"${last.outcome} == '<&>'\", goto = \"a\" }]\nelse = \"c\"\n[steps.c]\nhangup = []\n",
        );
        let edge = |from: &str, outcome: &str, to: &str| match (from, outcome, to) {
            ("a", "1", "b") => 12,
            ("b", "case-1", "a") => 3,
            _ => 0,
        };
        let active = |step: &str| u64::from(step == "c") * 2;
        let svg = to_svg(
            &plan,
            "p1",
            &SvgCounts {
                edge: &edge,
                active: &active,
            },
        );
        assert_well_formed(&svg);
        assert!(svg.contains("data-plan=\"x&lt;&amp;&gt;\""));
        assert!(svg.contains(
            "<g class=\"edge taken\" data-from=\"a\" data-outcome=\"1\" data-to=\"b\" data-count=\"12\">"
        ));
        assert!(svg.contains(">1 · 12</text>"));
        assert!(
            svg.contains("data-from=\"b\" data-outcome=\"case-1\" data-to=\"a\" data-count=\"3\"")
        );
        assert!(
            svg.contains("data-from=\"b\" data-outcome=\"else\" data-to=\"c\" data-count=\"0\"")
        );
        assert!(svg.contains("data-step=\"c\" data-now=\"2\""));
        assert!(svg.contains("marker-end=\"url(#p1-arrow)\""));
        assert!(
            svg.contains(">${last.outcome} == &#39;&lt;&amp;&gt;&#39; · 3</text>"),
            "{svg}"
        );
    }

    #[test]
    fn graph_outcomes_are_the_ones_the_interpreter_reports() {
        use super::super::run::FlowEvent;
        use super::super::sim::{SimCall, SimEvent, sim_facts, simulate};
        use super::super::testing::{FakeServices, block_on};
        for (name, script) in [
            ("demo", "2 W 2024#"),
            ("demo", "1 W 42# W 7#"),
            ("demo", "9"),
            ("verify", "123456 {pin}"),
            ("verify", "123456 * {pin}"),
            ("verify", "123456 0000 0000 0000"),
            ("verify", ""),
        ] {
            let plan = shipped(name).unwrap();
            let services = FakeServices::new();
            let call = SimCall::new(sim_facts("+4915112345678", "100"), script)
                .unwrap()
                .sms_capture(services.capture());
            let sim = block_on(simulate(&plan, call, &services));
            let mut seen = 0;
            for e in &sim.transcript {
                if let SimEvent::Flow(FlowEvent::Transition { step, outcome, to }) = &e.event {
                    seen += 1;
                    let s = plan.step(step).unwrap();
                    assert!(
                        s.action.transitions().iter().enumerate().any(|(i, t)| {
                            run_outcome(&s.action, i, t) == *outcome
                                && t.target.is_some_and(|t| &t.step == to)
                        }),
                        "{name} {script:?}: {step} -{outcome}-> {to} is no edge of the graph"
                    );
                }
            }
            assert!(seen > 0 || script.is_empty());
        }
    }

    #[test]
    fn calls_and_gotos_into_other_plans_are_drawn_to_a_node_for_that_plan() {
        let plans = super::super::testing::plan_set(&[
            "[dialplan]\nname = \"front\"\nstart = \"a\"\n[steps.a]\ncall = \"verify:b\"\nnext = \"s\"\n\
             [steps.s]\ncall = \":t\"\nnext = \"g\"\n[steps.t]\nreturn = \"\"\n[steps.g]\ngoto = \"verify:\"\n",
            "[dialplan]\nname = \"verify\"\nstart = \"b\"\n[steps.b]\nreturn = \"ok\"\n",
        ])
        .unwrap_or_else(|p| panic!("{p:?}"));
        let dot = to_dot(&plans[0]);
        assert!(
            dot.contains("\"(plan verify:b)\" [shape=component, label=\"plan verify:b\"]"),
            "{dot}"
        );
        assert!(
            dot.contains("\"a\" -> \"(plan verify:b)\" [label=\"call\", style=dashed]"),
            "{dot}"
        );
        assert!(
            dot.contains("\"g\" -> \"(plan verify)\" [label=\"goto\", style=dashed]"),
            "{dot}"
        );
        // A section of the same plan is an ordinary edge.
        assert!(dot.contains("\"s\" -> \"t\" [label=\"call\"]"), "{dot}");
        assert!(!dot.contains("missing"), "{dot}");
        let mermaid = to_mermaid(&plans[0]);
        assert!(
            mermaid.contains("-.->|\"call\"| p0[/\"plan verify:b\"/]"),
            "{mermaid}"
        );
        assert!(!mermaid.contains("missing"), "{mermaid}");
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
