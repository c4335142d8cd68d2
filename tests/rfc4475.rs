//! RFC 4475 (SIP torture test messages) against `Message::parse`.
//!
//! Every message of the RFC is in `tests/data/rfc4475/` (see the README there). The RFC sorts
//! them into valid ones (3.1.1, and 3.4's RFC 2543 message), syntactically invalid ones (3.1.2)
//! and ones that parse but must not be acted on as they stand (3.2, 3.3). For each, `EXPECTED`
//! says what ivrd does: the parser refuses it (and the transport answers with
//! `ParseError::status_code`, or drops it), or the parser accepts it and the SIP core must
//! answer with a given status, discard it, or process it as usual. ivrd is an endpoint (UAS),
//! never a proxy or registrar, so where the RFC gives a proxy and an endpoint different
//! answers, the endpoint's is the one here.

use bytes::Bytes;
use ezk_sip_types::{Method, Name};
use ivrd::sip::message::{Message, ParseError, StartLine, frame_len};
use std::path::PathBuf;

/// What ivrd must do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Well-formed: `parse` succeeds and the facts in `check_valid` hold.
    Valid,
    /// `parse` fails. `Some(code)`: it is a request that still carries Via, From, To, Call-ID
    /// and CSeq, so the transport answers statelessly with `code` (= `status_code()`).
    /// `None`: it is dropped, being a response (never answered, RFC 3261 18.1.2) or a
    /// request without the headers a response needs (RFC 4475 3.3.1).
    Reject(Option<u16>),
    /// Syntactically fine but not acceptable: `parse` succeeds, the fact the refusal rests on
    /// is visible in the parsed message (`check_fault`), and the SIP core answers with `code`.
    ParseOkRespond(u16),
    /// `parse` succeeds; a response the core must discard (`check_fault` shows why).
    ParseOkDiscard,
    /// `parse` succeeds; the RFC allows being liberal and ivrd is: the faulty field is one it
    /// never reads, so the request is handled as usual (`check_fault` shows the field).
    ParseOkProcess,
}

use Expect::*;

/// Every message of RFC 4475, by the file name the RFC gives it, with its section.
const EXPECTED: &[(&str, &str, Expect)] = &[
    // 3.1.1 Valid Messages
    ("wsinv", "3.1.1.1", Valid),
    ("intmeth", "3.1.1.2", Valid),
    ("esc01", "3.1.1.3", Valid),
    ("escnull", "3.1.1.4", Valid),
    ("esc02", "3.1.1.5", Valid),
    ("lwsdisp", "3.1.1.6", Valid),
    ("longreq", "3.1.1.7", Valid),
    ("dblreq", "3.1.1.8", Valid),
    ("semiuri", "3.1.1.9", Valid),
    ("transports", "3.1.1.10", Valid),
    ("mpart01", "3.1.1.11", Valid),
    ("unreason", "3.1.1.12", Valid),
    ("noreason", "3.1.1.13", Valid),
    // 3.1.2 Invalid Messages
    // Via `;;,;,,`: empty parameters and list elements; "should respond 400".
    ("badinv01", "3.1.2.1", Reject(Some(400))),
    // Content-Length 9999 past the end of the datagram: RFC 3261 18.3 says 400 for a request.
    ("clerr", "3.1.2.2", Reject(Some(400))),
    // Content-Length -999.
    ("ncl", "3.1.2.3", Reject(Some(400))),
    // CSeq 2**65: "should respond with 400 due to the CSeq error".
    ("scalar02", "3.1.2.4", Reject(Some(400))),
    // A response with CSeq and Retry-After overflowing: "simply discard it".
    ("scalarlg", "3.1.2.5", Reject(None)),
    // To: "Mr. J. User <sip:...> with the closing quote missing: 400.
    ("quotbal", "3.1.2.6", Reject(Some(400))),
    // Request-URI in <>: 400.
    ("ltgtruri", "3.1.2.7", Reject(Some(400))),
    // "sip:user@example.com; lr": LWS inside the Request-URI, 400.
    ("lwsruri", "3.1.2.8", Reject(Some(400))),
    // Doubled SP in the Request-Line: "acceptable to reject as malformed".
    ("lwsstart", "3.1.2.9", Reject(Some(400))),
    // Trailing SP after the version: likewise.
    ("trws", "3.1.2.10", Reject(Some(400))),
    // Headers (?Route=...) in a SIP Request-URI: "acceptable to reject with 400".
    ("escruri", "3.1.2.11", Reject(Some(400))),
    // Date in EST, not GMT: ivrd never reads Date, so it is liberal as the RFC allows.
    ("baddate", "3.1.2.12", ParseOkProcess),
    // REGISTER whose Contact needs <> around a URI with headers. ivrd is no registrar: the
    // method is refused before any Contact is looked at (RFC 3261 8.2.1 before 8.2.2).
    ("regbadct", "3.1.2.13", ParseOkRespond(405)),
    // To: "Watson, Thomas" < sip:t.watson@example.org >: spaces inside <>, 400.
    ("badaspec", "3.1.2.14", Reject(Some(400))),
    // Unquoted display names with a comma: "reasonable to always reject with 400".
    ("baddn", "3.1.2.15", Reject(Some(400))),
    // SIP/7.0: 505 Version Not Supported.
    ("badvers", "3.1.2.16", Reject(Some(505))),
    // OPTIONS with CSeq method INVITE: "will respond with 400".
    ("mismatch01", "3.1.2.17", Reject(Some(400))),
    // NEWMETHOD with CSeq method INVITE: 501 preferred, "400 is also acceptable"; the
    // mismatch is found while parsing, before the method is looked up.
    ("mismatch02", "3.1.2.18", Reject(Some(400))),
    // A response with code 4294967301: "simply drop it".
    ("bigcode", "3.1.2.19", Reject(None)),
    // 3.2 Transaction Layer Semantics
    // branch=z9hG4bK and nothing after it: "could reject with 400 (preferably statelessly)".
    ("badbranch", "3.2.1", Reject(Some(400))),
    // 3.3 Application-Layer Semantics
    // No Call-ID, From or To: nothing to build a response from, "must discard".
    ("insuf", "3.3.1", Reject(None)),
    // Request-URI nobodyKnowsThisScheme:...: 416 Unsupported URI Scheme.
    ("unkscm", "3.3.2", ParseOkRespond(416)),
    // Request-URI soap.beep://...: a scheme ivrd never accepts is unknown to it, 416.
    ("novelsc", "3.3.3", ParseOkRespond(416)),
    // To isbn:, From http:, Contact name:. "Parsers must not fail"; a registrar answers 400.
    // ivrd's Message holds From/To as ezk FromTo, which only has room for SIP/SIPS URIs, so
    // this is refused at parse time and the transport's 400 is the registrar's answer.
    ("unksm2", "3.3.4", Reject(Some(400))),
    // Require: nothingSupportsThis...: an endpoint answers 420 Bad Extension (and ignores
    // Proxy-Require, which is for proxies).
    ("bext01", "3.3.5", ParseOkRespond(420)),
    // INVITE with an application/unknownformat body: an endpoint answers 415.
    ("invut", "3.3.6", ParseOkRespond(415)),
    // REGISTER with an unknown Authorization scheme: "endpoints choosing not to act as
    // registrars will simply reject the request. A 405 Method Not Allowed is appropriate".
    ("regaut01", "3.3.7", ParseOkRespond(405)),
    // Two different Call-ID, CSeq, From, To and Max-Forwards: 400.
    ("multi01", "3.3.8", Reject(Some(400))),
    // Content-Length 13 and 5: "should respond with an error" (and close a TCP connection).
    ("mcl01", "3.3.9", Reject(Some(400))),
    // 200 OK with a second Via to 255.255.255.255: an endpoint discards a response with more
    // than one Via (RFC 3261 8.1.3.3), so nothing is ever sent to the broadcast address.
    ("bcast", "3.3.10", ParseOkDiscard),
    // OPTIONS with Max-Forwards 0: 483 is for proxies; an endpoint processes it as if the
    // value were still positive, so OPTIONS gets its 200.
    ("zeromf", "3.3.11", ParseOkRespond(200)),
    // REGISTERs that a registrar would accept; ivrd is none: 405.
    ("cparam01", "3.3.12", ParseOkRespond(405)),
    ("cparam02", "3.3.13", ParseOkRespond(405)),
    ("regescrt", "3.3.14", ParseOkRespond(405)),
    // INVITE whose Accept lacks application/sdp: no answer SDP may be sent, so 406 Not
    // Acceptable (the RFC also allows 400).
    ("sdp01", "3.3.15", ParseOkRespond(406)),
    // 3.4 Backward Compatibility: RFC 2543 INVITE (no branch, no From tag, no
    // Content-Length, no Max-Forwards) that RFC 3261 elements should accept.
    ("inv2543", "3.4.1", Valid),
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475")
}

fn load(name: &str) -> Bytes {
    let path = data_dir().join(format!("{name}.sip"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn corpus() -> impl Iterator<Item = (&'static str, Bytes)> {
    EXPECTED.iter().map(|(name, _, _)| (*name, load(name)))
}

#[test]
fn corpus_and_table_agree() {
    let mut files: Vec<String> = std::fs::read_dir(data_dir())
        .expect("tests/data/rfc4475")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|f| f.strip_suffix(".sip").map(str::to_string))
        .collect();
    files.sort();
    let mut listed: Vec<String> = EXPECTED.iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "every corpus file has an expectation and vice versa"
    );
    // All 49 messages of RFC 4475 section 3.
    assert_eq!(EXPECTED.len(), 49);
}

#[test]
fn every_message_gets_its_expected_outcome() {
    for &(name, section, expect) in EXPECTED {
        let raw = load(name);
        let result = Message::parse(raw.clone());
        let ctx = format!("{name} (RFC 4475 {section}, {expect:?})");
        match expect {
            Valid => {
                let msg = result.unwrap_or_else(|e| panic!("{ctx}: must parse: {e}"));
                check_body_framing(name, &raw, &msg);
                check_valid(name, &raw, &msg);
            }
            Reject(answer) => {
                let err = match result {
                    Ok(_) => panic!("{ctx}: must be refused by the parser"),
                    Err(e) => e,
                };
                let is_response = raw.starts_with(b"SIP/");
                match answer {
                    Some(code) => {
                        assert!(!is_response, "{ctx}: responses are never answered");
                        assert!(!matches!(err, ParseError::Missing(_)), "{ctx}: {err}");
                        assert_eq!(err.status_code(), code, "{ctx}: {err}");
                    }
                    None => assert!(
                        is_response || matches!(err, ParseError::Missing(_)),
                        "{ctx}: dropped only as a response or for missing headers, got {err}"
                    ),
                }
            }
            ParseOkRespond(_) | ParseOkDiscard | ParseOkProcess => {
                let msg = result.unwrap_or_else(|e| panic!("{ctx}: parsers must not fail: {e}"));
                check_body_framing(name, &raw, &msg);
                check_fault(name, &msg);
                assert_eq!(endpoint_verdict(&msg), expect, "{ctx}");
            }
        }
    }
}

/// The body is exactly Content-Length octets of what follows the head (RFC 3261 18.3), or all
/// of it when there is no Content-Length (an RFC 2543 datagram).
fn check_body_framing(name: &str, raw: &Bytes, msg: &Message) {
    let head_end = find_head_end(raw);
    match msg.header(&Name::CONTENT_LENGTH) {
        Some(cl) => {
            let cl: usize = cl
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: Content-Length {cl}"));
            assert_eq!(msg.body.len(), cl, "{name}: body length");
            assert_eq!(
                &msg.body[..],
                &raw[head_end..head_end + cl],
                "{name}: body octets"
            );
        }
        None => assert_eq!(&msg.body[..], &raw[head_end..], "{name}: body is the rest"),
    }
}

fn find_head_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("CRLF CRLF")
        + 4
}

/// The facts of each valid message that layers above rely on.
fn check_valid(name: &str, raw: &Bytes, m: &Message) {
    let branches: Vec<Option<&str>> = m
        .vias
        .iter()
        .map(|v| v.params.get_val("branch").map(|b| b.as_str()))
        .collect();
    let transports: Vec<&str> = m.vias.iter().map(|v| v.transport.as_str()).collect();
    let display =
        |ft: &ezk_sip_types::header::typed::FromTo| ft.uri.name.as_ref().map(|n| n.to_string());
    match name {
        "wsinv" => {
            assert_eq!(m.method(), &Method::INVITE);
            assert_eq!(
                m.request_uri(),
                Some("sip:vivekg@chair-dnrc.example.com;unknownparam")
            );
            assert_eq!(&m.call_id[..], "wsinv.ndaksdj@192.0.2.1");
            // "cseq: 0009\r\n  INVITE": leading zeros and a folded line.
            assert_eq!((m.cseq, &m.cseq_method), (9, &Method::INVITE));
            // Three Vias from two header lines, one of them comma-joined, LWS everywhere.
            assert_eq!(
                branches,
                [
                    Some("390skdjuw"),
                    Some("z9hG4bK9ikj8"),
                    Some("z9hG4bK30239")
                ]
            );
            assert_eq!(transports, ["UDP", "TCP", "UDP"]);
            assert_eq!(m.vias[2].sent_by.host.to_string(), "192.168.255.111");
            // `tag    = 1918181833n` and a tag on a folded line of its own.
            assert_eq!(m.to_tag(), Some("1918181833n"));
            assert_eq!(m.from_tag(), Some("98asjd8"));
            // "J Rosenberg \\\"" unescaped: quoted-pairs for a backslash and a quote.
            assert_eq!(display(&m.from).as_deref(), Some("J Rosenberg \\\""));
            assert_eq!(m.header(&Name::SUBJECT), Some(""));
            assert_eq!(
                m.header(&Name::from("NewFangledHeader")),
                Some("newfangled value continued newfangled value")
            );
            assert_eq!(
                m.header(&Name::from("UnknownHeaderWithUnusualValue")),
                Some(";;,,;;,;")
            );
            assert_eq!(m.header(&Name::MAX_FORWARDS).map(str::trim), Some("0068"));
            assert_eq!(m.body.len(), 150);
            assert!(m.has_sdp());
        }
        "intmeth" => {
            let method = "!interesting-Method0123456789_*+`.%indeed'~";
            assert_eq!(m.method().to_string(), method);
            assert_eq!(m.cseq_method.to_string(), method);
            assert_eq!(m.cseq, 139122385);
            assert_eq!(
                m.request_uri(),
                Some(
                    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
                )
            );
            assert_eq!(
                &m.call_id[..],
                "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
            );
            // In a token '%' is no escape: the branch must stay as sent, or a response built
            // from it would not match the client's transaction.
            assert_eq!(m.branch(), Some("z9hG4bK-.!%66*_+`'~"));
            assert_eq!(m.from_tag(), Some("_token~1'+`*%!-."));
            assert_eq!(
                display(&m.from).as_deref(),
                Some("token1~` token2'+_ token3*%!.-")
            );
            // Quoted-pairs for BEL, NUL and DEL.
            assert_eq!(
                display(&m.to).as_deref(),
                Some("BEL:\x07 NUL:\x00 DEL:\x7f")
            );
            assert_eq!(
                m.header(&Name::from("extensionHeader-!.%*+_`'~")),
                Some("\u{feff}大停電")
            );
            assert!(m.body.is_empty());
        }
        "esc01" => {
            assert_eq!(m.method(), &Method::INVITE);
            // An escaped user, not a sips: URI inside a sip: URI.
            assert_eq!(
                m.request_uri(),
                Some("sip:sips%3Auser%40example.com@example.net")
            );
            assert_eq!(&m.call_id[..], "esc01.239409asdfakjkn23onasd0-3234");
            assert_eq!(m.cseq, 234234);
            assert_eq!(m.branch(), Some("z9hG4bKkdjuw"));
            assert_eq!(m.from_tag(), Some("938"));
            // Compact "C:" for Content-Type.
            assert_eq!(m.content_type().as_deref(), Some("application/sdp"));
            assert_eq!(
                m.contact_uri().as_deref(),
                Some("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
            );
            assert_eq!(m.body.len(), 150);
        }
        "escnull" => {
            assert_eq!(m.method(), &Method::REGISTER);
            assert_eq!(
                &m.call_id[..],
                "escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd"
            );
            assert_eq!(m.cseq, 14398234);
            assert_eq!(m.from_tag(), Some("839923423"));
            // %00 stays an escape in the raw values: nothing turns it into a NUL.
            assert_eq!(m.header(&Name::TO), Some("sip:null-%00-null@example.com"));
            assert_eq!(m.headers.get_raw(&Name::CONTACT).count(), 2);
            assert!(m.body.is_empty());
        }
        "esc02" => {
            // "RE%47IST%45R" is an extension method, not REGISTER: % escapes nothing there.
            assert_eq!(m.method().to_string(), "RE%47IST%45R");
            assert_ne!(m.method(), &Method::REGISTER);
            assert_eq!(m.cseq, 29344);
            assert_eq!(m.branch(), Some("z9hG4bK209%fzsnel234"));
            assert_eq!(transports, ["TCP"]);
            assert_eq!(display(&m.to).as_deref(), Some("%Z%45"));
            // "C%6Fntact" is an unknown header, not a third Contact.
            assert_eq!(m.headers.get_raw(&Name::CONTACT).count(), 2);
            assert_eq!(
                m.header(&Name::from("C%6Fntact")),
                Some("<sip:alias2@host2.example.com>")
            );
        }
        "lwsdisp" => {
            assert_eq!(m.method(), &Method::OPTIONS);
            assert_eq!(&m.call_id[..], "lwsdisp.1234abcd@funky.example.com");
            assert_eq!(m.cseq, 60);
            assert_eq!(display(&m.from).as_deref(), Some("caller"));
            assert_eq!(m.from_tag(), Some("323"));
            assert_eq!(m.branch(), Some("z9hG4bKkdjuw"));
        }
        "longreq" => {
            assert_eq!(m.method(), &Method::INVITE);
            assert_eq!(
                &m.call_id[..],
                format!("longreq.one{}longcallid", "really".repeat(20))
            );
            assert_eq!(m.cseq, 3882340);
            // 34 Vias under every spelling of the name; only the last has a branch.
            assert_eq!(m.vias.len(), 34);
            assert_eq!(m.branch(), None);
            assert_eq!(m.vias[0].sent_by.host.to_string(), "sip33.example.com");
            assert_eq!(m.vias[32].sent_by.host.to_string(), "sip1.example.com");
            let last_branch = format!("very{}branchvalue", "long".repeat(50));
            assert_eq!(branches[33], Some(last_branch.as_str()));
            assert_eq!(
                m.from_tag(),
                Some(format!("12{}424", "982".repeat(50)).as_str())
            );
            let to_name = format!("I have a user name of {} proportion", "extreme".repeat(10));
            assert_eq!(display(&m.to), Some(to_name));
            assert_eq!(m.body.len(), 150);
        }
        "dblreq" => {
            // The INVITE after the REGISTER's empty body is noise in the same datagram
            // (RFC 3261 18.3): the REGISTER is the message, with no body.
            assert_eq!(m.method(), &Method::REGISTER);
            assert_eq!(&m.call_id[..], "dblreq.0ha0isndaksdj99sdfafnl3lk233412");
            assert_eq!(m.cseq, 8);
            assert_eq!(m.branch(), Some("z9hG4bKkdjuw23492"));
            assert!(m.body.is_empty());
            assert!(
                raw.len() > find_head_end(raw) + 100,
                "the trailing INVITE is in the file"
            );
        }
        "semiuri" => {
            assert_eq!(m.method(), &Method::OPTIONS);
            assert_eq!(
                m.request_uri(),
                Some("sip:user;par=u%40example.net@example.com")
            );
            assert_eq!(&m.call_id[..], "semiuri.0ha0isndaksdj");
            assert_eq!(m.from_tag(), Some("33242"));
            assert_eq!(m.branch(), Some("z9hG4bKkdjuw"));
            assert_eq!(
                m.header(&Name::ACCEPT),
                Some(
                    "application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, message/sip, message/sipfrag"
                )
            );
        }
        "transports" => {
            assert_eq!(m.method(), &Method::OPTIONS);
            assert_eq!(&m.call_id[..], "transports.kijh4akdnaqjkwendsasfdj");
            assert_eq!(transports, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
            assert_eq!(
                branches,
                [
                    Some("z9hG4bKkdjuw"),
                    Some("z9hG4bKklasjdhf"),
                    Some("z9hG4bK2980unddj"),
                    Some("z9hG4bKasd0f3en"),
                    Some("z9hG4bK0a9idfnee")
                ]
            );
        }
        "mpart01" => {
            assert_eq!(m.method().to_string(), "MESSAGE");
            assert_eq!(
                &m.call_id[..],
                "3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.."
            );
            assert_eq!(m.cseq, 1);
            assert_eq!(
                m.branch(),
                Some("z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-")
            );
            assert!(m.vias[0].params.get("rport").is_some());
            assert_eq!(m.vias[0].sent_by.port, Some(5070));
            // 553 octets with NUL, CR and LF inside the binary part, all kept.
            assert_eq!(m.body.len(), 553);
            assert!(m.body.ends_with(b"\r\n--7a9cbec02ceef655--\r\n"));
            assert!(m.body.contains(&0));
            assert_eq!(m.content_type().as_deref(), Some("multipart/mixed"));
            assert!(!m.has_sdp());
        }
        "unreason" => {
            assert_eq!(m.status(), Some(200));
            let StartLine::Response { reason, .. } = &m.start else {
                unreachable!()
            };
            assert_eq!(
                reason.as_str(),
                "= 2**3 * 5**2 но сто девяносто девять - простое"
            );
            assert_eq!(&m.call_id[..], "unreason.1234ksdfak3j2erwedfsASdf");
            assert_eq!((m.cseq, m.method()), (35, &Method::INVITE));
            assert_eq!(m.to_tag(), Some("2229"));
            assert_eq!(m.body.len(), 154);
        }
        "noreason" => {
            assert_eq!(m.status(), Some(100));
            let StartLine::Response { reason, .. } = &m.start else {
                unreachable!()
            };
            assert_eq!(reason.as_str(), "");
            assert_eq!(&m.call_id[..], "noreason.asndj203insdf99223ndf");
            assert_eq!(m.branch(), Some("z9hG4bK2398ndaoe"));
        }
        "inv2543" => {
            assert_eq!(m.method(), &Method::INVITE);
            assert_eq!(&m.call_id[..], "inv2543.1717@ift.client.example.com");
            assert_eq!(m.cseq, 56);
            // RFC 2543: no branch (transactions matched the old way), no From tag, no
            // Content-Length (the body is the rest of the datagram), no Max-Forwards.
            assert_eq!(m.branch(), None);
            assert_eq!(m.from_tag(), None);
            assert_eq!(m.header(&Name::CONTENT_LENGTH), None);
            assert_eq!(m.header(&Name::MAX_FORWARDS), None);
            assert!(m.body.ends_with(b"m=audio 49217 RTP/AVP 0\r\n"));
            assert!(m.has_sdp());
        }
        _ => panic!("{name}: no facts written for this valid message"),
    }
    assert!(!m.vias.is_empty(), "{name}");
}

/// What an endpoint that serves ivrd's methods does with a parsed message, in the order of
/// RFC 3261 8.2 (method, then Request-URI scheme, then Require, then the body), written out
/// from the parsed facts alone: the codes in `EXPECTED` must follow from the message.
fn endpoint_verdict(m: &Message) -> Expect {
    if !m.is_request() {
        // A UAC discards a response with more than one Via (RFC 3261 8.1.3.3).
        return if m.vias.len() > 1 {
            ParseOkDiscard
        } else {
            ParseOkProcess
        };
    }
    let method = m.method().to_string();
    let served = [
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "NOTIFY", "REFER",
    ];
    let known = [
        "REGISTER",
        "MESSAGE",
        "UPDATE",
        "PRACK",
        "SUBSCRIBE",
        "PUBLISH",
    ];
    if !served.contains(&method.as_str()) {
        // 8.2.1: known but not served here 405, unknown 501.
        return ParseOkRespond(if known.contains(&method.as_str()) {
            405
        } else {
            501
        });
    }
    let scheme = m
        .request_uri()
        .and_then(|u| u.split_once(':'))
        .map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("sip" | "sips" | "tel")) {
        return ParseOkRespond(416); // 8.2.2.1
    }
    if m.header(&Name::REQUIRE)
        .is_some_and(|r| !r.trim().is_empty())
    {
        return ParseOkRespond(420); // 8.2.2.3; Proxy-Require is for proxies
    }
    if m.method() == &Method::INVITE {
        if !m.body.is_empty() && !m.has_sdp() {
            return ParseOkRespond(415); // 8.2.3
        }
        // No answer SDP may go back to a caller that does not accept it (RFC 3261 13.2.1).
        if m.header(&Name::ACCEPT)
            .is_some_and(|a| !a.contains("application/sdp"))
        {
            return ParseOkRespond(406);
        }
        return ParseOkProcess;
    }
    // Max-Forwards plays no part: 483 is a proxy's answer (RFC 3261 16.3, RFC 4475 3.3.11).
    if m.method() == &Method::OPTIONS {
        return ParseOkRespond(200);
    }
    ParseOkProcess
}

/// The fact each parse-ok-but-not-acceptable message's answer rests on, as the core sees it.
fn check_fault(name: &str, m: &Message) {
    let scheme = || {
        m.request_uri()
            .and_then(|u| u.split_once(':'))
            .map(|(s, _)| s.to_ascii_lowercase())
    };
    match name {
        // The core's precheck allows sip, sips and tel only.
        "unkscm" | "novelsc" => {
            assert!(m.is_request());
            let scheme = scheme().expect("scheme");
            assert!(
                !["sip", "sips", "tel"].contains(&scheme.as_str()),
                "{name}: {scheme}"
            );
        }
        "bext01" => {
            assert_eq!(m.method(), &Method::OPTIONS);
            assert_eq!(
                m.header(&Name::REQUIRE),
                Some("nothingSupportsThis, nothingSupportsThisEither")
            );
            assert!(m.header(&Name::PROXY_REQUIRE).is_some());
        }
        "invut" => {
            assert_eq!(m.method(), &Method::INVITE);
            assert_eq!(
                m.content_type().as_deref(),
                Some("application/unknownformat")
            );
            assert!(!m.has_sdp());
            assert_eq!(m.body.len(), 40);
        }
        // REGISTER outside a dialog, which ivrd does not serve.
        "regbadct" | "regaut01" | "cparam01" | "cparam02" | "regescrt" => {
            assert_eq!(m.method(), &Method::REGISTER, "{name}");
            assert_eq!(m.to_tag(), None, "{name}");
            assert!(m.header(&Name::CONTACT).is_some() || m.header(&Name::AUTHORIZATION).is_some());
        }
        "sdp01" => {
            assert_eq!(m.method(), &Method::INVITE);
            assert!(m.has_sdp());
            let accept = m.header(&Name::ACCEPT).expect("Accept");
            assert!(!accept.contains("application/sdp"), "{accept}");
        }
        "zeromf" => {
            assert_eq!(m.method(), &Method::OPTIONS);
            assert_eq!(m.header(&Name::MAX_FORWARDS), Some("0"));
        }
        "bcast" => {
            assert_eq!(m.status(), Some(200));
            assert_eq!(m.vias.len(), 2);
            assert_eq!(m.vias[1].sent_by.host.to_string(), "255.255.255.255");
        }
        "baddate" => {
            assert_eq!(m.method(), &Method::INVITE);
            assert_eq!(m.header(&Name::DATE), Some("Fri, 01 Jan 2010 16:00:00 EST"));
            assert!(m.has_sdp());
        }
        _ => panic!("{name}: no fault check written"),
    }
}

/// On a stream, no prefix of a message is taken for the message: every prefix shorter than
/// head + Content-Length is incomplete for `frame_len` and refused by `parse`, and the whole
/// frame is found exactly.
#[test]
fn prefixes_of_valid_messages_are_incomplete() {
    for &(name, _, expect) in EXPECTED {
        if expect != Valid {
            continue;
        }
        let raw = load(name);
        let head_end = find_head_end(&raw);
        let whole = Message::parse(raw.clone()).expect(name);
        let frame = head_end
            + whole
                .header(&Name::CONTENT_LENGTH)
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        if whole.header(&Name::CONTENT_LENGTH).is_some() {
            assert_eq!(frame_len(&raw), Ok(Some(frame)), "{name}");
        }
        for end in 0..frame {
            let prefix = raw.slice(..end);
            assert_eq!(frame_len(&prefix), Ok(None), "{name}: prefix of {end}");
            match Message::parse(prefix) {
                Ok(_) => panic!("{name}: prefix of {end} of {frame} octets parsed"),
                Err(ParseError::ShortBody { have, want }) => {
                    assert!(end >= head_end, "{name}: {end}");
                    assert_eq!((have, want), (end - head_end, frame - head_end), "{name}");
                }
                Err(_) => assert!(
                    end < head_end,
                    "{name}: prefix of {end} failed for the head"
                ),
            }
        }
    }
}

/// Whatever arrives, parsing returns: every prefix of every message, valid or not.
#[test]
fn no_prefix_of_any_message_panics() {
    for (name, raw) in corpus() {
        for end in 0..=raw.len() {
            let prefix = raw.slice(..end);
            let _ = frame_len(&prefix);
            if let Ok(m) = Message::parse(prefix) {
                check_invariants(name, end, &m);
            }
        }
    }
}

/// Random octet changes to every message: no panic, and whatever parses is usable.
#[test]
fn byte_flips_never_panic() {
    // Octets that steer a SIP parser: separators, line ends, quotes, escapes, NUL, non-ASCII.
    const INTERESTING: &[u8] = b"\0\r\n \t:;,=\"\\<>%@?/0129aZ\x7f\x80\xc3\xff";
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut parsed_ok = 0usize;
    for (name, raw) in corpus() {
        for round in 0..400 {
            let mut data = raw.to_vec();
            for _ in 0..=rng.below(3) {
                let at = rng.below(data.len());
                data[at] = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next() as u8
                };
            }
            if round % 50 == 0 {
                // Sometimes drop or duplicate a run instead.
                let at = rng.below(data.len());
                let len = rng.below(16).min(data.len() - at);
                if round % 100 == 0 {
                    data.drain(at..at + len);
                } else {
                    let run = data[at..at + len].to_vec();
                    data.splice(at..at, run);
                }
            }
            let data = Bytes::from(data);
            let _ = frame_len(&data);
            if let Ok(m) = Message::parse(data) {
                parsed_ok += 1;
                check_invariants(name, round, &m);
            }
        }
    }
    // Most single-octet changes land in values that stay valid: if almost nothing parsed,
    // the mutations would be testing only the first rejection path.
    assert!(parsed_ok > 1000, "only {parsed_ok} mutated messages parsed");
}

/// What every successfully parsed message must give the layers above without panicking.
fn check_invariants(name: &str, n: usize, m: &Message) {
    assert!(!m.vias.is_empty(), "{name}/{n}");
    assert!(!m.call_id.is_empty(), "{name}/{n}");
    let _ = (
        m.branch(),
        m.from_tag(),
        m.to_tag(),
        m.content_type(),
        m.contact_uri(),
        m.record_routes(),
    );
    if let Some(cl) = m.header(&Name::CONTENT_LENGTH) {
        assert_eq!(Ok(m.body.len()), cl.trim().parse::<usize>(), "{name}/{n}");
    }
}

/// A small deterministic generator, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
