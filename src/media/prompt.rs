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
//! Errors name the offending file, say what is wrong and what to do about
//! it, because the person reading them is an operator who just dropped a
//! new recording into the directory. [`PromptLibrary::load`] checks every
//! file and reports all broken ones at once rather than one per restart.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::io::{self, Cursor};
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

/// Requested resampler chunk in input frames. rubato rounds it up to a
/// whole number of rational periods; ~1k gives a long, steep
/// anti-aliasing filter while keeping the FFTs small.
const RESAMPLER_CHUNK: usize = 1024;

/// Placeholder "path" for errors from [`convert`], which works on memory.
/// [`load_wav`] replaces it with the real file name.
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
    #[error("{}: truncated WAV file ({detail}): the file was cut short; copy or export it again", path.display())]
    Truncated {
        /// The offending file.
        path: PathBuf,
        /// Which part is missing.
        detail: &'static str,
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

    /// Replaces the in-memory placeholder path of a [`convert`] error with
    /// the file it came from.
    fn at(mut self, file: &Path) -> Self {
        match &mut self {
            Self::Empty { path }
            | Self::InvalidAudio { path, .. }
            | Self::Resample { path, .. } => *path = file.to_path_buf(),
            _ => {}
        }
        self
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
            pcm: pcm.into(),
        }
    }

    /// Playing time at 8 kHz.
    pub fn duration(&self) -> Duration {
        // 125 us per sample at 8 kHz; exact in integer nanoseconds.
        Duration::from_nanos(self.samples() as u64 * (1_000_000_000 / u64::from(SAMPLE_RATE)))
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
pub fn load_wav(path: &Path) -> Result<Vec<i16>, PromptError> {
    // Reading the whole file first is faster than buffered small reads and
    // lets us sniff the header for a precise error message.
    let bytes = std::fs::read(path).map_err(|source| PromptError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_wav(path, bytes)
}

/// [`load_wav`] on the bytes of a file already read; `path` only names it in errors.
pub fn decode_wav(path: &Path, bytes: Vec<u8>) -> Result<Vec<i16>, PromptError> {
    if let Err(reason) = check_riff_wave(&bytes) {
        return Err(PromptError::NotWav {
            path: path.to_path_buf(),
            reason,
        });
    }

    let reader =
        hound::WavReader::new(Cursor::new(&bytes[..])).map_err(|e| hound_error(path, &bytes, e))?;
    let spec = reader.spec();
    let sample_count = reader.len() as usize;
    let interleaved = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => {
            // Fast path for the common format: hound's generic per-sample
            // reader costs ~15 ns a sample, about as much as resampling;
            // decoding the data chunk slice directly is several times
            // cheaper. hound only accepts 16-bit samples in
            // 2-byte containers, and the header parse above left the cursor
            // at the first data byte.
            let start = usize::try_from(reader.into_inner().position()).unwrap_or(usize::MAX);
            let data = start
                .checked_add(sample_count.saturating_mul(2))
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(|| PromptError::Truncated {
                    path: path.to_path_buf(),
                    detail: "the file ends before the audio data its header declares",
                })?;
            data.chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) * (1.0 / 32768.0))
                .collect()
        }
        (hound::SampleFormat::Int, bits @ (8 | 24 | 32)) => {
            // Full scale of an n-bit integer is 2^(n-1), so that the most
            // negative value maps to exactly -1.0.
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            read_samples(reader, sample_count, path, &bytes, |s: i32| {
                s as f32 * scale
            })?
        }
        (hound::SampleFormat::Float, 32) => {
            read_samples(reader, sample_count, path, &bytes, |s: f32| s)?
        }
        (format, bits) => {
            let kind = match format {
                hound::SampleFormat::Int => "integer",
                hound::SampleFormat::Float => "float",
            };
            return Err(PromptError::UnsupportedFormat {
                path: path.to_path_buf(),
                detail: format!("{bits}-bit {kind}"),
            });
        }
    };
    if interleaved.is_empty() {
        return Err(PromptError::Empty {
            path: path.to_path_buf(),
        });
    }
    convert(&interleaved, spec.sample_rate, spec.channels).map_err(|e| e.at(path))
}

/// Reads every sample of `reader` as `S` and maps it to f32.
fn read_samples<S: hound::Sample>(
    mut reader: hound::WavReader<Cursor<&[u8]>>,
    len_hint: usize,
    path: &Path,
    bytes: &[u8],
    to_f32: impl Fn(S) -> f32,
) -> Result<Vec<f32>, PromptError> {
    let mut out = Vec::with_capacity(len_hint);
    for sample in reader.samples::<S>() {
        out.push(to_f32(sample.map_err(|e| hound_error(path, bytes, e))?));
    }
    Ok(out)
}

/// Converts interleaved float samples (full scale = ±1.0) at any rate and
/// channel count to 8 kHz mono 16-bit: channels are averaged, the result is
/// resampled (unless already 8 kHz), then rounded and clipped to i16.
/// Non-finite samples (NaN, ±inf) are treated as silence.
pub fn convert(
    samples_interleaved_f32: &[f32],
    rate: u32,
    channels: u16,
) -> Result<Vec<i16>, PromptError> {
    let invalid = |reason: String| PromptError::InvalidAudio {
        path: PathBuf::from(IN_MEMORY),
        reason,
    };
    if channels == 0 {
        return Err(invalid("zero channels".into()));
    }
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
        return Err(invalid(format!(
            "sample rate {rate} Hz is outside {MIN_INPUT_RATE}..={MAX_INPUT_RATE} Hz"
        )));
    }
    let channels = usize::from(channels);
    if !samples_interleaved_f32
        .chunks_exact(channels)
        .remainder()
        .is_empty()
    {
        return Err(invalid(format!(
            "{} samples is not a whole number of {channels}-channel frames",
            samples_interleaved_f32.len()
        )));
    }
    if samples_interleaved_f32.is_empty() {
        return Err(PromptError::Empty {
            path: PathBuf::from(IN_MEMORY),
        });
    }

    let inv_channels = 1.0 / channels as f32;
    let mono: Vec<f32> = samples_interleaved_f32
        .chunks_exact(channels)
        .map(|frame| {
            let sum: f32 = frame
                .iter()
                .map(|&s| if s.is_finite() { s } else { 0.0 })
                .sum();
            sum * inv_channels
        })
        .collect();

    let mono = if rate == SAMPLE_RATE {
        mono
    } else {
        resample_to_8k(&mono, rate).map_err(|reason| PromptError::Resample {
            path: PathBuf::from(IN_MEMORY),
            reason,
        })?
    };
    if mono.is_empty() {
        // A handful of input frames can round down to zero output samples.
        return Err(PromptError::Empty {
            path: PathBuf::from(IN_MEMORY),
        });
    }
    // `as` saturates, so out-of-range (hot float masters) clip cleanly.
    Ok(mono.iter().map(|&s| (s * 32768.0).round() as i16).collect())
}

/// Resamples mono audio to 8 kHz, returning exactly
/// `round(len * 8000 / rate)` samples aligned with the input.
fn resample_to_8k(mono: &[f32], rate: u32) -> Result<Vec<f32>, String> {
    let rate64 = u64::from(rate);
    let expected = ((mono.len() as u64 * u64::from(SAMPLE_RATE) + rate64 / 2) / rate64) as usize;
    // rubato processes whole rational periods of `rate / gcd` input frames.
    // Use an even number of periods: the output block is then even and the
    // reported delay (half a block, rounded down) is exact rather than off
    // by half a sample.
    let period = rate as usize / gcd(rate as usize, SAMPLE_RATE as usize);
    let periods = RESAMPLER_CHUNK.div_ceil(period).next_multiple_of(2);
    let mut resampler =
        FftFixedIn::<f32>::new(rate as usize, SAMPLE_RATE as usize, periods * period, 1, 1)
            .map_err(|e| e.to_string())?;
    let chunk = resampler.input_frames_max();
    // The FFT resampler's filter delays the output; feed zeros past the end
    // until the delayed tail has come out, then cut the delay off the front.
    let delay = resampler.output_delay();
    let wanted = expected + delay;
    let mut out = Vec::with_capacity(wanted + resampler.output_frames_max());
    let mut out_chunk = vec![0.0f32; resampler.output_frames_max()];
    let mut padded = vec![0.0f32; chunk];
    let mut pos = 0usize;
    while out.len() < wanted {
        let rest = mono.get(pos..).unwrap_or(&[]);
        let input: &[f32] = if rest.len() >= chunk {
            &rest[..chunk]
        } else {
            padded.fill(0.0);
            padded[..rest.len()].copy_from_slice(rest);
            &padded
        };
        let (_, produced) = resampler
            .process_into_buffer(&[input], &mut [&mut out_chunk[..]], None)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&out_chunk[..produced]);
        pos += chunk;
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
            detail: "the file ends before the header or audio data it declares",
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

/// Loads all files, spreading them over the available cores: start-up time
/// is dominated by resampling, which parallelises perfectly. Results come
/// back in job order.
fn load_all(jobs: &[(String, String, PathBuf)]) -> Vec<Result<Vec<i16>, PromptError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    if workers == 1 {
        return jobs.iter().map(|(_, _, path)| load_wav(path)).collect();
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
                        done.push((i, load_wav(path)));
                    }
                })
            })
            .collect();
        for handle in handles {
            // A worker only panics on a bug; surface it unchanged.
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
        // Non-finite input is silenced, hot input is clipped, not wrapped.
        assert_eq!(
            convert(&[f32::NAN, f32::INFINITY, 2.0, -2.0, 0.25], 8000, 1).unwrap(),
            vec![0, 0, 32767, -32768, 8192]
        );
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
}
