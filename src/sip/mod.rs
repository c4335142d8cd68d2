//! SIP: messages, transports, transactions, dialogs and SDP.
//!
//! `message` parses and builds; `transport` is the only part with sockets; `transaction`
//! and `dialog` are state machines without IO; `core` is the one task that drives them.
pub mod auth;
pub mod core;
pub mod dialog;
pub mod message;
pub mod sdp;
pub mod transaction;
pub mod transport;
