//! HTTP Digest authentication for requests we send (RFC 3261 22, RFC 2617, RFC 8760).
//!
//! A PBX may challenge our REFER with 401 (WWW-Authenticate) or 407 (Proxy-Authenticate);
//! we answer once with the credentials from the config. MD5 is what nearly every PBX sends;
//! SHA-256 (RFC 8760) is supported for those that prefer it. `qop=auth` is used whenever
//! the challenge offers it (it protects against chosen-plaintext replay of the response).

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// A parsed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The challenge offered `qop=auth` (possibly among others).
    pub qop_auth: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

/// Parses `Digest realm="..", nonce="..", ...`; `None` for other schemes or algorithms we
/// cannot answer (then the transfer fails with the PBX's status, which is the honest outcome).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let rest = value.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut algorithm = Algorithm::Md5;
    let mut qop_auth = false;
    for (k, v) in split_params(params) {
        match k.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "nonce" => nonce = Some(v),
            "opaque" => opaque = Some(v),
            "algorithm" => {
                algorithm = match v.to_ascii_uppercase().as_str() {
                    "MD5" => Algorithm::Md5,
                    "SHA-256" => Algorithm::Sha256,
                    _ => return None,
                }
            }
            "qop" => qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
            _ => {}
        }
    }
    Some(Challenge {
        realm: realm?,
        nonce: nonce?,
        opaque,
        algorithm,
        qop_auth,
    })
}

/// `key=value` pairs, values unquoted; commas inside quotes are kept.
fn split_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut parts = Vec::new();
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
    }
    out
}

fn hex_hash(alg: Algorithm, data: &str) -> String {
    match alg {
        Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
        Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Authorization / Proxy-Authorization value answering `ch` for `method uri`.
pub fn authorization(
    ch: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> String {
    let ha1 = hex_hash(ch.algorithm, &format!("{username}:{}:{password}", ch.realm));
    let ha2 = hex_hash(ch.algorithm, &format!("{method}:{uri}"));
    let alg = match ch.algorithm {
        Algorithm::Md5 => "MD5",
        Algorithm::Sha256 => "SHA-256",
    };
    let mut out = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm={alg}",
        ch.realm, ch.nonce
    );
    let response = if ch.qop_auth {
        let nc = "00000001";
        out.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        hex_hash(
            ch.algorithm,
            &format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", ch.nonce),
        )
    } else {
        hex_hash(ch.algorithm, &format!("{ha1}:{}:{ha2}", ch.nonce))
    };
    out.push_str(&format!(", response=\"{response}\""));
    if let Some(o) = &ch.opaque {
        out.push_str(&format!(", opaque=\"{o}\""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_response() {
        // RFC 2617 3.5: the worked example (qop=auth) must give its published response.
        let ch = parse_challenge(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert!(ch.qop_auth);
        let a = authorization(
            &ch,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
        );
        assert!(
            a.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{a}"
        );
        assert!(a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
    }

    #[test]
    fn without_qop_and_sha256() {
        let ch = parse_challenge("Digest realm=\"pbx\", nonce=\"abc\"").unwrap();
        assert!(!ch.qop_auth);
        let a = authorization(&ch, "ivrd", "secret", "REFER", "sip:queue@pbx", "x");
        // HA1 = md5(ivrd:pbx:secret), HA2 = md5(REFER:sip:queue@pbx), response = md5(HA1:abc:HA2)
        let ha1 = hex_hash(Algorithm::Md5, "ivrd:pbx:secret");
        let ha2 = hex_hash(Algorithm::Md5, "REFER:sip:queue@pbx");
        let want = hex_hash(Algorithm::Md5, &format!("{ha1}:abc:{ha2}"));
        assert!(a.contains(&format!("response=\"{want}\"")));
        let sha =
            parse_challenge("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\"")
                .unwrap();
        assert_eq!(sha.algorithm, Algorithm::Sha256);
        assert!(
            authorization(&sha, "u", "p", "REFER", "sip:q@h", "c").contains("algorithm=SHA-256")
        );
        assert!(parse_challenge("Basic realm=\"x\"").is_none());
        assert!(parse_challenge("Digest realm=\"x\", nonce=\"n\", algorithm=AKAv1-MD5").is_none());
    }
}
