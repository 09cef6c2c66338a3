//! Content digests (request fingerprints, ETags of computed representations).

use std::fmt::Write;

use sha2::{Digest, Sha256};

/// The SHA-256 of the parts, one after another, as lowercase hex.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_digest_of_nothing_is_the_known_one() {
        assert_eq!(
            super::sha256_hex(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parts_are_hashed_as_one_stream() {
        assert_eq!(
            super::sha256_hex(&[b"ab", b"c"]),
            super::sha256_hex(&[b"abc"])
        );
    }
}
