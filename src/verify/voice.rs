//! The code read out on a call: what the callee of a voice verification hears once the call
//! is answered (issue 15's voice channel; placing the call is the SIP core's job).
//!
//! ```text
//! [key_first]  "Press any key to hear your verification code."  (a key within key_wait, twice)
//!              none: "Goodbye."  ->  NoKey   (a voicemail box records no code)
//! readings x   "Your verification code is" 4 9 3 8 1 7
//! up to        "To hear it again, press 1."  1 -> read again
//! max_repeats
//!              "Goodbye."  ->  Read { times }
//! ```
//!
//! The code is spoken digit by digit with the digit prompts every language has, so a locale
//! needs no prompt per number. It never reaches a log: prompts are played by name, and the
//! daemon logs prompt names only when one is missing, which `ivrd check` and start-up rule
//! out for the digits. Everything runs over [`CallIo`], so the simulator's virtual clock tests
//! it exactly as the daemon runs it.

use crate::call::outbound::{Delivery, OutboundSettings};
use crate::call::{Call, CallContext, CallEnd, CallIo, CollectSpec};
use crate::redact::mask_number;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};
use zeroize::Zeroizing;

/// The prompts a read-out plays, besides `digit-0` ... `digit-9`.
pub const PROMPTS: [&str; 4] = [
    "voice-press-key",
    "voice-code-is",
    "voice-press-1",
    "goodbye",
];

/// What to read and how.
#[derive(Clone)]
pub struct ReadOut {
    /// The code's digits.
    pub code: Zeroizing<String>,
    /// Times the code is read unasked.
    pub readings: u32,
    /// Further readings the callee may ask for with 1.
    pub max_repeats: u32,
    /// Wait for a key before reading the code, as Twilio's `DtmfInputRequired`: an answering
    /// machine presses none, so it records no code.
    pub key_first: bool,
    /// How long each wait for that key lasts (there are two).
    pub key_wait: Duration,
    /// How long "press 1" waits for the 1.
    pub repeat_wait: Duration,
    /// What one reading plays: prompt names, with [`CODE`] where the code's digits go.
    pub template: Vec<String>,
}

/// The place of the code's digits in a read-out template.
pub const CODE: &str = "{code}";

/// One reading by default: "Your verification code is" and the digits.
pub fn default_template() -> Vec<String> {
    vec!["voice-code-is".into(), CODE.into()]
}

impl ReadOut {
    /// Two readings, up to three more on request, no key first, 8 s and 5 s waits.
    pub fn new(code: &str) -> ReadOut {
        ReadOut {
            code: Zeroizing::new(code.to_string()),
            readings: 2,
            max_repeats: 3,
            key_first: false,
            key_wait: Duration::from_secs(8),
            repeat_wait: Duration::from_secs(5),
            template: default_template(),
        }
    }
}

/// How a read-out went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The code was read `times` times in full.
    Read { times: u32 },
    /// `key_first`, and no key came: the code was not read.
    NoKey,
}

/// One key within `wait`, or none.
fn one_key(wait: Duration) -> CollectSpec {
    CollectSpec {
        min: 1,
        max: 1,
        terminator: None,
        escape: Vec::new(),
        first_digit_timeout: wait,
        inter_digit_timeout: wait,
    }
}

/// Reads `r.code` to the callee (see the module docs); the call ending under it is the error.
pub async fn read_out<C: CallIo + Send>(call: &mut C, r: &ReadOut) -> Result<Heard, CallEnd> {
    if r.key_first {
        let mut pressed = false;
        for _ in 0..2 {
            call.play(&["voice-press-key"], true).await?;
            if !call.collect(&one_key(r.key_wait)).await?.digits.is_empty() {
                pressed = true;
                break;
            }
        }
        if !pressed {
            call.play(&["goodbye"], false).await?;
            return Ok(Heard::NoKey);
        }
    }
    // The digit prompt of each key: anything else in a code is skipped (codes are digits).
    const DIGITS: [&str; 10] = [
        "digit-0", "digit-1", "digit-2", "digit-3", "digit-4", "digit-5", "digit-6", "digit-7",
        "digit-8", "digit-9",
    ];
    let mut reading: Vec<&str> = Vec::new();
    for part in &r.template {
        if part == CODE {
            reading.extend(
                r.code
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| DIGITS[usize::from(b - b'0')]),
            );
        } else {
            reading.push(part);
        }
    }
    let mut times = 0;
    for _ in 0..r.readings.max(1) {
        // No barge-in: a key pressed in the middle must not cut the code short.
        call.play(&reading, false).await?;
        times += 1;
    }
    for _ in 0..r.max_repeats {
        call.play(&["voice-press-1"], true).await?;
        if call.collect(&one_key(r.repeat_wait)).await?.digits != "1" {
            break;
        }
        call.play(&reading, false).await?;
        times += 1;
    }
    call.play(&["goodbye"], false).await?;
    Ok(Heard::Read { times })
}

/// How a read-out call goes, besides the code (`[outbound]`).
#[derive(Debug, Clone)]
pub struct ReadOutStyle {
    pub key_first: bool,
    pub readings: u32,
    pub max_repeats: u32,
    /// What one reading plays (`[outbound] readout`).
    pub template: Vec<String>,
}

/// One code to read to one number.
pub struct VoiceJob {
    /// E.164.
    pub to: String,
    pub code: Zeroizing<String>,
    pub language: String,
    /// What the call is for (a verification id), for the logs.
    pub reference: String,
}

/// How a read-out call went.
#[derive(Debug, Clone)]
pub struct VoiceReport {
    pub delivery: Delivery,
    /// The final SIP status of a call that was not answered, if one came.
    pub status: Option<u16>,
    /// A sentence for logs and the audit.
    pub reason: String,
    /// For an answered call: whether the code was read (`None`: the callee hung up first).
    pub heard: Option<Heard>,
    /// The SIP Call-ID (the audit row's key).
    pub call_id: Option<String>,
    /// The SRTP suite of an answered call's media, if SRTP.
    pub srtp: Option<&'static str>,
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// The calls that read codes out: at most `max_calls` at once, each on the daemon's call
/// tracker (so a shutdown drains them like any call), with the prompts and call settings of
/// the configuration current when it starts.
#[derive(Clone)]
pub struct VoiceChannel {
    inner: Arc<VoiceInner>,
}

struct VoiceInner {
    out: OutboundSettings,
    style: ReadOutStyle,
    context: Box<dyn Fn() -> CallContext + Send + Sync>,
    lines: Arc<Semaphore>,
    calls: TaskTracker,
}

impl VoiceChannel {
    pub fn new(
        out: OutboundSettings,
        style: ReadOutStyle,
        max_calls: usize,
        calls: TaskTracker,
        context: impl Fn() -> CallContext + Send + Sync + 'static,
    ) -> VoiceChannel {
        VoiceChannel {
            inner: Arc::new(VoiceInner {
                out,
                style,
                context: Box::new(context),
                lines: Arc::new(Semaphore::new(max_calls)),
                calls,
            }),
        }
    }

    /// The transport calls go out on.
    pub fn protocol(&self) -> crate::sip::transport::Protocol {
        self.inner.out.protocol
    }

    /// Calls out now and reports to `done` when the call is over; `false` (nothing started)
    /// when every line is taken or the daemon is shutting down.
    pub fn dial(&self, job: VoiceJob, done: impl FnOnce(VoiceReport) + Send + 'static) -> bool {
        if self.inner.calls.is_closed() {
            return false;
        }
        let Ok(line) = self.inner.lines.clone().try_acquire_owned() else {
            return false;
        };
        let this = self.clone();
        let span = info_span!("voice", reference = %job.reference);
        self.inner.calls.spawn(
            async move {
                let report = this.call(job).await;
                drop(line);
                done(report);
            }
            .instrument(span),
        );
        true
    }

    async fn call(&self, job: VoiceJob) -> VoiceReport {
        let started = SystemTime::now();
        let ctx = (self.inner.context)();
        info!(to = %mask_number(&job.to), "calling to read a code out");
        let mut call = match Call::place(ctx, &self.inner.out, &job.to).await {
            Ok(call) => call,
            Err(n) => {
                info!(delivery = n.delivery.as_str(), status = n.status, reason = %n.reason, "code call not answered");
                return VoiceReport {
                    delivery: n.delivery,
                    status: n.status,
                    reason: n.reason,
                    heard: None,
                    call_id: None,
                    srtp: None,
                    started,
                    ended: SystemTime::now(),
                };
            }
        };
        call.set_language(&job.language);
        let style = &self.inner.style;
        let readout = ReadOut {
            readings: style.readings,
            max_repeats: style.max_repeats,
            key_first: style.key_first,
            template: style.template.clone(),
            ..ReadOut::new(&job.code)
        };
        let (heard, end) = match read_out(&mut call, &readout).await {
            Ok(h) => (Some(h), CallEnd::Completed),
            Err(end) => (None, end),
        };
        let reason = match heard {
            Some(Heard::Read { times }) => format!("the code was read {times} times"),
            Some(Heard::NoKey) => "no key was pressed: the code was not read".into(),
            None => format!("the call ended before the code was read: {}", end.as_str()),
        };
        info!(reason = %reason, "code call over");
        let call_id = call.facts().call_id.clone();
        let srtp = call.srtp_suite();
        call.finish(&end).await;
        VoiceReport {
            delivery: Delivery::Answered,
            status: Some(200),
            reason,
            heard,
            call_id: Some(call_id),
            srtp,
            started,
            ended: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialplan::sim::{SimCall, SimEvent, sim_facts};
    use crate::dialplan::testing::block_on;

    /// Runs a read-out of 493817 against a callee pressing `keys`; what they heard, prompt
    /// lists joined with "+", and how it went.
    fn run(r: &ReadOut, keys: &str) -> (Vec<String>, Result<Heard, CallEnd>) {
        let mut call = SimCall::new(sim_facts("ivrd", "+4915112345678"), keys).unwrap();
        let heard = block_on(read_out(&mut call, r));
        let plays = call
            .transcript()
            .into_iter()
            .filter_map(|e| match e.event {
                SimEvent::Play { prompts, .. } => Some(prompts.join("+")),
                _ => None,
            })
            .collect();
        (plays, heard)
    }

    const CODE: &str = "voice-code-is+digit-4+digit-9+digit-3+digit-8+digit-1+digit-7";

    #[test]
    fn the_template_says_what_one_reading_plays() {
        let r = ReadOut {
            template: vec!["welcome".into(), super::CODE.into(), "hash".into()],
            readings: 1,
            max_repeats: 0,
            ..ReadOut::new("4093")
        };
        let (plays, heard) = run(&r, "");
        assert_eq!(
            plays,
            ["welcome+digit-4+digit-0+digit-9+digit-3+hash", "goodbye"]
        );
        assert_eq!(heard, Ok(Heard::Read { times: 1 }));
    }

    #[test]
    fn the_code_is_read_twice_then_once_more_on_1() {
        let r = ReadOut::new("493817");
        let (plays, heard) = run(&r, "");
        assert_eq!(plays, [CODE, CODE, "voice-press-1", "goodbye"]);
        assert_eq!(heard, Ok(Heard::Read { times: 2 }));
        // "1" while "press 1" plays (it barges in), then nothing: three readings.
        let (plays, heard) = run(&r, "WWW1");
        assert_eq!(
            plays,
            [
                CODE,
                CODE,
                "voice-press-1",
                CODE,
                "voice-press-1",
                "goodbye"
            ]
        );
        assert_eq!(heard, Ok(Heard::Read { times: 3 }));
        // Another key ends it.
        let (_, heard) = run(&r, "WWW5");
        assert_eq!(heard, Ok(Heard::Read { times: 2 }));
    }

    #[test]
    fn repeats_are_bounded() {
        let r = ReadOut {
            max_repeats: 2,
            ..ReadOut::new("12")
        };
        let (plays, heard) = run(&r, "WWW1 WW1 WW1 WW1");
        assert_eq!(heard, Ok(Heard::Read { times: 4 }));
        assert_eq!(plays.last().map(String::as_str), Some("goodbye"));
    }

    #[test]
    fn with_key_first_no_key_means_no_code() {
        let r = ReadOut {
            key_first: true,
            ..ReadOut::new("493817")
        };
        let (plays, heard) = run(&r, "");
        assert_eq!(plays, ["voice-press-key", "voice-press-key", "goodbye"]);
        assert_eq!(heard, Ok(Heard::NoKey));
        assert!(
            !plays.iter().any(|p| p.contains("digit-")),
            "no digit was read"
        );
        // A key during the second invitation: the code follows.
        let (plays, heard) = run(&r, "W w w w w w w w w W 5");
        assert_eq!(plays[..3], ["voice-press-key", "voice-press-key", CODE]);
        assert_eq!(heard, Ok(Heard::Read { times: 2 }));
    }

    #[test]
    fn a_hang_up_in_the_middle_ends_it() {
        let r = ReadOut::new("493817");
        let (_, heard) = run(&r, "w!");
        assert_eq!(heard, Err(CallEnd::CallerHangup));
    }

    #[test]
    fn every_bundled_language_has_the_read_out_prompts() {
        let dir = crate::dialplan::PromptDir::scan(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prompts"
        )))
        .unwrap();
        assert!(dir.languages().len() >= 2);
        for lang in dir.languages() {
            for name in PROMPTS
                .iter()
                .map(|p| p.to_string())
                .chain((0..10).map(|d| format!("digit-{d}")))
            {
                assert!(dir.exists(lang, &name), "prompts/{lang}/{name}.wav");
            }
        }
    }
}
