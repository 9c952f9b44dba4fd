//! Identifiers that travel in messages and sidecars: request ids and operator refs.
//!
//! Both are restricted to a short, boring alphabet so that neither can smuggle free text
//! (and with it personal data) into WORM storage, and neither needs escaping anywhere.

/// Longest request id or operator ref.
pub const MAX_ID_LEN: usize = 128;

/// True for 1..=128 characters from `[A-Za-z0-9._:@/+=-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_@/+=-".contains(&b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn alphabet() {
        assert!(super::is_valid_id("SHA256:abc+/="));
        assert!(super::is_valid_id("req-2026-11-24.0001"));
        assert!(!super::is_valid_id(""));
        assert!(!super::is_valid_id("John Smith"));
        assert!(!super::is_valid_id(&"a".repeat(129)));
    }
}
