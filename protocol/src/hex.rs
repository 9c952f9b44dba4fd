//! Lowercase hex for 32-byte hashes in JSON (messages and sidecars).

use serde::{Deserialize, Deserializer, Serializer};

use crate::merkle::Hash;

pub fn encode(hash: &Hash) -> String {
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
    }
    out
}

/// Parses exactly 64 lowercase hex digits.
pub fn decode(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        hash[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(hash)
}

pub fn serialize<S: Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&encode(hash))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
    decode(&text).ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
}

/// Serde for `Option<Hash>`: `null` or 64 hex digits.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::merkle::Hash;

    pub fn serialize<S: Serializer>(hash: &Option<Hash>, serializer: S) -> Result<S::Ok, S::Error> {
        match hash {
            Some(hash) => serializer.serialize_str(&super::encode(hash)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Hash>, D::Error> {
        match Option::<std::borrow::Cow<str>>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => super::decode(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_rejects() {
        let hash: super::Hash = core::array::from_fn(|i| i as u8 * 7);
        assert_eq!(super::decode(&super::encode(&hash)), Some(hash));
        assert_eq!(super::decode("AB"), None);
        assert_eq!(super::decode(&"G".repeat(64)), None);
        assert_eq!(super::decode(&super::encode(&hash).to_uppercase()), None);
    }
}
