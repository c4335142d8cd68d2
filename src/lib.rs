//! ivrd: a SIP IVR daemon that verifies callers by a one-time PIN sent by SMS.
pub mod config;
pub mod sip;
