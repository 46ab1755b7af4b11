//! Content addresses: every stored file is named by the sha256 of its bytes.

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`, the `image_id` of the images table.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_empty_input_is_the_known_constant() {
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
