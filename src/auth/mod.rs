//! Token grants, the token cache, cluster discovery, the credential vault
//! and the interactive login.

pub mod cmd;
mod fyle;
mod jwt;
pub mod login;
pub mod oauth2;
pub mod presets;
pub mod tokens;
mod types;
pub mod vault;

pub use fyle::{FyleConnectionConfig, FyleCredentials, FyleSession, Token};
pub use jwt::jwt_expiry;
pub use tokens::VaultAuth;
pub use types::{AuthError, DEFAULT_ACCOUNTS_URL};
pub use vault::{Connection, Vault, VaultError};
