//! A dialog (RFC 3261 12), as the UAS that answered an INVITE ([`Dialog::new_uas`]) or the
//! UAC whose INVITE was answered ([`Dialog::new_uac`], for calls ivrd places): its identity,
//! sequence numbers, route set and remote target, and the in-dialog requests built from them
//! (and, for a UAC, the ACK of the 2xx, [`Dialog::ack`]). No IO: the call owns one and hands
//! the bytes it builds to the SIP core.

use super::message::{Message, extract_uri, finish, parse_sip_uri};
use super::transport::Protocol;
use bytes::Bytes;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The key the SIP core routes in-dialog requests by: Call-ID plus both tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogId {
    /// The dialog a request we received belongs to (our tag is in To, theirs in From).
    pub fn of_request(msg: &Message) -> Option<DialogId> {
        Some(DialogId {
            call_id: msg.call_id.to_string(),
            local_tag: msg.to_tag()?.to_string(),
            remote_tag: msg.from_tag().unwrap_or_default().to_string(),
        })
    }
}

/// Why an in-dialog request is refused before it reaches the call.
#[derive(Debug, PartialEq, Eq)]
pub enum InDialogError {
    /// CSeq lower than one already seen (RFC 3261 12.2.2): answer 500.
    CSeqOutOfOrder,
}

#[derive(Debug, Clone)]
pub struct Dialog {
    pub id: DialogId,
    /// Our URI as the caller addressed us (their To), with our tag: the From of our requests.
    local_party: String,
    /// The caller's From header value: the To of our requests.
    remote_party: String,
    local_cseq: u32,
    remote_cseq: u32,
    /// Where requests go: the caller's Contact (RFC 3261 12.1.1).
    pub remote_target: String,
    /// Record-Route values in order, used as Route for our requests.
    pub route_set: Vec<String>,
    /// Our Contact URI.
    pub local_contact: String,
    pub protocol: Protocol,
}

impl Dialog {
    /// The dialog created by answering `invite` with `local_tag`.
    pub fn new_uas(
        invite: &Message,
        local_tag: &str,
        local_contact: String,
        protocol: Protocol,
    ) -> Dialog {
        let to_raw = invite.header(&ezk_sip_types::Name::TO).unwrap_or_default();
        let from_raw = invite
            .header(&ezk_sip_types::Name::FROM)
            .unwrap_or_default();
        Dialog {
            id: DialogId {
                call_id: invite.call_id.to_string(),
                local_tag: local_tag.to_string(),
                remote_tag: invite.from_tag().unwrap_or_default().to_string(),
            },
            local_party: format!("{to_raw};tag={local_tag}"),
            remote_party: from_raw.to_string(),
            // Our own requests start from an arbitrary number (RFC 3261 8.1.1.5); 1 is fine
            // and reads well in traces.
            local_cseq: 0,
            remote_cseq: invite.cseq,
            remote_target: invite.contact_uri().unwrap_or_else(|| {
                extract_uri(
                    invite
                        .header(&ezk_sip_types::Name::FROM)
                        .unwrap_or_default(),
                )
                .to_string()
            }),
            route_set: invite.record_routes(),
            local_contact,
            protocol,
        }
    }

    /// The dialog created when the INVITE we sent (`invite`) was answered by the 2xx `ok`
    /// (RFC 3261 12.1.2): our tag is the INVITE's From tag, theirs the 2xx's To tag; the route
    /// set is the 2xx's Record-Route in reverse; the remote target is its Contact; our CSeq
    /// goes on from the INVITE's, and theirs is unknown until their first request. Each 2xx
    /// with another To tag (a fork) is a dialog of its own.
    pub fn new_uac(
        invite: &Message,
        ok: &Message,
        local_contact: String,
        protocol: Protocol,
    ) -> Dialog {
        let mut route_set = ok.record_routes();
        route_set.reverse();
        Dialog {
            id: DialogId {
                call_id: invite.call_id.to_string(),
                local_tag: invite.from_tag().unwrap_or_default().to_string(),
                remote_tag: ok.to_tag().unwrap_or_default().to_string(),
            },
            local_party: invite
                .header(&ezk_sip_types::Name::FROM)
                .unwrap_or_default()
                .to_string(),
            remote_party: ok
                .header(&ezk_sip_types::Name::TO)
                .unwrap_or_default()
                .to_string(),
            local_cseq: invite.cseq,
            // Any first request of theirs is in order.
            remote_cseq: 0,
            remote_target: ok
                .contact_uri()
                .unwrap_or_else(|| invite.request_uri().unwrap_or_default().to_string()),
            route_set,
            local_contact,
            protocol,
        }
    }

    /// The ACK of the 2xx that made this (UAC) dialog (RFC 3261 13.2.2.4): an in-dialog
    /// request with the INVITE's CSeq number (not a new one), its own branch, and the
    /// credentials the INVITE carried (`extra_headers`: e.g. `Proxy-Authorization`). The
    /// transaction layer does not send it: the call does, for every 2xx it receives.
    pub fn ack(
        &mut self,
        via_host: SocketAddr,
        branch: &str,
        extra_headers: &[(&str, String)],
        body: Option<(&str, Bytes)>,
    ) -> Bytes {
        let cseq = self.local_cseq;
        self.local_cseq = cseq.saturating_sub(1);
        let ack = self.request("ACK", via_host, branch, extra_headers, body);
        self.local_cseq = cseq;
        ack
    }

    /// Checks and records the CSeq of an in-dialog request from the caller.
    pub fn accept_remote_cseq(&mut self, msg: &Message) -> Result<(), InDialogError> {
        // ACK and CANCEL reuse the CSeq of the INVITE they belong to.
        if matches!(msg.method().to_string().as_str(), "ACK" | "CANCEL") {
            return Ok(());
        }
        if msg.cseq < self.remote_cseq {
            return Err(InDialogError::CSeqOutOfOrder);
        }
        self.remote_cseq = msg.cseq;
        Ok(())
    }

    /// A target refresh (re-INVITE) may change the caller's Contact (RFC 3261 12.2.2).
    pub fn refresh_target(&mut self, msg: &Message) {
        if let Some(c) = msg.contact_uri() {
            self.remote_target = c;
        }
    }

    /// Builds an in-dialog request. Returns the bytes and the branch (the client transaction's
    /// key). `via_host` is the address the request leaves from.
    pub fn request(
        &mut self,
        method: &str,
        via_host: SocketAddr,
        branch: &str,
        extra_headers: &[(&str, String)],
        body: Option<(&str, Bytes)>,
    ) -> Bytes {
        self.local_cseq += 1;
        // Strict vs loose routing (RFC 3261 12.2.1.1): with a loose-routing first hop (;lr) the
        // Request-URI is the remote target and the route set goes in Route headers.
        let (request_uri, routes) = match self.route_set.first() {
            Some(first) if !first.contains(";lr") => {
                let mut rest: Vec<String> = self.route_set[1..].to_vec();
                rest.push(format!("<{}>", self.remote_target));
                (extract_uri(first).to_string(), rest)
            }
            _ => (self.remote_target.clone(), self.route_set.clone()),
        };
        let mut head = String::with_capacity(512);
        let _ = write!(head, "{method} {request_uri} SIP/2.0\r\n");
        let _ = write!(
            head,
            "Via: SIP/2.0/{} {};branch={branch};rport\r\n",
            self.protocol.via_name(),
            fmt_host_port(via_host)
        );
        let _ = write!(head, "Max-Forwards: 70\r\n");
        for r in &routes {
            let _ = write!(head, "Route: {r}\r\n");
        }
        let _ = write!(head, "From: {}\r\n", self.local_party);
        let _ = write!(head, "To: {}\r\n", self.remote_party);
        let _ = write!(head, "Call-ID: {}\r\n", self.id.call_id);
        let _ = write!(head, "CSeq: {} {method}\r\n", self.local_cseq);
        let _ = write!(head, "Contact: <{}>\r\n", self.local_contact);
        for (name, value) in extra_headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        finish(head, body)
    }

    /// Where our in-dialog requests go on the wire: the first route, else the remote target.
    /// Only IP literals are resolved here; a host name gives `None` and the caller falls back
    /// to the address the dialog's INVITE came from. Without a port, the default of the
    /// transport the dialog uses (5061 for `sips:` and TLS, RFC 3261 19.1.2).
    pub fn next_hop(&self, protocol: Protocol) -> Option<SocketAddr> {
        let uri = match self.route_set.first() {
            Some(r) => extract_uri(r).to_string(),
            None => self.remote_target.clone(),
        };
        let sip = parse_sip_uri(&uri)?;
        let ip: IpAddr = sip.host_port.ip()?;
        let default_port = if sip.sips || protocol.secure() {
            5061
        } else {
            5060
        };
        Some(SocketAddr::new(
            ip,
            sip.host_port.port.unwrap_or(default_port),
        ))
    }
}

/// `host:port` with IPv6 in brackets, as Via and URIs need it.
pub fn fmt_host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(extra: &str) -> Message {
        let s = format!(
            "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1\r\n\
From: \"A\" <sip:alice@example.com>;tag=ft\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: cid\r\n\
CSeq: 7 INVITE\r\nContact: <sip:alice@10.0.0.1:5070;transport=udp>\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(s)).unwrap()
    }

    #[test]
    fn bye_is_addressed_to_the_contact_with_swapped_parties() {
        let inv = invite("");
        let mut d = Dialog::new_uas(&inv, "lt", "sip:ivr@127.0.0.1:5060".into(), Protocol::Udp);
        let bye = d.request(
            "BYE",
            "127.0.0.1:5060".parse().unwrap(),
            "z9hG4bKb",
            &[],
            None,
        );
        let m = Message::parse(bye).unwrap();
        assert_eq!(
            m.request_uri(),
            Some("sip:alice@10.0.0.1:5070;transport=udp")
        );
        assert_eq!(m.from_tag(), Some("lt"));
        assert_eq!(m.to_tag(), Some("ft"));
        assert_eq!(m.cseq, 1);
        assert_eq!(&m.call_id[..], "cid");
        assert_eq!(
            d.next_hop(Protocol::Udp),
            Some("10.0.0.1:5070".parse().unwrap())
        );
        let second = Message::parse(d.request(
            "INFO",
            "127.0.0.1:5060".parse().unwrap(),
            "z9hG4bKc",
            &[],
            None,
        ))
        .unwrap();
        assert_eq!(second.cseq, 2);
    }

    #[test]
    fn loose_route_set_becomes_route_headers() {
        let inv = invite("Record-Route: <sip:p1.example.com;lr>, <sip:10.9.9.9:5080;lr>\r\n");
        let mut d = Dialog::new_uas(&inv, "lt", "sip:ivr@127.0.0.1".into(), Protocol::Udp);
        let bye = Message::parse(d.request(
            "BYE",
            "127.0.0.1:5060".parse().unwrap(),
            "z9hG4bKb",
            &[],
            None,
        ))
        .unwrap();
        let routes: Vec<_> = bye
            .headers
            .get_raw(&ezk_sip_types::Name::ROUTE)
            .map(|v| v.to_string())
            .collect();
        assert_eq!(
            routes,
            vec!["<sip:p1.example.com;lr>", "<sip:10.9.9.9:5080;lr>"]
        );
        assert_eq!(
            bye.request_uri(),
            Some("sip:alice@10.0.0.1:5070;transport=udp")
        );
        // A host name cannot be resolved here: the caller falls back to the flow.
        assert_eq!(d.next_hop(Protocol::Udp), None);
    }

    /// A dialog over TLS whose Contact has no port is reached on 5061, not 5060 (RFC 3261
    /// 19.1.2): a reconnect there must find the peer's TLS listener.
    #[test]
    fn the_next_hop_over_tls_defaults_to_5061() {
        let s = "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:40000;branch=z9hG4bK1\r\n\
From: <sip:alice@example.com>;tag=ft\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: cid\r\n\
CSeq: 7 INVITE\r\nContact: <sip:alice@10.0.0.1;transport=tls>\r\nContent-Length: 0\r\n\r\n";
        let inv = Message::parse(Bytes::from(s)).unwrap();
        let d = Dialog::new_uas(&inv, "lt", "sip:ivr@127.0.0.1:5061".into(), Protocol::Tls);
        assert_eq!(
            d.next_hop(Protocol::Tls),
            Some("10.0.0.1:5061".parse().unwrap())
        );
        assert_eq!(
            d.next_hop(Protocol::Udp),
            Some("10.0.0.1:5060".parse().unwrap())
        );
    }

    #[test]
    fn remote_cseq_must_not_go_backwards() {
        let inv = invite("");
        let mut d = Dialog::new_uas(&inv, "lt", "sip:ivr@h".into(), Protocol::Udp);
        let mk = |n: u32, m: &str| {
            Message::parse(Bytes::from(format!(
                "{m} sip:ivr@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{n}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:ivr@h>;tag=lt\r\nCall-ID: cid\r\nCSeq: {n} {m}\r\n\r\n"
            )))
            .unwrap()
        };
        assert!(d.accept_remote_cseq(&mk(8, "INFO")).is_ok());
        assert_eq!(
            d.accept_remote_cseq(&mk(3, "INFO")),
            Err(InDialogError::CSeqOutOfOrder)
        );
        assert!(d.accept_remote_cseq(&mk(7, "ACK")).is_ok());
    }

    /// The INVITE ivrd sends for an outbound call, and the callee's 2xx through two proxies.
    fn placed() -> (Message, Message) {
        let invite = Message::parse(Bytes::from(
            "INVITE sip:+4915112345678@trunk.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinv;rport\r\n\
From: <sip:ivrd@127.0.0.1>;tag=ours\r\nTo: <sip:+4915112345678@trunk.example.com>\r\n\
Call-ID: out-1\r\nCSeq: 2 INVITE\r\nProxy-Authorization: Digest username=\"ivrd\"\r\n\
Contact: <sip:ivrd@127.0.0.1:5060>\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let ok = Message::parse(Bytes::from(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinv;rport\r\n\
Record-Route: <sip:10.0.0.2:5080;lr>\r\nRecord-Route: <sip:10.0.0.1;lr>\r\n\
From: <sip:ivrd@127.0.0.1>;tag=ours\r\nTo: <sip:+4915112345678@trunk.example.com>;tag=theirs\r\n\
Call-ID: out-1\r\nCSeq: 2 INVITE\r\nContact: <sip:callee@10.0.0.3:5062>\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        (invite, ok)
    }

    #[test]
    fn a_uac_dialog_reverses_the_route_set_and_acks_with_the_invites_cseq() {
        let (invite, ok) = placed();
        let mut d = Dialog::new_uac(
            &invite,
            &ok,
            "sip:ivrd@127.0.0.1:5060".into(),
            Protocol::Udp,
        );
        assert_eq!(
            d.id,
            DialogId {
                call_id: "out-1".into(),
                local_tag: "ours".into(),
                remote_tag: "theirs".into(),
            }
        );
        // The first hop is the proxy nearest to us: the last Record-Route of the 2xx.
        assert_eq!(
            d.next_hop(Protocol::Udp),
            Some("10.0.0.1:5060".parse().unwrap())
        );
        let ack = Message::parse(d.ack(
            "127.0.0.1:5060".parse().unwrap(),
            "z9hG4bKack",
            &[("Proxy-Authorization", "Digest username=\"ivrd\"".into())],
            None,
        ))
        .unwrap();
        assert_eq!(ack.method().to_string(), "ACK");
        assert_eq!(ack.cseq, 2, "the INVITE's CSeq number");
        assert_eq!(ack.request_uri(), Some("sip:callee@10.0.0.3:5062"));
        let routes: Vec<_> = ack
            .headers
            .get_raw(&ezk_sip_types::Name::ROUTE)
            .map(|v| v.to_string())
            .collect();
        assert_eq!(routes, ["<sip:10.0.0.1;lr>", "<sip:10.0.0.2:5080;lr>"]);
        assert_eq!(ack.from_tag(), Some("ours"));
        assert_eq!(ack.to_tag(), Some("theirs"));
        assert!(
            ack.header(&ezk_sip_types::Name::PROXY_AUTHORIZATION)
                .is_some()
        );
        // The BYE after it is the next CSeq.
        let bye = Message::parse(d.request(
            "BYE",
            "127.0.0.1:5060".parse().unwrap(),
            "z9hG4bKbye",
            &[],
            None,
        ))
        .unwrap();
        assert_eq!(bye.cseq, 3);
        assert_eq!(bye.to_tag(), Some("theirs"));
    }

    #[test]
    fn a_callees_request_is_routed_to_the_uac_dialog_and_any_first_cseq_is_in_order() {
        let (invite, ok) = placed();
        let mut d = Dialog::new_uac(&invite, &ok, "sip:ivrd@127.0.0.1".into(), Protocol::Udp);
        let bye = Message::parse(Bytes::from(
            "BYE sip:ivrd@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n\
From: <sip:+4915112345678@trunk.example.com>;tag=theirs\r\nTo: <sip:ivrd@127.0.0.1>;tag=ours\r\n\
Call-ID: out-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(DialogId::of_request(&bye).as_ref(), Some(&d.id));
        assert!(d.accept_remote_cseq(&bye).is_ok());
    }
}
