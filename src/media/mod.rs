//! Media: RTP streams paced from a shared clock, SRTP, G.711, prompts, and DTMF from every source.
pub mod clock;
pub mod dtmf;
pub mod engine;
pub mod g711;
pub mod prompt;
pub mod rtp;
pub mod srtp;
