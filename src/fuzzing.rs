//! The bodies of the fuzz targets in `fuzz/`, one function per target.
//!
//! They live here, in the library, so that the fuzzers (`fuzz/fuzz_targets/*.rs`, one line
//! each) and the test suite (`tests/fuzz_regressions.rs`, which replays every seed and every
//! crash input on stable Rust without libFuzzer) run exactly the same code. Each function takes
//! arbitrary bytes and must return without panicking, whatever they are; the few `assert!`s
//! are invariants whose failure is a bug worth a crash report.
//!
//! Input formats, where a target needs more than one input out of the bytes, are chosen so
//! that a plain file of the parsed format (a `.sip`, `.sdp`, `.wav`, `.toml`, `.csv`) is
//! already a useful seed:
//! - [`rtp`]: the whole input is one packet, then the input is read again as a sequence of
//!   length-prefixed packets (one length byte, then that many bytes) fed to one receiver.
//! - [`sip_info`]: `CONTENT-TYPE \0 BODY`; without a NUL byte the whole input is the body,
//!   tried under both DTMF content types.
//! - [`srtp`]: like [`rtp`], the whole input is one SRTP packet, then a sequence of
//!   length-prefixed packets fed to one receiver; and the input as plain RTP must survive a
//!   round trip. The key is [`SRTP_FUZZ_KEY`], so authentic seeds can be written for it.
//! - [`http_response`]: `POINTERS \0 BODY`, the pointers one `var=/pointer` a line; without a
//!   NUL byte the whole input is the body, read with [`HTTP_FUZZ_POINTERS`]. The whole input
//!   is also read as an `ivrd simulate` fakes file.
//! - [`api_request`]: the whole input is an HTTP API request body (start, check, resend),
//!   and the `Authorization` value whose hash is looked up.

use crate::dialplan::{self, CheckEnv};
use crate::http_lookup::{self, HttpFakes};
use crate::media::dtmf::{InbandDetector, Rfc4733Receiver, parse_info};
use crate::media::rtp::{self, Received};
use crate::media::srtp::{MAX_TAG_LEN, MasterKey, SrtpError, SrtpReceiver, SrtpSender, Suite};
use crate::media::{g711, prompt};
use crate::sip::auth;
use crate::sip::message::{self, Message, ResponseBuilder, frame_len};
use crate::sip::sdp::{Codec, LocalSession, SrtpMode, parse_crypto};
use crate::store;
use bytes::Bytes;
use ezk_sip_types::Name;
use std::net::SocketAddr;
use std::path::Path;

/// A target's body: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target by name: the names of the files in `fuzz/fuzz_targets/` and of the
/// directories in `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_message", sip_message),
    ("sdp", sdp),
    ("rtp", rtp),
    ("srtp", srtp),
    ("sip_info", sip_info),
    ("digest", digest),
    ("dialplan", dialplan),
    ("wav", wav),
    ("customers_csv", customers_csv),
    ("http_response", http_response),
    ("api_request", api_request),
];

/// The function for a target name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// [`frame_len`] and [`Message::parse`] on the same bytes, then what the layers above read
/// from a parsed message and a response built to it.
pub fn sip_message(data: &[u8]) {
    if let Ok(Some(len)) = frame_len(data) {
        assert!(
            len <= data.len(),
            "frame_len {len} past {} bytes",
            data.len()
        );
        assert!(len <= message::MAX_MESSAGE, "frame of {len} bytes framed");
    }
    let msg = match Message::parse(Bytes::copy_from_slice(data)) {
        Ok(msg) => msg,
        Err(e) => {
            let _ = (e.status_code(), e.to_string());
            // What the transport answers a broken request with: bounded by what came in.
            if let Some(resp) = crate::sip::transport::bad_request_response(data, &e) {
                assert!(
                    resp.len() <= data.len() + 512,
                    "answer larger than the request"
                );
            }
            return;
        }
    };
    assert!(msg.vias.len() <= message::MAX_VIAS);
    let source: SocketAddr = ([192, 0, 2, 7], 40000).into();
    for (reliable, trusted) in [(false, false), (false, true), (true, false)] {
        let target = msg.response_target(source, reliable, trusted);
        // Only a trusted peer's maddr may send an answer away from the source's IP.
        if !trusted {
            assert_eq!(
                target.ip(),
                source.ip(),
                "an untrusted request aimed us elsewhere"
            );
        }
    }
    let tag = message::stateless_tag(&msg);
    assert_eq!(tag, message::stateless_tag(&msg));
    let _ = (msg.branch(), msg.from_tag(), msg.to_tag(), msg.status());
    let _ = (msg.method().to_string(), msg.is_request());
    let _ = (msg.content_type(), msg.has_sdp(), msg.contact_uri());
    let _ = msg.record_routes();
    let _ = msg.header(&Name::MAX_FORWARDS);
    if let Some(uri) = msg.request_uri() {
        let _ = (message::uri_user(uri), message::parse_sip_uri(uri));
    }
    if msg.is_request() {
        for code in [100, 200, 486] {
            let _ = ResponseBuilder::new(&msg, code, message::reason_phrase(code))
                .received_from(source)
                .to_tag("fuzz-tag")
                .header("Contact", "<sip:ivr@192.0.2.1>")
                .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
                .build();
        }
    }
}

/// Answers the bytes as an offer (twice: an unchanged offer must get a byte-identical answer,
/// RFC 3264 8), and accepts them as the answer to our offer and as an unsolicited answer; with
/// SRTP off, optional and required, over secure and insecure signalling. An answer is SRTP only
/// where it may be, and then carries one crypto line with our key.
pub fn sdp(data: &[u8]) {
    let sessions = [
        LocalSession::new(7, ([192, 0, 2, 1], 4000).into(), Vec::new()),
        LocalSession::new(
            8,
            "[2001:db8::1]:4002".parse().expect("literal address"),
            vec![Codec::Pcma],
        ),
        LocalSession::new(9, ([192, 0, 2, 1], 4000).into(), Vec::new())
            .with_srtp(SrtpMode::Optional),
        LocalSession::new(10, ([192, 0, 2, 1], 4000).into(), Vec::new())
            .with_srtp(SrtpMode::Required),
    ];
    for session in sessions {
        for secure in [false, true] {
            let mut answering = session.clone();
            if let Ok((first, negotiated)) = answering.answer(data, secure) {
                let (second, again) = answering
                    .answer(data, secure)
                    .expect("the same offer answered twice");
                assert_eq!(first, second, "an unchanged offer changed the answer");
                assert_eq!(negotiated, again);
                let crypto_lines = first.matches("a=crypto:").count();
                match negotiated.srtp {
                    Some(keys) => {
                        assert!(secure, "SRTP taken over insecure signalling");
                        assert_eq!(crypto_lines, 1, "{first}");
                        assert!(first.contains(keys.suite.name()));
                    }
                    None => assert_eq!(crypto_lines, 0, "{first}"),
                }
            }
            let mut offering = session.clone();
            if let Ok(offer) = offering.offer(secure) {
                assert!(
                    secure || !offer.contains("a=crypto"),
                    "keys offered in clear"
                );
            }
            let _ = offering.accept_answer(data);
        }
        let mut unsolicited = session;
        let _ = unsolicited.accept_answer(data);
    }
    for line in String::from_utf8_lossy(data).lines() {
        if let Some(value) = line.trim().strip_prefix("a=crypto:") {
            let _ = parse_crypto(value).map_err(|e| e.to_string());
        }
    }
}

/// The payload type the RTP target treats as telephone-event (the usual dynamic number).
const DTMF_PAYLOAD_TYPE: u8 = 101;

/// [`rtp::parse`] on the whole input, then the media receive path (what the engine's receive
/// loop does with each datagram) over the packets split from it: a new SSRC resets the RFC 4733
/// receiver, telephone-events go to it, PCMU and PCMA audio to the in-band detector.
pub fn rtp(data: &[u8]) {
    let mut path = ReceivePath::default();
    path.packet(data);
    let mut path = ReceivePath::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (packet, tail) = tail.split_at(usize::from(len).min(tail.len()));
        path.packet(packet);
        rest = tail;
    }
}

/// One stream's receiving state, as in the media engine.
#[derive(Default)]
struct ReceivePath {
    ssrc: Option<u32>,
    rfc4733: Rfc4733Receiver,
    inband: InbandDetector,
}

impl ReceivePath {
    fn packet(&mut self, datagram: &[u8]) {
        let Received::Rtp(pkt) = rtp::parse(datagram) else {
            return;
        };
        assert!(pkt.payload.len() <= datagram.len());
        if self.ssrc != Some(pkt.ssrc) {
            self.ssrc = Some(pkt.ssrc);
            self.rfc4733.reset();
        }
        let mut pcm = [0i16; 2048];
        let samples = &mut pcm[..pkt.payload.len().min(2048)];
        match pkt.payload_type {
            DTMF_PAYLOAD_TYPE => {
                let _ = self.rfc4733.handle(pkt.timestamp, pkt.payload);
                return;
            }
            0 => g711::decode_ulaw_into(&pkt.payload[..samples.len()], samples),
            8 => g711::decode_alaw_into(&pkt.payload[..samples.len()], samples),
            _ => return,
        }
        let _ = self.inband.process(samples);
        while self.inband.pop_digit().is_some() {}
    }
}

/// The master key and salt the [`srtp`] target uses: RFC 3711 B.3's, so that
/// `fuzz/scripts/make_seeds.py` can write authentic packets (and a reader can check them).
pub const SRTP_FUZZ_KEY: [u8; 30] = [
    0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0, 0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41, 0x39,
    0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6,
];

/// [`SrtpReceiver::unprotect`] with [`SRTP_FUZZ_KEY`] under both suites: the whole input as
/// one packet, then the packets split from it (one length byte each) through one receiver,
/// whose ROC and replay window carry over; a packet that authenticated is a replay the second
/// time. Then the input as an RTP packet to protect: a fresh receiver must get it back intact.
pub fn srtp(data: &[u8]) {
    let key = MasterKey::new(SRTP_FUZZ_KEY);
    for suite in Suite::ALL {
        let mut whole = data.to_vec();
        if let Ok(n) = SrtpReceiver::new(suite, &key).unprotect(&mut whole) {
            assert_eq!(n + suite.tag_len(), data.len());
            let _ = rtp::parse(&whole[..n]);
        }
        let mut rx = SrtpReceiver::new(suite, &key);
        let mut rest = data;
        while let Some((&len, tail)) = rest.split_first() {
            let (packet, tail) = tail.split_at(usize::from(len).min(tail.len()));
            let mut buf = packet.to_vec();
            if rx.unprotect(&mut buf).is_ok() {
                let mut again = packet.to_vec();
                assert_eq!(rx.unprotect(&mut again), Err(SrtpError::Replay));
            }
            rest = tail;
        }
        let mut out = data.to_vec();
        out.resize(data.len() + MAX_TAG_LEN, 0);
        if let Ok(n) = SrtpSender::new(suite, &key).protect(&mut out, data.len()) {
            let mut rx = SrtpReceiver::new(suite, &key);
            let mut wire = out[..n].to_vec();
            assert_eq!(rx.unprotect(&mut wire), Ok(data.len()), "round trip");
            assert_eq!(&wire[..data.len()], data, "round trip changed the packet");
            let mut again = out[..n].to_vec();
            assert_eq!(rx.unprotect(&mut again), Err(SrtpError::Replay));
        }
    }
}

/// [`parse_info`] with the content type and body taken from the input (see the module docs).
pub fn sip_info(data: &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(nul) => {
            let content_type = String::from_utf8_lossy(&data[..nul]);
            let _ = parse_info(&content_type, &data[nul + 1..]);
        }
        None => {
            let _ = parse_info("application/dtmf-relay", data);
            let _ = parse_info("application/dtmf", data);
        }
    }
}

/// The bytes as a WWW-Authenticate / Proxy-Authenticate value: [`auth::parse_challenge`],
/// then the Authorization value answering it.
pub fn digest(data: &[u8]) {
    let value = String::from_utf8_lossy(data);
    if let Some(challenge) = auth::parse_challenge(&value) {
        let _ = auth::authorization(
            &challenge,
            "ivrd",
            "secret",
            "REFER",
            "sip:queue@pbx.example.com",
            "0a4f113b",
        );
    }
}

/// The bytes as a dialplan file: parsed and checked (once with every prompt present in `en`
/// and `de`, once with no prompts at all), then drawn, and its templates rendered.
pub fn dialplan(data: &[u8]) {
    // Dialplans are read with `read_to_string`: a file that is not UTF-8 never gets here.
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let languages = ["en".to_string(), "de".to_string()];
    let all = |_: &str, _: &str| true;
    let none = |_: &str, _: &str| false;
    for (exists, languages) in [
        (&all as &dyn Fn(&str, &str) -> bool, &languages[..]),
        (&none, &[][..]),
    ] {
        let env = CheckEnv {
            prompt_exists: exists,
            languages,
        };
        match dialplan::load("fuzz.toml", src, &env) {
            Ok(plan) => {
                let _ = (dialplan::to_dot(&plan), dialplan::to_mermaid(&plan));
                let _ = dialplan::check::check_numbers(&[plan.clone(), plan.clone()]);
                for step in &plan.steps {
                    for template in step.action.templates() {
                        let _ = template.render(|name| format!("<{name}>"));
                    }
                }
                let _ = plan.answers("+4930123456");
                if let Some(sms) = plan.sms_template(&plan.language) {
                    let _ = dialplan::render_sms(sms, "123456", 5, "Erika");
                }
            }
            Err(problems) => {
                for p in problems {
                    let _ = p.to_string();
                }
            }
        }
    }
}

/// The bytes as a prompt file: [`prompt::decode_wav`], which is [`prompt::load_wav`] without
/// the file read.
pub fn wav(data: &[u8]) {
    if let Ok(pcm) = prompt::decode_wav(data, Path::new("fuzz.wav")) {
        // Where a wait prompt may be cut: ascending, inside the prompt.
        let cuts = prompt::pauses(&pcm);
        assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
        assert!(cuts.iter().all(|&c| c < pcm.len()), "{cuts:?}");
    }
}

/// The bytes as a customer CSV: [`store::parse_customers_csv`], the reading and checking of
/// `ivrd customers import` without the database.
pub fn customers_csv(data: &[u8]) {
    // The first byte picks the delimiter (`--delimiter`), so a semicolon file's paths and
    // the one-column header hint are reached too.
    let (delimiter, data) = match data.split_first() {
        Some((b';', rest)) => (b';', rest),
        Some((b'\t', rest)) => (b'\t', rest),
        _ => (b',', data),
    };
    if let Ok(parsed) = store::parse_customers_csv_with(data, "DE", delimiter) {
        for row in &parsed.rejected {
            let _ = row.reason.to_string();
        }
        assert_eq!(parsed.customers.len(), parsed.lines.len());
        for customer in &parsed.customers {
            assert!(customer.mobile.starts_with('+'), "{customer:?}");
            // Refused on import: what is left is a number an SMS may reach.
            assert!(
                store::not_mobile(&customer.mobile).is_none(),
                "{customer:?}"
            );
        }
        for w in &parsed.warnings {
            assert!(w.line >= 2, "{w:?}");
        }
    }
}

/// The pointers the [`http_response`] target reads a body with when the input has no NUL byte
/// (so that a plain JSON file is a useful seed): a key, a nested key and an escaped one.
pub const HTTP_FUZZ_POINTERS: &[(&str, &str)] = &[
    ("name", "/name"),
    ("tier", "/account/tier"),
    ("escaped", "/a~1b~0c"),
];

/// An `http` step's answer mapped into variables: [`http_lookup::extract`] with the pointers
/// and body taken from the input (see the module docs); every value it returns fits a
/// variable. Then the input as a fakes file, [`HttpFakes::parse`].
pub fn http_response(data: &[u8]) {
    let (pointers, body): (Vec<(String, String)>, &[u8]) = match data.iter().position(|&b| b == 0) {
        Some(nul) => {
            let pointers = String::from_utf8_lossy(&data[..nul])
                .lines()
                .filter_map(|line| line.split_once('='))
                .filter(|(_, pointer)| http_lookup::valid_pointer(pointer))
                .take(16)
                .map(|(var, pointer)| (var.to_string(), pointer.to_string()))
                .collect();
            (pointers, &data[nul + 1..])
        }
        None => {
            let pointers = HTTP_FUZZ_POINTERS
                .iter()
                .map(|(var, pointer)| (var.to_string(), pointer.to_string()))
                .collect();
            (pointers, data)
        }
    };
    if let Ok(values) = http_lookup::extract(body, &pointers) {
        assert_eq!(values.len(), pointers.len(), "{values:?}");
        for ((var, value), (wanted, _)) in values.iter().zip(&pointers) {
            assert_eq!(var, wanted, "the variables came back out of order");
            assert!(
                value.len() <= http_lookup::MAX_VALUE,
                "{var}: {} bytes",
                value.len()
            );
        }
    }
    if let Ok(src) = std::str::from_utf8(data)
        && let Ok(fakes) = HttpFakes::parse("fuzz", src)
    {
        for step in fakes.steps() {
            let (answer, _) = fakes.answer(step).expect("a listed step has an answer");
            if let Ok(response) = answer {
                assert!(response.body.len() <= http_lookup::MAX_BODY);
            }
        }
    }
}

/// An HTTP API request body as the API reads it: JSON into each request type (unknown
/// fields refused), then the number through the phone-number crate as a start reads it; and
/// the bytes as a key, hashed. Whatever the client sends, nothing panics.
pub fn api_request(data: &[u8]) {
    crate::api::parse_bodies(data);
    if let Ok(token) = std::str::from_utf8(data) {
        assert_eq!(crate::api::keys::hash(token).len(), 64);
    }
}
