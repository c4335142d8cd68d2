//! SIP INFO DTMF bodies: `application/dtmf-relay` and `application/dtmf`.
//!
//! Neither format has a formal standard (dtmf-relay is a Cisco convention,
//! `application/dtmf` comes from an expired draft), and senders vary in
//! case, spacing, line endings and whether `*`/`#` are sent as characters
//! or as the RFC 4733 event codes 10/11. The parser is therefore lenient
//! about form but strict about the key itself: anything it cannot map to
//! exactly one of the 16 keys is an error, never a guess.

use super::Digit;

/// Why an INFO body did not yield a digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// The Content-Type is not one of the DTMF body types.
    #[error("content type is not application/dtmf-relay or application/dtmf")]
    UnsupportedContentType,
    /// The body is not UTF-8 text.
    #[error("DTMF INFO body is not UTF-8")]
    NotText,
    /// A dtmf-relay body without a `Signal=` line.
    #[error("dtmf-relay body has no Signal line")]
    MissingSignal,
    /// The key is empty or not one of 0-9, *, #, A-D (or 10-15).
    #[error("DTMF INFO body does not name a valid key")]
    InvalidSignal,
}

/// Extract the key from a SIP INFO request body.
///
/// `content_type` is the Content-Type header value; it is matched
/// case-insensitively and its parameters (`; charset=...`) are ignored.
/// For `application/dtmf-relay` the body is `Key=Value` lines, of which
/// `Signal` carries the key and the rest (`Duration`, ...) are ignored.
/// For `application/dtmf` the body is the key alone. Each type also
/// accepts the other's body form, since devices mislabel them.
pub fn parse_info(content_type: &str, body: &[u8]) -> Result<Digit, InfoError> {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let relay = if media_type.eq_ignore_ascii_case("application/dtmf-relay") {
        true
    } else if media_type.eq_ignore_ascii_case("application/dtmf") {
        false
    } else {
        return Err(InfoError::UnsupportedContentType);
    };
    let text = std::str::from_utf8(body).map_err(|_| InfoError::NotText)?;

    let bare = text.trim();
    if relay || bare.contains(['=', ':']) {
        match signal_value(text) {
            Some(value) => parse_key(value),
            // A relay body that is just a key: mislabelled application/dtmf.
            None if !bare.is_empty() && !bare.contains(['=', ':']) => parse_key(bare),
            None => Err(InfoError::MissingSignal),
        }
    } else {
        parse_key(bare)
    }
}

/// The value of the `Signal` line of a dtmf-relay body, if any.
///
/// Lines may end in CRLF, LF or CR; `:` is accepted as well as `=`
/// because a few devices write header-style lines.
fn signal_value(text: &str) -> Option<&str> {
    text.split(['\r', '\n']).find_map(|line| {
        let (key, value) = line.split_once(['=', ':'])?;
        key.trim()
            .eq_ignore_ascii_case("signal")
            .then_some(value.trim())
    })
}

/// A key written as one character or as an RFC 4733 event code (0-15).
fn parse_key(value: &str) -> Result<Digit, InfoError> {
    let value = value.trim_matches('"').trim();
    let mut chars = value.chars();
    let key = match (chars.next(), chars.next(), chars.next()) {
        (Some(c), None, _) => Digit::from_char(c),
        // Two decimal digits: an event code such as 10 for '*'.
        (Some(a @ '0'..='9'), Some(b @ '0'..='9'), None) => {
            let code = (a as u8 - b'0') * 10 + (b as u8 - b'0');
            Digit::from_event(code)
        }
        _ => None,
    };
    key.ok_or(InfoError::InvalidSignal)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "application/dtmf-relay";
    const DTMF: &str = "application/dtmf";

    fn key(ct: &str, body: &str) -> Result<char, InfoError> {
        parse_info(ct, body.as_bytes()).map(Digit::as_char)
    }

    #[test]
    fn dtmf_relay_canonical_body() {
        assert_eq!(key(RELAY, "Signal=5\r\nDuration=160\r\n"), Ok('5'));
        assert_eq!(key(RELAY, "Signal=#\r\nDuration=250\r\n"), Ok('#'));
        assert_eq!(key(RELAY, "Signal=*\r\nDuration=250\r\n"), Ok('*'));
    }

    #[test]
    fn dtmf_relay_lenient_forms() {
        let cases = [
            ("signal=7\nduration=100\n", '7'),
            ("SIGNAL = 8 \r\n", '8'),
            ("Duration=160\r\nSignal=9\r\n", '9'),
            ("  Signal=0", '0'),
            ("Signal=10\r\nDuration=160", '*'),
            ("Signal=11\r\nDuration=160", '#'),
            ("Signal=12", 'A'),
            ("Signal=15", 'D'),
            ("Signal=d\r\n", 'D'),
            ("Signal=\"3\"\r\n", '3'),
            ("Signal: 4\r\nDuration: 100\r\n", '4'),
            ("Signal=2\rDuration=100\r", '2'),
            ("Signal=06", '6'),
        ];
        for (body, want) in cases {
            assert_eq!(key(RELAY, body), Ok(want), "{body:?}");
        }
    }

    #[test]
    fn content_type_matching_is_case_insensitive_and_ignores_params() {
        assert_eq!(key("Application/DTMF-Relay", "Signal=1"), Ok('1'));
        assert_eq!(
            key(" application/dtmf-relay ; charset=utf-8", "Signal=1"),
            Ok('1')
        );
        assert_eq!(key("APPLICATION/DTMF;foo=bar", "1"), Ok('1'));
        assert_eq!(
            key("text/plain", "Signal=1"),
            Err(InfoError::UnsupportedContentType)
        );
        assert_eq!(
            key("application/dtmf-relayx", "Signal=1"),
            Err(InfoError::UnsupportedContentType)
        );
        assert_eq!(key("", "1"), Err(InfoError::UnsupportedContentType));
    }

    #[test]
    fn application_dtmf_bare_key() {
        let cases = [
            ("5", '5'),
            ("10", '*'),
            ("11", '#'),
            ("#", '#'),
            ("*", '*'),
            (" 7\r\n", '7'),
            ("b", 'B'),
        ];
        for (body, want) in cases {
            assert_eq!(key(DTMF, body), Ok(want), "{body:?}");
        }
        // Mislabelled bodies in either direction still work.
        assert_eq!(key(DTMF, "Signal=3\r\nDuration=100"), Ok('3'));
        assert_eq!(key(RELAY, "6\r\n"), Ok('6'));
    }

    #[test]
    fn invalid_bodies_are_errors() {
        assert_eq!(
            key(RELAY, "Duration=160\r\n"),
            Err(InfoError::MissingSignal)
        );
        assert_eq!(key(RELAY, ""), Err(InfoError::MissingSignal));
        assert_eq!(key(RELAY, "Signal=\r\n"), Err(InfoError::InvalidSignal));
        assert_eq!(key(RELAY, "Signal=E"), Err(InfoError::InvalidSignal));
        assert_eq!(key(RELAY, "Signal=16"), Err(InfoError::InvalidSignal));
        assert_eq!(key(RELAY, "Signal=55"), Err(InfoError::InvalidSignal));
        assert_eq!(key(RELAY, "Signal=123"), Err(InfoError::InvalidSignal));
        assert_eq!(key(RELAY, "Signal=-1"), Err(InfoError::InvalidSignal));
        assert_eq!(key(DTMF, ""), Err(InfoError::InvalidSignal));
        assert_eq!(key(DTMF, "12 3"), Err(InfoError::InvalidSignal));
        assert_eq!(key(DTMF, "five"), Err(InfoError::InvalidSignal));
        assert_eq!(
            parse_info(RELAY, b"Signal=\xff\r\n"),
            Err(InfoError::NotText)
        );
    }
}
