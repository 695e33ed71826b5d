//! Request authentication: Twilio's `X-Twilio-Signature` and the CTI path token or
//! body HMAC. Every comparison is constant-time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The signature header is absent.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The signature does not match.
    #[error("the signature does not match")]
    Mismatch,
    /// The `bodySHA256` query value does not match the body.
    #[error("bodySHA256 does not match the body")]
    BodyHash,
}

/// Twilio's signature of a request to `url` with form `params`: base64 of the
/// HMAC-SHA1, under the auth token, of the URL followed by every parameter name and
/// value, names sorted (the values of a repeated name de-duplicated and sorted).
pub fn twilio_signature(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes keys of any size");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks `X-Twilio-Signature` for a request Twilio made to `url`. Twilio signs the URL
/// as it was configured, with or without the default port, so both forms are tried.
/// A JSON body is signed through the URL's `bodySHA256` query value, which must be
/// the body's hex SHA-256; its form parameters are then empty.
pub fn verify_twilio(
    auth_token: &[u8],
    url: &Url,
    params: &[(String, String)],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), AuthError> {
    let signature = signature.ok_or(AuthError::Missing("X-Twilio-Signature"))?;
    let body_hash = url
        .query_pairs()
        .find(|(name, _)| name == "bodySHA256")
        .map(|(_, value)| value.into_owned());
    let params: &[(String, String)] = match &body_hash {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(body));
            if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(AuthError::BodyHash);
            }
            &[]
        }
        None => params,
    };
    let matches = url_forms(url).iter().any(|form| {
        let expected = twilio_signature(auth_token, form, params);
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    });
    if matches {
        Ok(())
    } else {
        Err(AuthError::Mismatch)
    }
}

/// The URL without and with its scheme's default port.
fn url_forms(url: &Url) -> [String; 2] {
    let without = url.as_str().to_string();
    let with = match (url.port(), url.port_or_known_default()) {
        (None, Some(port)) => {
            let host = url.host_str().unwrap_or_default();
            let rest = &url[url::Position::BeforePath..];
            format!("{}://{host}:{port}{rest}", url.scheme())
        }
        _ => without.clone(),
    };
    [without, with]
}

/// Whether the token in a CTI request's path is the channel's.
pub fn cti_token_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The `X-Omnigate-Signature` value of a CTI body: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the raw body under the channel's `hmac_secret`.
pub fn cti_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a CTI body's `X-Omnigate-Signature`.
pub fn verify_cti_signature(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), AuthError> {
    let signature = signature.ok_or(AuthError::Missing("X-Omnigate-Signature"))?;
    let expected = cti_signature(secret, body);
    if bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The test vector of protocols.md §2.4 (Twilio's own documentation example).
    #[test]
    fn twilio_signature_matches_the_documented_vector() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature(b"12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        let parsed = Url::parse(url).unwrap();
        let good = Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert_eq!(verify_twilio(b"12345", &parsed, &params, b"", good), Ok(()));
        assert_eq!(
            verify_twilio(b"54321", &parsed, &params, b"", good),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify_twilio(b"12345", &parsed, &params, b"", None),
            Err(AuthError::Missing("X-Twilio-Signature"))
        );
    }

    #[test]
    fn a_signature_over_the_url_with_its_default_port_is_accepted() {
        let params = pairs(&[("CallSid", "CA1")]);
        let signed = twilio_signature(b"t", "https://example.test:443/hook", &params);
        let url = Url::parse("https://example.test/hook").unwrap();
        assert_eq!(
            verify_twilio(b"t", &url, &params, b"", Some(&signed)),
            Ok(())
        );
    }

    #[test]
    fn a_json_body_is_checked_through_body_sha256() {
        let body = br#"{"CallSid":"CA1"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let url = Url::parse(&format!("https://example.test/hook?bodySHA256={hash}")).unwrap();
        let signed = twilio_signature(b"t", url.as_str(), &[]);
        assert_eq!(verify_twilio(b"t", &url, &[], body, Some(&signed)), Ok(()));
        assert_eq!(
            verify_twilio(b"t", &url, &[], b"{}", Some(&signed)),
            Err(AuthError::BodyHash)
        );
    }

    #[test]
    fn cti_tokens_and_signatures() {
        assert!(cti_token_matches("secret-token", "secret-token"));
        assert!(!cti_token_matches("secret-token", "secret-tokeN"));
        assert!(!cti_token_matches("", ""));
        let signature = cti_signature(b"k", b"event=newCall");
        assert_eq!(
            verify_cti_signature(b"k", b"event=newCall", Some(&signature)),
            Ok(())
        );
        assert_eq!(
            verify_cti_signature(b"k", b"event=hangup", Some(&signature)),
            Err(AuthError::Mismatch)
        );
    }
}
