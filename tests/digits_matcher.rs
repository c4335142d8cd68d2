//! The digit-prompt matcher of tests/common/digits.rs on synthetic recordings: the bundled
//! digit prompts as a peer hears them (ivrd's conversion, PCMU, decoded), in a random order with
//! random gaps of other speech or low noise, starting at a random sample (not frame-aligned),
//! with a 20 ms packet zeroed inside one prompt (a lost packet concealed with silence), cut out
//! of another (lost without a trace) and added to a third (the jitter buffer grew). It must find exactly
//! the digits placed, in order, at the right times, and the best false match must stay well
//! below the threshold.

mod common;

use common::digits::{
    MATCH_THRESHOLD, best_score_anywhere, decoded_as_sent, digit_prompt_as_heard, find_digits,
    scores,
};
use common::prompts_dir;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform noise in -amp..=amp.
    fn noise(&mut self, amp: i32) -> i16 {
        (self.below(2 * amp as usize + 1) as i32 - amp) as i16
    }
}

/// A prompt of `language` (not a digit) as heard, to stand between digits like a real flow.
fn other_prompt(language: &str, name: &str) -> Vec<i16> {
    let path = prompts_dir().join(language).join(format!("{name}.wav"));
    let pcm = ivrd::media::prompt::load_wav(&path)
        .unwrap_or_else(|e| panic!("prompt {}: {e}", path.display()));
    decoded_as_sent(&pcm)
}

/// Builds the recording: every digit `rounds` times in a shuffled order, each preceded by a gap of
/// noise (0..0.6 s) and sometimes by another prompt; the whole thing starts after a random
/// number of samples. Returns it with the digits and their start samples.
fn synthetic(language: &str, seed: u64, rounds: usize) -> (Vec<i16>, Vec<(char, usize)>) {
    let mut rng = Rng(seed);
    let mut order: Vec<char> = (0..rounds).flat_map(|_| '0'..='9').collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    let others: Vec<Vec<i16>> = ["you-entered", "enter-digits", "goodbye", "hash", "star"]
        .iter()
        .map(|n| other_prompt(language, n))
        .collect();
    let mut out: Vec<i16> = (0..1 + rng.below(8000)).map(|_| rng.noise(30)).collect();
    let mut placed = Vec::new();
    for (i, &digit) in order.iter().enumerate() {
        if rng.below(3) == 0 {
            out.extend(&others[rng.below(others.len())]);
        }
        let gap = rng.below(4800);
        out.extend((0..gap).map(|_| rng.noise(30)));
        let mut prompt = digit_prompt_as_heard(language, digit);
        // Some prompts quieter, as a trunk's gain would make them.
        if i % 3 == 1 {
            prompt
                .iter_mut()
                .for_each(|s| *s = (f32::from(*s) * 0.6) as i16);
        }
        // One lost packet concealed with silence, in the middle of the 6th digit; one lost
        // without a trace (the dump just goes on with the next packet) in the 9th; one
        // packet's worth of silence added (the jitter buffer grew) a third into the 12th.
        let third = prompt.len() / 3;
        let mid = prompt.len() / 2;
        match i {
            5 => prompt[mid..mid + 160].iter_mut().for_each(|s| *s = 0),
            8 => drop(prompt.drain(mid..mid + 160)),
            11 => drop(prompt.splice(third..third, [0; 160])),
            _ => {}
        }
        placed.push((digit, out.len()));
        out.extend(prompt);
    }
    out.extend((0..4000).map(|_| rng.noise(30)));
    // Low noise over everything (about -60 dBFS).
    for s in out.iter_mut() {
        *s = s.saturating_add(rng.noise(30));
    }
    (out, placed)
}

fn check(language: &str, seed: u64, rounds: usize) {
    let (recording, placed) = synthetic(language, seed, rounds);
    let secs = recording.len() as f64 / 8000.0;

    let started = Instant::now();
    let found = find_digits(&recording, language);
    let took = started.elapsed();

    let all = scores(&recording, language);
    // A candidate is true when a prompt of its digit was placed within a few samples of where
    // its voiced part starts (the placement is the file's first sample, 50 ms of silence
    // earlier): compare the start times instead.
    let is_true = |m: &common::digits::DigitMatch| {
        let start = (m.start.as_secs_f64() * 8000.0).round() as usize;
        placed
            .iter()
            .any(|&(d, at)| d == m.digit && at.abs_diff(start) <= 8)
    };
    let best_false = all
        .iter()
        .filter(|m| !is_true(m))
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .cloned();
    let worst_true = all
        .iter()
        .filter(|m| is_true(m))
        .min_by(|a, b| a.score.total_cmp(&b.score))
        .cloned();
    eprintln!(
        "{language} seed {seed}: {secs:.1} s recording searched in {took:?}; {} candidates; \
         worst true match {worst_true:?}; best false match {best_false:?}",
        all.len()
    );

    let digits: String = found.iter().map(|m| m.digit).collect();
    let expected: String = placed.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        digits, expected,
        "digits found in the synthetic recording: {found:#?}"
    );
    for (m, &(digit, at)) in found.iter().zip(&placed) {
        let start = (m.start.as_secs_f64() * 8000.0).round() as usize;
        assert!(
            start.abs_diff(at) <= 8,
            "digit {digit} placed at sample {at} found at {start} ({m:?})"
        );
    }
    // The margins: 0.1 each side of the threshold.
    if let Some(f) = best_false {
        assert!(
            f.score < MATCH_THRESHOLD - 0.1,
            "a false match comes within 0.1 of the threshold {MATCH_THRESHOLD}: {f:?}"
        );
    }
    let worst_true = worst_true.expect("true matches");
    assert!(
        worst_true.score > MATCH_THRESHOLD + 0.1,
        "a true match comes within 0.1 of the threshold {MATCH_THRESHOLD}: {worst_true:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "searching {secs:.1} s took {took:?}"
    );
}

#[test]
fn finds_english_digits_in_order_at_their_times() {
    check("en", 0x1234_5678_9abc_def1, 2);
    // About a minute of audio.
    check("en", 42, 4);
}

#[test]
fn finds_german_digits_in_order_at_their_times() {
    check("de", 0x0fed_cba9_8765_4321, 2);
}

/// Prompts that are not digits hold no digit, each alone or all in a row: every prompt of
/// both languages except the digit prompts and their copies (num-1 .. num-9, English num-one),
/// through the whole search (a slip allowed). Some say a digit inside a word ("fifty",
/// "seventeen", "fünfzig"); they must stay below the threshold too.
#[test]
fn no_digits_in_other_prompts() {
    for language in ["en", "de"] {
        let dir = prompts_dir().join(language);
        let digit_files: Vec<Vec<u8>> = ('0'..='9')
            .map(|d| std::fs::read(dir.join(format!("digit-{d}.wav"))).expect("read digit"))
            .collect();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("read prompts")
            .flatten()
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".wav")?
                    .to_string();
                let bytes = std::fs::read(e.path()).ok()?;
                (!name.starts_with("digit-") && !digit_files.contains(&bytes)).then_some(name)
            })
            .collect();
        names.sort();
        let mut recording = vec![0i16; 4000];
        for name in &names {
            recording.extend(other_prompt(language, name));
            recording.extend(std::iter::repeat_n(0, 2000));
        }
        let started = Instant::now();
        let found = find_digits(&recording, language);
        let best = scores(&recording, language)
            .into_iter()
            .max_by(|a, b| a.score.total_cmp(&b.score));
        eprintln!(
            "{language}: {} prompts, {:.1} s, searched in {:?}; best score {best:?}",
            names.len(),
            recording.len() as f64 / 8000.0,
            started.elapsed()
        );
        assert!(
            found.is_empty(),
            "{language}: digits found in non-digit prompts: {found:?}"
        );
    }
}

/// How much the digit prompts look alike, by brute force over every lag (slow in a debug build,
/// about a minute; hence ignored: run with `cargo test --test digits_matcher -- --ignored
/// --nocapture`): each digit's reference against each other digit prompt, with low noise
/// around it, and against every other prompt of the language. Prints the tables; fails if a
/// digit comes within 0.15 of the threshold in another digit prompt, or reaches the threshold
/// in another prompt (some say a digit as part of a word: "seventeen", "sixty"). Prompts that
/// are copies of a digit prompt (num-1 .. num-9, English num-one) are left out.
///
/// Seen: among the digit prompts at most 0.443 in English (1 in digit-9) and 0.617 in German
/// (0 in digit-9, 5 in digit-7); in other prompts up to 0.779 (en: 6 in num-15) and 0.749 (de:
/// 5 in num-50).
#[test]
#[ignore]
fn cross_scores_of_the_prompts() {
    for language in ["en", "de"] {
        let mut rng = Rng(7);
        let mut digits_worst = (0.0f64, String::new());
        eprintln!(
            "{language}: best NCC of each digit's reference (rows) in each digit prompt (columns)"
        );
        for a in '0'..='9' {
            let mut row = format!("  {a}:");
            for b in '0'..='9' {
                let mut samples: Vec<i16> = (0..4000).map(|_| rng.noise(30)).collect();
                samples.extend(digit_prompt_as_heard(language, b));
                samples.extend((0..4000).map(|_| rng.noise(30)));
                let (score, _) = best_score_anywhere(&samples, language, a);
                row += &format!(" {score:.3}");
                if a != b && score > digits_worst.0 {
                    digits_worst = (score, format!("digit {a} in digit-{b}"));
                }
            }
            eprintln!("{row}");
        }
        let dir = prompts_dir().join(language);
        let digit_files: Vec<Vec<u8>> = ('0'..='9')
            .map(|d| std::fs::read(dir.join(format!("digit-{d}.wav"))).expect("read digit"))
            .collect();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("read prompts")
            .flatten()
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".wav")?
                    .to_string();
                let bytes = std::fs::read(e.path()).ok()?;
                (!name.starts_with("digit-") && !digit_files.contains(&bytes)).then_some(name)
            })
            .collect();
        names.sort();
        let mut others_worst = (0.0f64, String::new());
        for name in names {
            let samples = other_prompt(language, &name);
            let best = ('0'..='9')
                .map(|d| (best_score_anywhere(&samples, language, d).0, d))
                .max_by(|x, y| x.0.total_cmp(&y.0))
                .expect("ten digits");
            eprintln!("  {name}: best digit {} at {:.3}", best.1, best.0);
            if best.0 > others_worst.0 {
                others_worst = (best.0, format!("digit {} in {name}", best.1));
            }
        }
        eprintln!(
            "{language}: best false match among digit prompts {:.3} ({}), in other prompts {:.3} ({})",
            digits_worst.0, digits_worst.1, others_worst.0, others_worst.1
        );
        assert!(
            digits_worst.0 < MATCH_THRESHOLD - 0.15,
            "{language}: {} scores {:.3}, within 0.15 of the threshold {MATCH_THRESHOLD}",
            digits_worst.1,
            digits_worst.0
        );
        assert!(
            others_worst.0 < MATCH_THRESHOLD,
            "{language}: {} scores {:.3}, above the threshold {MATCH_THRESHOLD}",
            others_worst.1,
            others_worst.0
        );
    }
}
