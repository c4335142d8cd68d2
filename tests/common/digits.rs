//! Which digit prompts a recording contains: [`digits_heard`] finds the bundled
//! `prompts/<language>/digit-0.wav` .. `digit-9.wav` in what a peer heard (baresip's decoded
//! dump, 8 kHz mono s16), in time order, with the time each one starts.
//!
//! The references are what ivrd sends: each prompt converted by ivrd's own loader
//! ([`load_wav`]: resampled to 8 kHz), encoded by ivrd as PCMU ([`Prompt::from_pcm`]) and
//! decoded with the standard G.711 table, as baresip does. Each is trimmed to its voiced part
//! (the files carry 50 ms of silence each side, which would only dilute the score).
//!
//! Matching is normalised cross-correlation (NCC) at full rate, which tells one digit from
//! another: a lost or concealed 20 ms packet inside a 0.4 s prompt costs a true match only a few
//! hundredths, while different digits never come near (see [`MATCH_THRESHOLD`]). The recording
//! may be shifted by any number of samples (baresip's jitter buffer), so every lag has to be
//! considered; brute force over a 60 s recording would take minutes in the unoptimised test
//! build, so the search narrows down in three steps:
//! 1. envelopes: the RMS of 10 ms windows every 5 ms, of the recording and of each reference;
//!    the Pearson correlation of a reference's envelope with the recording's, at every frame,
//!    gives candidate positions (local maxima above [`ENVELOPE_MIN`]), a few per second of
//!    speech;
//! 2. around each candidate (±80 samples), a coarse NCC every 2 samples on 4-sample moving
//!    averages (a quarter of the products);
//! 3. around the best coarse lag (±3 samples), the full NCC over the whole reference. That score
//!    must reach [`MATCH_THRESHOLD`];
//! 4. when it falls short of a clean match (0.97) and one part of the prompt (split at a quarter, half or three quarters)
//!    matches well on its own, the other part may slip by up to two packets (a packet that
//!    baresip's dump lost, or silence its jitter buffer added): the NCC of both parts together.
//!
//! Detections of one digit within its own length of each other count once (the best one), and
//! so do overlapping detections of different digits (not expected: their scores are far apart).

use super::prompts_dir;
use ivrd::media::g711;
use ivrd::media::prompt::{Prompt, SAMPLE_RATE, load_wav};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The full-rate NCC a match must reach. Measured on the bundled English and German prompts
/// (tests/digits_matcher.rs prints them): true matches through ivrd and baresip score 0.95 and
/// more, a zeroed 20 ms chunk inside a prompt costs about 0.05, while the best score of one
/// digit prompt against another is about 0.4.
pub const MATCH_THRESHOLD: f64 = 0.8;

/// The envelope correlation a candidate position must reach (step 1); a loose bar: the full NCC
/// decides.
pub const ENVELOPE_MIN: f64 = 0.5;

/// How far the second part of a prompt may slip against the first ([`spliced`]): two packets.
const MAX_SLIP: isize = 320;
/// Below this full NCC, a match is tried with a slip ([`spliced`]).
const SPLICE_BELOW: f64 = 0.97;
/// The NCC the part of a prompt that did not slip must reach on its own ([`spliced`]).
const PART_MIN: f64 = 0.9;

/// Envelope hop and window, in samples (5 ms and 10 ms at 8 kHz).
const HOP: usize = 40;
const WINDOW: usize = 80;
/// How far around a candidate's frame the coarse search looks, in samples.
const COARSE_REACH: isize = 2 * HOP as isize;
/// How far around the best coarse lag the full NCC looks, in samples.
const FINE_REACH: isize = 3;
/// A sample at least this loud (of 32767) starts or ends a reference's voiced part.
const VOICED: i16 = 300;

/// One digit prompt as ivrd sends it, trimmed and prepared for the search.
struct Reference {
    digit: char,
    /// The voiced part, decoded from PCMU.
    pcm: Vec<f32>,
    norm: f64,
    /// How many samples of the prompt precede `pcm` (its leading silence).
    lead: usize,
    /// 4-sample moving average of `pcm`, every 4th value (`avg[i]` averages `pcm[4i..4i+4]`).
    coarse: Vec<f32>,
    coarse_norm: f64,
    /// Envelope of `pcm`, mean removed, and its norm.
    envelope: Vec<f32>,
    envelope_norm: f64,
}

/// A verified position of one digit prompt in a recording.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitMatch {
    pub digit: char,
    /// Where the prompt (its file's first sample, leading silence included) starts.
    pub start: Duration,
    /// Where its voiced part starts, in samples of the recording.
    pub offset: usize,
    /// Full-rate NCC of the voiced part at that offset.
    pub score: f64,
}

/// The ten digit prompts of `language`, loaded once per test process.
fn references(language: &str) -> Arc<Vec<Reference>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<Reference>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(refs) = cache.lock().unwrap().get(language) {
        return refs.clone();
    }
    let refs: Arc<Vec<Reference>> = Arc::new(
        ('0'..='9')
            .map(|digit| {
                let path = prompts_dir()
                    .join(language)
                    .join(format!("digit-{digit}.wav"));
                let pcm = load_wav(&path)
                    .unwrap_or_else(|e| panic!("digit prompt {}: {e}", path.display()));
                Reference::new(digit, &decoded_as_sent(&pcm))
            })
            .collect(),
    );
    cache
        .lock()
        .unwrap()
        .insert(language.to_string(), refs.clone());
    refs
}

/// `pcm` (8 kHz) as a peer hears it from ivrd over PCMU: encoded by ivrd, decoded with the
/// G.711 table.
pub fn decoded_as_sent(pcm: &[i16]) -> Vec<i16> {
    let prompt = Prompt::from_pcm("reference", "xx", pcm.to_vec());
    prompt.pcmu.iter().map(|&b| g711::ulaw_decode(b)).collect()
}

/// The digit prompt `digit` of `language` as a peer hears it (untrimmed: 50 ms of silence
/// each side, as played), for building synthetic recordings.
pub fn digit_prompt_as_heard(language: &str, digit: char) -> Vec<i16> {
    let path = prompts_dir()
        .join(language)
        .join(format!("digit-{digit}.wav"));
    let pcm = load_wav(&path).unwrap_or_else(|e| panic!("digit prompt {}: {e}", path.display()));
    decoded_as_sent(&pcm)
}

impl Reference {
    fn new(digit: char, heard: &[i16]) -> Reference {
        let first = heard
            .iter()
            .position(|s| s.unsigned_abs() >= VOICED.unsigned_abs());
        let last = heard
            .iter()
            .rposition(|s| s.unsigned_abs() >= VOICED.unsigned_abs());
        let (Some(first), Some(last)) = (first, last) else {
            panic!("digit prompt {digit} is silent");
        };
        let pcm: Vec<f32> = heard[first..=last].iter().map(|&s| f32::from(s)).collect();
        let norm = energy(&pcm).sqrt();
        let coarse: Vec<f32> = pcm
            .chunks_exact(4)
            .map(|c| (c[0] + c[1] + c[2] + c[3]) / 4.0)
            .collect();
        let coarse_norm = energy(&coarse).sqrt();
        let mut envelope = envelope(&pcm);
        let mean = envelope.iter().sum::<f32>() / envelope.len() as f32;
        envelope.iter_mut().for_each(|e| *e -= mean);
        let envelope_norm = energy(&envelope).sqrt();
        Reference {
            digit,
            pcm,
            norm,
            lead: first,
            coarse,
            coarse_norm,
            envelope,
            envelope_norm,
        }
    }
}

fn energy(x: &[f32]) -> f64 {
    f64::from(dot(x, x))
}

/// The dot product of `a` and the start of `b`, written for the unoptimised test build: a
/// `while` loop over indices with four accumulators (no iterator calls per sample).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let b = &b[..n];
    let (mut s0, mut s1, mut s2, mut s3) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut i = 0;
    while i + 4 <= n {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
        i += 4;
    }
    while i < n {
        s0 += a[i] * b[i];
        i += 1;
    }
    (s0 + s1) + (s2 + s3)
}

/// RMS of `WINDOW` samples every `HOP` samples (only whole windows).
fn envelope(x: &[f32]) -> Vec<f32> {
    if x.len() < WINDOW {
        return Vec::new();
    }
    let mut squares = Vec::with_capacity(x.len() + 1);
    squares.push(0.0f64);
    let mut acc = 0.0f64;
    for &v in x {
        acc += v as f64 * v as f64;
        squares.push(acc);
    }
    (0..=(x.len() - WINDOW) / HOP)
        .map(|k| ((squares[k * HOP + WINDOW] - squares[k * HOP]) / WINDOW as f64).sqrt() as f32)
        .collect()
}

/// Reads a mono 16-bit WAV (baresip's `dump-*-dec.wav`).
pub fn read_recording(path: &Path) -> (Vec<i16>, u32) {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let spec = reader.spec();
    assert!(
        spec.channels == 1 && spec.bits_per_sample == 16,
        "{} is not mono 16-bit: {spec:?}",
        path.display()
    );
    let samples = reader
        .samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("decode {}: {e}", path.display()));
    (samples, spec.sample_rate)
}

/// The digit prompts of `language` heard in `recording` (an 8 kHz mono s16 WAV), in time order,
/// each with the time it starts in the recording.
pub fn digits_heard(recording: &Path, language: &str) -> Vec<(char, Duration)> {
    let (samples, rate) = read_recording(recording);
    assert_eq!(
        rate,
        SAMPLE_RATE,
        "{} is not 8 kHz: decode G.711 calls only",
        recording.display()
    );
    find_digits(&samples, language)
        .into_iter()
        .map(|m| (m.digit, m.start))
        .collect()
}

/// [`digits_heard`] on samples, with every match's score and offset.
pub fn find_digits(samples: &[i16], language: &str) -> Vec<DigitMatch> {
    let mut found: Vec<DigitMatch> = scores(samples, language)
        .into_iter()
        .filter(|m| m.score >= MATCH_THRESHOLD)
        .collect();
    let refs = references(language);
    let len_of = |d: char| {
        refs.iter()
            .find(|r| r.digit == d)
            .map_or(0, |r| r.pcm.len())
    };
    // Best first, then drop whatever overlaps a better match.
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<DigitMatch> = Vec::new();
    for m in found {
        let (start, end) = (m.offset, m.offset + len_of(m.digit));
        let overlaps = kept.iter().any(|k| {
            let (ks, ke) = (k.offset, k.offset + len_of(k.digit));
            start < ke && ks < end
        });
        if !overlaps {
            kept.push(m);
        }
    }
    kept.sort_by_key(|m| m.offset);
    kept
}

/// Every verified candidate of every digit, whatever its score (best per position: candidates
/// of one digit within its own length of each other are merged), unsorted. For measuring the
/// margin between true and false matches.
pub fn scores(samples: &[i16], language: &str) -> Vec<DigitMatch> {
    let refs = references(language);
    let x: Vec<f32> = samples.iter().map(|&s| f32::from(s)).collect();
    let n = x.len();
    // Prefix sums of squares, for the window energies of the full NCC.
    let mut squares = Vec::with_capacity(n + 1);
    squares.push(0.0f64);
    let mut acc = 0.0f64;
    for &v in &x {
        acc += v as f64 * v as f64;
        squares.push(acc);
    }
    // 4-sample moving average (avg[j] = mean of x[j..j+4]), split by residue mod 4 so that
    // avg[l], avg[l+4], avg[l+8], .. is the contiguous phases[l % 4][l / 4..], and prefix sums
    // of its squares: the energy of avg[l], .., avg[l+4(m-1)] is strided[l+4m] - strided[l].
    let avg: Vec<f32> = if n >= 4 {
        (0..=n - 4)
            .map(|j| (x[j] + x[j + 1] + x[j + 2] + x[j + 3]) / 4.0)
            .collect()
    } else {
        Vec::new()
    };
    let phases: Vec<Vec<f32>> = (0..4)
        .map(|p| avg.iter().skip(p).step_by(4).copied().collect())
        .collect();
    let mut strided = vec![0.0f64; avg.len() + 4];
    for j in 0..avg.len() {
        strided[j + 4] = strided[j] + avg[j] as f64 * avg[j] as f64;
    }
    let env = envelope(&x);
    let mut env_sum = Vec::with_capacity(env.len() + 1);
    let mut env_sq = Vec::with_capacity(env.len() + 1);
    env_sum.push(0.0f64);
    env_sq.push(0.0f64);
    for &e in &env {
        let e = f64::from(e);
        env_sum.push(env_sum.last().unwrap() + e);
        env_sq.push(env_sq.last().unwrap() + e * e);
    }

    let mut out = Vec::new();
    for r in refs.iter() {
        let len = r.pcm.len();
        let m = r.envelope.len();
        if n < len || env.len() < m || m == 0 {
            continue;
        }
        // Step 1: Pearson correlation of the envelopes at every frame.
        let pearson: Vec<f64> = (0..=env.len() - m)
            .map(|k| {
                let sum = env_sum[k + m] - env_sum[k];
                let var = (env_sq[k + m] - env_sq[k]) - sum * sum / m as f64;
                if var <= 1e-6 * m as f64 {
                    return 0.0;
                }
                // The reference's envelope has its mean removed, so the window's needs not be.
                f64::from(dot(&r.envelope, &env[k..])) / (r.envelope_norm * var.sqrt())
            })
            .collect();
        let mut verified: Vec<DigitMatch> = Vec::new();
        for k in 0..pearson.len() {
            let p = pearson[k];
            let (lo, hi) = (k.saturating_sub(4), (k + 4).min(pearson.len() - 1));
            if p < ENVELOPE_MIN || pearson[lo..=hi].iter().any(|&q| q > p) {
                continue;
            }
            // Step 2: coarse NCC every 2 samples around the candidate.
            let centre = (k * HOP) as isize;
            let mut best = (f64::MIN, 0usize);
            let mut lag = (centre - COARSE_REACH).max(0);
            while lag <= (centre + COARSE_REACH).min((n - len) as isize) {
                let l = lag as usize;
                let cm = r.coarse.len();
                if cm > 0 && l + 4 * (cm - 1) < avg.len() {
                    let d = dot(&r.coarse, &phases[l % 4][l / 4..]);
                    let e = strided[l + 4 * cm] - strided[l];
                    if e > 0.0 {
                        let s = f64::from(d) / (r.coarse_norm * e.sqrt());
                        if s > best.0 {
                            best = (s, l);
                        }
                    }
                }
                lag += 2;
            }
            if best.0 == f64::MIN {
                continue;
            }
            // Step 3: full NCC around the best coarse lag.
            let mut fine = (f64::MIN, 0usize);
            let from = (best.1 as isize - FINE_REACH).max(0) as usize;
            let to = (best.1 + FINE_REACH as usize).min(n - len);
            for l in from..=to {
                let d = dot(&r.pcm, &x[l..]);
                let e = squares[l + len] - squares[l];
                if e > 0.0 {
                    let s = f64::from(d) / (r.norm * e.sqrt());
                    if s > fine.0 {
                        fine = (s, l);
                    }
                }
            }
            if fine.0 == f64::MIN {
                continue;
            }
            // A match short of perfect may be a prompt with a slip in it: even one that passes
            // the threshold as a whole is then aligned by its larger part, 20 ms off.
            if fine.0 < SPLICE_BELOW {
                let spliced = spliced(r, &x, &squares, fine.1);
                if spliced.0 > fine.0 {
                    fine = spliced;
                }
            }
            let candidate = DigitMatch {
                digit: r.digit,
                start: samples_to_time(fine.1.saturating_sub(r.lead)),
                offset: fine.1,
                score: fine.0,
            };
            match verified
                .iter_mut()
                .find(|v| v.offset.abs_diff(candidate.offset) < len)
            {
                Some(v) if v.score >= candidate.score => {}
                Some(v) => *v = candidate,
                None => verified.push(candidate),
            }
        }
        out.extend(verified);
    }
    out
}

/// The NCC of `r` in `x` allowing for one packet lost or added inside it (baresip's dump then
/// has 20 ms less or more there): `r` is split at a quarter, half or three quarters; one part
/// stays where the whole matched best (`lag`), the other may move by up to [`MAX_SLIP`]
/// samples. Only tried when the fixed part alone matches well (NCC >= [`PART_MIN`]), which
/// false candidates do not. Returns the score and where the reference's first part starts.
fn spliced(r: &Reference, x: &[f32], squares: &[f64], lag: usize) -> (f64, usize) {
    let len = r.pcm.len();
    let mut best = (f64::MIN, lag);
    for split in [len / 4, len / 2, 3 * len / 4] {
        let (head, tail) = r.pcm.split_at(split);
        // The part at `lag` (head from `lag`, or tail from `lag + split`) and its energy.
        for head_fixed in [true, false] {
            let (fixed, fixed_at, moving) = if head_fixed {
                (head, lag, tail)
            } else {
                (tail, lag + split, head)
            };
            if fixed_at + fixed.len() > x.len() {
                continue;
            }
            let fixed_dot = f64::from(dot(fixed, &x[fixed_at..]));
            let fixed_e = squares[fixed_at + fixed.len()] - squares[fixed_at];
            let fixed_norm = energy(fixed).sqrt();
            if fixed_e <= 0.0 || fixed_dot / (fixed_norm * fixed_e.sqrt()) < PART_MIN {
                continue;
            }
            // Where the moving part would start without a slip.
            let home = if head_fixed { lag + split } else { lag } as isize;
            for slip in -MAX_SLIP..=MAX_SLIP {
                let at = home + slip;
                if at < 0 || at as usize + moving.len() > x.len() {
                    continue;
                }
                let at = at as usize;
                let d = fixed_dot + f64::from(dot(moving, &x[at..]));
                let e = fixed_e + squares[at + moving.len()] - squares[at];
                if e <= 0.0 {
                    continue;
                }
                let score = d / (r.norm * e.sqrt());
                if score > best.0 {
                    best = (score, if head_fixed { lag } else { at });
                }
            }
        }
    }
    best
}

/// The best full-rate NCC of `digit`'s reference over every lag of `samples`, by brute force,
/// with its offset: slow (seconds), for measuring how much prompts look alike.
pub fn best_score_anywhere(samples: &[i16], language: &str, digit: char) -> (f64, usize) {
    let refs = references(language);
    let r = refs
        .iter()
        .find(|r| r.digit == digit)
        .expect("a digit 0..9");
    let x: Vec<f32> = samples.iter().map(|&s| f32::from(s)).collect();
    let len = r.pcm.len();
    let mut best = (f64::MIN, 0);
    if x.len() < len {
        return best;
    }
    let mut e = energy(&x[..len]);
    for l in 0..=x.len() - len {
        if l > 0 {
            let (out, inn) = (x[l - 1] as f64, x[l + len - 1] as f64);
            e = (e - out * out + inn * inn).max(0.0);
        }
        if e > 1.0 {
            let s = f64::from(dot(&r.pcm, &x[l..])) / (r.norm * e.sqrt());
            if s > best.0 {
                best = (s, l);
            }
        }
    }
    best
}

fn samples_to_time(samples: usize) -> Duration {
    Duration::from_nanos(samples as u64 * 1_000_000_000 / u64::from(SAMPLE_RATE))
}
