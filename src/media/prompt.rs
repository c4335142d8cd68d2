//! Voice prompts: loading WAV files once at start-up, converting them to the
//! telephone format and keeping them in a shared, read-only library.
//!
//! Prompts live at `<prompts_dir>/<language>/<name>.wav`. Every call plays
//! from the same [`PromptLibrary`], so all the expensive work happens once
//! in [`PromptLibrary::load`]: decode any PCM WAV (8/16/24/32-bit integer or
//! 32-bit float, any rate, any channel count), mix down to mono by averaging
//! the channels, resample to 8 kHz, and pre-encode to both PCMU and PCMA.
//! The RTP path then only slices `Arc<[u8]>` buffers: no per-call decoding,
//! resampling or allocation.
//!
//! Resampling uses rubato's synchronous FFT resampler ([`FftFixedIn`]): it
//! works on the exact rational ratio (e.g. 441:80 for 44.1 kHz), has a
//! steep windowed-sinc anti-aliasing filter (speech above 4 kHz must not
//! fold back into the band; tested at >= 40 dB rejection), and needs no
//! tuning of interpolation parameters since the ratio is fixed per file.
//! Its group delay is compensated, so a converted prompt has exactly
//! `round(frames * 8000 / rate)` samples and its audio is not shifted in
//! time. Files already at 8 kHz skip the resampler entirely and are
//! bit-exact for 16-bit input.
//!
//! Nothing in a file is trusted: an admin drops files in, and a reload
//! must never take the daemon down. Files over [`MAX_FILE_BYTES`] are not
//! read, a data chunk that claims more bytes than the file has is an error
//! (never an allocation), prompts over [`MAX_PROMPT_SECS`] are refused
//! before any output is allocated, the input is decoded, mixed and resampled
//! in chunks (no buffer grows with it), and float samples that are not
//! finite or beyond ±[`MAX_FLOAT_MAGNITUDE`] are refused before they reach
//! the resampler (whose FFT unwraps an error that infinities cause). A
//! panic that slips through anyway is caught per file and reported as
//! [`PromptError::Internal`]. [`decode_wav`] is the entry point for bytes.
//!
//! Errors name the offending file, say what is wrong and what to do about
//! it, because the person reading them is an operator who just dropped a
//! new recording into the directory. [`PromptLibrary::load`] checks every
//! file and reports all broken ones at once rather than one per restart.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rubato::{FftFixedIn, Resampler};
use thiserror::Error;

use super::g711;

/// Sample rate of every converted prompt (narrowband telephony).
pub const SAMPLE_RATE: u32 = 8000;

/// Lowest input sample rate accepted. Anything below cannot carry speech
/// and is almost certainly a corrupt header.
const MIN_INPUT_RATE: u32 = 1000;
/// Highest input sample rate accepted. Bounds the FFT size the resampler
/// may plan for a pathological (co-prime) rate taken from a file header.
const MAX_INPUT_RATE: u32 = 384_000;

/// Longest prompt accepted, in seconds of audio (10 minutes). Bounds the
/// memory a prompt takes (at 8 kHz, 10 minutes are 4.8 M samples, 19 MB
/// with both encodings) and catches headers that claim absurd lengths.
/// Welcome messages and menus last seconds; even hold music loops.
pub const MAX_PROMPT_SECS: u32 = 600;

/// Largest prompt file read, in bytes (256 MiB): ten minutes of 48 kHz
/// stereo 32-bit float (230 MB) fit. The file is read whole, so this is
/// also the most memory one file can take while it loads.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Largest magnitude accepted for a float sample (full scale is 1.0).
/// Hot masters go a little beyond full scale and are clipped; a value
/// beyond +12 dBFS is not audio but a corrupt file or raw data with a float
/// header, and is reported rather than played as full-scale noise.
pub const MAX_FLOAT_MAGNITUDE: f32 = 4.0;

/// Largest numerator accepted for the reduced ratio `rate : 8000`. The
/// resampler works on whole periods of that many input frames, so its FFT
/// size grows with it: a co-prime rate such as 352,801 Hz takes seconds to
/// plan and a minute for a long prompt. Every standard rate reduces to at
/// most 3,528 (44.1 kHz is 441:80, 352.8 kHz is 3528:80).
const MAX_RATE_PERIOD: u32 = 50_000;

/// Requested resampler chunk in input frames. rubato rounds it up to a
/// whole number of rational periods; ~1k gives a long, steep
/// anti-aliasing filter while keeping the FFTs small.
const RESAMPLER_CHUNK: usize = 1024;

/// Placeholder "path" for errors from [`convert`], which works on memory.
const IN_MEMORY: &str = "<in-memory audio>";

/// Everything that can go wrong while loading prompts. Every variant that
/// concerns a file or directory carries its path, and every message ends
/// with what the operator should do.
#[derive(Debug, Error)]
pub enum PromptError {
    /// A file or directory exists but could not be read (permissions, I/O
    /// error).
    #[error("{}: cannot read: {source}: check that it exists and is readable by the ivrd user", path.display())]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// The file is not a RIFF/WAVE file at all (wrong extension, MP3, text,
    /// empty file...).
    #[error("{}: not a WAV file ({reason}): re-export it as a PCM WAV file", path.display())]
    NotWav {
        /// The offending file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// A valid WAV file in an encoding or sample format that is not
    /// supported (compressed codecs, 64-bit float, odd bit depths).
    #[error(
        "{}: unsupported sample format ({detail}): re-export it as 16-bit PCM \
         (8/24/32-bit integer and 32-bit float PCM also work), \
         e.g. `sox in.wav -e signed-integer -b 16 out.wav`",
        path.display()
    )]
    UnsupportedFormat {
        /// The offending file.
        path: PathBuf,
        /// Which format was found.
        detail: String,
    },

    /// The file ends before the header or the audio data it declares.
    #[error(
        "{}: truncated WAV file ({detail}): the file was cut short or its header is corrupt; \
         copy or export it again",
        path.display()
    )]
    Truncated {
        /// The offending file.
        path: PathBuf,
        /// Which part is missing.
        detail: String,
    },

    /// The file or the audio it declares is larger than a prompt may be
    /// ([`MAX_FILE_BYTES`], [`MAX_PROMPT_SECS`]).
    #[error(
        "{}: too large for a prompt ({detail}): prompts may last at most {} minutes; \
         shorten it or split it into several prompts",
        path.display(),
        MAX_PROMPT_SECS / 60
    )]
    TooLarge {
        /// The offending file.
        path: PathBuf,
        /// What is too large, with the numbers.
        detail: String,
    },

    /// Float samples that are not audio: NaN, infinities, or magnitudes far
    /// beyond full scale (see [`MAX_FLOAT_MAGNITUDE`]).
    #[error(
        "{}: samples out of range / not finite ({reason}): the audio data is corrupt; \
         re-export it as 16-bit PCM",
        path.display()
    )]
    BadSamples {
        /// The offending file.
        path: PathBuf,
        /// Which sample and what it holds.
        reason: String,
    },

    /// Decoding the file panicked. Not expected: every known way a file can
    /// be wrong has its own variant. Caught so that one file can never take
    /// the daemon down (a reload keeps the running prompts instead).
    #[error(
        "{}: ivrd could not decode this file (internal error: {message}): re-export it as \
         16-bit PCM, and please report this with the file attached",
        path.display()
    )]
    Internal {
        /// The offending file.
        path: PathBuf,
        /// The panic message.
        message: String,
    },

    /// The WAV header is inconsistent in a way that is not a truncation.
    #[error("{}: malformed WAV file ({reason}): re-export it as a PCM WAV file", path.display())]
    Malformed {
        /// The offending file.
        path: PathBuf,
        /// The inconsistency found by the parser.
        reason: String,
    },

    /// The audio has no samples (or less than one 8 kHz sample).
    #[error("{}: empty audio (no samples): record the prompt again or remove the file", path.display())]
    Empty {
        /// The offending file.
        path: PathBuf,
    },

    /// Sample rate or channel layout that cannot be converted.
    #[error("{}: invalid audio parameters ({reason}): re-export it as 8 or 16 kHz mono PCM WAV", path.display())]
    InvalidAudio {
        /// The offending file, or `<in-memory audio>` for [`convert`].
        path: PathBuf,
        /// What is wrong with the parameters.
        reason: String,
    },

    /// The resampler rejected the input. Not expected for parameters that
    /// passed validation; reported rather than panicking.
    #[error("{}: resampling to 8 kHz failed ({reason}): re-export it as 8 or 16 kHz mono PCM WAV", path.display())]
    Resample {
        /// The offending file, or `<in-memory audio>` for [`convert`].
        path: PathBuf,
        /// The resampler's message.
        reason: String,
    },

    /// The configured prompt directory does not exist.
    #[error(
        "prompt directory {} does not exist: create it with one subdirectory per language \
         (e.g. {}/en/welcome.wav) or fix the prompts path in the configuration",
        path.display(),
        path.display()
    )]
    MissingDir {
        /// The configured directory.
        path: PathBuf,
    },

    /// The configured prompt directory is a file, not a directory.
    #[error("prompt directory {} is not a directory: point the prompts path at the directory holding the language subdirectories", path.display())]
    NotADirectory {
        /// The configured path.
        path: PathBuf,
    },

    /// The prompt directory has no language subdirectories.
    #[error(
        "prompt directory {} has no language subdirectories: add one per language, e.g. {}/en/welcome.wav",
        path.display(),
        path.display()
    )]
    NoLanguages {
        /// The configured directory.
        path: PathBuf,
    },

    /// A language subdirectory without any `.wav` file.
    #[error("language directory {} contains no .wav prompts: add the prompts or remove the directory", path.display())]
    EmptyLanguage {
        /// The language directory.
        path: PathBuf,
    },

    /// A language directory or prompt file name that is not valid UTF-8, so
    /// it could never be referenced from the configuration.
    #[error("{}: name is not valid UTF-8: rename it using plain ASCII", path.display())]
    BadName {
        /// The offending entry.
        path: PathBuf,
    },

    /// Two files map to the same prompt name (e.g. `a.wav` and `a.WAV`).
    #[error("{}: prompt \"{name}\" is also provided by {}: remove one of them", path.display(), other.display())]
    Duplicate {
        /// The second file seen.
        path: PathBuf,
        /// The first file seen.
        other: PathBuf,
        /// The prompt name both map to.
        name: String,
    },

    /// Several prompt files failed; each entry names its file.
    #[error("{} prompt files failed to load:{}", errors.len(), list_errors(errors))]
    Many {
        /// The individual errors, in path order.
        errors: Vec<PromptError>,
    },
}

fn list_errors(errors: &[PromptError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

impl PromptError {
    /// The file or directory the error is about (`None` for [`PromptError::Many`]).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. }
            | Self::NotWav { path, .. }
            | Self::UnsupportedFormat { path, .. }
            | Self::Truncated { path, .. }
            | Self::TooLarge { path, .. }
            | Self::BadSamples { path, .. }
            | Self::Internal { path, .. }
            | Self::Malformed { path, .. }
            | Self::Empty { path }
            | Self::InvalidAudio { path, .. }
            | Self::Resample { path, .. }
            | Self::MissingDir { path }
            | Self::NotADirectory { path }
            | Self::NoLanguages { path }
            | Self::EmptyLanguage { path }
            | Self::BadName { path }
            | Self::Duplicate { path, .. } => Some(path),
            Self::Many { .. } => None,
        }
    }
}

/// One prompt, converted to 8 kHz mono and pre-encoded for both G.711
/// variants. Cheap to share: all buffers are reference counted.
#[derive(Clone)]
pub struct Prompt {
    /// File stem, e.g. `welcome` for `welcome.wav`.
    pub name: String,
    /// Language directory name, e.g. `en`.
    pub language: String,
    /// Mu-law (PCMU) encoding of `pcm`.
    pub pcmu: Arc<[u8]>,
    /// A-law (PCMA) encoding of `pcm`.
    pub pcma: Arc<[u8]>,
    /// 8 kHz mono linear audio, for tests, simulation and mixing.
    pub pcm: Arc<[i16]>,
    /// Where the prompt may be cut without cutting a word: sample offsets shortly into each
    /// pause (see [`pauses`]), ascending. A wait prompt is cut at the next one once what the
    /// caller waits for is known.
    pub pauses: Arc<[usize]>,
}

/// Sample offsets at which `pcm` (8 kHz) may be cut: 40 ms into every stretch of at least
/// 150 ms whose 10 ms frames average under 200 (about -44 dBFS), i.e. between words or
/// sentences, never in one.
pub fn pauses(pcm: &[i16]) -> Vec<usize> {
    const FRAME: usize = 80;
    const QUIET: u32 = 200;
    const MIN_FRAMES: usize = 15;
    const INTO: usize = 4 * FRAME;
    let mut out = Vec::new();
    let mut run_start = None;
    for (i, frame) in pcm.chunks(FRAME).enumerate() {
        let sum: u32 = frame.iter().map(|s| u32::from(s.unsigned_abs())).sum();
        let quiet = sum / (frame.len() as u32).max(1) < QUIET;
        match (quiet, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(start)) => {
                if i - start >= MIN_FRAMES {
                    out.push(start * FRAME + INTO);
                }
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start
        && pcm.len().div_ceil(FRAME) - start >= MIN_FRAMES
    {
        out.push(start * FRAME + INTO);
    }
    out
}

impl Prompt {
    /// Builds a prompt from 8 kHz mono linear samples, encoding PCMU and
    /// PCMA. Useful for synthetic prompts in tests.
    pub fn from_pcm(name: impl Into<String>, language: impl Into<String>, pcm: Vec<i16>) -> Self {
        let mut pcmu = vec![0u8; pcm.len()];
        let mut pcma = vec![0u8; pcm.len()];
        g711::encode_ulaw_into(&pcm, &mut pcmu);
        g711::encode_alaw_into(&pcm, &mut pcma);
        Prompt {
            name: name.into(),
            language: language.into(),
            pcmu: pcmu.into(),
            pcma: pcma.into(),
            pauses: pauses(&pcm).into(),
            pcm: pcm.into(),
        }
    }

    /// Decodes a WAV file held in memory (see [`decode_wav`]); errors name
    /// it `<language>/<name>.wav`.
    pub fn from_wav_bytes(
        name: impl Into<String>,
        language: impl Into<String>,
        bytes: &[u8],
    ) -> Result<Self, PromptError> {
        let (name, language) = (name.into(), language.into());
        let origin = Path::new(&language).join(format!("{name}.wav"));
        let pcm = decode_wav(bytes, &origin)?;
        Ok(Prompt::from_pcm(name, language, pcm))
    }

    /// Playing time at 8 kHz.
    pub fn duration(&self) -> Duration {
        // 125 us per sample at 8 kHz; exact in integer nanoseconds.
        Duration::from_nanos(self.samples() as u64 * (1_000_000_000 / u64::from(SAMPLE_RATE)))
    }

    /// Where the prompt may be cut between words (see [`pauses`]), from its start.
    pub fn pause_times(&self) -> impl Iterator<Item = Duration> + '_ {
        self.pauses
            .iter()
            .map(|&p| Duration::from_nanos(p as u64 * (1_000_000_000 / u64::from(SAMPLE_RATE))))
    }

    /// Number of 8 kHz samples (= bytes of PCMU/PCMA).
    pub fn samples(&self) -> usize {
        self.pcm.len()
    }
}

impl fmt::Debug for Prompt {
    // The derived impl would dump every sample three times.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prompt")
            .field("name", &self.name)
            .field("language", &self.language)
            .field("samples", &self.samples())
            .finish()
    }
}

/// Reads a WAV file and returns it as 8 kHz mono 16-bit samples.
///
/// Never trusts a size it reads from the file: the file is read only if it
/// is at most [`MAX_FILE_BYTES`] long (by the file system's account, and
/// the read itself stops there too), and [`decode_wav`] bounds everything
/// else by the bytes actually present.
pub fn load_wav(path: &Path) -> Result<Vec<i16>, PromptError> {
    let io_err = |source| PromptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |len: u64| PromptError::TooLarge {
        path: path.to_path_buf(),
        detail: format!(
            "the file has {len} bytes, more than the {MAX_FILE_BYTES} read for a prompt"
        ),
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(too_large(len));
    }
    // Reading the whole file first is faster than buffered small reads and
    // lets us sniff the header for a precise error message. `take` keeps
    // the read bounded even if the file grows after the size check.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    decode_wav(&bytes, path)
}

/// Decodes a whole WAV file held in memory to 8 kHz mono 16-bit samples.
/// Errors name `origin` (the file the bytes came from, or any label).
///
/// This is the loader's one entry point for untrusted bytes (the fuzz
/// target calls it directly): it must return an error, never panic, and
/// never allocate by a length read from the header. The only allocations
/// are the output (at most [`MAX_PROMPT_SECS`] of 8 kHz audio) and the
/// resampler's fixed work buffers; the input is decoded, mixed and
/// resampled in chunks, so no buffer grows with the input's size.
pub fn decode_wav(bytes: &[u8], origin: &Path) -> Result<Vec<i16>, PromptError> {
    let path = origin;
    if let Err(reason) = check_riff_wave(bytes) {
        return Err(PromptError::NotWav {
            path: path.to_path_buf(),
            reason,
        });
    }

    // hound parses and validates the header; the samples are decoded here,
    // straight from the data chunk's bytes: hound's generic per-sample
    // reader costs ~15 ns a sample, about as much as resampling, and
    // decoding a slice cannot run past what the file really holds.
    let reader =
        hound::WavReader::new(Cursor::new(bytes)).map_err(|e| hound_error(path, bytes, e))?;
    let spec = reader.spec();
    let num_samples = reader.len() as usize;
    // hound leaves the cursor at the first data byte, right after the data
    // chunk's 8-byte header, whose last 4 bytes are the chunk's length.
    let start = usize::try_from(reader.into_inner().position()).unwrap_or(usize::MAX);
    let data_len = start
        .checked_sub(4)
        .and_then(|at| bytes.get(at..start))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| PromptError::Malformed {
            path: path.to_path_buf(),
            reason: "no data chunk header before the audio data".into(),
        })?;
    let available = bytes.len().saturating_sub(start);
    if data_len > available {
        return Err(PromptError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "data chunk claims {data_len} bytes but the file has {available} after its header"
            ),
        });
    }
    if num_samples == 0 {
        return Err(PromptError::Empty {
            path: path.to_path_buf(),
        });
    }
    // hound checked that the data length is a whole number of samples and
    // of frames, so this is the container size (block_align / channels).
    let container = data_len / num_samples;
    let frames = num_samples / usize::from(spec.channels.max(1));
    let data = &bytes[start..start + data_len];
    let (rate, channels) = (spec.sample_rate, spec.channels);
    // Full scale of an n-bit integer is 2^(n-1), so that the most negative
    // value maps to exactly -1.0.
    let int = |bits: u32| 1.0 / (1u64 << (bits - 1)) as f32;
    match (spec.sample_format, spec.bits_per_sample, container) {
        (hound::SampleFormat::Int, 16, 2) => {
            let s = data.chunks_exact(2);
            let scale = int(16);
            let s = s.map(|b| Ok(f32::from(i16::from_le_bytes([b[0], b[1]])) * scale));
            to_telephone(s, frames, rate, channels, path)
        }
        (hound::SampleFormat::Int, 8, 1) => {
            // 8-bit WAV is unsigned, centred on 128.
            let s = data.iter().map(|&b| Ok((f32::from(b) - 128.0) * int(8)));
            to_telephone(s, frames, rate, channels, path)
        }
        (hound::SampleFormat::Int, 24, 3 | 4) => {
            // In a 4-byte container the sample is in the low three bytes,
            // as hound writes and reads it; the top byte is ignored.
            let scale = int(24);
            let s = data.chunks_exact(container).map(|b| {
                let v = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                Ok(v as f32 * scale)
            });
            to_telephone(s, frames, rate, channels, path)
        }
        (hound::SampleFormat::Int, 32, 4) => {
            let scale = int(32);
            let s = data
                .chunks_exact(4)
                .map(|b| Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 * scale));
            to_telephone(s, frames, rate, channels, path)
        }
        (hound::SampleFormat::Float, 32, 4) => {
            let s = data
                .chunks_exact(4)
                .map(|b| Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            to_telephone(s, frames, rate, channels, path)
        }
        (format, bits, _) => {
            let kind = match format {
                hound::SampleFormat::Int => "integer",
                hound::SampleFormat::Float => "float",
            };
            Err(PromptError::UnsupportedFormat {
                path: path.to_path_buf(),
                detail: format!("{bits}-bit {kind} in {container}-byte containers"),
            })
        }
    }
}

/// Converts interleaved float samples (full scale = ±1.0) at any rate and
/// channel count to 8 kHz mono 16-bit: channels are averaged, the result is
/// resampled (unless already 8 kHz), then rounded and clipped to i16.
///
/// Samples must be finite and within ±[`MAX_FLOAT_MAGNITUDE`]; anything
/// else is an error rather than silence, because it means the data is not
/// audio (a corrupt file, or raw data with a float header). Hot samples
/// within that bound are clipped to ±1.0 before mixing.
pub fn convert(
    samples_interleaved_f32: &[f32],
    rate: u32,
    channels: u16,
) -> Result<Vec<i16>, PromptError> {
    let path = Path::new(IN_MEMORY);
    if channels == 0 {
        return Err(invalid_audio(path, "zero channels".into()));
    }
    let width = usize::from(channels);
    if !samples_interleaved_f32.len().is_multiple_of(width) {
        return Err(invalid_audio(
            path,
            format!(
                "{} samples is not a whole number of {channels}-channel frames",
                samples_interleaved_f32.len()
            ),
        ));
    }
    let frames = samples_interleaved_f32.len() / width;
    to_telephone(
        samples_interleaved_f32.iter().map(|&s| Ok(s)),
        frames,
        rate,
        channels,
        path,
    )
}

fn invalid_audio(path: &Path, reason: String) -> PromptError {
    PromptError::InvalidAudio {
        path: path.to_path_buf(),
        reason,
    }
}

/// The common back end of [`decode_wav`] and [`convert`]: checks the
/// parameters, then mixes `samples` (interleaved, `frames` frames of
/// `channels` samples) to mono and resamples them to 8 kHz in chunks.
fn to_telephone(
    samples: impl Iterator<Item = Result<f32, PromptError>>,
    frames: usize,
    rate: u32,
    channels: u16,
    path: &Path,
) -> Result<Vec<i16>, PromptError> {
    if channels == 0 {
        return Err(invalid_audio(path, "zero channels".into()));
    }
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
        return Err(invalid_audio(
            path,
            format!("sample rate {rate} Hz is outside {MIN_INPUT_RATE}..={MAX_INPUT_RATE} Hz"),
        ));
    }
    let period = rate / gcd(rate as usize, SAMPLE_RATE as usize) as u32;
    if period > MAX_RATE_PERIOD {
        return Err(invalid_audio(
            path,
            format!(
                "sample rate {rate} Hz has no simple ratio to 8000 Hz (it reduces to \
                 {period}:{}); use a standard rate such as 8000, 16000, 44100 or 48000 Hz",
                SAMPLE_RATE / (rate / period)
            ),
        ));
    }
    if frames == 0 {
        return Err(PromptError::Empty {
            path: path.to_path_buf(),
        });
    }
    // The output is allocated from this, so it is checked before any work.
    if frames as u64 > u64::from(rate) * u64::from(MAX_PROMPT_SECS) {
        return Err(PromptError::TooLarge {
            path: path.to_path_buf(),
            detail: format!(
                "{:.1} minutes of audio, more than the {} minutes a prompt may last",
                frames as f64 / f64::from(rate) / 60.0,
                MAX_PROMPT_SECS / 60
            ),
        });
    }
    let mut mixer = Mixer {
        samples,
        channels: usize::from(channels),
        frames_left: frames,
        next_index: 0,
        path,
    };
    let mono = if rate == SAMPLE_RATE {
        let mut mono = vec![0.0f32; frames];
        let got = mixer.fill(&mut mono)?;
        mono.truncate(got);
        mono
    } else {
        resample_to_8k(&mut mixer, frames, rate, path)?
    };
    if mono.is_empty() {
        // A handful of input frames can round down to zero output samples.
        return Err(PromptError::Empty {
            path: path.to_path_buf(),
        });
    }
    // `as` saturates (and maps NaN to 0, which cannot occur here), so the
    // resampler's small overshoot near full scale clips cleanly.
    Ok(mono.iter().map(|&s| (s * 32768.0).round() as i16).collect())
}

/// Mixes interleaved samples down to mono frames on demand, checking each
/// sample on the way: the resampler must only ever see finite values in
/// [-1, 1] (rubato unwraps an FFT error that infinities and NaNs cause).
struct Mixer<'p, I> {
    samples: I,
    channels: usize,
    frames_left: usize,
    /// Index of the next interleaved sample, for error messages.
    next_index: u64,
    path: &'p Path,
}

impl<I: Iterator<Item = Result<f32, PromptError>>> Mixer<'_, I> {
    /// Fills `out` with mono frames; returns how many were written (fewer
    /// than `out.len()` only once all frames are used up).
    fn fill(&mut self, out: &mut [f32]) -> Result<usize, PromptError> {
        let n = out.len().min(self.frames_left);
        let inv_channels = 1.0 / self.channels as f32;
        for slot in &mut out[..n] {
            let mut sum = 0.0f32;
            for _ in 0..self.channels {
                let index = self.next_index;
                self.next_index += 1;
                let s = match self.samples.next() {
                    Some(s) => s?,
                    None => {
                        return Err(PromptError::Truncated {
                            path: self.path.to_path_buf(),
                            detail: format!("the audio data ends at sample {index}"),
                        });
                    }
                };
                if !s.is_finite() || s.abs() > MAX_FLOAT_MAGNITUDE {
                    return Err(PromptError::BadSamples {
                        path: self.path.to_path_buf(),
                        reason: format!(
                            "sample {index} is {s:e}; float samples must be finite and within \
                             ±{MAX_FLOAT_MAGNITUDE:.1} (full scale is ±1.0)"
                        ),
                    });
                }
                sum += s.clamp(-1.0, 1.0);
            }
            *slot = sum * inv_channels;
        }
        self.frames_left -= n;
        Ok(n)
    }
}

/// Resamples `frames` mono frames from `mixer` to 8 kHz, returning exactly
/// `round(frames * 8000 / rate)` samples aligned with the input.
fn resample_to_8k<I: Iterator<Item = Result<f32, PromptError>>>(
    mixer: &mut Mixer<'_, I>,
    frames: usize,
    rate: u32,
    path: &Path,
) -> Result<Vec<f32>, PromptError> {
    let failed = |reason: String| PromptError::Resample {
        path: path.to_path_buf(),
        reason,
    };
    let rate64 = u64::from(rate);
    let expected = ((frames as u64 * u64::from(SAMPLE_RATE) + rate64 / 2) / rate64) as usize;
    // rubato processes whole rational periods of `rate / gcd` input frames.
    // Use an even number of periods: the output block is then even and the
    // reported delay (half a block, rounded down) is exact rather than off
    // by half a sample.
    let period = rate as usize / gcd(rate as usize, SAMPLE_RATE as usize);
    let periods = RESAMPLER_CHUNK.div_ceil(period).next_multiple_of(2);
    let mut resampler =
        FftFixedIn::<f32>::new(rate as usize, SAMPLE_RATE as usize, periods * period, 1, 1)
            .map_err(|e| failed(e.to_string()))?;
    let chunk = resampler.input_frames_max();
    // The FFT resampler's filter delays the output; feed zeros past the end
    // until the delayed tail has come out, then cut the delay off the front.
    let delay = resampler.output_delay();
    let wanted = expected + delay;
    let mut out = Vec::with_capacity(wanted + resampler.output_frames_max());
    let mut out_chunk = vec![0.0f32; resampler.output_frames_max()];
    let mut input = vec![0.0f32; chunk];
    while out.len() < wanted {
        let got = mixer.fill(&mut input)?;
        input[got..].fill(0.0);
        let (_, produced) = resampler
            .process_into_buffer(&[&input[..]], &mut [&mut out_chunk[..]], None)
            .map_err(|e| failed(e.to_string()))?;
        out.extend_from_slice(&out_chunk[..produced]);
    }
    out.drain(..delay);
    out.truncate(expected);
    Ok(out)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Checks the 12-byte RIFF/WAVE preamble and, if it is wrong, says what the
/// file looks like instead.
fn check_riff_wave(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        return Ok(());
    }
    let looks_like = |magic: &[u8]| bytes.starts_with(magic);
    Err(if bytes.is_empty() {
        "the file is empty".into()
    } else if looks_like(b"RIFF") {
        if bytes.len() < 12 {
            format!("only {} bytes, too short for a WAV header", bytes.len())
        } else {
            "RIFF container but not of type WAVE".into()
        }
    } else if looks_like(b"RF64") || looks_like(b"BW64") {
        "RF64/BW64 64-bit WAV is not supported".into()
    } else if looks_like(b"RIFX") {
        "big-endian RIFX is not supported".into()
    } else if looks_like(b"ID3")
        || (bytes.len() >= 2 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
    {
        "looks like MP3, RIFF header missing".into()
    } else if looks_like(b"OggS") {
        "looks like Ogg, RIFF header missing".into()
    } else if looks_like(b"fLaC") {
        "looks like FLAC, RIFF header missing".into()
    } else {
        "RIFF header missing".into()
    })
}

/// Maps a hound error to a [`PromptError`] naming `path`.
fn hound_error(path: &Path, bytes: &[u8], err: hound::Error) -> PromptError {
    let path = path.to_path_buf();
    match err {
        // The file is already in memory, so a read error can only mean that
        // hound ran off the end of it (it reports this as `Other`, not
        // `UnexpectedEof`).
        hound::Error::IoError(_) => PromptError::Truncated {
            path,
            detail: "the file ends before the header or audio data it declares".into(),
        },
        hound::Error::FormatError(msg) if msg.contains("RIFF") || msg.contains("WAVE") => {
            PromptError::NotWav {
                path,
                reason: msg.into(),
            }
        }
        hound::Error::FormatError(msg) if msg.contains("bits per sample") => {
            PromptError::UnsupportedFormat {
                path,
                detail: msg.into(),
            }
        }
        hound::Error::FormatError(msg) => PromptError::Malformed {
            path,
            reason: msg.into(),
        },
        hound::Error::Unsupported => PromptError::UnsupportedFormat {
            path,
            detail: describe_format_tag(bytes),
        },
        hound::Error::TooWide | hound::Error::InvalidSampleFormat => {
            PromptError::UnsupportedFormat {
                path,
                detail: err.to_string(),
            }
        }
        hound::Error::UnfinishedSample => PromptError::Malformed {
            path,
            reason: err.to_string(),
        },
    }
}

/// Names the WAVE format tag of the `fmt ` chunk, for "unsupported format"
/// messages: hound only says "unsupported", but "mu-law" tells the operator
/// exactly which export setting to change.
fn describe_format_tag(bytes: &[u8]) -> String {
    let Some(tag) = find_format_tag(bytes) else {
        return "unknown WAVE encoding".into();
    };
    let name = match tag {
        0x0001 => "PCM with an unsupported bit depth",
        0x0002 => "Microsoft ADPCM",
        0x0003 => "IEEE float with an unsupported bit depth",
        0x0006 => "G.711 A-law",
        0x0007 => "G.711 mu-law",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0055 => "MP3",
        0xFFFE => "extensible format with an unsupported sub-format",
        _ => "compressed or unknown encoding",
    };
    format!("{name}, WAVE format tag {tag:#06x}")
}

/// Walks the RIFF chunks to find the `fmt ` chunk's format tag.
fn find_format_tag(bytes: &[u8]) -> Option<u16> {
    let mut pos = 12usize;
    while let Some(header) = bytes.get(pos..pos.checked_add(8)?) {
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if &header[0..4] == b"fmt " {
            let body = bytes.get(pos + 8..pos + 10)?;
            return Some(u16::from_le_bytes([body[0], body[1]]));
        }
        // Chunks are padded to an even length.
        pos = pos.checked_add(8)?.checked_add(len)?.checked_add(len & 1)?;
    }
    None
}

/// All prompts of all languages, loaded once and shared by every call.
#[derive(Clone, Debug, Default)]
pub struct PromptLibrary {
    /// language -> prompt name -> prompt. BTreeMaps give a stable,
    /// sorted order for listings and logs.
    languages: BTreeMap<String, BTreeMap<String, Arc<Prompt>>>,
}

impl PromptLibrary {
    /// Loads every `<dir>/<language>/<name>.wav`. Each subdirectory (except
    /// hidden ones) is a language and must contain at least one `.wav`
    /// (extension matched case-insensitively); other files are ignored so a
    /// README or the generator script can live alongside.
    ///
    /// Every file is checked; if one fails its error is returned, if several
    /// fail a [`PromptError::Many`] lists them all.
    pub fn load(dir: &Path) -> Result<PromptLibrary, PromptError> {
        let meta = std::fs::metadata(dir).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                PromptError::MissingDir {
                    path: dir.to_path_buf(),
                }
            } else {
                PromptError::Io {
                    path: dir.to_path_buf(),
                    source,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(PromptError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }

        let mut errors = Vec::new();
        let mut jobs: Vec<(String, String, PathBuf)> = Vec::new();
        let language_dirs = list_dir(dir, |p| p.is_dir())?;
        if language_dirs.is_empty() {
            return Err(PromptError::NoLanguages {
                path: dir.to_path_buf(),
            });
        }
        for language_dir in language_dirs {
            let Some(language) = utf8_name(&language_dir, &mut errors, Path::file_name) else {
                continue;
            };
            let files = match list_dir(&language_dir, |p| p.is_file() && has_wav_extension(p)) {
                Ok(files) => files,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if files.is_empty() {
                errors.push(PromptError::EmptyLanguage { path: language_dir });
                continue;
            }
            let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
            for file in files {
                let Some(name) = utf8_name(&file, &mut errors, Path::file_stem) else {
                    continue;
                };
                match seen.entry(name.clone()) {
                    Entry::Occupied(other) => errors.push(PromptError::Duplicate {
                        path: file,
                        other: other.get().clone(),
                        name,
                    }),
                    Entry::Vacant(slot) => {
                        slot.insert(file.clone());
                        jobs.push((language.clone(), name, file));
                    }
                }
            }
        }

        let mut library = PromptLibrary::default();
        for ((language, name, _), result) in jobs.iter().zip(load_all(&jobs)) {
            match result {
                Ok(pcm) => library.insert(Prompt::from_pcm(name.clone(), language.clone(), pcm)),
                Err(e) => errors.push(e),
            }
        }

        match errors.len() {
            0 => Ok(library),
            1 => Err(errors.remove(0)),
            _ => {
                errors.sort_by(|a, b| a.path().cmp(&b.path()));
                Err(PromptError::Many { errors })
            }
        }
    }

    /// Loads several prompt directories as layers, first wins: a site directory with only the
    /// prompts it changes (say `en/welcome.wav`), over the bundled set for everything else.
    /// Each layer is checked as [`PromptLibrary::load`] checks one; languages are the union.
    /// Also returns how many prompts each layer supplied.
    pub fn load_layers(dirs: &[PathBuf]) -> Result<(PromptLibrary, Vec<usize>), PromptError> {
        let mut library = PromptLibrary::default();
        let mut supplied = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let layer = PromptLibrary::load(dir)?;
            let mut n = 0;
            for (language, prompts) in layer.languages {
                let slot = library.languages.entry(language).or_default();
                for (name, prompt) in prompts {
                    if let Entry::Vacant(v) = slot.entry(name) {
                        v.insert(prompt);
                        n += 1;
                    }
                }
            }
            supplied.push(n);
        }
        Ok((library, supplied))
    }

    /// Builds a library from already converted prompts (tests, simulation).
    /// A later prompt with the same language and name replaces an earlier one.
    pub fn from_prompts(prompts: impl IntoIterator<Item = Prompt>) -> Self {
        let mut library = PromptLibrary::default();
        for prompt in prompts {
            library.insert(prompt);
        }
        library
    }

    fn insert(&mut self, prompt: Prompt) {
        self.languages
            .entry(prompt.language.clone())
            .or_default()
            .insert(prompt.name.clone(), Arc::new(prompt));
    }

    /// The prompt `name` in `language`, if present.
    pub fn get(&self, language: &str, name: &str) -> Option<&Arc<Prompt>> {
        self.languages.get(language)?.get(name)
    }

    /// Whether `language` has a prompt called `name`.
    pub fn contains(&self, language: &str, name: &str) -> bool {
        self.get(language, name).is_some()
    }

    /// All languages, sorted.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.languages.keys().map(String::as_str)
    }

    /// All prompts of `language`, sorted by name (empty if unknown).
    pub fn prompts(&self, language: &str) -> impl Iterator<Item = &Arc<Prompt>> {
        self.languages
            .get(language)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Total number of prompts over all languages.
    pub fn len(&self) -> usize {
        self.languages.values().map(BTreeMap::len).sum()
    }

    /// Whether the library holds no prompts at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sorted entries of `dir` that pass `keep`, skipping hidden names (editor
/// swap files, `.git`, macOS `._*` resource forks).
fn list_dir(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>, PromptError> {
    let io_err = |source| PromptError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        // `Path::is_dir`/`is_file` follow symlinks, so linked languages
        // (e.g. en-GB -> en) work.
        if !hidden && keep(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn has_wav_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
}

/// The UTF-8 name `part` extracts from `path`, or records a
/// [`PromptError::BadName`].
fn utf8_name(
    path: &Path,
    errors: &mut Vec<PromptError>,
    part: impl Fn(&Path) -> Option<&std::ffi::OsStr>,
) -> Option<String> {
    match part(path).and_then(|n| n.to_str()) {
        Some(name) => Some(name.to_owned()),
        None => {
            errors.push(PromptError::BadName {
                path: path.to_path_buf(),
            });
            None
        }
    }
}

/// [`load_wav`], with any panic turned into [`PromptError::Internal`] for
/// that file. Defence in depth: the decoder is written not to panic on any
/// input, but a bug there (or in hound or rubato) must cost one prompt and
/// an error message, not the daemon, which may be reloading under live
/// calls. Allocation failures abort and cannot be caught, which is why the
/// decoder never allocates by a size it was told.
fn load_guarded(path: &Path) -> Result<Vec<i16>, PromptError> {
    guarded(path, || load_wav(path))
}

/// Runs `decode`, turning a panic into [`PromptError::Internal`] for `path`.
fn guarded(
    path: &Path,
    decode: impl FnOnce() -> Result<Vec<i16>, PromptError> + std::panic::UnwindSafe,
) -> Result<Vec<i16>, PromptError> {
    std::panic::catch_unwind(decode).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(PromptError::Internal {
            path: path.to_path_buf(),
            message,
        })
    })
}

/// Loads all files, spreading them over the available cores: start-up time
/// is dominated by resampling, which parallelises perfectly. Results come
/// back in job order.
fn load_all(jobs: &[(String, String, PathBuf)]) -> Vec<Result<Vec<i16>, PromptError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    if workers == 1 {
        return jobs.iter().map(|(_, _, path)| load_guarded(path)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Vec<i16>, PromptError>>> =
        std::iter::repeat_with(|| None).take(jobs.len()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, _, path)) = jobs.get(i) else {
                            break done;
                        };
                        done.push((i, load_guarded(path)));
                    }
                })
            })
            .collect();
        for handle in handles {
            // Decoding cannot panic (load_guarded); anything else here is
            // a bug in this function: surface it unchanged.
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (i, result) in done {
                results[i] = Some(result);
            }
        }
    });
    // Every index below jobs.len() was claimed by exactly one worker.
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_found_between_words_not_in_them() {
        let tone = |n: usize| (0..n).map(|i| if i % 16 < 8 { 4000i16 } else { -4000 });
        // 0.1 s pause (too short), 0.2 s pause, tone, 0.3 s trailing silence.
        let pcm: Vec<i16> = tone(800)
            .chain(std::iter::repeat_n(0, 800))
            .chain(tone(800))
            .chain(std::iter::repeat_n(0, 1600))
            .chain(tone(800))
            .chain(std::iter::repeat_n(0, 2400))
            .collect();
        assert_eq!(pauses(&pcm), vec![2400 + 320, 4800 + 320]);
        assert!(pauses(&[]).is_empty());
        assert!(pauses(&tone(8000).collect::<Vec<_>>()).is_empty());
    }

    /// The bundled wait prompt has its sentence breaks where a cut belongs.
    #[test]
    fn the_bundled_sending_pin_prompt_can_be_cut_between_its_sentences() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/en/sending-pin.wav");
        let bytes = std::fs::read(&dir).unwrap();
        let p = Prompt::from_wav_bytes("sending-pin", "en", &bytes).unwrap();
        let secs: Vec<f64> = p.pauses.iter().map(|&s| s as f64 / 8000.0).collect();
        assert!(secs.len() >= 2, "{secs:?}");
        assert!((0.6..0.8).contains(&secs[0]), "{secs:?}");
        assert!((3.4..3.6).contains(&secs[1]), "{secs:?}");
    }
    use std::f32::consts::PI;
    use std::fs;

    #[derive(Clone, Copy, Debug)]
    enum Fmt {
        I8,
        I16,
        I24,
        I32,
        F32,
    }

    /// Writes a WAV whose channel `c` at frame `n` is `signal(c, n / rate)`.
    fn write_wav(
        path: &Path,
        rate: u32,
        channels: u16,
        fmt: Fmt,
        frames: usize,
        signal: impl Fn(u16, f32) -> f32,
    ) {
        let (bits, sample_format) = match fmt {
            Fmt::I8 => (8, hound::SampleFormat::Int),
            Fmt::I16 => (16, hound::SampleFormat::Int),
            Fmt::I24 => (24, hound::SampleFormat::Int),
            Fmt::I32 => (32, hound::SampleFormat::Int),
            Fmt::F32 => (32, hound::SampleFormat::Float),
        };
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for n in 0..frames {
            for c in 0..channels {
                let v = signal(c, n as f32 / rate as f32);
                match fmt {
                    Fmt::F32 => w.write_sample(v).unwrap(),
                    _ => {
                        let full = (1i64 << (bits - 1)) as f32;
                        let s = (v * full).round().clamp(-full, full - 1.0) as i32;
                        w.write_sample(s).unwrap()
                    }
                }
            }
        }
        w.finalize().unwrap();
    }

    fn sine(freq: f32, amp: f32) -> impl Fn(u16, f32) -> f32 {
        move |_, t| amp * (2.0 * PI * freq * t).sin()
    }

    /// Relative power of `freq` in `x` (Goertzel). Only compared against
    /// other frequencies of the same signal, so the scale does not matter.
    fn goertzel(x: &[i16], rate: f32, freq: f32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Frequency from the number of rising zero crossings.
    fn zero_crossing_freq(x: &[i16]) -> f32 {
        let crossings = x.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        crossings as f32 * SAMPLE_RATE as f32 / x.len() as f32
    }

    /// Middle part, away from the resampler's edge transients.
    fn middle(x: &[i16]) -> &[i16] {
        &x[x.len() / 8..x.len() * 7 / 8]
    }

    fn expected_len(frames: usize, rate: u32) -> usize {
        ((frames as u64 * 8000 + u64::from(rate) / 2) / u64::from(rate)) as usize
    }

    #[test]
    fn sine_keeps_frequency_length_and_amplitude() {
        let dir = tempfile::tempdir().unwrap();
        for rate in [8000, 16000, 44100, 48000] {
            for channels in [1u16, 2] {
                for fmt in [Fmt::I16, Fmt::F32] {
                    // Odd length, so length scaling is exercised with rounding.
                    let frames = (rate as usize * 7) / 10 + 13;
                    let path = dir.path().join(format!("s{rate}_{channels}_{fmt:?}.wav"));
                    write_wav(&path, rate, channels, fmt, frames, sine(1000.0, 0.5));
                    let pcm = load_wav(&path).unwrap();
                    let ctx = format!("{rate} Hz, {channels} ch, {fmt:?}");

                    let want = expected_len(frames, rate);
                    assert_eq!(pcm.len(), want, "{ctx}: length");
                    // Duration preserved within one 8 kHz frame.
                    let secs_in = frames as f64 / f64::from(rate);
                    let secs_out = pcm.len() as f64 / 8000.0;
                    assert!((secs_in - secs_out).abs() <= 1.0 / 8000.0, "{ctx}");

                    let mid = middle(&pcm);
                    let f = zero_crossing_freq(mid);
                    assert!((f - 1000.0).abs() < 10.0, "{ctx}: frequency {f}");
                    let p1k = goertzel(mid, 8000.0, 1000.0);
                    for other in [500.0, 1500.0, 2000.0, 3000.0] {
                        assert!(
                            p1k > 1000.0 * goertzel(mid, 8000.0, other),
                            "{ctx}: {other} Hz"
                        );
                    }
                    // Amplitude: RMS of a 0.5 sine is 0.5/sqrt(2) full scale.
                    let want_rms = 0.5 / 2f64.sqrt() * 32768.0;
                    let got = rms(mid);
                    assert!(
                        (got / want_rms - 1.0).abs() < 0.03,
                        "{ctx}: rms {got} vs {want_rms}"
                    );
                    let peak = mid.iter().map(|v| i32::from(*v).abs()).max().unwrap();
                    assert!(
                        (f64::from(peak) / 16384.0 - 1.0).abs() < 0.03,
                        "{ctx}: peak {peak}"
                    );
                }
            }
        }
    }

    #[test]
    fn stereo_is_averaged() {
        let dir = tempfile::tempdir().unwrap();
        // Left 0.8, right silent: mono must be 0.4 (averaged, not summed
        // or left-only).
        let path = dir.path().join("left.wav");
        write_wav(&path, 16000, 2, Fmt::I16, 16000, |c, t| {
            if c == 0 {
                0.8 * (2.0 * PI * 1000.0 * t).sin()
            } else {
                0.0
            }
        });
        let got = rms(middle(&load_wav(&path).unwrap()));
        let want = 0.4 / 2f64.sqrt() * 32768.0;
        assert!((got / want - 1.0).abs() < 0.03, "rms {got} vs {want}");

        // Opposite phases cancel.
        let path = dir.path().join("anti.wav");
        write_wav(&path, 48000, 2, Fmt::F32, 48000, |c, t| {
            let s = 0.7 * (2.0 * PI * 1000.0 * t).sin();
            if c == 0 { s } else { -s }
        });
        let pcm = load_wav(&path).unwrap();
        assert!(
            pcm.iter().all(|&v| v.abs() <= 1),
            "antiphase did not cancel"
        );
    }

    #[test]
    fn eight_khz_16_bit_mono_is_bit_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exact.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let samples: Vec<i16> = (0..4000)
            .map(|i| ((i * 7919) % 65536 - 32768) as i16)
            .collect();
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for &s in &samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        assert_eq!(load_wav(&path).unwrap(), samples);
    }

    #[test]
    fn other_integer_depths_load_at_correct_scale() {
        let dir = tempfile::tempdir().unwrap();
        for fmt in [Fmt::I8, Fmt::I24, Fmt::I32] {
            let path = dir.path().join(format!("{fmt:?}.wav"));
            write_wav(&path, 8000, 1, fmt, 8000, sine(1000.0, 0.5));
            let pcm = load_wav(&path).unwrap();
            assert_eq!(pcm.len(), 8000);
            let got = rms(&pcm);
            let want = 0.5 / 2f64.sqrt() * 32768.0;
            assert!(
                (got / want - 1.0).abs() < 0.03,
                "{fmt:?}: rms {got} vs {want}"
            );
        }
    }

    #[test]
    fn resampling_does_not_shift_audio_in_time() {
        let dir = tempfile::tempdir().unwrap();
        for rate in [11025u32, 16000, 22050, 44100, 48000] {
            // A short click exactly at 0.5 s must peak at 8 kHz sample 4000.
            let path = dir.path().join(format!("click{rate}.wav"));
            let at = rate as usize / 2;
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for n in 0..rate as usize {
                w.write_sample(if n == at { 30000i16 } else { 0 }).unwrap();
            }
            w.finalize().unwrap();
            let pcm = load_wav(&path).unwrap();
            let peak = (0..pcm.len())
                .max_by_key(|&i| i32::from(pcm[i]).abs())
                .unwrap();
            assert_eq!(peak, 4000, "{rate} Hz: click moved");
        }
    }

    #[test]
    fn resampler_removes_aliases_and_keeps_voice_band() {
        let dir = tempfile::tempdir().unwrap();
        let level = |freq: f32| {
            let path = dir.path().join(format!("tone{freq}.wav"));
            write_wav(&path, 16000, 1, Fmt::I16, 16000, sine(freq, 0.5));
            rms(middle(&load_wav(&path).unwrap()))
        };
        let reference = 0.5 / 2f64.sqrt() * 32768.0;
        // 3.4 kHz is the top of the telephone band: must pass within ~1 dB.
        assert!(level(3400.0) / reference > 0.89, "3.4 kHz attenuated");
        // 5 kHz would alias to 3 kHz: must be at least 40 dB down.
        assert!(
            level(5000.0) / reference < 0.01,
            "5 kHz aliased into the band"
        );
    }

    #[test]
    fn convert_validates_parameters() {
        assert!(matches!(
            convert(&[0.0; 4], 8000, 0),
            Err(PromptError::InvalidAudio { .. })
        ));
        assert!(matches!(
            convert(&[0.0; 4], 0, 1),
            Err(PromptError::InvalidAudio { .. })
        ));
        assert!(matches!(
            convert(&[0.0; 4], u32::MAX, 1),
            Err(PromptError::InvalidAudio { .. })
        ));
        assert!(matches!(
            convert(&[0.0; 3], 8000, 2),
            Err(PromptError::InvalidAudio { .. })
        ));
        assert!(matches!(
            convert(&[], 16000, 1),
            Err(PromptError::Empty { .. })
        ));
        // One 48 kHz frame is less than one 8 kHz sample.
        assert!(matches!(
            convert(&[0.5], 48000, 1),
            Err(PromptError::Empty { .. })
        ));
        // Hot input is clipped, not wrapped.
        assert_eq!(
            convert(&[2.0, -2.0, 0.25, 4.0], 8000, 1).unwrap(),
            vec![32767, -32768, 8192, 32767]
        );
        // Non-finite input, or far beyond full scale, is not audio.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 4.01, -1.7e38] {
            let e = convert(&[0.0, bad], 8000, 1).unwrap_err();
            assert!(matches!(e, PromptError::BadSamples { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("sample 1 is"), "{e}");
        }
        // Rates with no simple ratio to 8 kHz would need huge FFTs.
        let e = convert(&[0.0; 4], 352_801, 1).unwrap_err();
        assert!(e.to_string().contains("no simple ratio"), "{e}");
    }

    #[test]
    fn odd_rate_is_resampled() {
        // 11025 and a co-prime rate both go through the rational FFT path.
        for rate in [11025u32, 22050, 32000, 44101] {
            let frames = rate as usize;
            let input: Vec<f32> = (0..frames)
                .map(|n| 0.5 * (2.0 * PI * 1000.0 * n as f32 / rate as f32).sin())
                .collect();
            let pcm = convert(&input, rate, 1).unwrap();
            assert_eq!(pcm.len(), 8000, "{rate} Hz");
            let f = zero_crossing_freq(middle(&pcm));
            assert!((f - 1000.0).abs() < 10.0, "{rate} Hz: frequency {f}");
        }
    }

    fn assert_names(err: &PromptError, path: &Path, needle: &str) {
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "message does not name {}: {msg}",
            path.display()
        );
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }

    #[test]
    fn bad_files_give_precise_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let text = d.join("text.wav");
        fs::write(&text, "this is not audio\n").unwrap();
        let e = load_wav(&text).unwrap_err();
        assert!(matches!(e, PromptError::NotWav { .. }), "{e:?}");
        assert_names(&e, &text, "not a WAV file (RIFF header missing): re-export");

        let empty = d.join("empty.wav");
        fs::write(&empty, "").unwrap();
        let e = load_wav(&empty).unwrap_err();
        assert_names(&e, &empty, "the file is empty");

        let mp3 = d.join("song.wav");
        fs::write(&mp3, b"ID3\x04\x00\x00\x00\x00\x00\x00").unwrap();
        assert_names(&load_wav(&mp3).unwrap_err(), &mp3, "looks like MP3");

        // Cut a valid file in the middle of its audio data.
        let good = d.join("good.wav");
        write_wav(&good, 16000, 1, Fmt::I16, 8000, sine(440.0, 0.5));
        let bytes = fs::read(&good).unwrap();
        let cut = d.join("cut.wav");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_wav(&cut).unwrap_err();
        assert!(matches!(e, PromptError::Truncated { .. }), "{e:?}");
        assert_names(&e, &cut, "truncated");

        // The same through the generic (non-16-bit) reader.
        let good_f32 = d.join("good-f32.wav");
        write_wav(&good_f32, 16000, 1, Fmt::F32, 8000, sine(440.0, 0.5));
        let bytes_f32 = fs::read(&good_f32).unwrap();
        let cut_f32 = d.join("cut-f32.wav");
        fs::write(&cut_f32, &bytes_f32[..bytes_f32.len() - 6]).unwrap();
        let e = load_wav(&cut_f32).unwrap_err();
        assert!(matches!(e, PromptError::Truncated { .. }), "{e:?}");
        assert_names(&e, &cut_f32, "truncated");

        // Cut inside the header, after the RIFF preamble.
        let cut_header = d.join("cut-header.wav");
        fs::write(&cut_header, &bytes[..20]).unwrap();
        let e = load_wav(&cut_header).unwrap_err();
        assert!(matches!(e, PromptError::Truncated { .. }), "{e:?}");

        let silent = d.join("nothing.wav");
        write_wav(&silent, 8000, 1, Fmt::I16, 0, sine(1.0, 0.0));
        let e = load_wav(&silent).unwrap_err();
        assert!(matches!(e, PromptError::Empty { .. }), "{e:?}");
        assert_names(&e, &silent, "empty audio");

        let missing = d.join("missing.wav");
        let e = load_wav(&missing).unwrap_err();
        assert!(matches!(e, PromptError::Io { .. }), "{e:?}");
        assert_names(&e, &missing, "cannot read");
    }

    /// A minimal WAV with a given format tag and bit depth, written by hand
    /// because hound refuses to write unsupported formats.
    fn raw_wav(tag: u16, bits: u16, data: &[u8]) -> Vec<u8> {
        let block_align = bits / 8;
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        v.extend_from_slice(b"WAVE");
        // An unknown chunk first, to exercise the chunk walk. Even length:
        // hound 3.5 ignores the RIFF pad byte after odd-sized chunks.
        v.extend_from_slice(b"LIST");
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&[1, 2, 3, 4]);
        v.extend_from_slice(b"fmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes()); // channels
        v.extend_from_slice(&8000u32.to_le_bytes());
        v.extend_from_slice(&(8000 * u32::from(block_align)).to_le_bytes());
        v.extend_from_slice(&block_align.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn unsupported_formats_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ulaw = dir.path().join("ulaw.wav");
        fs::write(&ulaw, raw_wav(7, 8, &[0xFF; 80])).unwrap();
        let e = load_wav(&ulaw).unwrap_err();
        assert!(matches!(e, PromptError::UnsupportedFormat { .. }), "{e:?}");
        assert_names(&e, &ulaw, "G.711 mu-law");

        let f64_wav = dir.path().join("double.wav");
        fs::write(&f64_wav, raw_wav(3, 64, &[0; 64])).unwrap();
        let e = load_wav(&f64_wav).unwrap_err();
        assert!(matches!(e, PromptError::UnsupportedFormat { .. }), "{e:?}");
        assert_names(&e, &f64_wav, "unsupported sample format");

        // A sanity check that the hand-made header itself is fine.
        let pcm = dir.path().join("pcm.wav");
        fs::write(&pcm, raw_wav(1, 16, &[0; 160])).unwrap();
        assert_eq!(load_wav(&pcm).unwrap(), vec![0i16; 80]);
    }

    /// Reproducer: a 44-byte 8-bit mono WAV whose data chunk claims
    /// 4,294,967,295 bytes. The old loader reserved 4 bytes of f32 per
    /// claimed sample (17 GB) and aborted the daemon when that failed.
    pub(super) const HUGE_DATA_CLAIM: [u8; 44] = [
        b'R', b'I', b'F', b'F', 0xFF, 0xFF, 0xFF, 0xFF, b'W', b'A', b'V', b'E', //
        b'f', b'm', b't', b' ', 16, 0, 0, 0, //
        1, 0, // PCM
        1, 0, // mono
        0x40, 0x1F, 0, 0, // 8000 Hz
        0x40, 0x1F, 0, 0, // 8000 bytes/s
        1, 0, // block align
        8, 0, // bits per sample
        b'd', b'a', b't', b'a', 0xFF, 0xFF, 0xFF, 0xFF, // data: 4294967295 bytes
    ];

    /// Reproducer: a 108-byte 32-bit float stereo 16 kHz WAV whose 16
    /// samples are all -1.7e38 (0xFEFFC99E). The old loader averaged them
    /// into the resampler, whose FFT overflowed to infinity and NaN and hit
    /// a rubato `unwrap`: a panic that took the daemon down on SIGHUP.
    pub(super) fn hot_float_stereo() -> Vec<u8> {
        let mut v = vec![
            b'R', b'I', b'F', b'F', 100, 0, 0, 0, b'W', b'A', b'V', b'E', //
            b'f', b'm', b't', b' ', 16, 0, 0, 0, //
            3, 0, // IEEE float
            2, 0, // stereo
            0x80, 0x3E, 0, 0, // 16000 Hz
            0x00, 0xF4, 0x01, 0, // 128000 bytes/s
            8, 0, // block align
            32, 0, // bits per sample
            b'd', b'a', b't', b'a', 64, 0, 0, 0, // data: 64 bytes
        ];
        for _ in 0..16 {
            v.extend_from_slice(&[0x9E, 0xC9, 0xFF, 0xFE]);
        }
        assert_eq!(v.len(), 108);
        v
    }

    /// A WAV header with every field given, so tests can write what no
    /// encoder would: `fmt_body` is the whole `fmt ` chunk body, and the
    /// data chunk claims `data_claim` bytes whatever `data` holds.
    fn wav_with(fmt_body: &[u8], data_claim: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        let riff_len = (4 + 8 + fmt_body.len() as u32 + 8).wrapping_add(data_claim);
        v.extend_from_slice(&riff_len.to_le_bytes());
        v.extend_from_slice(b"WAVE");
        v.extend_from_slice(b"fmt ");
        v.extend_from_slice(&(fmt_body.len() as u32).to_le_bytes());
        v.extend_from_slice(fmt_body);
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data_claim.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    /// A 16-byte `fmt ` body (WAVEFORMAT + bits), byte rate made consistent.
    fn fmt16(tag: u16, channels: u16, rate: u32, block_align: u16, bits: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&rate.wrapping_mul(u32::from(block_align)).to_le_bytes());
        v.extend_from_slice(&block_align.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v
    }

    /// A 40-byte WAVE_FORMAT_EXTENSIBLE `fmt ` body.
    fn fmt_extensible(
        channels: u16,
        block_align: u16,
        bits: u16,
        valid: u16,
        float: bool,
    ) -> Vec<u8> {
        let mut v = fmt16(0xFFFE, channels, 8000, block_align, bits);
        v.extend_from_slice(&22u16.to_le_bytes());
        v.extend_from_slice(&valid.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes()); // channel mask
        // KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: {0000000X-0000-0010-8000-00aa00389b71}
        v.extend_from_slice(&[if float { 3 } else { 1 }, 0, 0, 0, 0, 0, 0x10, 0]);
        v.extend_from_slice(&[0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71]);
        v
    }

    fn decode(bytes: &[u8]) -> Result<Vec<i16>, PromptError> {
        decode_wav(bytes, Path::new("prompts/en/welcome.wav"))
    }

    #[test]
    fn huge_data_claim_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("welcome.wav");
        fs::write(&path, HUGE_DATA_CLAIM).unwrap();
        let e = load_wav(&path).unwrap_err();
        assert!(matches!(e, PromptError::Truncated { .. }), "{e:?}");
        assert_names(
            &e,
            &path,
            "data chunk claims 4294967295 bytes but the file has 0 after its header",
        );

        // The same with 8 bytes of audio and float samples (hound's
        // generic reader path in the old loader).
        let fmt = fmt16(3, 1, 8000, 4, 32);
        let e = decode(&wav_with(&fmt, 0xFFFF_FFFC, &[0; 8])).unwrap_err();
        assert!(
            e.to_string().contains(
                "prompts/en/welcome.wav: truncated WAV file (data chunk claims 4294967292 \
                 bytes but the file has 8"
            ),
            "{e}"
        );
    }

    #[test]
    fn non_finite_and_absurd_float_samples_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("welcome.wav");
        fs::write(&path, hot_float_stereo()).unwrap();
        let e = load_wav(&path).unwrap_err();
        assert!(matches!(e, PromptError::BadSamples { .. }), "{e:?}");
        assert_names(
            &e,
            &path,
            "samples out of range / not finite (sample 0 is -1.7e38",
        );

        // NaN and infinities anywhere, at 8 kHz (no resampler) or not.
        let fmt8k = fmt16(3, 1, 8000, 4, 32);
        let fmt16k = fmt16(3, 1, 16000, 4, 32);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 5.0] {
            for fmt in [&fmt8k, &fmt16k] {
                let mut data = Vec::new();
                for s in [0.1f32, -0.2, bad, 0.3] {
                    data.extend_from_slice(&s.to_le_bytes());
                }
                let e = decode(&wav_with(fmt, 16, &data)).unwrap_err();
                assert!(matches!(e, PromptError::BadSamples { .. }), "{bad}: {e:?}");
                assert!(e.to_string().contains("sample 2 is"), "{e}");
            }
        }

        // Hot but plausible masters (up to +12 dBFS) still load, clipped.
        let mut data = Vec::new();
        for s in [1.5f32, -3.9, 0.5, 0.0] {
            data.extend_from_slice(&s.to_le_bytes());
        }
        assert_eq!(
            decode(&wav_with(&fmt8k, 16, &data)).unwrap(),
            vec![32767, -32768, 16384, 0]
        );
    }

    #[test]
    fn header_edge_cases_are_errors_naming_the_file() {
        let name = "prompts/en/welcome.wav";
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "zero channels",
                wav_with(&fmt16(1, 0, 8000, 2, 16), 4, &[0; 4]),
                "zero channels",
            ),
            (
                "zero sample rate",
                wav_with(&fmt16(1, 1, 0, 2, 16), 4, &[0; 4]),
                "sample rate 0 Hz is outside",
            ),
            (
                "absurd sample rate",
                wav_with(&fmt16(1, 1, 4_000_000, 2, 16), 4, &[0; 4]),
                "sample rate 4000000 Hz is outside",
            ),
            (
                "sample rate that overflows the byte rate",
                wav_with(&fmt16(1, 1, u32::MAX, 2, 16), 4, &[0; 4]),
                "malformed WAV file",
            ),
            (
                "co-prime sample rate",
                wav_with(&fmt16(1, 1, 352_801, 2, 16), 4, &[0; 4]),
                "no simple ratio",
            ),
            (
                "no audio data",
                wav_with(&fmt16(1, 1, 8000, 2, 16), 0, &[]),
                "empty audio",
            ),
            (
                "12 bits per sample",
                wav_with(&fmt16(1, 1, 8000, 2, 12), 4, &[0; 4]),
                "unsupported sample format",
            ),
            (
                "zero bits per sample",
                wav_with(&fmt16(1, 1, 8000, 2, 0), 4, &[0; 4]),
                "bits per sample is 0",
            ),
            (
                "block align smaller than a sample",
                wav_with(&fmt16(1, 2, 8000, 1, 8), 4, &[0; 4]),
                "sample bits exceeds size of sample",
            ),
            (
                "data not a whole number of frames",
                wav_with(&fmt16(1, 2, 8000, 4, 16), 6, &[0; 6]),
                "malformed WAV file",
            ),
            (
                "extensible, 16 valid bits in 4-byte containers",
                wav_with(&fmt_extensible(1, 4, 32, 16, false), 8, &[0; 8]),
                "16-bit integer in 4-byte containers",
            ),
            (
                "extensible, 7 valid bits",
                wav_with(&fmt_extensible(1, 1, 8, 7, false), 4, &[0; 4]),
                "7-bit integer",
            ),
            (
                "extensible, 64 valid bits in a 4-byte container",
                wav_with(&fmt_extensible(1, 4, 32, 64, true), 8, &[0; 8]),
                "64-bit float",
            ),
            (
                "extensible with an unknown sub-format",
                {
                    let mut fmt = fmt_extensible(1, 2, 16, 16, false);
                    fmt[24] = 0x55;
                    wav_with(&fmt, 4, &[0; 4])
                },
                "unsupported sample format",
            ),
            (
                "unknown chunk claiming 4 GiB before the data",
                {
                    let mut v = wav_with(&fmt16(1, 1, 8000, 2, 16), 4, &[0; 4]);
                    v.splice(12..12, *b"junk\xFF\xFF\xFF\xFF");
                    v
                },
                "truncated WAV file",
            ),
            (
                "fmt chunk claiming 4 GiB",
                {
                    let mut v = wav_with(&fmt16(1, 1, 8000, 2, 16), 4, &[0; 4]);
                    v[16..20].copy_from_slice(&[0xFF; 4]);
                    v
                },
                "malformed WAV file",
            ),
        ];
        for (what, bytes, needle) in cases {
            let e = match decode(&bytes) {
                Err(e) => e,
                Ok(pcm) => panic!("{what}: loaded as {pcm:?}"),
            };
            let msg = e.to_string();
            assert!(
                msg.starts_with(name),
                "{what}: does not name the file: {msg}"
            );
            assert!(msg.contains(needle), "{what}: lacks {needle:?}: {msg}");
        }

        // The extensible forms that are valid do load.
        let mut data = Vec::new();
        for s in [0.5f32, -0.5] {
            data.extend_from_slice(&s.to_le_bytes());
        }
        assert_eq!(
            decode(&wav_with(&fmt_extensible(1, 4, 32, 32, true), 8, &data)).unwrap(),
            vec![16384, -16384]
        );
        assert_eq!(
            decode(&wav_with(
                &fmt_extensible(1, 2, 16, 16, false),
                4,
                &[0, 0x40, 0, 0xC0]
            ))
            .unwrap(),
            vec![16384, -16384]
        );
        // 24 bits in 4-byte containers (hound's layout: the low three bytes).
        assert_eq!(
            decode(&wav_with(
                &fmt_extensible(1, 4, 32, 24, false),
                8,
                &[0, 0, 0x40, 0, 0, 0, 0xC0, 0xFF]
            ))
            .unwrap(),
            vec![16384, -16384]
        );
    }

    #[test]
    fn prompts_longer_than_the_cap_are_refused_before_decoding() {
        // 1000 Hz 8-bit mono: 600,001 bytes are one frame over ten minutes.
        let frames = MAX_PROMPT_SECS as usize * 1000 + 1;
        let e = decode(&wav_with(
            &fmt16(1, 1, 1000, 1, 8),
            frames as u32,
            &vec![128; frames],
        ))
        .unwrap_err();
        assert!(matches!(e, PromptError::TooLarge { .. }), "{e:?}");
        assert!(e.to_string().contains("10.0 minutes of audio"), "{e}");
        // Exactly ten minutes is fine.
        let frames = frames - 1;
        let pcm = decode(&wav_with(
            &fmt16(1, 1, 1000, 1, 8),
            frames as u32,
            &vec![128; frames],
        ))
        .unwrap();
        assert_eq!(pcm.len(), MAX_PROMPT_SECS as usize * 8000);

        // A file over MAX_FILE_BYTES is not read at all (a sparse file
        // here, so the test writes nothing).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        let f = fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = load_wav(&path).unwrap_err();
        assert!(matches!(e, PromptError::TooLarge { .. }), "{e:?}");
        assert_names(&e, &path, "too large for a prompt");
    }

    /// Every one-byte change and every truncation of small valid files, in
    /// every supported format, decodes or fails with an error; none panics.
    /// A cheap, deterministic stand-in for the fuzz target in CI.
    #[test]
    fn corrupted_files_never_panic() {
        let mut seeds = Vec::new();
        for (tag, bits, align) in [
            (1u16, 8u16, 1u16),
            (1, 16, 2),
            (1, 24, 3),
            (1, 32, 4),
            (3, 32, 4),
        ] {
            let data: Vec<u8> = (0..4 * align).map(|i| (i * 37) as u8).collect();
            seeds.push(wav_with(
                &fmt16(tag, 1, 16000, align, bits),
                data.len() as u32,
                &data,
            ));
        }
        seeds.push(hot_float_stereo());
        seeds.push(HUGE_DATA_CLAIM.to_vec());
        for seed in &seeds {
            for cut in 0..seed.len() {
                let _ = decode(&seed[..cut]);
            }
            for at in 0..seed.len() {
                for value in [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF] {
                    let mut bytes = seed.clone();
                    bytes[at] = value;
                    let _ = decode(&bytes);
                }
            }
        }
    }

    #[test]
    fn a_panicking_decoder_costs_one_file_not_the_process() {
        let path = Path::new("prompts/en/boom.wav");
        let e = guarded(path, || panic!("decoder bug")).unwrap_err();
        assert!(matches!(e, PromptError::Internal { .. }), "{e:?}");
        assert_names(&e, path, "internal error: decoder bug");
    }

    #[test]
    fn from_wav_bytes_names_the_prompt() {
        let e = Prompt::from_wav_bytes("welcome", "en", &HUGE_DATA_CLAIM).unwrap_err();
        assert!(
            e.to_string().starts_with("en/welcome.wav: truncated"),
            "{e}"
        );
        let p = Prompt::from_wav_bytes("hi", "de", &raw_wav(1, 16, &[0; 160])).unwrap();
        assert_eq!(
            (p.name.as_str(), p.language.as_str(), p.samples()),
            ("hi", "de", 80)
        );
    }

    #[test]
    fn library_loads_languages_and_shares_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (lang, names) in [
            ("en", &["welcome", "goodbye"][..]),
            ("de", &["welcome"][..]),
        ] {
            fs::create_dir(d.join(lang)).unwrap();
            for name in names {
                write_wav(
                    &d.join(lang).join(format!("{name}.wav")),
                    16000,
                    1,
                    Fmt::I16,
                    3200,
                    sine(500.0, 0.3),
                );
            }
        }
        // Upper-case extension counts; other files and hidden entries don't.
        write_wav(
            &d.join("de/goodbye.WAV"),
            8000,
            1,
            Fmt::I16,
            800,
            sine(500.0, 0.3),
        );
        fs::write(d.join("en/notes.txt"), "not a prompt").unwrap();
        fs::write(d.join("en/.welcome.wav.swp"), "editor junk").unwrap();
        fs::write(d.join("README.md"), "top-level files are ignored").unwrap();
        fs::create_dir(d.join(".git")).unwrap();

        let lib = PromptLibrary::load(d).unwrap();
        assert_eq!(lib.languages().collect::<Vec<_>>(), ["de", "en"]);
        assert_eq!(lib.len(), 4);
        assert!(lib.contains("en", "goodbye"));
        assert!(lib.contains("de", "goodbye"));
        assert!(!lib.contains("en", "notes"));
        assert!(!lib.contains("fr", "welcome"));
        assert!(lib.get("en", "missing").is_none());

        let p = lib.get("en", "welcome").unwrap();
        assert_eq!((p.name.as_str(), p.language.as_str()), ("welcome", "en"));
        assert_eq!(p.samples(), 1600);
        assert_eq!(p.duration(), Duration::from_millis(200));
        assert_eq!(p.pcmu.len(), 1600);
        assert_eq!(p.pcma.len(), 1600);
        for i in 0..p.samples() {
            assert_eq!(p.pcmu[i], g711::ulaw_encode(p.pcm[i]));
            assert_eq!(p.pcma[i], g711::alaw_encode(p.pcm[i]));
        }
        // Shared, not copied: every lookup hands out the same allocation.
        assert!(Arc::ptr_eq(p, lib.get("en", "welcome").unwrap()));
        assert!(Arc::ptr_eq(
            &p.pcmu,
            &lib.clone().get("en", "welcome").unwrap().pcmu
        ));
        assert_eq!(
            lib.prompts("en")
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["goodbye", "welcome"]
        );
    }

    #[test]
    fn library_directory_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let missing = d.join("nope");
        let e = PromptLibrary::load(&missing).unwrap_err();
        assert!(matches!(e, PromptError::MissingDir { .. }), "{e:?}");
        assert_names(&e, &missing, "does not exist");

        let file = d.join("file");
        fs::write(&file, "").unwrap();
        let e = PromptLibrary::load(&file).unwrap_err();
        assert!(matches!(e, PromptError::NotADirectory { .. }), "{e:?}");

        let bare = d.join("bare");
        fs::create_dir(&bare).unwrap();
        fs::write(bare.join("welcome.wav"), "").unwrap();
        let e = PromptLibrary::load(&bare).unwrap_err();
        assert!(matches!(e, PromptError::NoLanguages { .. }), "{e:?}");
        assert_names(&e, &bare, "has no language subdirectories");

        let one_empty = d.join("one-empty");
        fs::create_dir_all(one_empty.join("en")).unwrap();
        fs::create_dir_all(one_empty.join("de")).unwrap();
        write_wav(
            &one_empty.join("en/a.wav"),
            8000,
            1,
            Fmt::I16,
            80,
            sine(500.0, 0.3),
        );
        let e = PromptLibrary::load(&one_empty).unwrap_err();
        assert!(matches!(e, PromptError::EmptyLanguage { .. }), "{e:?}");
        assert_names(&e, &one_empty.join("de"), "contains no .wav prompts");
    }

    #[test]
    fn library_reports_every_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("en")).unwrap();
        write_wav(
            &d.join("en/good.wav"),
            8000,
            1,
            Fmt::I16,
            80,
            sine(500.0, 0.3),
        );

        // One bad file: that file's own error, not a wrapper.
        let bad = d.join("en/bad.wav");
        fs::write(&bad, "garbage").unwrap();
        let e = PromptLibrary::load(d).unwrap_err();
        assert!(matches!(e, PromptError::NotWav { .. }), "{e:?}");
        assert_eq!(e.path(), Some(bad.as_path()));

        // Two bad files: both listed.
        let worse = d.join("en/worse.wav");
        fs::write(&worse, "RIFF").unwrap();
        let e = PromptLibrary::load(d).unwrap_err();
        let PromptError::Many { errors } = &e else {
            panic!("expected Many, got {e:?}");
        };
        assert_eq!(errors.len(), 2);
        let msg = e.to_string();
        assert!(msg.starts_with("2 prompt files failed to load:"), "{msg}");
        assert_names(&e, &bad, "RIFF header missing");
        assert_names(&e, &worse, "too short for a WAV header");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("en")).unwrap();
        write_wav(
            &d.join("en/hi.wav"),
            8000,
            1,
            Fmt::I16,
            80,
            sine(500.0, 0.3),
        );
        write_wav(
            &d.join("en/hi.WAV"),
            8000,
            1,
            Fmt::I16,
            80,
            sine(500.0, 0.3),
        );
        let e = PromptLibrary::load(d).unwrap_err();
        assert!(
            matches!(e, PromptError::Duplicate { ref name, .. } if name == "hi"),
            "{e:?}"
        );
    }

    /// Every prompt the IVR flows use, in the bundled set.
    const BUNDLED: &[&str] = &[
        "welcome",
        "demo-welcome",
        "enter-digits",
        "you-entered",
        "no-input",
        "invalid",
        "goodbye",
        "enter-customer-id",
        "sending-pin",
        "enter-pin",
        "wrong-pin",
        "verified",
        "fallback",
        "sms-failed",
        "language-menu",
        "digit-0",
        "digit-1",
        "digit-2",
        "digit-3",
        "digit-4",
        "digit-5",
        "digit-6",
        "digit-7",
        "digit-8",
        "digit-9",
        "star",
        "hash",
    ];

    /// `<crate root>/prompts`. `file!()` is relative to the crate root when
    /// this file is compiled in place and absolute when it is included from
    /// elsewhere with `#[path]`; joining onto the manifest dir handles both.
    fn bundled_dir() -> PathBuf {
        #[allow(
            clippy::join_absolute_paths,
            reason = "file!() is absolute only when included via #[path]; replacing is intended"
        )]
        let this = Path::new(env!("CARGO_MANIFEST_DIR")).join(file!());
        // <root>/src/media/prompt.rs -> <root>
        let root = this
            .ancestors()
            .nth(3)
            .expect("src/media/prompt.rs has a root");
        root.join("prompts")
    }

    #[test]
    fn bundled_prompts_are_complete_and_audible() {
        let start = std::time::Instant::now();
        let lib = PromptLibrary::load(&bundled_dir()).unwrap();
        let elapsed = start.elapsed();
        eprintln!("loaded {} bundled prompts in {elapsed:?}", lib.len());
        for language in ["en", "de"] {
            for &name in BUNDLED {
                let p = lib
                    .get(language, name)
                    .unwrap_or_else(|| panic!("bundled prompt {language}/{name} missing"));
                let secs = p.duration().as_secs_f64();
                let max = if name == "language-menu" { 8.0 } else { 7.0 };
                assert!((0.2..max).contains(&secs), "{language}/{name}: {secs:.2} s");
                // Normalised to about -3 dBFS peak: speech RMS sits well
                // above -30 dBFS (~1000), silence or a broken export below.
                let level = rms(&p.pcm);
                assert!(level > 1000.0, "{language}/{name}: rms {level:.0}");
                let peak = p.pcm.iter().map(|v| i32::from(*v).abs()).max().unwrap();
                assert!(peak > 16000, "{language}/{name}: peak {peak}");
            }
        }
    }

    /// A site layer with one prompt over a bundled set: the site's prompt wins, the rest
    /// come from below, languages are the union, and a broken file in any layer is refused.
    #[test]
    fn layers_are_searched_first_to_last() {
        let site = tempfile::tempdir().unwrap();
        let bundled = tempfile::tempdir().unwrap();
        let (s, b) = (site.path(), bundled.path());
        for d in ["en", "de"] {
            fs::create_dir_all(b.join(d)).unwrap();
        }
        fs::create_dir_all(s.join("en")).unwrap();
        fs::create_dir_all(s.join("fr")).unwrap();
        write_wav(
            &b.join("en/welcome.wav"),
            8000,
            1,
            Fmt::I16,
            800,
            sine(400.0, 0.3),
        );
        write_wav(
            &b.join("en/goodbye.wav"),
            8000,
            1,
            Fmt::I16,
            800,
            sine(400.0, 0.3),
        );
        write_wav(
            &b.join("de/welcome.wav"),
            8000,
            1,
            Fmt::I16,
            800,
            sine(400.0, 0.3),
        );
        write_wav(
            &s.join("en/welcome.wav"),
            8000,
            1,
            Fmt::I16,
            2400,
            sine(600.0, 0.3),
        );
        write_wav(
            &s.join("fr/welcome.wav"),
            8000,
            1,
            Fmt::I16,
            800,
            sine(600.0, 0.3),
        );
        let (lib, supplied) =
            PromptLibrary::load_layers(&[s.to_path_buf(), b.to_path_buf()]).unwrap();
        assert_eq!(supplied, [2, 2]);
        assert_eq!(lib.languages().collect::<Vec<_>>(), ["de", "en", "fr"]);
        assert_eq!(
            lib.get("en", "welcome").unwrap().samples(),
            2400,
            "the site's"
        );
        assert_eq!(
            lib.get("en", "goodbye").unwrap().samples(),
            800,
            "the bundled"
        );
        assert!(lib.contains("de", "welcome") && lib.contains("fr", "welcome"));
        fs::write(b.join("de/broken.wav"), b"RIFF").unwrap();
        assert!(PromptLibrary::load_layers(&[s.to_path_buf(), b.to_path_buf()]).is_err());
    }
}
