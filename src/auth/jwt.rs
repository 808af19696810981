//! Reading a JWT's expiry without verifying it: we only need to know when
//! to refresh, and the server remains the judge of validity.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The `exp` claim (unix seconds) of a JWT-shaped token, if it has one.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("exp")?
        .to_string()
        .parse::<f64>()
        .ok()
        .map(|e| e as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_claim() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000,"iat":1699996400}"#);
        assert_eq!(
            jwt_expiry(&format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig")),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn opaque_tokens_have_no_expiry() {
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.b.c"), None);
    }
}
