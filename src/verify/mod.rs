//! Verification: PINs (generate, keyed hash, expiry, tries), the limits and lock-outs that
//! protect them, and (in `sms`) the providers that carry the PIN to the customer's phone.
pub mod guard;
pub mod limits;
pub mod pin;
pub mod shared_pins;
pub mod sms;
pub mod voice;
