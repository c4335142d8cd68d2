//! ivrd: a SIP IVR daemon that verifies callers by a one-time PIN sent by SMS.
//!
//! # The map
//! ```text
//!  UDP/TCP --> sip::transport --> sip::core --(NewCall, SipEvent)--> call (one task a call)
//!                                 (transactions,                      |  CallIo: play, collect,
//!                                  dialog routing,                    |  hang up, facts
//!                                  one timer heap)                    v
//!  RTP <--> media::engine (pacing threads, one clock; recv task a stream) <--> demo / dialplan
//!                 ^ prompts: media::prompt (WAV -> 8 kHz -> G.711, once, shared)
//!                 ^ digits:  media::dtmf (RFC 4733, SIP INFO, in-band Goertzel; de-duplicated)
//! ```
//! - [`config`]: the TOML configuration, every default documented.
//! - [`sip::message`]: parsing (over `ezk-sip-types`) and building messages.
//! - [`sip::transport`]: UDP, TCP and TLS sockets; the only SIP code with IO. Stamps each
//!   datagram with the kernel's receive time, which the core's overload control reads; drops
//!   sources that are not trusted before parsing; bounds every connection; opens one for a
//!   dialog's request when the peer's is gone.
//! - [`sip::transaction`]: RFC 3261 17 transaction state machines, no IO, no clock.
//! - [`sip::dialog`]: dialog state and in-dialog requests, no IO.
//! - [`sip::sdp`]: RFC 3264 offer/answer, and SDES (RFC 4568) keys for SRTP.
//! - [`sip::core`]: the task that drives transactions and routes messages to calls, and
//!   turns new calls away (503) when requests wait too long or a source is over its share.
//! - [`sip::peers`]: the trusted-peer list and the per-source budgets of untrusted sources.
//! - [`sip::session_timer`]: RFC 4028 session timers, as the UAS, without IO.
//! - [`sip::tls`]: the TLS certificate, key, client and server checks, as rustls
//!   configurations for accepting and for connecting.
//! - [`media::rtp`], [`media::srtp`] (RFC 3711, in place), [`media::g711`], [`media::prompt`],
//!   [`media::dtmf`], [`media::engine`];
//!   [`media::clock`]: the pacers' absolute-deadline clock, timer slack and priority.
//! - [`call`]: one call; the [`call::CallIo`] API that call flows use;
//!   [`call::outbound`] places calls (the INVITE through the trunk, its challenge, ringing,
//!   CANCEL) and hands over the answered one as the same `Call`.
//! - [`dialplan`]: the admin's call flows: parse, check (with advice on oracles), run,
//!   simulate; a lookup may go on with a decoy so that no id is told apart before its PIN;
//!   plans call each other as sub-flows.
//! - [`http_lookup`]: the `http` step's requests to a CRM (encoding, bounds, no redirects)
//!   and the answers `ivrd simulate` fakes.
//! - [`api`]: the HTTP API for verifications outside calls (web sign-ups): routes and
//!   bounds ([`api`]), the operations over the IVR's PIN engine and limits
//!   ([`api::service`]), keys ([`api::keys`]).
//! - [`services`]: what a flow asks of the outside (customers, PINs, SMS), for the daemon.
//! - [`verify::pin`] (the vault: digests, sealed resends), [`verify::limits`] (tries,
//!   lock-outs, SMS limits, decoys), [`verify::guard`] (the fraud guard: budgets, regions,
//!   breakers, the cap on wrong PINs in a row), [`verify::sms`] (the providers),
//!   [`verify::voice`] (the code read out on a call, over [`call::CallIo`], and the lines
//!   that place such calls).
//! - [`store`]: customers, limits and the guard's counts, the audit, the API's keys and
//!   verifications; versioned; every query and decision written once over its `Backend`
//!   trait, SQLite (one node) or PostgreSQL (several nodes, decisions under advisory locks).
//! - [`demo`]: the built-in demo flow.
//! - [`server`]: start-up, the accept loop and graceful shutdown.
//! - [`preflight`]: every address the config binds is on this host and free (`check`,
//!   start-up).
//! - [`audit`]: one row per call, group-committed by one writer thread; spooled to disk while
//!   the database is away.
//! - [`audit_cli`]: `ivrd audit`: the audit for the admin (filters; table, CSV, JSON Lines),
//!   read-only beside the daemon; `ivrd audit prune`. `[audit] keep_days` prunes in `server`.
//! - [`customers_cli`]: `ivrd customers`: import, list, show, lock-outs.
//! - [`live`]: per-plan counts of the transitions calls took and how they ended (the last
//!   hour, per-minute buckets) and the step each call is in; [`live_page`]: the admin
//!   listener's page at `/` (HTML, SVG drawn by [`dialplan::graph::to_svg`]) and `/live.json`.
//! - [`redact`]: phone numbers masked for logs and status output.
//! - [`secrets`]: `*_file` keys, read from systemd credentials or files beside the config.
//! - `fuzzing` (hidden): the body of every fuzz target in `fuzz/`, one function each, shared
//!   with `tests/fuzz_regressions.rs`, which replays the seeds and crash inputs.
pub mod admin;
pub mod admin_http;
pub mod api;
pub mod audit;
pub mod audit_cli;
pub mod call;
pub mod config;
pub mod customers_cli;
pub mod demo;
pub mod dialplan;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_lookup;
pub mod live;
pub mod live_page;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod preflight;
pub mod redact;
pub mod secrets;
pub mod server;
pub mod services;
pub mod sip;
pub mod store;
pub mod verify;
