//! The man pages stay true to the code.
//!
//! - `ivrd man` generates `ivrd.8` and a page per subcommand from the clap definition; every
//!   subcommand `--help` lists has its page and its parent's page names it, and the copies
//!   committed in `man/` (what the .deb ships) are what the binary generates now.
//! - `ivrd-dialplan(5)` documents exactly the step types and keys the parser accepts, and the
//!   tables and keys of a plan's header (a key the parser gained or lost fails here).
//! - `ivrd.toml(5)` documents exactly the sections and keys the config parser accepts, and
//!   every default it shows as `key = value` is the code's default.
//! - Every page renders with groff without a warning, its SEE ALSO names pages that exist,
//!   and its EXAMPLE is a file ivrd accepts.
//!
//! The lists come from the code: step types and keys from `ivrd::dialplan` constants, config
//! keys from the parser itself (serde's "unknown field `x`, expected one of ..." names every
//! key a `deny_unknown_fields` table accepts), so nothing here is a copy to keep in sync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use ivrd::config::Config;

const IVRD: &str = env!("CARGO_BIN_EXE_ivrd");
const REGENERATE: &str = "regenerate with `cargo run -- man --out man` and commit the result";

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `ivrd man` into a fresh directory: the pages as the binary writes them.
fn generate() -> (tempfile::TempDir, BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(IVRD)
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ivrd man failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, read(&path))
        })
        .collect();
    (dir, pages)
}

// ---- roff -----------------------------------------------------------------------------------

/// Roff text as the reader sees it (for the escapes these pages use).
fn unescape(s: &str) -> String {
    s.replace("\\-", "-")
        .replace("\\(dq", "\"")
        .replace("\\(aq", "'")
        .replace("\\&", "")
        .replace("\\ ", " ")
        .replace("\\e", "\\")
}

/// One `.TP` item: the tag line's text, split at ` = ` into the key and its default.
#[derive(Debug)]
struct Item {
    key: String,
    default: Option<String>,
}

/// The `.TP` items of a page by section: `(.SH title, .SS title) -> items`, in page order.
fn items(page: &str) -> BTreeMap<(String, String), Vec<Item>> {
    let mut out: BTreeMap<(String, String), Vec<Item>> = BTreeMap::new();
    let (mut sh, mut ss) = (String::new(), String::new());
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix(".SH ") {
            sh = unescape(t.trim_matches('"'));
            ss.clear();
        } else if let Some(t) = line.strip_prefix(".SS ") {
            // Headings and tags are written without macro quoting, so the text after the
            // macro is what groff prints; a quote would change that.
            assert!(!t.contains('"'), "quote in heading {line:?}: write \\(dq");
            ss = unescape(t);
        } else if line == ".TP" {
            let tag = lines.next().unwrap_or_default();
            let Some(text) = tag.strip_prefix(".B ") else {
                // Only option-like items (`.B key`) are keys; other tags are prose lists.
                continue;
            };
            assert!(!text.contains('"'), "quote in tag {tag:?}: write \\(dq");
            let text = unescape(text);
            let (key, default) = match text.split_once(" = ") {
                Some((k, d)) => (k.to_string(), Some(d.to_string())),
                None => (text, None),
            };
            out.entry((sh.clone(), ss.clone()))
                .or_default()
                .push(Item { key, default });
        }
    }
    out
}

/// The keys of one section, failing on a key listed twice.
fn keys_of(items: &[Item], section: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for i in items {
        assert!(keys.insert(i.key.clone()), "{section}: {} twice", i.key);
    }
    keys
}

/// The body of the page's `.EX`/`.EE` block under `.SH EXAMPLE`, as the reader sees it.
fn example(page: &str) -> String {
    let after = page
        .split_once(".SH EXAMPLE\n")
        .expect("an EXAMPLE section")
        .1;
    let block = after
        .split_once(".EX\n")
        .and_then(|(_, b)| b.split_once(".EE\n"))
        .expect("an .EX/.EE block in EXAMPLE")
        .0;
    unescape(block)
}

/// Renders a page with groff as man(1) would, with every warning on: the text (overstrike
/// bold and underline removed), or a panic with groff's complaints.
fn render(name: &str, page: &str) -> String {
    let mut child = Command::new("groff")
        .args(["-man", "-Tascii", "-ww", "-rLL=100n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "groff: {e}. The man page tests need it: apt-get install groff-base \
                 (scripts/install-test-deps.sh does)"
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{name}: groff says:\n{stderr}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

// ---- what the code accepts ------------------------------------------------------------------

/// The names serde lists after an unknown field or variant: every key (or variant) the
/// table accepts. Panics if `result` did not fail that way.
fn accepted<T>(result: Result<T, String>, what: &str) -> BTreeSet<String> {
    let message = match result {
        Ok(_) => panic!("{what}: the probe was accepted"),
        Err(m) => m,
    };
    let rest = ["unknown field `__probe__`", "unknown variant `__probe__`"]
        .iter()
        .find_map(|p| message.split_once(p).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("{what}: not an unknown-key error: {message}"));
    let rest = rest.lines().next().unwrap_or_default();
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn parse_config(text: &str) -> Result<Config, String> {
    toml::from_str::<Config>(text).map_err(|e| e.message().to_string())
}

/// The config's sections, each with its keys: `[S]`, and for `[sms]` one section per
/// provider, `[sms] provider = "P"`, headed as the page heads it.
fn config_sections() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for section in accepted(parse_config("__probe__ = 1"), "top level") {
        if section == "sms" {
            out.insert(
                "[sms]".to_string(),
                BTreeSet::from(["provider".to_string()]),
            );
            let providers = accepted(
                parse_config("[sms]\nprovider = \"__probe__\""),
                "[sms] provider",
            );
            for p in providers {
                let keys = accepted(
                    parse_config(&format!("[sms]\nprovider = \"{p}\"\n__probe__ = 1")),
                    &format!("[sms] provider = {p}"),
                );
                out.insert(format!("[sms] provider = \"{p}\""), keys);
            }
        } else {
            let keys = accepted(
                parse_config(&format!("[{section}]\n__probe__ = 1")),
                &format!("[{section}]"),
            );
            out.insert(format!("[{section}]"), keys);
        }
    }
    out
}

/// The TOML a key of a man page section is appended to, and the config it makes alone:
/// `[sip]` and the defaults, or `[sms]` with a provider and its required keys (found by
/// asking the parser which are missing) and the config with just those.
fn section_base(heading: &str) -> (String, Config) {
    let Some(provider) = heading.strip_prefix("[sms] provider = ") else {
        return (format!("{heading}\n"), Config::default());
    };
    let mut base = format!("[sms]\nprovider = {provider}\n");
    for _ in 0..16 {
        match parse_config(&base) {
            Ok(cfg) => return (base, cfg),
            Err(m) => {
                let field = m
                    .split_once("missing field `")
                    .and_then(|(_, r)| r.split_once('`'))
                    .unwrap_or_else(|| panic!("{heading}: {m}"))
                    .0
                    .to_string();
                base.push_str(&format!("{field} = \"x\"\n"));
            }
        }
    }
    panic!("{heading}: no valid minimal section")
}

// ---- the tests ------------------------------------------------------------------------------

/// The subcommands `ivrd <path> --help` lists (without `help`), from the binary itself.
fn subcommands(path: &[String]) -> Vec<String> {
    let out = Command::new(IVRD)
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "ivrd {path:?} --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    let Some((_, list)) = help.split_once("Commands:\n") else {
        return Vec::new();
    };
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            // Continuation lines of a long description are indented further.
            let l = l.strip_prefix("  ")?;
            (!l.starts_with(' ')).then(|| l.split_whitespace().next().unwrap().to_string())
        })
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn generated_pages_cover_every_subcommand() {
    let (_dir, pages) = generate();
    let root = pages.get("ivrd.8").expect("ivrd man writes ivrd.8");
    assert!(root.contains("\n.TH ivrd 8 "), "no .TH in ivrd.8");

    let mut todo = vec![Vec::<String>::new()];
    let mut expected = BTreeSet::from(["ivrd.8".to_string()]);
    while let Some(path) = todo.pop() {
        let page_of = |p: &[String]| {
            std::iter::once("ivrd")
                .chain(p.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("-")
                + ".8"
        };
        let parent = page_of(&path);
        let parent_text = render(&parent, &pages[&parent]);
        for sub in subcommands(&path) {
            let mut child = path.clone();
            child.push(sub.clone());
            let name = page_of(&child);
            assert!(
                pages.contains_key(&name),
                "no {name} for `ivrd {}`",
                child.join(" ")
            );
            // clap_mangen lists a subcommand as a reference to its page: ivrd-run(8).
            let reference = format!("{}(8)", name.trim_end_matches(".8"));
            assert!(
                parent_text.split_whitespace().any(|w| w == reference),
                "{parent} does not list {reference}"
            );
            expected.insert(name);
            todo.push(child);
        }
    }
    let generated: BTreeSet<String> = pages
        .keys()
        .filter(|n| n.ends_with(".8"))
        .cloned()
        .collect();
    assert_eq!(
        generated, expected,
        "ivrd man wrote pages for commands --help does not list (hidden ones?)"
    );
}

#[test]
fn committed_pages_are_what_ivrd_man_writes() {
    let (_dir, pages) = generate();
    let committed: BTreeMap<String, String> = std::fs::read_dir(man_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect();
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        names(&committed),
        names(&pages),
        "man/ and `ivrd man` differ in their files: {REGENERATE}"
    );
    for (name, text) in &pages {
        assert!(
            committed[name] == *text,
            "man/{name} is not what `ivrd man` writes now: {REGENERATE}"
        );
    }
}

#[test]
fn every_page_renders_without_warnings_and_links_to_pages_that_exist() {
    let (_dir, pages) = generate();
    // The section after the page name: "(5)", "(5),", "(5))".
    let reference = regex::Regex::new(r"^\((\d)\)").unwrap();
    for (name, page) in &pages {
        let text = render(name, page);
        assert!(text.contains("NAME"), "{name}: no NAME section in\n{text}");
        // `.BR ivrd\-check (8)` must name a page this set has.
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(".BR ") else {
                continue;
            };
            let mut args = rest.split(' ');
            let (Some(target), Some(section)) = (args.next(), args.next()) else {
                continue;
            };
            let Some(n) = reference.captures(section).map(|c| c[1].to_string()) else {
                continue;
            };
            let target = format!("{}.{n}", unescape(target));
            assert!(
                pages.contains_key(&target),
                "{name} refers to {target}, which ivrd man does not write"
            );
        }
    }
}

#[test]
fn dialplan_page_documents_exactly_the_step_types_and_keys() {
    use ivrd::dialplan::model::STEP_TYPES;
    use ivrd::dialplan::parse::STEP_KEYS;
    let page = read(&man_dir().join("ivrd-dialplan.5"));
    let items = items(&page);

    let documented: BTreeMap<&str, BTreeSet<String>> = items
        .iter()
        .filter(|((sh, _), _)| sh == "STEP TYPES")
        .map(|((_, ss), list)| (ss.as_str(), keys_of(list, ss)))
        .collect();
    let types: BTreeSet<&str> = STEP_TYPES.iter().copied().collect();
    assert_eq!(
        documented.keys().copied().collect::<BTreeSet<_>>(),
        types,
        "the STEP TYPES subsections of ivrd-dialplan.5 against dialplan::model::STEP_TYPES"
    );
    for kind in STEP_TYPES {
        let others = STEP_KEYS
            .iter()
            .find(|(k, _)| k == kind)
            .unwrap_or_else(|| panic!("STEP_KEYS has no entry for {kind}"))
            .1;
        let want: BTreeSet<String> = std::iter::once(*kind)
            .chain(others.iter().copied())
            .map(String::from)
            .collect();
        assert_eq!(
            documented[kind], want,
            "ivrd-dialplan.5, step type {kind}: the .TP keys against what the parser accepts"
        );
    }

    // The file's tables and the keys of [dialplan] and [sms.LANG], from the parser's own
    // refusal of an unknown key.
    let parse = |src: &str| {
        ivrd::dialplan::parse("probe.toml", src).map_err(|problems| {
            problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("\n")
        })
    };
    let layout: BTreeMap<&str, &Vec<Item>> = items
        .iter()
        .filter(|((sh, _), _)| sh == "FILE LAYOUT")
        .map(|((_, ss), list)| (ss.as_str(), list))
        .collect();
    let headings: Vec<&str> = page
        .split_once(".SH FILE LAYOUT\n")
        .unwrap()
        .1
        .split_once("\n.SH ")
        .unwrap()
        .0
        .lines()
        .filter_map(|l| l.strip_prefix(".SS "))
        .collect();
    // `[sms.LANG]` and `[steps.NAME]` document the tables sms and steps.
    let tables: BTreeSet<String> = headings
        .iter()
        .map(|h| {
            h.trim_matches(['[', ']'])
                .split('.')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        tables,
        accepted(parse("__probe__ = 1"), "dialplan file"),
        "the FILE LAYOUT subsections of ivrd-dialplan.5 against the tables a plan may have"
    );
    for (heading, probe) in [
        ("[dialplan]", "[dialplan]\n__probe__ = 1"),
        ("[sms.LANG]", "[sms.en]\n__probe__ = 1"),
    ] {
        let documented = keys_of(layout.get(heading).copied().unwrap_or(&Vec::new()), heading);
        assert_eq!(
            documented,
            accepted(parse(probe), heading),
            "ivrd-dialplan.5 {heading}: the .TP keys against what the parser accepts"
        );
    }
}

#[test]
fn dialplan_page_example_is_a_valid_plan() {
    let page = read(&man_dir().join("ivrd-dialplan.5"));
    let src = example(&page);
    let plan = ivrd::dialplan::parse("example", &src)
        .unwrap_or_else(|p| panic!("the EXAMPLE does not parse: {p:?}\n{src}"));
    // Checked as `ivrd check` would, against prompts that all exist.
    let env = ivrd::dialplan::CheckEnv {
        prompt_exists: &|_, _| true,
        languages: &plan.languages,
    };
    if let Err(problems) = ivrd::dialplan::load("example", &src, &env) {
        panic!("the EXAMPLE has problems: {problems:#?}");
    }
}

#[test]
fn config_page_documents_exactly_the_keys_and_their_defaults() {
    let page = read(&man_dir().join("ivrd.toml.5"));
    let items = items(&page);
    let documented: BTreeMap<&str, &Vec<Item>> = items
        .iter()
        .filter(|((sh, _), _)| sh == "DESCRIPTION")
        .map(|((_, ss), list)| (ss.as_str(), list))
        .collect();
    let code = config_sections();
    assert_eq!(
        documented
            .keys()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        code.keys().cloned().collect::<BTreeSet<_>>(),
        "the sections of ivrd.toml.5 against those the config parser accepts"
    );
    for (heading, keys) in &code {
        assert_eq!(
            &keys_of(documented[heading.as_str()], heading),
            keys,
            "ivrd.toml.5 {heading}: the .TP keys against what the config parser accepts"
        );
    }

    // `key = value` in a tag claims the default: setting it must change nothing.
    let mut checked = 0;
    for (heading, list) in &documented {
        let (base, alone) = section_base(heading);
        let plain = format!("{alone:?}");
        for item in list.iter() {
            let Some(default) = &item.default else {
                continue;
            };
            let text = format!("{base}{} = {default}\n", item.key);
            let with = parse_config(&text)
                .unwrap_or_else(|e| panic!("ivrd.toml.5 {heading}: {text}: {e}"));
            // Whole configs compared: the message names the key rather than print both.
            assert!(
                format!("{with:?}") == plain,
                "ivrd.toml.5 {heading}: {} = {default} is not the default",
                item.key
            );
            checked += 1;
        }
    }
    // A page that lost its `key = value` tags would pass the loop above vacuously.
    assert!(checked > 50, "only {checked} defaults shown");
}

#[test]
fn config_page_example_is_a_valid_config() {
    let page = read(&man_dir().join("ivrd.toml.5"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ivrd.toml");
    std::fs::write(&path, example(&page)).unwrap();
    if let Err(e) = Config::load_without_secrets(&path) {
        panic!("the EXAMPLE of ivrd.toml.5 is refused: {e}");
    }
}
