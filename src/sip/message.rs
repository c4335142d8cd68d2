//! SIP messages: parsing what real peers send, and building what we answer.
//!
//! Lines and header values are split and decoded by `ezk-sip-types` (compact names, folded lines,
//! LF-only line ends, `Via :` spacing, IPv6 hosts and comma-joined values all pass; rsip did not,
//! see the README's design section). This module adds what that crate leaves to its user:
//! framing by Content-Length, the RFC 3261 8.2/16.3 checks that turn a parsed message into one we
//! can act on (a message that fails them gets 400 or is dropped), and the few facts every layer
//! above needs (Call-ID, CSeq, tags, top Via) decoded once at parse time.
//!
//! The request line is split by hand rather than with the crate's `RequestLine` parser so that a
//! Request-URI that is not a `sip:` URI (`tel:` is common from gateways) still gives us a message
//! we can answer, instead of an unparseable blob.

use bytes::{Bytes, BytesMut};
use bytesstr::BytesStr;
use ezk_sip_types::header::HeaderParse;
use ezk_sip_types::header::typed::{CSeq, FromTo, Via};
use ezk_sip_types::msg::{Line, PullParser};
use ezk_sip_types::print::{AppendCtx, PrintCtx};
use ezk_sip_types::uri::SipUri;
use ezk_sip_types::uri::params::{CPS, Params};
use ezk_sip_types::{Headers, Method, Name};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Why a datagram or stream segment is not a SIP message we can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The message head is not complete (no empty line yet): on TCP, wait for more bytes.
    #[error("incomplete message head")]
    Incomplete,
    /// The body is shorter than Content-Length says: on TCP wait; on UDP the message is bad.
    #[error("body shorter than Content-Length ({have} of {want} bytes)")]
    ShortBody { have: usize, want: usize },
    /// The first line is neither a request line nor a status line.
    #[error("bad start line: {0}")]
    StartLine(String),
    /// A header line or value could not be decoded.
    #[error("bad header {0}")]
    Header(String),
    /// A header every request and response must carry is missing (RFC 3261 8.1.1).
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The message is not valid UTF-8 in its head.
    #[error("message head is not UTF-8")]
    NotUtf8,
    /// Over one of the size limits below: answered 513 when it can be (RFC 3261 21.5.11),
    /// and on TCP the connection is closed, since the next message cannot be trusted to start
    /// where this one ends.
    #[error("message too large: {0}")]
    TooLarge(String),
}

/// Largest message we take, on any transport (the most a UDP datagram can carry; real INVITEs
/// with big SDP stay under 16 KiB).
pub const MAX_MESSAGE: usize = 65_535;
/// Largest head (start line and headers). Legitimate heads with long Record-Route sets are a
/// few KiB; 70 KB header lines are attacks.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in one message.
pub const MAX_HEADER_LINES: usize = 256;
/// Most Via values: one per hop, and Max-Forwards starts at 70.
pub const MAX_VIAS: usize = 70;

/// Prefix of the `StartLine` error for a request in another SIP version. A distinct variant
/// would be cleaner, but callers already match `StartLine` for every bad first line.
const UNSUPPORTED_VERSION: &str = "unsupported version ";

impl ParseError {
    /// The status to answer a request that failed to parse with, when it still carries the
    /// headers a response needs: 505 for a SIP version we do not speak (RFC 3261 21.5.7,
    /// RFC 4475 3.1.2.16), 400 for everything else (RFC 3261 21.4.1).
    pub fn status_code(&self) -> u16 {
        match self {
            ParseError::StartLine(s) if s.starts_with(UNSUPPORTED_VERSION) => 505,
            ParseError::TooLarge(_) => 513,
            _ => 400,
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone)]
pub enum StartLine {
    Request {
        method: Method,
        /// The Request-URI exactly as received.
        uri: BytesStr,
    },
    Response {
        code: u16,
        reason: BytesStr,
    },
}

/// A parsed SIP message with the facts every layer needs decoded once.
#[derive(Debug, Clone)]
pub struct Message {
    pub start: StartLine,
    pub headers: Headers,
    pub body: Bytes,
    pub call_id: BytesStr,
    pub cseq: u32,
    pub cseq_method: Method,
    pub from: FromTo,
    pub to: FromTo,
    /// All Via values in order (comma-joined values already split).
    pub vias: Vec<Via>,
    /// Bytes on the wire, for memory accounting (the parsed parts share that buffer).
    pub wire_len: usize,
}

/// How many bytes of `buf` the next message takes, for stream transports (RFC 3261 18.3):
/// the head up to the empty line plus Content-Length bytes. `Ok(None)` means "need more".
/// A missing Content-Length on a stream counts as 0, as the RFC requires it there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    // Keep-alive CRLFs between messages (RFC 5626 4.4.1) are skipped by the caller.
    let mut parser = PullParser::new(buf, 0);
    let mut content_length: Option<usize> = None;
    for line in parser.by_ref() {
        let line = match line {
            Ok(line) => line,
            Err(_) => break,
        };
        if let Some(value) = header_value_if(line, &["content-length", "l"]) {
            let len = parse_digits(value)
                .ok_or_else(|| ParseError::Header(format!("Content-Length: {value:?}")))?;
            // Two different lengths leave no way to find the next message: the stream is lost
            // and the caller must close it (RFC 4475 3.3.9).
            if content_length.is_some_and(|have| have != len) {
                return Err(ParseError::Header(
                    "conflicting Content-Length values".into(),
                ));
            }
            if len > MAX_MESSAGE {
                return Err(ParseError::TooLarge(format!("Content-Length {len}")));
            }
            content_length = Some(len);
        }
    }
    if !has_head_end(buf, parser.progress()) {
        // Checked on the partial head too, so a peer cannot make us buffer an endless one:
        // with no empty line yet, the head is at least as long as what we hold.
        if buf.len() > MAX_HEAD {
            return Err(ParseError::TooLarge(format!("head over {MAX_HEAD} bytes")));
        }
        return Ok(None);
    }
    let head_end = parser.head_end();
    if head_end > MAX_HEAD {
        return Err(ParseError::TooLarge(format!("head of {head_end} bytes")));
    }
    let total = head_end.saturating_add(content_length.unwrap_or(0));
    if total > MAX_MESSAGE {
        return Err(ParseError::TooLarge(format!("message of {total} bytes")));
    }
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}

fn has_head_end(buf: &[u8], progress: usize) -> bool {
    buf.get(progress..)
        .is_some_and(|rest| rest.starts_with(b"\r\n\r\n") || rest.starts_with(b"\n\n"))
}

/// `Some(value)` when `line` is a header whose name is one of `names` (lower case).
fn header_value_if<'a>(line: &'a [u8], names: &[&str]) -> Option<&'a str> {
    let line = std::str::from_utf8(line).ok()?;
    let (name, value) = line.split_once(':')?;
    let name = name.trim();
    names
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        .then_some(value)
}

impl Message {
    /// Parses one whole message. On datagrams the body is what follows the head, cut to
    /// Content-Length when that is shorter (RFC 3261 18.3); a longer Content-Length is an error.
    pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge(format!("{} bytes", buf.len())));
        }
        let mut parser = PullParser::new(&buf, 0);
        let mut lines = Vec::with_capacity(16);
        for line in parser.by_ref() {
            lines.push(line.map_err(|_| ParseError::Incomplete)?);
            if lines.len() > MAX_HEADER_LINES + 1 {
                return Err(ParseError::TooLarge(format!(
                    "over {MAX_HEADER_LINES} header lines"
                )));
            }
        }
        if parser.progress() > MAX_HEAD {
            return Err(ParseError::TooLarge(format!("head over {MAX_HEAD} bytes")));
        }
        if !has_head_end(&buf, parser.progress()) {
            return Err(ParseError::Incomplete);
        }
        let head_end = parser.head_end();
        let Some((first, header_lines)) = lines.split_first() else {
            return Err(ParseError::StartLine("empty".into()));
        };
        let first = std::str::from_utf8(first).map_err(|_| ParseError::NotUtf8)?;
        let start = parse_start_line(&buf, first)?;

        let mut headers = Headers::with_capacity(header_lines.len());
        for raw in header_lines {
            let text = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
            let (_, line) = Line::parse(&buf, text)
                .map_err(|_| ParseError::Header(truncate(text).to_string()))?;
            // Folded continuation lines keep their line break inside the value; RFC 3261 7.3.1
            // says they are equivalent to a single space.
            let value = if line.value.contains('\n') {
                BytesStr::from(unfold(&line.value))
            } else {
                line.value
            };
            headers.insert(line.name, value);
        }

        let rest = buf.slice(head_end.min(buf.len())..);
        let body = match single_value(&headers, &Name::CONTENT_LENGTH, "Content-Length")? {
            Some(v) => {
                let want = parse_digits(v)
                    .ok_or_else(|| ParseError::Header(format!("Content-Length: {v}")))?;
                if rest.len() < want {
                    return Err(ParseError::ShortBody {
                        have: rest.len(),
                        want,
                    });
                }
                rest.slice(..want)
            }
            None => rest,
        };

        let call_id = single_value(&headers, &Name::CALL_ID, "Call-ID")?
            .ok_or(ParseError::Missing("Call-ID"))?;
        // callid = word ["@" word] (RFC 3261 25.1): no spaces, so none can hide a second id.
        let call_id = BytesStr::from(call_id.trim());
        if call_id.is_empty() || call_id.contains(char::is_whitespace) {
            return Err(ParseError::Header(format!(
                "Call-ID: {}",
                truncate(&call_id)
            )));
        }
        let cseq_raw =
            single_value(&headers, &Name::CSEQ, "CSeq")?.ok_or(ParseError::Missing("CSeq"))?;
        let cseq =
            parse_whole::<CSeq>(cseq_raw).ok_or_else(|| ParseError::Header("CSeq".into()))?;
        // The method as written: ezk's Method compares case-insensitively, RFC 3261 7.1 does not.
        let cseq_method = cseq_raw
            .trim()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim()
            .to_string();
        let from = decode_from_to(&headers, Name::FROM, "From")?;
        let to = decode_from_to(&headers, Name::TO, "To")?;
        let vias = decode_vias(&headers)?;
        // The core reads only the first Max-Forwards; a second, different one is ambiguous.
        single_value(&headers, &Name::MAX_FORWARDS, "Max-Forwards")?;
        if let StartLine::Request { method, .. } = &start {
            // RFC 3261 8.2 / RFC 4475 3.1.2.17: the CSeq method must match the request's,
            // compared as written because method names are case-sensitive (RFC 3261 7.1).
            if method.to_string() != cseq_method {
                return Err(ParseError::Header(
                    "CSeq method does not match request".into(),
                ));
            }
            // A bare magic cookie promises an RFC 3261 transaction id and gives none; every such
            // request from the peer would share one transaction. RFC 4475 3.2.1 allows a
            // stateless 400, which is what a parse failure gets.
            if vias[0]
                .params
                .get_val("branch")
                .is_some_and(|b| b.as_str() == BRANCH_COOKIE)
            {
                return Err(ParseError::Header(
                    "Via branch is only the magic cookie".into(),
                ));
            }
        }
        Ok(Message {
            start,
            headers,
            body,
            call_id,
            cseq: cseq.cseq,
            cseq_method: cseq.method,
            from,
            to,
            vias,
            wire_len: buf.len(),
        })
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request's method, or the CSeq method for a response.
    pub fn method(&self) -> &Method {
        match &self.start {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => &self.cseq_method,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The top Via's branch, the transaction key for RFC 3261 peers.
    pub fn branch(&self) -> Option<&str> {
        self.vias[0].params.get_val("branch").map(|b| b.as_str())
    }

    pub fn from_tag(&self) -> Option<&str> {
        self.from.tag.as_deref()
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.to.tag.as_deref()
    }

    /// The first value of a header (any spelling, compact or long).
    pub fn header(&self, name: &Name) -> Option<&str> {
        self.headers.get_raw(name).next().map(|v| v.as_str())
    }

    /// The Content-Type's media type without parameters, lower case.
    pub fn content_type(&self) -> Option<String> {
        self.header(&Name::CONTENT_TYPE).map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// True when the body is SDP (or no Content-Type but a body, which some peers send).
    pub fn has_sdp(&self) -> bool {
        !self.body.is_empty() && self.content_type().is_none_or(|ct| ct == "application/sdp")
    }

    /// Where responses to this request go (RFC 3261 18.2.2 with RFC 3581 rport): the source
    /// address for anything that came over a stream or asked for rport, else the source IP
    /// with the Via sent-by port. `maddr` is honoured only from a trusted peer
    /// (`honour_maddr`): from anyone else it would let a spoofed request aim our responses
    /// at a third host.
    pub fn response_target(
        &self,
        source: SocketAddr,
        reliable: bool,
        honour_maddr: bool,
    ) -> SocketAddr {
        let via = &self.vias[0];
        if reliable || via.params.get("rport").is_some() {
            return source;
        }
        if let Some(maddr) = via
            .params
            .get_val("maddr")
            .filter(|_| honour_maddr)
            .and_then(|m| m.parse::<IpAddr>().ok())
        {
            return SocketAddr::new(maddr, via.sent_by.port.unwrap_or(5060));
        }
        // `received` is added because the sent-by host may be a name we would have to resolve,
        // or a private address behind NAT: the source IP is what works (RFC 3261 18.2.2).
        SocketAddr::new(source.ip(), via.sent_by.port.unwrap_or(5060))
    }

    /// The Contact URI (inside `<>` if present), for in-dialog requests we send.
    pub fn contact_uri(&self) -> Option<String> {
        let raw = self.header(&Name::CONTACT)?;
        Some(extract_uri(raw).to_string())
    }

    /// Record-Route values in order, each as received (for the route set, RFC 3261 12.1.1).
    pub fn record_routes(&self) -> Vec<String> {
        self.headers
            .get_raw(&Name::RECORD_ROUTE)
            .flat_map(|v| split_header_list(v))
            .collect()
    }
}

/// The To tag of a response sent without a transaction: the same for every copy of the same
/// request (RFC 3261 8.2.6.2 wants one tag per request, and a stateless server has no memory
/// to keep it in), unguessable for anyone else (keyed with a random per-process key).
pub fn stateless_tag(req: &Message) -> String {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let key = KEY.get_or_init(std::collections::hash_map::RandomState::new);
    let h = key.hash_one((req.call_id.as_str(), req.from_tag(), req.cseq, req.branch()));
    format!("s{h:016x}")
}

/// The RFC 3261 magic cookie that starts every RFC 3261 branch (8.1.1.7).
const BRANCH_COOKIE: &str = "z9hG4bK";

/// The one value of a header that may appear only once (RFC 3261 7.3.1). Exact repeats are
/// harmless; different values leave no way to know which one the sender meant, so the message
/// is refused (RFC 4475 3.3.8 and 3.3.9 expect 400).
fn single_value<'h>(
    headers: &'h Headers,
    name: &Name,
    label: &str,
) -> Result<Option<&'h BytesStr>, ParseError> {
    let mut values = headers.get_raw(name);
    let first = values.next();
    if let Some(first) = first
        && values.any(|v| v.trim() != first.trim())
    {
        return Err(ParseError::Header(format!("conflicting {label} values")));
    }
    Ok(first)
}

/// 1*DIGIT as a number; `str::parse` alone would also take "+5".
fn parse_digits(v: &str) -> Option<usize> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses a whole header value with ezk. Its `Headers` getters ignore whatever follows the
/// part they understood, which would let "1 INVITE garbage" or a half-read Via through.
fn parse_whole<H: HeaderParse>(value: &str) -> Option<H> {
    let src = Bytes::copy_from_slice(value.as_bytes());
    let text = std::str::from_utf8(&src).ok()?;
    match H::parse(&src, text) {
        Ok((rest, parsed)) if rest.trim().is_empty() => Some(parsed),
        _ => None,
    }
}

/// Decodes From or To. The display name is checked and unescaped here, because ezk's
/// quoted-string parser ends at the first `"` even after a backslash (so `"J \"R\""` fails,
/// RFC 4475 3.1.1.1), and takes any text before `<` as a name, unbalanced quotes and commas
/// included (3.1.2.6, 3.1.2.15). ezk then sees only `<uri>;params` or `addr-spec;params`.
fn decode_from_to(
    headers: &Headers,
    name: Name,
    label: &'static str,
) -> Result<FromTo, ParseError> {
    let bad = || ParseError::Header(label.into());
    let raw = single_value(headers, &name, label)?.ok_or(ParseError::Missing(label))?;
    let (display, rest) = split_display_name(raw).ok_or_else(bad)?;
    let mut value: FromTo = parse_whole(rest).ok_or_else(bad)?;
    value.uri.name = display.map(BytesStr::from);
    // The tag is a token, not a URI part: '%' in it is a literal, and it must come back to the
    // peer exactly as sent or the dialog does not match (RFC 3261 12.2.1.1, 19.3).
    let params = match rest.find('>') {
        Some(gt) if rest.starts_with('<') => &rest[gt + 1..],
        _ => rest.find(';').map_or("", |semi| &rest[semi..]),
    };
    let raw_tag = raw_params(params).find(|(n, _)| n.eq_ignore_ascii_case("tag"));
    if let Some((_, Some(tag))) = raw_tag
        && tag.contains('%')
        && !tag.starts_with('"')
    {
        value.tag = Some(BytesStr::from(tag));
    }
    Ok(value)
}

/// Splits a name-addr or addr-spec into its display name (unquoted and unescaped) and the rest
/// from `<` (or the whole addr-spec). `None` when the display name is malformed: an
/// unterminated quoted string, or an unquoted one with separators such as `,` in it
/// (RFC 3261 25.1 display-name = *(token LWS) / quoted-string). Unquoted non-ASCII text is
/// let through: it is unambiguous and common from phones that put the caller's name there.
fn split_display_name(value: &str) -> Option<(Option<String>, &str)> {
    let value = value.trim_start();
    if let Some(quoted) = value.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        loop {
            match chars.next()? {
                (i, '"') => {
                    let rest = quoted[i + 1..].trim_start();
                    return rest.starts_with('<').then_some((Some(name), rest));
                }
                // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                (_, '\\') => match chars.next()? {
                    (_, c) if c.is_ascii() && c != '\r' && c != '\n' => name.push(c),
                    _ => return None,
                },
                (_, '\r' | '\n') => return None,
                (_, c) => name.push(c),
            }
        }
    }
    // A `<` after the first `;` can only be inside a quoted parameter of an addr-spec.
    let before_params = &value[..value.find(';').unwrap_or(value.len())];
    let Some(lt) = before_params.find('<') else {
        return Some((None, value));
    };
    let display = value[..lt].trim();
    let token_or_lws = |c: char| {
        !c.is_ascii() || c == ' ' || c == '\t' || u8::try_from(c).is_ok_and(is_token_byte)
    };
    if !display.chars().all(token_or_lws) {
        return None;
    }
    Some((
        (!display.is_empty()).then(|| display.to_string()),
        &value[lt..],
    ))
}

/// `name[=value]` pairs of a `;`-separated parameter list as written (quotes kept, LWS
/// around `=` trimmed). Quoted values may contain `;`.
fn raw_params(params: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut parts = Vec::new();
    let (mut quoted, mut start) = (false, 0usize);
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&params[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p.trim(), None),
        })
}

/// Puts parameter values back as written where ezk percent-decoded them. Via parameters are
/// tokens (RFC 3261 20.42): in `branch=z9hG4bK-%66` the `%` is a literal (RFC 4475 3.1.1.2), and
/// a response must carry the branch byte for byte or the client cannot match it (17.1.3).
fn keep_raw_values(params: &mut Params<CPS>, raw: &str) {
    for (name, value) in raw_params(raw) {
        let Some(value) = value.filter(|v| v.contains('%') && !v.starts_with('"')) else {
            continue;
        };
        if let Some(param) = params.get_mut(name) {
            param.value = Some(BytesStr::from(value));
        }
    }
}

/// All Via values, comma-joined ones split. Every one must parse whole: ezk's list decoder
/// silently skips a value it cannot read and anything after it, which could hide the top Via
/// (where responses go) or accept `;;,;,,` (RFC 4475 3.1.2.1).
fn decode_vias(headers: &Headers) -> Result<Vec<Via>, ParseError> {
    let mut vias = Vec::new();
    for value in headers.get_raw(&Name::VIA) {
        // split_header_list drops an empty last element; in a Via list it is an error.
        let elements = split_header_list(value);
        if elements.is_empty() || value.trim_end().ends_with(',') {
            return Err(ParseError::Header(format!("Via: {}", truncate(value))));
        }
        for element in elements {
            let mut via: Via = parse_whole(&element)
                .ok_or_else(|| ParseError::Header(format!("Via: {}", truncate(&element))))?;
            // ezk takes an empty name between two `;` as a parameter.
            if via.params.get("").is_some() {
                return Err(ParseError::Header(format!("Via: {}", truncate(&element))));
            }
            if let Some(semi) = element.find(';') {
                keep_raw_values(&mut via.params, &element[semi..]);
            }
            vias.push(via);
            if vias.len() > MAX_VIAS {
                return Err(ParseError::TooLarge(format!("over {MAX_VIAS} Via values")));
            }
        }
    }
    if vias.is_empty() {
        return Err(ParseError::Missing("Via"));
    }
    Ok(vias)
}

fn parse_start_line(src: &Bytes, line: &str) -> Result<StartLine, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let rest = rest.trim_start();
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| ParseError::StartLine(truncate(line).into()))?;
        return Ok(StartLine::Response {
            code,
            reason: BytesStr::from(reason.trim()),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (RFC 3261 7.1): exactly single
    // spaces, which RFC 4475 3.1.2.8-10 test (LWS inside the URI, doubled or trailing SP).
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine(truncate(line).into()));
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::StartLine(format!(
            "{UNSUPPORTED_VERSION}{}",
            truncate(version)
        )));
    }
    if method.is_empty() || !method.bytes().all(is_token_byte) || !is_request_uri(uri) {
        return Err(ParseError::StartLine(truncate(line).into()));
    }
    let parsed = Method::from_parse(src, method);
    // ezk matches known methods by case-insensitive prefix, so "INVITEX" or "invite" would
    // become INVITE; both are extension methods (names are case-sensitive, RFC 3261 7.1). ezk
    // cannot represent them as such, so they are refused rather than misread.
    if parsed.to_string() != method {
        return Err(ParseError::StartLine(truncate(line).into()));
    }
    Ok(StartLine::Request {
        method: parsed,
        uri: BytesStr::from(uri),
    })
}

/// A Request-URI is `scheme ":" ...` (RFC 3261 25.1, RFC 3986 3.1), which also refuses one
/// in `<>` (RFC 4475 3.1.2.7). A SIP or SIPS Request-URI must not carry headers (RFC 3261
/// 19.1.1); RFC 4475 3.1.2.11 allows refusing one that does. A `?` in the user part is
/// legal, so only the part after `@` counts.
fn is_request_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        || rest.is_empty()
    {
        return false;
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let host_part = rest.split_once('@').map_or(rest, |(_, host)| host);
        return !host_part.contains('?');
    }
    true
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn truncate(s: &str) -> &str {
    let end = s.char_indices().nth(80).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

/// Replaces folded line breaks (CRLF or LF followed by whitespace) by one space.
fn unfold(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' || c == '\n' {
            while matches!(chars.peek(), Some('\r' | '\n' | ' ' | '\t')) {
                chars.next();
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The URI in a name-addr or addr-spec: inside `<...>` if there are brackets, else up to `;`.
pub fn extract_uri(value: &str) -> &str {
    if let (Some(a), Some(b)) = (value.find('<'), value.find('>'))
        && a < b
    {
        return &value[a + 1..b];
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// Splits a comma-joined header list, ignoring commas inside `<...>` and quotes.
pub fn split_header_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(value[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = value[start..].trim();
    if !last.is_empty() {
        out.push(last.to_string());
    }
    out
}

/// The user part of a SIP URI (the dialed number), if it has one.
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"));
    let rest = rest?;
    if uri.starts_with("tel:") {
        return Some(rest.split(';').next().unwrap_or(rest));
    }
    let (user, _) = rest.split_once('@')?;
    Some(user.split(';').next().unwrap_or(user))
}

/// Parses a SIP URI the crate understands (for hosts and ports), `None` for `tel:` and others.
pub fn parse_sip_uri(uri: &str) -> Option<SipUri> {
    uri.parse().ok()
}

/// Builds a response to `req`: status line, the Via stack (top one with `received`/`rport`
/// filled in per RFC 3581), From, To (with our tag if given and the request had none),
/// Call-ID, CSeq, then `extra` header lines, then the body with its Content-Length.
pub struct ResponseBuilder<'a> {
    req: &'a Message,
    code: u16,
    reason: &'a str,
    to_tag: Option<&'a str>,
    source: Option<SocketAddr>,
    extra: String,
    body: Option<(&'a str, Bytes)>,
}

impl<'a> ResponseBuilder<'a> {
    pub fn new(req: &'a Message, code: u16, reason: &'a str) -> Self {
        ResponseBuilder {
            req,
            code,
            reason,
            to_tag: None,
            source: None,
            extra: String::new(),
            body: None,
        }
    }

    /// Adds `received`/`rport` to the top Via for a request that came from `source`.
    pub fn received_from(mut self, source: SocketAddr) -> Self {
        self.source = Some(source);
        self
    }

    pub fn to_tag(mut self, tag: &'a str) -> Self {
        self.to_tag = Some(tag);
        self
    }

    pub fn header(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        let _ = write!(self.extra, "{name}: {value}\r\n");
        self
    }

    pub fn body(mut self, content_type: &'a str, body: Bytes) -> Self {
        self.body = Some((content_type, body));
        self
    }

    pub fn build(self) -> Bytes {
        let req = self.req;
        let mut head = String::with_capacity(512);
        let _ = write!(head, "SIP/2.0 {} {}\r\n", self.code, self.reason);
        // The top Via is re-printed with received/rport; the others are copied byte for byte
        // because a proxy's Via is its own business (RFC 3261 8.2.6.2: copy them in order).
        let _ = write!(
            head,
            "Via: {}\r\n",
            top_via_with_received(&req.vias[0], self.source)
        );
        for via in req
            .headers
            .get_raw(&Name::VIA)
            .flat_map(|v| split_header_list(v))
            .skip(1)
        {
            let _ = write!(head, "Via: {via}\r\n");
        }
        for rr in req.headers.get_raw(&Name::RECORD_ROUTE) {
            // Record-Route is copied into responses so the caller learns the route set.
            if (101..300).contains(&self.code) {
                let _ = write!(head, "Record-Route: {rr}\r\n");
            }
        }
        // From and To are copied as received (RFC 3261 8.2.6.2), plus our tag on To.
        let from = req.header(&Name::FROM).unwrap_or_default();
        let to = req.header(&Name::TO).unwrap_or_default();
        let _ = write!(head, "From: {from}\r\n");
        match (req.to.tag.is_some(), self.to_tag) {
            (false, Some(tag)) if self.code != 100 => {
                let _ = write!(head, "To: {to};tag={tag}\r\n");
            }
            _ => {
                let _ = write!(head, "To: {to}\r\n");
            }
        }
        let _ = write!(head, "Call-ID: {}\r\n", req.call_id);
        let _ = write!(head, "CSeq: {} {}\r\n", req.cseq, req.cseq_method);
        head.push_str(&self.extra);
        finish(head, self.body)
    }
}

fn top_via_with_received(via: &Via, source: Option<SocketAddr>) -> String {
    let Some(source) = source else {
        return via.print_ctx(PrintCtx::default()).to_string();
    };
    let mut via = via.clone();
    let ip = source.ip().to_string();
    let sent_by_ip = via.sent_by.ip();
    if via.params.get("rport").is_some() {
        via.params.push_or_edit("rport", source.port().to_string());
        via.params.push_or_edit("received", ip);
    } else if sent_by_ip != Some(source.ip()) {
        via.params.push_or_edit("received", ip);
    }
    via.print_ctx(PrintCtx::default()).to_string()
}

/// Appends Content-Length (and the body with its type) and the empty line.
pub fn finish(mut head: String, body: Option<(&str, Bytes)>) -> Bytes {
    match body {
        Some((content_type, body)) => {
            let _ = write!(
                head,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut out = BytesMut::with_capacity(head.len() + body.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&body);
            out.freeze()
        }
        None => {
            head.push_str("Content-Length: 0\r\n\r\n");
            Bytes::from(head)
        }
    }
}

/// What an INVITE ivrd sends starts from (an outbound call, RFC 3261 8.1.1).
pub struct OutboundInvite<'a> {
    /// The Request-URI (and the To URI): the callee at the trunk.
    pub request_uri: &'a str,
    /// Our address of record, the From URI.
    pub from: &'a str,
    pub from_tag: &'a str,
    pub call_id: &'a str,
    /// 1 for the first INVITE, one more for the retry with credentials (same Call-ID, From
    /// tag and body: RFC 3261 22.2).
    pub cseq: u32,
    /// The transport and where the request leaves from (for Via).
    pub protocol: super::transport::Protocol,
    pub via_host: std::net::SocketAddr,
    pub branch: &'a str,
    /// Our Contact URI: where the callee's in-dialog requests come.
    pub contact: &'a str,
    /// `(header name, value)` answering a challenge: `Authorization` (401) or
    /// `Proxy-Authorization` (407).
    pub credentials: Option<(&'a str, String)>,
    pub user_agent: &'a str,
    /// The SDP offer.
    pub sdp: Bytes,
}

/// An INVITE for an outbound call: Via with `rport` (a peer behind NAT answers where the
/// request came from), Max-Forwards 70, From with our tag and To without one, Contact, Allow,
/// and the SDP offer. No `Supported: timer`: ivrd's session-timer code speaks as the UAS.
pub fn invite_request(i: &OutboundInvite<'_>) -> Bytes {
    let mut head = String::with_capacity(768);
    let _ = write!(head, "INVITE {} SIP/2.0\r\n", i.request_uri);
    let _ = write!(
        head,
        "Via: SIP/2.0/{} {};branch={};rport\r\n",
        i.protocol.via_name(),
        super::dialog::fmt_host_port(i.via_host),
        i.branch
    );
    head.push_str("Max-Forwards: 70\r\n");
    let _ = write!(head, "From: <{}>;tag={}\r\n", i.from, i.from_tag);
    let _ = write!(head, "To: <{}>\r\n", i.request_uri);
    let _ = write!(head, "Call-ID: {}\r\n", i.call_id);
    let _ = write!(head, "CSeq: {} INVITE\r\n", i.cseq);
    let _ = write!(head, "Contact: <{}>\r\n", i.contact);
    if let Some((name, value)) = &i.credentials {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, UPDATE\r\n");
    let _ = write!(head, "User-Agent: {}\r\n", i.user_agent);
    finish(head, Some(("application/sdp", i.sdp.clone())))
}

/// The ACK for a 300-699 `response` to `invite` (RFC 3261 17.1.1.3), which the client INVITE
/// transaction sends (see [`ClientInvite`](super::transaction::ClientInvite)): the INVITE's
/// Request-URI, one Via equal to the INVITE's top Via (same branch, so the server transaction
/// matches it), the INVITE's From and Call-ID, the response's To (with the tag it added), the
/// INVITE's CSeq number with method ACK, the INVITE's Route headers, Max-Forwards 70 and no body.
///
/// `invite` is the request as we sent it, parsed; `response` is the failure as received. The ACK
/// of a 2xx is a different request (a new transaction, built by the dialog, RFC 3261 13.2.2.4).
pub fn ack_for_failure(invite: &Message, response: &Message) -> Bytes {
    debug_assert!(invite.is_request() && response.status().is_some());
    let to = response.header(&Name::TO).unwrap_or_default();
    invite_companion(invite, "ACK", to)
}

/// A CANCEL for `invite` (RFC 3261 9.1): Request-URI, Call-ID, From and To (so without a To tag
/// when the INVITE had none) as in the INVITE, its CSeq number with method CANCEL, one Via equal
/// to its top Via (same branch: the CANCEL is matched to the INVITE by it), its Route headers,
/// Max-Forwards 70 and no body. Send it in its own [`ClientNonInvite`] transaction, and only
/// after a provisional response (RFC 3261 9.1).
///
/// [`ClientNonInvite`]: super::transaction::ClientNonInvite
pub fn cancel_for(invite: &Message) -> Bytes {
    debug_assert!(invite.is_request());
    let to = invite.header(&Name::TO).unwrap_or_default();
    invite_companion(invite, "CANCEL", to)
}

/// The request that goes with `invite` on its own transaction (ACK for a failure, CANCEL):
/// everything copied as written, since the peer matches these requests to the INVITE by
/// comparing the values (RFC 3261 9.2, 17.2.3).
fn invite_companion(invite: &Message, method: &str, to: &str) -> Bytes {
    let uri = invite.request_uri().unwrap_or_default();
    let mut head = String::with_capacity(512);
    let _ = write!(head, "{method} {uri} SIP/2.0\r\n");
    // A single Via: the INVITE's top one as written (a `Message` built by hand rather than
    // parsed may have no raw Via; its decoded top Via is printed then).
    let top_via = invite
        .headers
        .get_raw(&Name::VIA)
        .flat_map(|v| split_header_list(v))
        .next()
        .unwrap_or_else(|| invite.vias[0].print_ctx(PrintCtx::default()).to_string());
    let _ = write!(head, "Via: {top_via}\r\n");
    head.push_str("Max-Forwards: 70\r\n");
    for route in invite.headers.get_raw(&Name::ROUTE) {
        let _ = write!(head, "Route: {route}\r\n");
    }
    let from = invite.header(&Name::FROM).unwrap_or_default();
    let _ = write!(head, "From: {from}\r\n");
    let _ = write!(head, "To: {to}\r\n");
    let _ = write!(head, "Call-ID: {}\r\n", invite.call_id);
    let _ = write!(head, "CSeq: {} {method}\r\n", invite.cseq);
    finish(head, None)
}

/// The standard reason phrase for the codes ivrd sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, ParseError> {
        Message::parse(Bytes::from(s.to_string()))
    }

    const INVITE: &str = "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:+4930123@example.com>;tag=abc\r\n\
To: <sip:ivr@127.0.0.1>\r\n\
Call-ID: call-1@10.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\nEXTRA";

    #[test]
    fn parses_request_and_cuts_body_to_content_length() {
        let m = parse(INVITE).unwrap();
        assert_eq!(m.method(), &Method::INVITE);
        assert_eq!(m.request_uri(), Some("sip:ivr@127.0.0.1"));
        assert_eq!(&m.call_id[..], "call-1@10.0.0.1");
        assert_eq!(m.cseq, 1);
        assert_eq!(m.from_tag(), Some("abc"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.branch(), Some("z9hG4bK-1"));
        assert_eq!(&m.body[..], b"v=0\n");
        assert_eq!(m.contact_uri().as_deref(), Some("sip:alice@10.0.0.1:5070"));
        assert!(m.has_sdp());
    }

    #[test]
    fn compact_lf_only_folded_and_joined_via() {
        let msg = "OPTIONS sip:ivr@[2001:db8::1] SIP/2.0\n\
v: SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bKa, SIP/2.0/UDP p.example.com;branch=z9hG4bKb\n\
f: <sip:a@example.com>;tag=1\n\
t: <sip:ivr@[2001:db8::1]>\n\
i: x1\n\
Subject: one\n two\n\
CSeq: 2 OPTIONS\n\
l: 0\n\n";
        let m = parse(msg).unwrap();
        assert_eq!(m.vias.len(), 2);
        assert_eq!(m.branch(), Some("z9hG4bKa"));
        assert_eq!(&m.call_id[..], "x1");
        assert_eq!(m.header(&Name::SUBJECT), Some("one two"));
    }

    #[test]
    fn unknown_method_and_tel_uri_parse() {
        let msg = "FOO tel:+4930123 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 FOO\r\n\r\n";
        let m = parse(msg).unwrap();
        assert_eq!(m.method().to_string(), "FOO");
        assert_eq!(uri_user(m.request_uri().unwrap()), Some("+4930123"));
    }

    #[test]
    fn rejects_what_must_be_rejected() {
        let base = INVITE.replace("Content-Length: 4", "Content-Length: 400");
        assert!(matches!(parse(&base), Err(ParseError::ShortBody { .. })));
        let no_callid = INVITE.replace("Call-ID: call-1@10.0.0.1\r\n", "");
        assert_eq!(
            parse(&no_callid).unwrap_err(),
            ParseError::Missing("Call-ID")
        );
        let mismatch = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
        assert!(matches!(parse(&mismatch), Err(ParseError::Header(_))));
        let version = INVITE.replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia");
        assert!(matches!(parse(&version), Err(ParseError::StartLine(_))));
        assert!(parse("garbage\r\n\r\n").is_err());
        assert_eq!(
            parse("INVITE sip:a@b SIP/2.0\r\nVia: x").unwrap_err(),
            ParseError::Incomplete
        );
    }

    #[test]
    fn framing_on_streams() {
        let two = format!("{INVITE}{INVITE}");
        // The first message's body is 4 bytes, so the frame ends right after "v=0\n".
        let first = frame_len(two.as_bytes()).unwrap().unwrap();
        assert_eq!(&two.as_bytes()[first - 4..first], b"v=0\n");
        assert_eq!(frame_len(&INVITE.as_bytes()[..30]).unwrap(), None);
        let head_only = INVITE.split("\r\n\r\n").next().unwrap().to_string() + "\r\n\r\nv=";
        assert_eq!(frame_len(head_only.as_bytes()).unwrap(), None);
    }

    #[test]
    fn response_carries_received_rport_and_tag() {
        let m = parse(INVITE).unwrap();
        let src: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let resp = ResponseBuilder::new(&m, 200, "OK")
            .received_from(src)
            .to_tag("srv1")
            .header("Contact", "<sip:ivr@127.0.0.1>")
            .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
            .build();
        let text = std::str::from_utf8(&resp).unwrap();
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
        assert!(text.contains("rport=40000"), "{text}");
        assert!(text.contains("received=192.0.2.7"), "{text}");
        assert!(text.contains(";tag=srv1"), "{text}");
        assert!(text.ends_with("Content-Length: 5\r\n\r\nv=0\r\n"), "{text}");
        let back = Message::parse(resp).unwrap();
        assert_eq!(back.status(), Some(200));
        assert_eq!(back.to_tag(), Some("srv1"));
        assert_eq!(m.response_target(src, false, false), src);
    }

    /// A minimal request around one replaced line, for the checks below.
    const OPTIONS: &str = "OPTIONS sip:ivr@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:ivr@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n\r\n";

    fn with(old: &str, new: &str) -> Result<Message, ParseError> {
        assert!(OPTIONS.contains(old), "{old}");
        parse(&OPTIONS.replacen(old, new, 1))
    }

    #[test]
    fn display_names_are_checked_and_unescaped() {
        let m = with("From: <sip:a@h>", r#"From: "A \"B\" \\ C" <sip:a@h>"#).unwrap();
        assert_eq!(m.from.uri.name.as_deref(), Some(r#"A "B" \ C"#));
        let m = with("From: <sip:a@h>", "From: Jürgen Müller <sip:a@h>").unwrap();
        assert_eq!(m.from.uri.name.as_deref(), Some("Jürgen Müller"));
        // Unterminated quote, an unquoted comma, a quoted name not followed by <uri>.
        for bad in [
            r#"From: "A <sip:a@h>"#,
            "From: Bell, A <sip:a@h>",
            r#"From: "A" sip:a@h"#,
        ] {
            assert_eq!(
                with("From: <sip:a@h>", bad).unwrap_err(),
                ParseError::Header("From".into()),
                "{bad}"
            );
        }
        // Trailing garbage that ezk alone would ignore.
        assert!(with("To: <sip:ivr@h>", "To: <sip:ivr@h> junk").is_err());
        // A `<` inside a quoted parameter of an addr-spec is no name-addr.
        let m = with("To: <sip:ivr@h>", r#"To: sip:ivr@h;x="<y>";tag=2"#).unwrap();
        assert_eq!((m.to.uri.name.as_deref(), m.to_tag()), (None, Some("2")));
    }

    #[test]
    fn tags_and_via_parameters_keep_their_percent_signs() {
        let m = with(";tag=1", ";tag=a%41").unwrap();
        assert_eq!(m.from_tag(), Some("a%41"));
        let m = with("branch=z9hG4bK1", "branch=z9hG4bK%41;received=%31").unwrap();
        assert_eq!(m.branch(), Some("z9hG4bK%41"));
        assert_eq!(
            m.vias[0].params.get_val("received").map(|v| v.as_str()),
            Some("%31")
        );
        // Printed back for a response, the branch is still the client's.
        let resp = ResponseBuilder::new(&m, 200, "OK").build();
        assert!(
            std::str::from_utf8(&resp)
                .unwrap()
                .contains("branch=z9hG4bK%41")
        );
    }

    #[test]
    fn every_via_must_parse_whole() {
        let top_garbage = "Via: garbage\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1";
        assert!(with("Via: SIP/2.0/UDP h;branch=z9hG4bK1", top_garbage).is_err());
        for bad in [
            "h;;branch=z9hG4bK1",
            "h;branch=z9hG4bK1,",
            "h;branch=z9hG4bK1 x",
            "h;branch=z9hG4bK1,,h2",
        ] {
            let line = format!("Via: SIP/2.0/UDP {bad}");
            assert!(
                with("Via: SIP/2.0/UDP h;branch=z9hG4bK1", &line).is_err(),
                "{bad}"
            );
        }
        // A bare magic cookie is no transaction id (RFC 4475 3.2.1).
        assert!(with("branch=z9hG4bK1", "branch=z9hG4bK").is_err());
    }

    #[test]
    fn single_value_headers_must_not_conflict() {
        assert!(with("Call-ID: c1\r\n", "Call-ID: c1\r\nCall-ID: c1\r\n").is_ok());
        let two = with("Call-ID: c1\r\n", "Call-ID: c1\r\ni: c2\r\n").unwrap_err();
        assert_eq!(two, ParseError::Header("conflicting Call-ID values".into()));
        assert!(
            with(
                "CSeq: 1 OPTIONS\r\n",
                "CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\n"
            )
            .is_err()
        );
        assert!(with("To: <sip:ivr@h>\r\n", "To: <sip:ivr@h>\r\nt: <sip:x@h>\r\n").is_err());
        assert!(
            with(
                "\r\n\r\n",
                "\r\nMax-Forwards: 70\r\nMax-Forwards: 5\r\n\r\n"
            )
            .is_err()
        );
        assert!(with("\r\n\r\n", "\r\nl: 0\r\nContent-Length: 1\r\n\r\nx").is_err());
        assert!(with("Call-ID: c1", "Call-ID: c1 c2").is_err());
        assert!(with("\r\n\r\n", "\r\nContent-Length: +0\r\n\r\n").is_err());
    }

    #[test]
    fn request_line_methods_and_uris() {
        // Known methods only as written; ezk would read these as INVITE/OPTIONS.
        assert!(parse(&INVITE.replacen("INVITE sip", "INVITEX sip", 1)).is_err());
        assert!(with("OPTIONS sip", "options sip").is_err());
        // CSeq must repeat the method exactly.
        assert!(with("CSeq: 1 OPTIONS", "CSeq: 1 options").is_err());
        for bad in [
            "<sip:ivr@h>",
            "sip:ivr@h?Route=%3Csip:x%3E",
            "sip:",
            "1sip:ivr@h",
            "ivr@h",
        ] {
            assert!(
                with("sip:ivr@h SIP", &format!("{bad} SIP")).is_err(),
                "{bad}"
            );
        }
        // '?' is legal in a user part; other schemes are for the core to refuse (416).
        for good in [
            "sip:a?b@h",
            "tel:+4930123",
            "urn:service:sos",
            "soap.beep://h:3002",
        ] {
            let m = with("sip:ivr@h SIP", &format!("{good} SIP")).unwrap();
            assert_eq!(m.request_uri(), Some(good));
        }
    }

    #[test]
    fn status_code_says_what_to_answer() {
        let version = with("SIP/2.0\r\nVia", "SIP/3.0\r\nVia").unwrap_err();
        assert!(matches!(version, ParseError::StartLine(_)));
        assert_eq!(version.status_code(), 505);
        assert_eq!(
            with("CSeq: 1 OPTIONS", "CSeq: 1 INFO")
                .unwrap_err()
                .status_code(),
            400
        );
        assert_eq!(ParseError::Missing("Via").status_code(), 400);
    }

    /// maddr would aim our responses at a host of the sender's choosing: only a trusted peer
    /// gets that (RFC 3581 and the source address otherwise).
    #[test]
    fn maddr_is_honoured_only_when_trusted() {
        let m = with(
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "Via: SIP/2.0/UDP 192.0.2.1:5070;maddr=127.0.0.2;branch=z9hG4bK1",
        )
        .unwrap();
        let src: SocketAddr = "192.0.2.1:5070".parse().unwrap();
        assert_eq!(m.response_target(src, false, false), src);
        assert_eq!(
            m.response_target(src, false, true),
            "127.0.0.2:5070".parse().unwrap()
        );
        // Over a stream the connection is the way back, whatever the Via says.
        assert_eq!(m.response_target(src, true, true), src);
    }

    #[test]
    fn oversized_messages_are_refused_with_513() {
        // A 20 KB header line, 300 header lines, 100 Vias: each over a limit.
        let long = with(
            "To: <sip:ivr@h>",
            &format!("To: <sip:ivr@h>\r\nX-Long: {}", "a".repeat(20_000)),
        )
        .unwrap_err();
        assert!(matches!(long, ParseError::TooLarge(_)), "{long:?}");
        assert_eq!(long.status_code(), 513);
        let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
        let e = with("To: <sip:ivr@h>\r\n", &format!("To: <sip:ivr@h>\r\n{many}")).unwrap_err();
        assert!(matches!(e, ParseError::TooLarge(_)), "{e:?}");
        let vias: String = (0..100)
            .map(|i| {
                format!(
                    "Via: SIP/2.0/UDP 10.0.0.{}:5060;branch=z9hG4bKv{i}\r\n",
                    i % 250
                )
            })
            .collect();
        let e = with("From:", &format!("{vias}From:")).unwrap_err();
        assert!(matches!(e, ParseError::TooLarge(_)), "{e:?}");
        // The same on a stream: framing refuses a long head, complete or not, and a
        // Content-Length beyond any message we take.
        let head = format!("OPTIONS sip:a@b SIP/2.0\r\nX-Long: {}", "a".repeat(20_000));
        assert!(matches!(
            frame_len(head.as_bytes()),
            Err(ParseError::TooLarge(_))
        ));
        let complete = format!("{head}\r\n\r\n");
        assert!(matches!(
            frame_len(complete.as_bytes()),
            Err(ParseError::TooLarge(_))
        ));
        assert!(matches!(
            frame_len(b"OPTIONS sip:a@b SIP/2.0\r\nl: 70000\r\n\r\n"),
            Err(ParseError::TooLarge(_))
        ));
        // 70 Vias (one per hop Max-Forwards allows) still parse.
        let vias: String = (0..69)
            .map(|i| format!("Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bKv{i}\r\n"))
            .collect();
        with("From:", &format!("{vias}From:")).unwrap();
    }

    #[test]
    fn frame_len_refuses_ambiguous_lengths() {
        let two = "OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nxx";
        assert!(frame_len(two.as_bytes()).is_err());
        let same = "OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\nContent-Length: 2\r\n\r\nxx";
        assert_eq!(frame_len(same.as_bytes()), Ok(Some(same.len())));
        assert!(frame_len(b"OPTIONS sip:a@b SIP/2.0\r\nl: -1\r\n\r\n").is_err());
    }

    #[test]
    fn header_list_split_respects_brackets() {
        assert_eq!(
            split_header_list("<sip:a,b@h;lr>, <sip:c@h>"),
            vec!["<sip:a,b@h;lr>".to_string(), "<sip:c@h>".to_string()]
        );
    }

    /// An outbound INVITE as ivrd sends it through a proxy: two Route headers, no To tag.
    const OUTBOUND_INVITE: &str = "INVITE sip:+4930123456@pbx.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKout-42;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:edge.example.com;lr>\r\n\
Route: <sip:10.9.9.9:5080;lr;transport=udp>\r\n\
From: \"ivrd\" <sip:ivr@ivr.example.com>;tag=ivr-1\r\n\
To: <sip:+4930123456@pbx.example.com;user=phone>\r\n\
Call-ID: out-1@192.0.2.10\r\n\
CSeq: 2 INVITE\r\n\
Contact: <sip:ivr@192.0.2.10:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 10\r\n\r\nv=0\r\no=x\r\n";

    /// The 486 the callee's side sends back, with its To tag and the proxy's received/rport.
    const BUSY_486: &str = "SIP/2.0 486 Busy Here\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKout-42;rport=5060;received=192.0.2.10\r\n\
From: \"ivrd\" <sip:ivr@ivr.example.com>;tag=ivr-1\r\n\
To: <sip:+4930123456@pbx.example.com;user=phone>;tag=busy-7\r\n\
Call-ID: out-1@192.0.2.10\r\n\
CSeq: 2 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    fn raw_values(m: &Message, name: &Name) -> Vec<String> {
        m.headers.get_raw(name).map(|v| v.to_string()).collect()
    }

    /// What the ACK and the CANCEL share: the INVITE's URI, one Via (its top one), From,
    /// Call-ID, CSeq number, Route headers, Max-Forwards 70, no body and nothing else copied.
    fn assert_invite_companion(m: &Message, invite: &Message, method: Method) {
        assert!(m.is_request());
        assert_eq!(m.method(), &method);
        assert_eq!(m.request_uri(), invite.request_uri());
        assert_eq!(
            m.request_uri(),
            Some("sip:+4930123456@pbx.example.com;user=phone")
        );
        assert_eq!(m.vias.len(), 1);
        assert_eq!(
            raw_values(m, &Name::VIA),
            vec!["SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKout-42;rport"]
        );
        assert_eq!(m.branch(), Some("z9hG4bKout-42"));
        assert_eq!(m.branch(), invite.branch());
        assert_eq!(
            m.header(&Name::FROM),
            Some("\"ivrd\" <sip:ivr@ivr.example.com>;tag=ivr-1")
        );
        assert_eq!(m.from_tag(), Some("ivr-1"));
        assert_eq!(&m.call_id[..], "out-1@192.0.2.10");
        assert_eq!(m.cseq, 2);
        assert_eq!(m.cseq_method, method);
        assert_eq!(
            raw_values(m, &Name::ROUTE),
            vec![
                "<sip:edge.example.com;lr>",
                "<sip:10.9.9.9:5080;lr;transport=udp>"
            ]
        );
        assert_eq!(m.header(&Name::MAX_FORWARDS), Some("70"));
        assert_eq!(m.header(&Name::CONTENT_LENGTH), Some("0"));
        assert!(m.body.is_empty());
        assert_eq!(m.header(&Name::CONTACT), None);
        assert_eq!(m.header(&Name::CONTENT_TYPE), None);
    }

    #[test]
    fn an_outbound_invite_parses_back_and_its_companions_match_it() {
        let sdp = Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n");
        let build = |cseq: u32, credentials: Option<(&str, String)>| {
            invite_request(&OutboundInvite {
                request_uri: "sip:+4915112345678@trunk.example.com",
                from: "sip:ivrd@127.0.0.1",
                from_tag: "ft1",
                call_id: "out-1@ivrd",
                cseq,
                protocol: super::super::transport::Protocol::Udp,
                via_host: "127.0.0.1:5060".parse().unwrap(),
                branch: "z9hG4bKinv1",
                contact: "sip:ivrd@127.0.0.1:5060",
                credentials,
                user_agent: "ivrd/test",
                sdp: sdp.clone(),
            })
        };
        let invite = Message::parse(build(1, None)).unwrap();
        assert!(invite.is_request());
        assert_eq!(invite.method().to_string(), "INVITE");
        assert_eq!(
            invite.request_uri(),
            Some("sip:+4915112345678@trunk.example.com")
        );
        assert_eq!(invite.from_tag(), Some("ft1"));
        assert_eq!(invite.to_tag(), None);
        assert_eq!((invite.cseq, &invite.call_id[..]), (1, "out-1@ivrd"));
        assert_eq!(
            invite.contact_uri().as_deref(),
            Some("sip:ivrd@127.0.0.1:5060")
        );
        assert_eq!(invite.header(&Name::CONTENT_TYPE), Some("application/sdp"));
        assert_eq!(&invite.body[..], &sdp[..]);
        let via = invite
            .headers
            .get_raw(&Name::VIA)
            .next()
            .unwrap()
            .to_string();
        assert!(
            via.contains("branch=z9hG4bKinv1") && via.ends_with(";rport"),
            "{via}"
        );
        // The retry after a 407 carries the credentials under the name the challenge asked for.
        let retry =
            Message::parse(build(2, Some(("Proxy-Authorization", "Digest x".into())))).unwrap();
        assert_eq!(retry.cseq, 2);
        assert_eq!(retry.header(&Name::PROXY_AUTHORIZATION), Some("Digest x"));
        // Its CANCEL has the same branch and CSeq number, and no body.
        let cancel = Message::parse(cancel_for(&invite)).unwrap();
        assert_eq!(cancel.method().to_string(), "CANCEL");
        assert_eq!(cancel.cseq, 1);
        assert!(
            cancel
                .headers
                .get_raw(&Name::VIA)
                .next()
                .unwrap()
                .contains("branch=z9hG4bKinv1")
        );
        assert!(cancel.body.is_empty());
    }

    #[test]
    fn ack_for_failure_follows_rfc3261_17_1_1_3() {
        let invite = parse(OUTBOUND_INVITE).unwrap();
        let busy = parse(BUSY_486).unwrap();
        let bytes = ack_for_failure(&invite, &busy);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("ACK sip:+4930123456@pbx.example.com;user=phone SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        let ack = Message::parse(bytes).unwrap();
        assert_invite_companion(&ack, &invite, Method::ACK);
        // To is the response's, with the tag the UAS added.
        assert_eq!(
            ack.header(&Name::TO),
            Some("<sip:+4930123456@pbx.example.com;user=phone>;tag=busy-7")
        );
        assert_eq!(ack.to_tag(), Some("busy-7"));
        // Not the response's Via (with received/rport filled in): the INVITE's.
        assert_eq!(ack.vias[0].params.get("received"), None);
    }

    #[test]
    fn cancel_for_follows_rfc3261_9_1() {
        let invite = parse(OUTBOUND_INVITE).unwrap();
        let bytes = cancel_for(&invite);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("CANCEL sip:+4930123456@pbx.example.com;user=phone SIP/2.0\r\n"),
            "{text}"
        );
        let cancel = Message::parse(bytes).unwrap();
        assert_invite_companion(&cancel, &invite, Method::CANCEL);
        // To as in the INVITE: no tag.
        assert_eq!(cancel.header(&Name::TO), invite.header(&Name::TO));
        assert_eq!(cancel.to_tag(), None);
    }

    /// Only the top Via is copied, even from a comma-joined list, and a request without Route
    /// headers gives none.
    #[test]
    fn ack_and_cancel_take_only_the_top_via_and_no_invented_routes() {
        let invite = parse(
            &OUTBOUND_INVITE
                .replace(
                    "branch=z9hG4bKout-42;rport\r\n",
                    "branch=z9hG4bKout-42;rport, SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKlower\r\n",
                )
                .replace("Route: <sip:edge.example.com;lr>\r\n", "")
                .replace("Route: <sip:10.9.9.9:5080;lr;transport=udp>\r\n", ""),
        )
        .unwrap();
        assert_eq!(invite.vias.len(), 2);
        let busy = parse(BUSY_486).unwrap();
        for bytes in [ack_for_failure(&invite, &busy), cancel_for(&invite)] {
            let m = Message::parse(bytes).unwrap();
            assert_eq!(m.vias.len(), 1);
            assert_eq!(m.branch(), Some("z9hG4bKout-42"));
            assert!(raw_values(&m, &Name::ROUTE).is_empty());
        }
    }
}
