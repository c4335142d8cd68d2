//! In-band DTMF detection (Goertzel filters with ITU-T Q.24-style limits)
//! on 8 kHz linear PCM, and a dual-tone generator.
//!
//! Needed for callers whose equipment sends keys only as audio (old
//! gateways, some trunks, calls bridged through the PSTN). The hard part is
//! not hearing the tones but staying deaf to everything else: prompts,
//! speech, music and noise must never yield a digit, since a false digit
//! in a PIN entry is worse than a missed one. So every Hann-windowed
//! 102-sample block (12.75 ms) must pass all of:
//!
//! * level: each tone at least -30 dBm0;
//! * frequency: each tone within ±2.5% of nominal (capped at ±32 Hz),
//!   measured precisely from the phase advance of the Goertzel output
//!   between consecutive blocks, so the Q.24 limits hold: accept within
//!   ±1.5%, reject beyond ±3.5%;
//! * twist: high group at most 8 dB above the low group (normal twist),
//!   low group at most 4 dB above the high group (reverse twist);
//! * dominance: the two tones carry at least 92% of the block's energy
//!   (DC removed). This is what rejects speech, chords, harmonics and
//!   noise (the speech corpus in the tests stays silent down to a 60%
//!   threshold), and also blocks only partly covered by a tone.
//!
//! A key goes down after two consecutive valid blocks with the same key,
//! and up after three blocks without it. Measured over every alignment of
//! tone against blocks (see the tests): tones of 39 ms or more are always
//! accepted and of 24 ms or less always rejected; pauses of 27 ms or more
//! always separate two presses and dropouts of up to 13 ms never split
//! one; detection is reliable down to about 12 dB signal-to-noise ratio.
//!
//! Why a window: the two tones of a key are as little as 268 Hz (3.4
//! filter bins) apart, and without one each leaks ~9% of its amplitude
//! into the other's filter, moving measured levels by up to ±18% and
//! biasing the frequency estimate. Hann cuts that below 1%; the wider main
//! lobe it costs does not matter because frequency is judged by phase.
//! Why 102 samples: long enough for a precise phase measurement, short
//! enough that two blocks fit into a 40 ms tone at any alignment.

use super::{COL_HZ, Digit, ROW_HZ};

/// Samples per second of the input.
const SAMPLE_RATE: f64 = 8000.0;
/// Samples per analysis block.
const BLOCK: usize = 102;
/// The eight DTMF frequencies: rows 0-3, then columns 4-7.
const FREQS: [u16; 8] = [
    ROW_HZ[0], ROW_HZ[1], ROW_HZ[2], ROW_HZ[3], COL_HZ[0], COL_HZ[1], COL_HZ[2], COL_HZ[3],
];
/// Peak amplitude (16-bit linear) of a 0 dBm0 sine. G.711's full-scale
/// sine (peak ≈ 32700) is +3.17 dBm0 (μ-law) / +3.14 dBm0 (A-law).
const ZERO_DBM0_PEAK: f32 = 22_700.0;
/// Weakest tone accepted, per tone. Phones send about -6 to -10 dBm0 per
/// tone and lines lose up to ~20 dB; anything weaker is more likely
/// background noise or cross-talk than a key press.
const MIN_TONE_DBM0: f32 = -30.0;
/// Allowed frequency deviation, as a fraction of the nominal frequency.
/// Midway between Q.24's must-accept (1.5%) and must-reject (3.5%).
const FREQ_TOLERANCE: f64 = 0.025;
/// Cap on the allowed deviation in Hz. The phase-based estimate wraps at
/// ±fs/(2*BLOCK) = ±39 Hz, so the two top columns (whose 2.5% exceeds
/// that) are held to 32 Hz (2.2% and 2.0%): still above the 1.5% that must
/// pass, and a tone so far off that its estimate wraps loses so much energy
/// in its filter that the dominance test rejects it.
const FREQ_TOLERANCE_MAX_HZ: f64 = 32.0;
/// Normal twist limit: high group this many dB above the low group.
const NORMAL_TWIST_DB: f32 = 8.0;
/// Reverse twist limit: low group this many dB above the high group.
const REVERSE_TWIST_DB: f32 = 4.0;
/// Share of the block energy the two tones must carry. Clean tones with
/// light noise reach 0.95-1.0; speech and music stay far below. It is also
/// what rejects blocks only partly covered by a tone (under ~80% with the
/// Hann window), which bounds the shortest accepted tone.
const MIN_DOMINANCE: f32 = 0.92;
/// Consecutive valid blocks of the same key before it is reported.
const HITS_TO_START: u8 = 2;
/// Consecutive blocks without the key before it counts as released.
const MISSES_TO_END: u8 = 3;
/// Digits that can wait to be returned by [`InbandDetector::process`].
const PENDING: usize = 8;

/// Per-tone peak amplitude in 16-bit linear units for a level in dBm0,
/// for use with [`generate_tone`].
pub fn dbm0_to_amplitude(dbm0: f32) -> f32 {
    ZERO_DBM0_PEAK * 10f32.powf(dbm0 / 20.0)
}

/// Append `ms` milliseconds of the dual tone for `digit` at 8 kHz to `out`.
///
/// `amplitude` is the peak of each of the two sines in 16-bit linear
/// units (see [`dbm0_to_amplitude`]); the sum is clamped to the i16 range.
pub fn generate_tone(digit: Digit, ms: u32, amplitude: f32, out: &mut Vec<i16>) {
    let (low, high) = digit.frequencies();
    let n = ms as usize * (SAMPLE_RATE as usize / 1000);
    let (wl, wh) = (omega(f64::from(low)), omega(f64::from(high)));
    let amp = f64::from(amplitude);
    out.reserve(n);
    for i in 0..n {
        let t = i as f64;
        let v = amp * ((wl * t).sin() + (wh * t).sin());
        out.push(v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16);
    }
}

/// Radians per sample of a frequency in Hz.
fn omega(hz: f64) -> f64 {
    2.0 * std::f64::consts::PI * hz / SAMPLE_RATE
}

/// Why a block was not a valid DTMF block (kept for tests and tuning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    /// Too little energy to hold two tones at the minimum level.
    Quiet,
    /// A tone's phase advance puts it outside the frequency tolerance (or
    /// the previous block had nothing at that frequency to compare with).
    Frequency,
    /// A tone is below the minimum level.
    Level,
    /// The two tones' levels differ too much.
    Twist,
    /// Other energy (speech, harmonics, noise, a tone edge) is too large.
    Dominance,
}

/// Per-filter constants, computed once.
#[derive(Clone, Debug)]
struct Filters {
    /// Goertzel feedback coefficient 2·cos ω.
    coef: [f32; 8],
    cos_w: [f32; 8],
    sin_w: [f32; 8],
    /// e^{-jωN}: removes the nominal phase advance over one block.
    rot_re: [f32; 8],
    rot_im: [f32; 8],
    /// Frequency tolerance as a phase deviation over one block (radians).
    tol_rad: [f32; 8],
    /// Hann window, applied to every block.
    window: [f32; BLOCK],
    /// Σw²: a signal of mean power P has a windowed block energy of P·Σw².
    sum_w2: f32,
    /// 2·Σw²/(Σw)²: converts a filter's output power into the windowed
    /// block energy of the tone that produced it.
    tone_scale: f32,
}

impl Filters {
    fn new() -> Self {
        let mut f = Filters {
            coef: [0.0; 8],
            cos_w: [0.0; 8],
            sin_w: [0.0; 8],
            rot_re: [0.0; 8],
            rot_im: [0.0; 8],
            tol_rad: [0.0; 8],
            window: [0.0; BLOCK],
            sum_w2: 0.0,
            tone_scale: 0.0,
        };
        // Hann (sin²) sampled at sample midpoints: symmetric, no zero taps.
        let (mut sum_w, mut sum_w2) = (0f64, 0f64);
        for (n, w) in f.window.iter_mut().enumerate() {
            let v = (std::f64::consts::PI * (n as f64 + 0.5) / BLOCK as f64)
                .sin()
                .powi(2);
            *w = v as f32;
            sum_w += v;
            sum_w2 += v * v;
        }
        f.sum_w2 = sum_w2 as f32;
        f.tone_scale = (2.0 * sum_w2 / (sum_w * sum_w)) as f32;
        for (k, &hz) in FREQS.iter().enumerate() {
            let hz = f64::from(hz);
            let w = omega(hz);
            f.coef[k] = (2.0 * w.cos()) as f32;
            f.cos_w[k] = w.cos() as f32;
            f.sin_w[k] = w.sin() as f32;
            let wn = w * BLOCK as f64;
            f.rot_re[k] = wn.cos() as f32;
            f.rot_im[k] = (-wn.sin()) as f32;
            let tol_hz = (hz * FREQ_TOLERANCE).min(FREQ_TOLERANCE_MAX_HZ);
            f.tol_rad[k] = omega(tol_hz) as f32 * BLOCK as f32;
        }
        f
    }
}

/// Streaming DTMF tone detector for one 8 kHz audio stream.
#[derive(Clone, Debug)]
pub struct InbandDetector {
    filters: Filters,
    /// Goertzel state s[n-1], s[n-2] per filter for the current block.
    s1: [f32; 8],
    s2: [f32; 8],
    /// Σ(x·w)² and Σx·w² of the current block: windowed energy, and what
    /// is needed to remove any DC offset from it.
    energy: f32,
    sum: f32,
    /// Samples in the current block so far.
    filled: usize,
    /// Complex Goertzel outputs of the previous block, for the phase
    /// advance that measures each tone's frequency.
    prev_re: [f32; 8],
    prev_im: [f32; 8],
    /// Key seen in the latest run of valid blocks, and the run's length.
    candidate: Option<Digit>,
    hits: u8,
    /// Key currently held down (already reported), and blocks since it
    /// was last seen.
    active: Option<Digit>,
    misses: u8,
    /// Reported keys not yet returned (FIFO ring).
    pending: [Digit; PENDING],
    pending_head: usize,
    pending_len: usize,
    /// Minimum per-tone windowed block energy.
    min_tone_energy: f32,
}

impl Default for InbandDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl InbandDetector {
    /// A detector in its idle state.
    pub fn new() -> Self {
        let min_amp = dbm0_to_amplitude(MIN_TONE_DBM0);
        let filters = Filters::new();
        // A sine of peak A has mean power A²/2; windowing weighs it by Σw².
        let min_tone_energy = filters.sum_w2 * min_amp * min_amp / 2.0;
        InbandDetector {
            filters,
            s1: [0.0; 8],
            s2: [0.0; 8],
            energy: 0.0,
            sum: 0.0,
            filled: 0,
            prev_re: [0.0; 8],
            prev_im: [0.0; 8],
            candidate: None,
            hits: 0,
            active: None,
            misses: 0,
            pending: [Digit::ALL[0]; PENDING],
            pending_head: 0,
            pending_len: 0,
            min_tone_energy,
        }
    }

    /// Forget all audio seen so far (e.g. after a stream restart).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Feed 8 kHz linear PCM samples; any slice length works and state is
    /// kept across calls.
    ///
    /// Returns a digit when a key press is recognised (about 25-40 ms
    /// after the tone starts). A slice longer than ~30 ms can complete
    /// several key presses; the later ones are queued (up to 8) and
    /// returned by the following calls, which may pass an empty slice, or
    /// by [`InbandDetector::pop_digit`].
    pub fn process(&mut self, samples: &[i16]) -> Option<Digit> {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (BLOCK - self.filled).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            self.accumulate(chunk);
            rest = tail;
            if self.filled == BLOCK
                && let Some(d) = self.end_block()
            {
                self.push_pending(d);
            }
        }
        self.pop_digit()
    }

    /// Next queued digit, if a long slice completed more than one.
    pub fn pop_digit(&mut self) -> Option<Digit> {
        if self.pending_len == 0 {
            return None;
        }
        let d = self.pending[self.pending_head];
        self.pending_head = (self.pending_head + 1) % PENDING;
        self.pending_len -= 1;
        Some(d)
    }

    fn push_pending(&mut self, d: Digit) {
        if self.pending_len == PENDING {
            // Only reachable if a caller feeds seconds of audio per call
            // and never drains; keep the newest keys.
            self.pending_head = (self.pending_head + 1) % PENDING;
            self.pending_len -= 1;
        }
        self.pending[(self.pending_head + self.pending_len) % PENDING] = d;
        self.pending_len += 1;
    }

    /// The hot loop: run all eight Goertzel filters over `chunk`, which
    /// never crosses a block boundary.
    fn accumulate(&mut self, chunk: &[i16]) {
        let coef = self.filters.coef;
        let window = &self.filters.window[self.filled..self.filled + chunk.len()];
        let (mut s1, mut s2) = (self.s1, self.s2);
        let (mut energy, mut sum) = (self.energy, self.sum);
        for (&x, &w) in chunk.iter().zip(window) {
            let x = f32::from(x) * w;
            energy += x * x;
            sum += x * w;
            for k in 0..8 {
                let s0 = x + coef[k] * s1[k] - s2[k];
                s2[k] = s1[k];
                s1[k] = s0;
            }
        }
        (self.s1, self.s2) = (s1, s2);
        (self.energy, self.sum) = (energy, sum);
        self.filled += chunk.len();
    }

    /// Classify the completed block, reset the accumulators and advance
    /// the key up/down state machine. Returns a newly pressed key.
    fn end_block(&mut self) -> Option<Digit> {
        let verdict = self.finish_block();
        self.update_state(verdict)
    }

    /// Classify the completed block and reset the accumulators.
    fn finish_block(&mut self) -> Result<Digit, Reject> {
        let verdict = self.classify_block();
        self.s1 = [0.0; 8];
        self.s2 = [0.0; 8];
        self.energy = 0.0;
        self.sum = 0.0;
        self.filled = 0;
        verdict
    }

    /// Key down after `HITS_TO_START` valid blocks of one key, key up after
    /// `MISSES_TO_END` blocks without it.
    fn update_state(&mut self, verdict: Result<Digit, Reject>) -> Option<Digit> {
        let Ok(key) = verdict else {
            self.candidate = None;
            self.hits = 0;
            self.note_miss();
            return None;
        };
        if self.candidate == Some(key) {
            self.hits = self.hits.saturating_add(1);
        } else {
            self.candidate = Some(key);
            self.hits = 1;
        }
        if self.active == Some(key) {
            self.misses = 0;
            return None;
        }
        if self.hits >= HITS_TO_START {
            // A new key, possibly replacing another without a pause.
            self.active = Some(key);
            self.misses = 0;
            return Some(key);
        }
        self.note_miss();
        None
    }

    fn note_miss(&mut self) {
        if self.active.is_some() {
            self.misses = self.misses.saturating_add(1);
            if self.misses >= MISSES_TO_END {
                self.active = None;
                self.misses = 0;
            }
        }
    }

    /// Decide whether the just-completed block holds a valid DTMF key.
    fn classify_block(&mut self) -> Result<Digit, Reject> {
        let f = &self.filters;
        let mut re = [0f32; 8];
        let mut im = [0f32; 8];
        let mut pow = [0f32; 8];
        for k in 0..8 {
            // y = s[N-1] - e^{-jω} s[N-2] = e^{jω(N-1)} · DFT at ω.
            re[k] = self.s1[k] - f.cos_w[k] * self.s2[k];
            im[k] = f.sin_w[k] * self.s2[k];
            pow[k] = re[k] * re[k] + im[k] * im[k];
        }
        let (prev_re, prev_im) = (self.prev_re, self.prev_im);
        self.prev_re = re;
        self.prev_im = im;

        // Windowed energy of the block with its (weighted) mean removed.
        let energy = self.energy - self.sum * self.sum / f.sum_w2;
        if energy < 2.0 * self.min_tone_energy {
            return Err(Reject::Quiet);
        }
        let row = argmax(&pow[..4]);
        let col = 4 + argmax(&pow[4..]);

        // Windowed block energy each tone carries, corrected for the loss
        // its frequency offset causes in the filter.
        let mut tone_energy = [0f32; 2];
        for (slot, k) in [row, col].into_iter().enumerate() {
            let (pr, pi) = (prev_re[k], prev_im[k]);
            let prev_pow = pr * pr + pi * pi;
            // No tone in the previous block: no phase to compare with.
            // (Also stops exact digital silence yielding a zero offset.)
            // Inputs are i16, so nothing here can be NaN.
            if prev_pow <= pow[k] * 1e-4 {
                return Err(Reject::Frequency);
            }
            // z = y · conj(y_prev) · e^{-jωN}: its angle is the phase
            // advance beyond nominal, i.e. 2π·Δf·N/fs.
            let zr = re[k] * pr + im[k] * pi;
            let zi = im[k] * pr - re[k] * pi;
            let ar = zr * f.rot_re[k] - zi * f.rot_im[k];
            let ai = zr * f.rot_im[k] + zi * f.rot_re[k];
            let theta = ai.atan2(ar);
            if theta.abs() > f.tol_rad[k] {
                return Err(Reject::Frequency);
            }
            tone_energy[slot] = f.tone_scale * pow[k] / filter_gain(theta);
        }
        let [low, high] = tone_energy;

        if low < self.min_tone_energy || high < self.min_tone_energy {
            return Err(Reject::Level);
        }
        if high > low * db_to_power(NORMAL_TWIST_DB) || low > high * db_to_power(REVERSE_TWIST_DB) {
            return Err(Reject::Twist);
        }
        if low + high < MIN_DOMINANCE * energy {
            return Err(Reject::Dominance);
        }
        Digit::at(row, col - 4).ok_or(Reject::Frequency)
    }
}

/// Power gain (relative to an exact match) of the Hann-windowed filter
/// for a tone whose phase drifts `theta` radians per block against it,
/// i.e. that is off by δ = θ/2π bins: (sinc δ / (1 - δ²))². Only called
/// with |δ| ≤ 0.41, where this is within 0.1% of the exact value.
fn filter_gain(theta: f32) -> f32 {
    let delta = theta / (2.0 * std::f32::consts::PI);
    let x = std::f32::consts::PI * delta;
    if x.abs() < 1e-6 {
        return 1.0;
    }
    let g = x.sin() / x / (1.0 - delta * delta);
    g * g
}

fn db_to_power(db: f32) -> f32 {
    10f32.powf(db / 10.0)
}

/// Index of the largest value (first on ties).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: usize = 160;

    fn d(c: char) -> Digit {
        Digit::from_char(c).expect("test key")
    }

    fn ms(n: usize) -> usize {
        n * 8
    }

    /// Append `n` samples of two sines (Hz, peak amplitude) to `out`.
    fn push_tones(out: &mut Vec<i16>, n: usize, tones: &[(f64, f64)]) {
        let start = out.len();
        for i in 0..n {
            let t = (start + i) as f64;
            let v: f64 = tones.iter().map(|&(hz, a)| a * (omega(hz) * t).sin()).sum();
            out.push(v.round().clamp(-32768.0, 32767.0) as i16);
        }
    }

    /// The key's tone pair with per-tone levels and relative frequency
    /// offsets (0.015 = +1.5%).
    fn push_key(out: &mut Vec<i16>, key: Digit, n: usize, dbm0: (f32, f32), dev: (f64, f64)) {
        let (lo, hi) = key.frequencies();
        let tones = [
            (
                f64::from(lo) * (1.0 + dev.0),
                f64::from(dbm0_to_amplitude(dbm0.0)),
            ),
            (
                f64::from(hi) * (1.0 + dev.1),
                f64::from(dbm0_to_amplitude(dbm0.1)),
            ),
        ];
        push_tones(out, n, &tones);
    }

    fn push_silence(out: &mut Vec<i16>, n: usize) {
        out.resize(out.len() + n, 0);
    }

    /// Deterministic xorshift64* noise source.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Approximately Gaussian, unit variance (Irwin-Hall, 12 terms).
        fn gauss(&mut self) -> f64 {
            (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
        }
    }

    /// Add white Gaussian noise of the given RMS to `samples`.
    fn add_noise(samples: &mut [i16], rms: f64, rng: &mut Rng) {
        for s in samples {
            let v = f64::from(*s) + rms * rng.gauss();
            *s = v.round().clamp(-32768.0, 32767.0) as i16;
        }
    }

    /// Run a fresh detector over `samples` in 20 ms frames, then flush
    /// with silence, and return every digit reported.
    fn detect(samples: &[i16]) -> String {
        detect_in_chunks(samples, FRAME)
    }

    fn detect_in_chunks(samples: &[i16], chunk: usize) -> String {
        let mut det = InbandDetector::new();
        let mut out = String::new();
        let tail = [0i16; 800];
        for frame in samples.chunks(chunk).chain(tail.chunks(FRAME)) {
            if let Some(k) = det.process(frame) {
                out.push(k.as_char());
            }
            while let Some(k) = det.pop_digit() {
                out.push(k.as_char());
            }
        }
        out
    }

    /// The verdict of every complete block, for asserting why a signal is
    /// rejected.
    fn verdicts(samples: &[i16]) -> Vec<Result<Digit, Reject>> {
        let mut det = InbandDetector::new();
        samples
            .chunks_exact(BLOCK)
            .map(|block| {
                det.accumulate(block);
                det.finish_block()
            })
            .collect()
    }

    const LEVELS: [f32; 4] = [-4.0, -10.0, -20.0, -27.0];

    #[test]
    fn all_keys_detected_at_several_levels() {
        for (i, &level) in LEVELS.iter().enumerate() {
            for (j, key) in Digit::ALL.into_iter().enumerate() {
                let mut s = Vec::new();
                // Vary the alignment of the tone against the blocks.
                push_silence(&mut s, 200 + (i * 16 + j) * 7 % BLOCK);
                push_key(&mut s, key, ms(60), (level, level), (0.0, 0.0));
                push_silence(&mut s, ms(60));
                assert_eq!(detect(&s), key.to_string(), "key {key} at {level} dBm0");
            }
        }
    }

    #[test]
    fn twist_within_limits_is_accepted() {
        for key in Digit::ALL {
            // Normal twist: high group 7 dB above the low group.
            let mut s = Vec::new();
            push_key(&mut s, key, ms(60), (-16.0, -9.0), (0.0, 0.0));
            assert_eq!(detect(&s), key.to_string(), "key {key}, +7 dB twist");
            // Reverse twist: low group 3 dB above the high group.
            let mut s = Vec::new();
            push_key(&mut s, key, ms(60), (-9.0, -12.0), (0.0, 0.0));
            assert_eq!(detect(&s), key.to_string(), "key {key}, -3 dB twist");
        }
    }

    #[test]
    fn excessive_twist_is_rejected() {
        for key in Digit::ALL {
            for levels in [(-18.0, -8.0), (-8.0, -14.0)] {
                let mut s = Vec::new();
                push_key(&mut s, key, ms(200), levels, (0.0, 0.0));
                assert_eq!(detect(&s), "", "key {key} at {levels:?}");
                // Rejected for the right reason, not by accident.
                let v = verdicts(&s);
                assert!(
                    v[2..v.len() - 1].iter().all(|v| *v == Err(Reject::Twist)),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn all_keys_detected_with_light_noise() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for snr_db in [20.0, 15.0] {
            for key in Digit::ALL {
                let level = -12.0;
                let mut s = Vec::new();
                push_silence(&mut s, ms(100));
                push_key(&mut s, key, ms(60), (level, level), (0.0, 0.0));
                push_silence(&mut s, ms(100));
                // Two tones of peak A carry power A²/2 each.
                let a = f64::from(dbm0_to_amplitude(level));
                let signal_power = a * a;
                let rms = (signal_power / 10f64.powf(snr_db / 10.0)).sqrt();
                add_noise(&mut s, rms, &mut rng);
                assert_eq!(detect(&s), key.to_string(), "key {key} at {snr_db} dB SNR");
            }
        }
    }

    #[test]
    fn frequency_deviation_within_1_5_percent_is_accepted() {
        for key in Digit::ALL {
            for dev in [
                (0.015, 0.015),
                (0.015, -0.015),
                (-0.015, 0.015),
                (-0.015, -0.015),
            ] {
                for levels in [(-10.0, -10.0), (-15.0, -8.0), (-8.0, -11.0)] {
                    let mut s = Vec::new();
                    push_silence(&mut s, 37);
                    push_key(&mut s, key, ms(60), levels, dev);
                    assert_eq!(detect(&s), key.to_string(), "key {key} {dev:?} {levels:?}");
                }
            }
        }
    }

    #[test]
    fn off_frequency_tones_are_rejected() {
        for key in Digit::ALL {
            for off in [0.035, -0.035, 0.05, -0.05] {
                for dev in [(off, 0.0), (0.0, off), (off, off)] {
                    let mut s = Vec::new();
                    push_key(&mut s, key, ms(300), (-10.0, -10.0), dev);
                    assert_eq!(detect(&s), "", "key {key} deviation {dev:?}");
                }
            }
        }
    }

    #[test]
    fn frequency_sweep_accepts_only_near_nominal_frequencies() {
        // Move one tone of a key from -20% to +20% of its frequency. A key
        // may only be reported if the moved tone is within 2.6% of that
        // key's frequency (possibly a neighbouring key's), and must be
        // reported when within 1.5% of one. Covers the region where the
        // phase-based estimate wraps (tones 39-78 Hz off).
        for (k, &nominal) in FREQS.iter().enumerate() {
            let key = if k < 4 {
                Digit::at(k, 0)
            } else {
                Digit::at(0, k - 4)
            }
            .unwrap();
            let nominal = f64::from(nominal);
            for step in -80..=80 {
                let dev = f64::from(step) * 0.0025;
                let actual = nominal * (1.0 + dev);
                let mut s = Vec::new();
                let devs = if k < 4 { (dev, 0.0) } else { (0.0, dev) };
                push_key(&mut s, key, ms(100), (-10.0, -10.0), devs);
                let got = detect(&s);
                let group = if k < 4 { &FREQS[..4] } else { &FREQS[4..] };
                let near = |tol: f64| {
                    group
                        .iter()
                        .any(|&g| (actual / f64::from(g) - 1.0).abs() <= tol)
                };
                match got.chars().collect::<Vec<_>>()[..] {
                    [] => assert!(!near(0.015), "{actual:.1} Hz missed"),
                    [c] => {
                        let (lo, hi) = d(c).frequencies();
                        let f = f64::from(if k < 4 { lo } else { hi });
                        let err = (actual / f - 1.0).abs();
                        assert!(err <= 0.026, "{actual:.1} Hz taken as {c} ({f} Hz)");
                    }
                    _ => panic!("{actual:.1} Hz gave {got}"),
                }
            }
        }
    }

    /// Tone of `n` samples for every key and every alignment against the
    /// block grid; returns how many of the runs detected exactly the key.
    fn short_tone_runs(n: usize, dev: (f64, f64)) -> (usize, usize) {
        let mut detected = 0;
        let mut runs = 0;
        for key in Digit::ALL {
            for offset in 0..BLOCK {
                let mut s = Vec::new();
                push_silence(&mut s, BLOCK + offset);
                push_key(&mut s, key, n, (-6.0, -6.0), dev);
                let got = detect(&s);
                assert!(got.is_empty() || got == key.to_string(), "{key}: {got}");
                detected += usize::from(!got.is_empty());
                runs += 1;
            }
        }
        (detected, runs)
    }

    #[test]
    fn tones_of_20_and_23_ms_are_rejected_at_every_alignment() {
        assert_eq!(short_tone_runs(ms(20), (0.0, 0.0)).0, 0);
        assert_eq!(short_tone_runs(184, (0.0, 0.0)).0, 0);
        assert_eq!(short_tone_runs(184, (0.015, 0.015)).0, 0);
        assert_eq!(short_tone_runs(184, (-0.015, -0.015)).0, 0);
    }

    #[test]
    fn tones_of_40_ms_are_accepted_at_every_alignment() {
        for dev in [(0.0, 0.0), (0.015, -0.015), (-0.015, 0.015)] {
            let (detected, runs) = short_tone_runs(ms(40), dev);
            assert_eq!(detected, runs, "{dev:?}");
        }
    }

    #[test]
    fn too_weak_tones_are_rejected() {
        for key in Digit::ALL {
            let mut s = Vec::new();
            push_key(&mut s, key, ms(200), (-36.0, -36.0), (0.0, 0.0));
            assert_eq!(detect(&s), "", "key {key}");
            let v = verdicts(&s);
            assert!(
                v.iter()
                    .all(|v| matches!(v, Err(Reject::Quiet | Reject::Level))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn silence_and_white_noise_give_no_digits() {
        assert_eq!(detect(&vec![0; ms(2000)]), "");
        let mut rng = Rng(42);
        for rms in [30.0, 300.0, 3000.0, 12000.0] {
            let mut s = vec![0; ms(5000)];
            add_noise(&mut s, rms, &mut rng);
            assert_eq!(detect(&s), "", "noise rms {rms}");
        }
    }

    /// Minimal reader for the test corpus: RIFF/WAVE, PCM, mono, 16-bit,
    /// 8 kHz. Panics (test failure) on anything else.
    fn read_wav_8k_mono(path: &str) -> Vec<i16> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE");
        let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut pos = 12;
        let mut format_ok = false;
        while pos + 8 <= bytes.len() {
            let id = &bytes[pos..pos + 4];
            let len = le32(&bytes[pos + 4..]) as usize;
            let body = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
            if id == b"fmt " {
                let (format, channels) = (le16(body), le16(&body[2..]));
                let (rate, bits) = (le32(&body[4..]), le16(&body[14..]));
                assert_eq!((format, channels, rate, bits), (1, 1, 8000, 16), "{path}");
                format_ok = true;
            } else if id == b"data" {
                assert!(format_ok, "{path}: data before fmt");
                return body
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
            }
            pos += 8 + len + (len & 1);
        }
        panic!("{path}: no data chunk");
    }

    const SPEECH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-8k.wav");

    #[test]
    fn speech_gives_no_digits() {
        let speech = read_wav_8k_mono(SPEECH);
        assert!(
            speech.len() > ms(30_000),
            "corpus too short: {}",
            speech.len()
        );
        // Different alignments against the block grid and different levels.
        for (skip, gain) in [(0, 1.0), (51, 1.0), (17, 0.3), (88, 0.1)] {
            let s: Vec<i16> = speech[skip..]
                .iter()
                .map(|&x| (f32::from(x) * gain) as i16)
                .collect();
            assert_eq!(detect(&s), "", "skip {skip}, gain {gain}");
        }
    }

    #[test]
    fn speech_corpus_does_reach_the_detector() {
        // Guard against the speech test passing because the corpus is
        // silent or rejected before analysis: most blocks must be loud
        // enough to be analysed, and rejected for their content.
        let speech = read_wav_8k_mono(SPEECH);
        let v = verdicts(&speech);
        let analysed = v.iter().filter(|v| **v != Err(Reject::Quiet)).count();
        assert!(analysed * 2 > v.len(), "{analysed} of {}", v.len());
        // ...and a key mixed into it at a realistic level is still found.
        let mut s = speech[..ms(4000)].to_vec();
        let mut key = Vec::new();
        push_silence(&mut key, ms(3000));
        push_key(&mut key, d('7'), ms(80), (-8.0, -6.0), (0.0, 0.0));
        for (a, b) in s.iter_mut().zip(&key) {
            *a = (i32::from(*a) / 8 + i32::from(*b)).clamp(-32768, 32767) as i16;
        }
        assert_eq!(detect(&s), "7");
    }

    #[test]
    fn music_like_chords_give_no_digits() {
        // Triads and seventh chords on every semitone over three octaves,
        // each note with six harmonics (amplitude 1/h), 250 ms per chord.
        let chords: [&[i32]; 4] = [&[0, 4, 7], &[0, 3, 7], &[0, 4, 7, 10], &[0, 7]];
        let mut s = Vec::new();
        for root in 0..36 {
            for chord in chords {
                let mut tones = Vec::new();
                for &interval in chord {
                    let midi = 48 + root + interval;
                    let f0 = 440.0 * 2f64.powf(f64::from(midi - 69) / 12.0);
                    for h in 1..=6 {
                        let hz = f0 * f64::from(h);
                        if hz < 3900.0 {
                            tones.push((hz, 3000.0 / f64::from(h)));
                        }
                    }
                }
                push_tones(&mut s, ms(250), &tones);
            }
        }
        assert_eq!(detect(&s), "");
    }

    #[test]
    fn digit_sequences_come_out_exactly() {
        let mut s = Vec::new();
        for c in "123#".chars() {
            generate_tone(d(c), 50, dbm0_to_amplitude(-8.0), &mut s);
            push_silence(&mut s, ms(50));
        }
        assert_eq!(detect(&s), "123#");

        // Q.24 minimum: 40 ms tones, 40 ms pauses, all 16 keys.
        let all = "1234567890*#ABCD";
        let mut s = Vec::new();
        for c in all.chars() {
            generate_tone(d(c), 40, dbm0_to_amplitude(-10.0), &mut s);
            push_silence(&mut s, ms(40));
        }
        assert_eq!(detect(&s), all);

        // The same key three times is three presses.
        let mut s = Vec::new();
        for _ in 0..3 {
            generate_tone(d('5'), 50, dbm0_to_amplitude(-8.0), &mut s);
            push_silence(&mut s, ms(50));
        }
        assert_eq!(detect(&s), "555");
    }

    #[test]
    fn key_change_without_pause_gives_both_keys() {
        let mut s = Vec::new();
        generate_tone(d('1'), 80, dbm0_to_amplitude(-8.0), &mut s);
        generate_tone(d('9'), 80, dbm0_to_amplitude(-8.0), &mut s);
        assert_eq!(detect(&s), "19");
    }

    #[test]
    fn short_dropout_does_not_split_a_key() {
        // A 10 ms hole anywhere inside a 150 ms tone (Q.24: interruptions
        // up to 10 ms must be bridged).
        for at in (ms(30)..ms(130)).step_by(5) {
            let mut s = Vec::new();
            generate_tone(d('8'), 150, dbm0_to_amplitude(-8.0), &mut s);
            s[at..at + ms(10)].fill(0);
            assert_eq!(detect(&s), "8", "dropout at sample {at}");
        }
    }

    #[test]
    fn pause_of_40_ms_separates_repeated_keys_at_every_alignment() {
        for offset in 0..BLOCK {
            let mut s = Vec::new();
            push_silence(&mut s, offset);
            generate_tone(d('8'), 60, dbm0_to_amplitude(-8.0), &mut s);
            push_silence(&mut s, ms(40));
            generate_tone(d('8'), 60, dbm0_to_amplitude(-8.0), &mut s);
            assert_eq!(detect(&s), "88", "offset {offset}");
        }
    }

    #[test]
    fn long_press_is_one_digit_and_dc_offset_is_harmless() {
        let mut s = Vec::new();
        generate_tone(d('0'), 3000, dbm0_to_amplitude(-8.0), &mut s);
        assert_eq!(detect(&s), "0");
        for x in &mut s {
            *x = x.saturating_add(4000);
        }
        assert_eq!(detect(&s), "0");
    }

    #[test]
    fn any_slice_length_gives_the_same_digits() {
        let mut s = Vec::new();
        for c in "90#*".chars() {
            generate_tone(d(c), 45, dbm0_to_amplitude(-10.0), &mut s);
            push_silence(&mut s, ms(45));
        }
        for chunk in [1, 7, 80, 101, 102, 103, 160, 333, s.len()] {
            assert_eq!(detect_in_chunks(&s, chunk), "90#*", "chunks of {chunk}");
        }
        // One call with everything: the first digit now, the rest queued.
        let mut det = InbandDetector::new();
        assert_eq!(det.process(&s), Some(d('9')));
        assert_eq!(det.process(&[]), Some(d('0')));
        assert_eq!(det.pop_digit(), Some(d('#')));
        assert_eq!(det.pop_digit(), Some(d('*')));
        assert_eq!(det.pop_digit(), None);
    }

    #[test]
    fn generate_tone_produces_the_requested_signal() {
        let mut s = vec![1, 2];
        generate_tone(d('5'), 30, 10_000.0, &mut s);
        assert_eq!(s.len(), 2 + 240);
        let peak = s[2..].iter().map(|x| x.unsigned_abs()).max().unwrap();
        assert!((18_000..=20_000).contains(&peak), "peak {peak}");
        // Clamped, not wrapped, when asked for too much.
        let mut s = Vec::new();
        generate_tone(d('5'), 30, 30_000.0, &mut s);
        assert!(s.contains(&i16::MAX) && s.contains(&i16::MIN));
        assert!((dbm0_to_amplitude(-20.0) - 2270.0).abs() < 1.0);
    }

    #[test]
    fn filter_gain_matches_the_windowed_filter() {
        // Compare the closed form with the actual response of the window
        // to a tone drifting theta radians per block.
        let f = Filters::new();
        let sum_w: f64 = f.window.iter().map(|&w| f64::from(w)).sum();
        for i in 0..=20 {
            let theta = f64::from(f.tol_rad[7]) * f64::from(i) / 20.0;
            let dw = theta / BLOCK as f64;
            let (mut re, mut im) = (0.0, 0.0);
            for (n, &w) in f.window.iter().enumerate() {
                re += f64::from(w) * (dw * n as f64).cos();
                im += f64::from(w) * (dw * n as f64).sin();
            }
            let exact = (re * re + im * im) / (sum_w * sum_w);
            let approx = f64::from(filter_gain(theta as f32));
            assert!(
                (approx / exact - 1.0).abs() < 1e-3,
                "theta {theta}: {approx} vs {exact}"
            );
        }
        // The tolerance stays inside the unambiguous phase range.
        assert!(f.tol_rad.iter().all(|&t| t < 0.85 * std::f32::consts::PI));
    }

    /// Not a test of speed (nothing is asserted about time): prints the
    /// cost of one 20 ms frame. Run with
    /// `cargo test --release -- --ignored --nocapture frame_cost`.
    #[test]
    #[ignore]
    fn frame_cost() {
        let speech = read_wav_8k_mono(SPEECH);
        let mut det = InbandDetector::new();
        let frames = speech.len() / FRAME;
        let start = std::time::Instant::now();
        let mut found = 0;
        for _ in 0..20 {
            for frame in speech.chunks_exact(FRAME) {
                found += usize::from(det.process(std::hint::black_box(frame)).is_some());
            }
        }
        let per_frame = start.elapsed().as_secs_f64() * 1e6 / (20 * frames) as f64;
        println!("in-band detector: {per_frame:.3} µs per 20 ms frame ({found} digits)");
    }
}
