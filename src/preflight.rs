//! Before a call fails on it: every address the config binds belongs to this host and can be
//! bound. `ivrd check` reports each problem with the setting and the address; start-up
//! refuses a media address that is not on the host (the SIP and admin binds fail by
//! themselves, naming their address), instead of logging "ready" and failing the first call
//! with "no free RTP port".
//!
//! A port in use is only a warning for `check`: the admin usually checks a new config while
//! the running daemon holds its ports.

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};

use crate::config::Config;

/// How many ports of the RTP range `check` tries before it says none is free.
const RTP_PROBES: u32 = 64;

/// One address the config names that cannot be used as it is.
#[derive(Debug)]
pub struct AddrProblem {
    /// The setting, e.g. `[media] rtp_ip`.
    pub setting: &'static str,
    /// The address as the config gives it.
    pub addr: String,
    /// Why it cannot be used.
    pub why: String,
    /// Only in use (by the running daemon, perhaps): a warning, not an error.
    pub in_use: bool,
}

impl fmt::Display for AddrProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.setting, self.addr, self.why)
    }
}

/// A bind error as a sentence the admin can act on.
pub fn explain(e: &std::io::Error) -> (String, bool) {
    match e.kind() {
        ErrorKind::AddrNotAvailable => (
            format!("not an address of this host ({e}); use one of its addresses, 0.0.0.0 or ::"),
            false,
        ),
        ErrorKind::AddrInUse => (format!("in use by another process ({e})"), true),
        ErrorKind::PermissionDenied => (
            format!("not allowed ({e}); ports below 1024 need CAP_NET_BIND_SERVICE"),
            false,
        ),
        _ => (e.to_string(), false),
    }
}

fn problem(setting: &'static str, addr: impl ToString, e: &std::io::Error) -> AddrProblem {
    let (why, in_use) = explain(e);
    AddrProblem {
        setting,
        addr: addr.to_string(),
        why,
        in_use,
    }
}

/// Whether the media address `ip` is on this host (a socket on any port can bind it).
pub fn media_ip_usable(ip: IpAddr) -> Result<(), std::io::Error> {
    UdpSocket::bind(SocketAddr::new(ip, 0)).map(drop)
}

/// Every problem with the addresses `cfg` binds: SIP listeners, the admin and API listeners,
/// the media addresses and their port range.
pub fn probe(cfg: &Config) -> Vec<AddrProblem> {
    let mut out = Vec::new();
    for a in &cfg.sip.udp {
        if let Err(e) = UdpSocket::bind(a) {
            out.push(problem("[sip] udp", a, &e));
        }
    }
    for (setting, addrs) in [("[sip] tcp", &cfg.sip.tcp), ("[sip] tls", &cfg.sip.tls)] {
        for a in addrs {
            if let Err(e) = TcpListener::bind(a) {
                out.push(problem(setting, a, &e));
            }
        }
    }
    for (setting, listen) in [
        ("[admin] listen", &cfg.admin.listen),
        ("[api] listen", &cfg.api.listen),
    ] {
        if listen.is_empty() {
            continue;
        }
        match listen.to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    if let Err(e) = TcpListener::bind(a) {
                        out.push(problem(setting, listen, &e));
                        break;
                    }
                }
            }
            Err(e) => out.push(AddrProblem {
                setting,
                addr: listen.clone(),
                why: format!("not an address ({e})"),
                in_use: false,
            }),
        }
    }
    let media = [
        ("[media] rtp_ip", Some(cfg.media.rtp_ip)),
        ("[media] rtp_ip6", cfg.media.rtp_ip6),
    ];
    for (setting, ip) in media {
        let Some(ip) = ip else { continue };
        if let Err(e) = media_ip_usable(ip) {
            out.push(problem(setting, ip, &e));
            continue;
        }
        // Some port of the range must be free; try the first few.
        let (min, max) = (cfg.media.rtp_port_min, cfg.media.rtp_port_max);
        let free = (u32::from(min)..=u32::from(max))
            .take(RTP_PROBES as usize)
            .filter_map(|p| u16::try_from(p).ok())
            .any(|p| UdpSocket::bind(SocketAddr::new(ip, p)).is_ok());
        if !free {
            out.push(AddrProblem {
                setting,
                addr: format!("{ip} ports {min}..={max}"),
                why: format!(
                    "the first {} ports of the range are all in use",
                    RTP_PROBES.min(u32::from(max.saturating_sub(min)) + 1)
                ),
                in_use: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(body: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.toml");
        std::fs::write(&path, body).unwrap();
        Config::load_without_secrets(&path).unwrap()
    }

    #[test]
    fn an_address_not_on_the_host_is_named_and_a_port_in_use_is_a_warning() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let c = cfg(&format!(
            "[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = []\n[admin]\nlisten = \"\"\n\
             [media]\nrtp_ip = \"192.0.2.10\"\n"
        ));
        let problems = probe(&c);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{text:?}");
        assert!(problems[0].in_use, "{text:?}");
        assert!(
            text[0].starts_with(&format!("[sip] udp = 127.0.0.1:{port}: in use")),
            "{text:?}"
        );
        assert!(!problems[1].in_use);
        assert!(
            text[1].starts_with("[media] rtp_ip = 192.0.2.10: not an address of this host"),
            "{text:?}"
        );
    }

    #[test]
    fn the_api_listener_is_probed_like_the_admin_listener() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let c = cfg(&format!(
            "[sip]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[admin]\nlisten = \"\"\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\n"
        ));
        let text: Vec<String> = probe(&c).iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].starts_with(&format!("[api] listen = 127.0.0.1:{port}: in use")),
            "{text:?}"
        );
        let c = cfg("[sip]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[api]\nlisten = \"nowhere\"\n");
        let text: Vec<String> = probe(&c).iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("[api] listen = nowhere: not an address")),
            "{text:?}"
        );
    }

    #[test]
    fn a_usable_config_has_no_problems() {
        let c = cfg(
            "[sip]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [media]\nrtp_ip = \"127.0.0.1\"\n",
        );
        let problems = probe(&c);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
