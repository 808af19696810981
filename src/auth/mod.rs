//! Token grants, the token cache and cluster discovery.

mod fyle;
mod jwt;

pub use fyle::{AuthError, FyleConnectionConfig, FyleCredentials, FyleSession, Token};
pub use jwt::jwt_expiry;
