//! The simulated Fyle servers' state: what both servers and the
//! `Simulator` handle share (data store, issued tokens, OAuth grants, rate
//! limiter, faults, request log). A leaf under `server` (HTTP) and `oauth`
//! (the OAuth protocol, which adds its handlers to `Shared`), so neither
//! depends on the other's definitions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::rng::Rng;
use super::store::Store;
use super::{Faults, LoggedRequest, SimCredentials};

/// State shared by both servers and the `Simulator` handle.
pub(crate) struct Shared {
    pub(crate) store: RwLock<Store>,
    pub(crate) credentials: SimCredentials,
    pub(crate) token_ttl: Duration,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) fault_rng: Mutex<Rng>,
    pub(crate) tokens: Mutex<TokenBook>,
    pub(crate) limiter: Mutex<Limiter>,
    pub(crate) log: Mutex<Vec<LoggedRequest>>,
    pub(crate) cluster_url: String,
    pub(crate) oauth: Mutex<OAuthBook>,
    /// `SimConfig::clock_offset` in microseconds, for `Date` headers.
    pub(crate) clock_offset_us: std::sync::atomic::AtomicI64,
}

/// Issued access tokens. Tokens are opaque to the server: validity is a
/// lookup, so `expire_tokens` can revoke them all at once.
pub(crate) struct TokenBook {
    issued: HashMap<String, (Instant, u64)>,
    epoch: u64,
    rng: Rng,
    counter: u64,
}

impl TokenBook {
    pub(crate) fn new(seed: u64) -> Self {
        TokenBook {
            issued: HashMap::new(),
            epoch: 0,
            rng: Rng::new(seed ^ 0x70CE_4B00),
            counter: 0,
        }
    }

    pub(crate) fn issue(&mut self, ttl: Duration, subject: &str, org_id: &str) -> String {
        let now = Instant::now();
        let iat = chrono::Utc::now().timestamp();
        let exp = iat + ttl.as_secs_f64().ceil() as i64;
        self.counter += 1;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = json!({
            "iat": iat,
            "exp": exp,
            "iss": "fyle-simulator",
            "sub": subject,
            "org_id": org_id,
            "jti": self.counter,
        });
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let sig: Vec<u8> = (0..4)
            .flat_map(|_| self.rng.next_u64().to_le_bytes())
            .collect();
        let token = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(sig));
        // Expired entries are useless; drop them so long runs stay small.
        self.issued.retain(|_, (until, _)| *until > now);
        self.issued.insert(token.clone(), (now + ttl, self.epoch));
        token
    }

    pub(crate) fn valid(&self, token: &str) -> bool {
        matches!(self.issued.get(token), Some((until, epoch)) if *epoch == self.epoch && Instant::now() < *until)
    }

    /// Invalidates one access token (refresh-token rotation, revocation).
    pub(crate) fn revoke(&mut self, token: &str) {
        self.issued.remove(token);
    }

    pub(crate) fn expire_all(&mut self) {
        self.epoch += 1;
        self.issued.clear();
    }
}

/// Token bucket per client IP shared by both servers (Fyle limits per IP).
pub(crate) struct Limiter {
    pub(crate) rate: Option<u32>,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    pub(crate) fn new(rate: Option<u32>) -> Self {
        Limiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    pub(super) fn allow(&mut self, ip: IpAddr) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        let cap = rate as f64;
        let now = Instant::now();
        let (tokens, last) = self.buckets.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * cap).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An authorization code and what it is bound to.
pub(super) struct CodeGrant {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) challenge: Option<String>,
    pub(super) expires: Instant,
    pub(super) used: bool,
    /// Tokens issued from this code: revoked if the code is replayed (RFC 6749 §4.1.2).
    pub(super) issued: Vec<String>,
}

/// A live refresh token.
pub(super) struct RefreshGrant {
    pub(super) client_id: String,
    /// The access token issued alongside; rotation revokes it.
    pub(super) access: String,
    pub(super) expires: Instant,
    /// Standard-style refresh tokens rotate; Fyle-style ones do not.
    pub(super) rotating: bool,
}

/// A JWT credential minted for the JWT bearer grant.
pub(super) struct JwtCredential {
    pub(super) exp: i64,
    pub(super) revoked: bool,
}

/// Codes, refresh tokens and JWT credentials the accounts server knows
/// (its methods live with the protocol in `oauth`).
pub(crate) struct OAuthBook {
    pub(super) codes: HashMap<String, CodeGrant>,
    pub(super) refresh: HashMap<String, RefreshGrant>,
    pub(super) jwts: HashMap<String, JwtCredential>,
    pub(super) rng: Rng,
    pub(crate) code_ttl: Duration,
}
