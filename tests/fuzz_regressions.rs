//! Replays the fuzzers' inputs on stable Rust, without libFuzzer: every seed in
//! `fuzz/corpus/<target>/` and every crash input ever found in `fuzz/regressions/<target>/`
//! goes through the same `ivrd::fuzzing` function the fuzz target calls. A panic, an abort or
//! a huge allocation here is the bug the fuzzer found coming back.
//!
//! Both directories must exist for every target, and the targets in `fuzz/fuzz_targets/` must
//! be exactly `ivrd::fuzzing::TARGETS`, so a target cannot lose its replay by a rename.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of one corpus or regressions directory, sorted; a missing directory fails.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (every target needs fuzz/{kind}/{target}/)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        // `.gitkeep` keeps an empty directory in git; everything else is an input.
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

fn replay(kind: &str, target: &str) -> usize {
    let run = ivrd::fuzzing::target(target).expect("a known target");
    let files = inputs(kind, target);
    for file in &files {
        let data = std::fs::read(file).expect("readable input");
        // The file name is printed first, so a crash names its input.
        eprintln!("{kind}/{target}: {}", file.display());
        run(&data);
    }
    files.len()
}

#[test]
fn targets_match_the_fuzz_crate() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let known: BTreeSet<String> = ivrd::fuzzing::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(on_disk, known);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &known {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                let seeds = replay("corpus", stringify!($target));
                assert!(seeds > 0, "fuzz/corpus/{}/ has no seeds", stringify!($target));
                replay("regressions", stringify!($target));
            }
        )*

        #[test]
        fn every_target_has_a_replay_test() {
            let tested: BTreeSet<&str> = [$(stringify!($target)),*].into_iter().collect();
            let known: BTreeSet<&str> = ivrd::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(tested, known);
        }
    };
}

replay_tests!(
    sip_message,
    sdp,
    rtp,
    srtp,
    sip_info,
    digest,
    dialplan,
    wav,
    customers_csv,
    http_response,
    api_request
);
