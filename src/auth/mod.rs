//! Token grants, the token cache, cluster discovery, the credential vault
//! and the interactive login.

pub mod cmd;
mod fyle;
mod jwt;
pub mod login;
pub mod oauth2;
pub mod presets;
pub mod tokens;
pub mod vault;

pub use fyle::{
    AuthError, DEFAULT_ACCOUNTS_URL, FyleConnectionConfig, FyleCredentials, FyleSession, Token,
};
pub use jwt::jwt_expiry;
pub use tokens::VaultAuth;
pub use vault::{Connection, Vault, VaultError};
