//! Webhook authentication: `X-Hub-Signature-256` and the verify-token handshake.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a signature was refused. Never includes the secret or the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// The header is not `sha256=<64 hex digits>`.
    #[error("malformed X-Hub-Signature-256 header")]
    Malformed,
    /// The HMAC does not match the body.
    #[error("signature does not match the body")]
    Mismatch,
}

/// Parses `sha256=<hex>` into the 32 signature bytes.
pub fn parse_signature_header(header: &str) -> Result<[u8; 32], SignatureError> {
    let hex_part = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let mut signature = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut signature).map_err(|_| SignatureError::Malformed)?;
    Ok(signature)
}

/// Verifies `header` against HMAC-SHA256(app_secret, raw body), in constant time.
pub fn verify_signature(
    app_secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let signature = parse_signature_header(header.ok_or(SignatureError::Missing)?)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| SignatureError::Mismatch)
}

/// Computes the header value Meta would send for `body` (for tests and tools).
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Compares a presented verify token with the configured one, in constant time.
pub fn verify_token_matches(configured: &str, presented: &str) -> bool {
    configured.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_md_test_vector() {
        let expected = "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914";
        assert_eq!(sign(b"secret", b"test"), expected);
        assert_eq!(verify_signature(b"secret", Some(expected), b"test"), Ok(()));
        assert_eq!(
            verify_signature(
                b"secret",
                Some(&expected.to_uppercase().replace("SHA256", "sha256")),
                b"test"
            ),
            Ok(()),
            "hex digits are case-insensitive"
        );
    }

    #[test]
    fn refusals() {
        let good = sign(b"secret", b"test");
        assert_eq!(
            verify_signature(b"secret", None, b"test"),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"secret", Some("sha1=abc"), b"test"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"secret", Some("sha256=zz"), b"test"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"other", Some(&good), b"test"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"secret", Some(&good), b"test "),
            Err(SignatureError::Mismatch)
        );
        assert!(verify_token_matches(
            "demo-verify-token",
            "demo-verify-token"
        ));
        assert!(!verify_token_matches(
            "demo-verify-token",
            "demo-verify-toke"
        ));
    }
}
