//! SIP: messages, transports, transactions, dialogs and SDP.
//!
//! `message` parses and builds; `transport` is the only part with sockets; `transaction`
//! and `dialog` are state machines without IO; `core` is the one task that drives them;
//! `peers` says who is trusted and how much each untrusted source may ask of us.
pub mod auth;
pub mod core;
pub mod dialog;
pub mod message;
pub mod peers;
pub mod sdp;
pub mod session_timer;
pub mod tls;
pub mod transaction;
pub mod transport;
