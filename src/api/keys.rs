//! API keys: `ivrd api-keys create NAME` makes one and prints it once; the store keeps its
//! SHA-256. A key is `ivrd_` and 43 characters of base64url (256 random bits): too many to
//! guess, so a fast hash is safe, and a leaked database gives nobody a key.

use crate::store::Store;
use base64::Engine;
use sha2::Digest;
use std::process::ExitCode;
use std::time::SystemTime;

/// A new random key.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    format!(
        "ivrd_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What the store keeps of a key: its SHA-256, hex.
pub fn hash(key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` can name a key (it shows in the audit as `api:NAME`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// `ivrd api-keys create NAME`: prints the key (only now; it cannot be shown again).
pub fn create(store: &Store, name: &str) -> ExitCode {
    if !valid_name(name) {
        eprintln!("ivrd: {name:?}: a key name has 1 to 64 letters, digits, '-', '_' or '.'");
        return ExitCode::from(2);
    }
    let key = generate();
    match store.add_api_key(name, &hash(&key), SystemTime::now()) {
        Ok(true) => {
            println!("{key}");
            eprintln!(
                "API key {name:?} created. This is the only time it is shown: keep it in the \
                 application's secrets."
            );
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("ivrd: an API key named {name:?} exists (revoke it, or choose another name)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ivrd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ivrd api-keys list`: names and dates, never keys.
pub fn list(store: &Store) -> ExitCode {
    match store.api_keys() {
        Ok(keys) => {
            println!("{:<24} {:<22} revoked", "name", "created");
            for k in keys {
                let when = |t: SystemTime| {
                    jiff::Timestamp::try_from(t)
                        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
                        .unwrap_or_default()
                };
                println!(
                    "{:<24} {:<22} {}",
                    k.name,
                    when(k.created_at),
                    k.revoked_at.map(when).unwrap_or_else(|| "-".into())
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ivrd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ivrd api-keys revoke NAME`: the key stops working at once (the daemon reads the store
/// on every request).
pub fn revoke(store: &Store, name: &str) -> ExitCode {
    match store.revoke_api_key(name, SystemTime::now()) {
        Ok(true) => {
            println!("API key {name:?} revoked");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("ivrd: no API key {name:?} in use");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ivrd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed_not_kept() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with("ivrd_") && a.len() == 5 + 43, "{a}");
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[5..]));
        assert!(valid_name("web-signup_1.prod"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
    }
}
