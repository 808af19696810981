//! Endpoint presets for known OAuth 2.0 providers, so a connection needs
//! only the client and the grant (`auth add --provider ringcentral`).

use super::vault::{ClientAuth, Connection, GrantKind, Profile};

/// RingCentral's production API server.
pub const RINGCENTRAL_URL: &str = "https://platform.ringcentral.com";

/// A provider whose endpoints are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// RingCentral: `/restapi/oauth/{token,authorize,revoke}` on
    /// `platform.ringcentral.com`, HTTP Basic client authentication, PKCE,
    /// rotating refresh tokens.
    Ringcentral,
}

impl Provider {
    /// Default server when `--accounts-url` is not given.
    pub fn default_url(self) -> &'static str {
        match self {
            Provider::Ringcentral => RINGCENTRAL_URL,
        }
    }

    /// A new connection with this provider's endpoints under `base` (its
    /// default server when `None`, a simulator or sandbox otherwise).
    pub fn connection(self, grant: GrantKind, base: Option<&str>, client_id: &str) -> Connection {
        let base = base.unwrap_or(self.default_url()).trim_end_matches('/');
        let mut c = Connection::new(Profile::Oauth2, grant, base, client_id);
        match self {
            Provider::Ringcentral => {
                c.token_url = format!("{base}/restapi/oauth/token");
                c.authorize_url = Some(format!("{base}/restapi/oauth/authorize"));
                c.revoke_url = Some(format!("{base}/restapi/oauth/revoke"));
                c.client_auth = ClientAuth::Basic;
                c.pkce = true;
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringcentral_defaults_to_the_restapi_oauth_paths_on_the_platform_host() {
        let c = Provider::Ringcentral.connection(GrantKind::JwtBearer, None, "cid");
        assert_eq!(
            c.token_url,
            "https://platform.ringcentral.com/restapi/oauth/token"
        );
        assert_eq!(
            c.authorize_url.as_deref(),
            Some("https://platform.ringcentral.com/restapi/oauth/authorize")
        );
        assert_eq!(
            c.revoke_url.as_deref(),
            Some("https://platform.ringcentral.com/restapi/oauth/revoke")
        );
        assert_eq!(c.profile, Profile::Oauth2);
        assert_eq!(c.client_auth, ClientAuth::Basic);
        let sandbox = Provider::Ringcentral.connection(
            GrantKind::AuthorizationCode,
            Some("http://127.0.0.1:9/"),
            "cid",
        );
        assert_eq!(sandbox.token_url, "http://127.0.0.1:9/restapi/oauth/token");
        assert!(sandbox.pkce);
    }
}
