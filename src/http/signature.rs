//! HMAC-SHA256 request signatures, computed by the client on every attempt
//! so a retry carries a fresh timestamp.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Signs a request's raw body into `header`; the secret never leaves this struct.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Header carrying the signature, e.g. `X-Expense-Sync-Signature`.
    pub header: String,
    /// The shared secret (`Debug` prints it redacted).
    pub secret: SecretString,
}

/// The signature header value `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
pub fn sign(secret: &SecretString, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}
