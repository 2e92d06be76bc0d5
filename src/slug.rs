//! The one rule for a store's slug, wherever a slug comes in: the command
//! line, the store import, the admin API and STOMP destinations.

/// What a slug must be, for error messages.
pub const RULE: &str = "1 to 63 of [a-z0-9-], not starting with '-'";

/// Whether `slug` is a store slug: 1 to 63 of `[a-z0-9-]`, not starting
/// with `-`.
pub fn is_valid(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 63
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["gangnam", "a", "store-1", "0", &"a".repeat(63)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "-lead",
            "Gangnam",
            "a_b",
            "a b",
            "가",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
