//! Tablet tokens: random, shown once, stored only as a SHA-256 hash, and
//! compared in constant time.

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every token starts with this, so a leaked one is easy to recognise.
const PREFIX: &str = "bzc_";
/// Random bytes in a token (256 bits).
const SECRET_BYTES: usize = 32;

/// A freshly issued token and the id under which it is listed and revoked.
pub struct Issued {
    pub id: String,
    pub token: String,
}

impl Issued {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut secret);
        let mut id = [0u8; 6];
        rng.fill_bytes(&mut id);
        Issued {
            id: format!("tok_{}", hex::encode(id)),
            token: format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
            ),
        }
    }
}

/// The stored form of a token. Tokens carry 256 random bits, so a fast
/// hash is enough: there is nothing to brute-force.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Cheap shape check before touching the database.
pub fn looks_valid(token: &str) -> bool {
    token.len() <= 128 && token.starts_with(PREFIX)
}

pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Compares a presented secret with the configured one in constant time.
pub fn secret_matches(presented: &str, expected: &str) -> bool {
    // Hash both so the comparison's length does not depend on the input.
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long() {
        let a = Issued::generate();
        let b = Issued::generate();
        assert_ne!(a.token, b.token);
        assert_ne!(a.id, b.id);
        assert!(a.token.len() >= PREFIX.len() + 43);
        assert!(looks_valid(&a.token));
        assert_eq!(hash(&a.token).len(), 64);
        assert_ne!(hash(&a.token), a.token);
    }

    #[test]
    fn secrets_compare() {
        assert!(secret_matches("k1", "k1"));
        assert!(!secret_matches("k1", "k2"));
        assert!(!secret_matches("", "k2"));
        assert!(hashes_equal("ab", "ab"));
        assert!(!hashes_equal("ab", "abc"));
    }
}
