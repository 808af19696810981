//! Authorised calls to the Fyle platform API: bearer token, cluster URL, and
//! one refresh-and-retry on 401.

use std::sync::Arc;

use serde_json::Value;
use url::Url;

use crate::auth::{AuthError, FyleSession};
use crate::http::{BodyDecoder, HttpError, Request, Response};

/// Why a Fyle API call failed.
#[derive(Debug, thiserror::Error)]
pub enum FyleError {
    /// Authentication failed (token grant refused, or still 401 after a refresh).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The API refused the request or could not be reached.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The API answered something we cannot use.
    #[error("{0}")]
    Protocol(String),
}

/// A client for `{cluster}/platform/v1/…`.
#[derive(Debug, Clone)]
pub struct FyleClient {
    session: Arc<FyleSession>,
}

impl FyleClient {
    /// Wraps a session.
    pub fn new(session: Arc<FyleSession>) -> Self {
        Self { session }
    }

    /// The session (token and cluster).
    pub fn session(&self) -> &Arc<FyleSession> {
        &self.session
    }

    /// GET `platform/v1/{path}` with `query`, e.g. `path = "admin/expenses"`.
    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, FyleError> {
        Ok(self
            .call(path, |url| Request::get(url).with_query(query.to_vec()))
            .await?
            .json)
    }

    /// GET `platform/v1/{path}` with `query`, the body read by `decode` instead
    /// of into a JSON tree; a body `decode` rejects (garbled, cut off) is retried.
    pub async fn get_decoded<T: Send + 'static>(
        &self,
        path: &str,
        query: &[(String, String)],
        decode: impl Fn(&bytes::Bytes) -> serde_json::Result<T> + Send + Sync + 'static,
    ) -> Result<T, FyleError> {
        let decoder: BodyDecoder = Arc::new(move |body: &bytes::Bytes| {
            decode(body)
                .map(|t| Box::new(t) as Box<dyn std::any::Any + Send>)
                .map_err(|e| e.to_string())
        });
        let resp = self
            .call(path, |url| {
                let mut req = Request::get(url).with_query(query.to_vec());
                req.decode = Some(decoder.clone());
                req
            })
            .await?;
        resp.decoded
            .and_then(|d| d.downcast::<T>().ok())
            .map(|t| *t)
            .ok_or_else(|| FyleError::Protocol(format!("GET {path} answered with an empty body")))
    }

    /// POST `body` to `platform/v1/{path}`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, FyleError> {
        Ok(self
            .call(path, |url| Request::post_json(url, body.clone()))
            .await?
            .json)
    }

    /// `GET /spender/my_profile`: who the credentials belong to and their roles.
    pub async fn my_profile(&self) -> Result<Value, FyleError> {
        self.get("spender/my_profile", &[]).await
    }

    async fn call(
        &self,
        path: &str,
        build: impl Fn(Url) -> Request,
    ) -> Result<Response, FyleError> {
        let mut token = self.session.token().await?;
        // One refresh normally suffices; a rotating connection shared with
        // other processes can see its fresh token rotated away once or twice
        // more, so allow a few — bounded, never a loop.
        let mut refreshes = 0;
        loop {
            let url = platform_url(&token.cluster, path)?;
            let req = build(url).with_bearer(token.access.clone());
            match self.session.http().execute(&req).await {
                Ok(resp) => return Ok(resp),
                Err(HttpError::Unauthorized {
                    status, message, ..
                }) if refreshes < MAX_REFRESHES_PER_CALL => {
                    tracing::info!(status, %message, "API rejected the access token");
                    token = self.session.refresh_after_rejection(&token).await?;
                    refreshes += 1;
                }
                Err(HttpError::Unauthorized {
                    status,
                    message,
                    url,
                    ..
                }) => {
                    return Err(FyleError::Auth(AuthError::Protocol(format!(
                        "{url} answered HTTP {status} ({message}) even after {refreshes} fresh access tokens; \
                         the credentials may lack the role this resource needs"
                    ))));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Token refreshes one API call may make after 401s before giving up.
const MAX_REFRESHES_PER_CALL: u32 = 3;

fn platform_url(cluster: &Url, path: &str) -> Result<Url, FyleError> {
    cluster
        .join(&format!("platform/v1/{}", path.trim_start_matches('/')))
        .map_err(|e| FyleError::Protocol(format!("cannot build URL for {path} on {cluster}: {e}")))
}
