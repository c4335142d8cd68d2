//! SIP: messages, transports, transactions, dialogs and SDP.
pub mod message;
