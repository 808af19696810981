//! The one HTTP stack: every outbound request goes through [`HttpClient`],
//! which applies the process-wide rate limiter, timeouts, the retry policy
//! and error classification. Nothing else in the crate builds requests.

mod body;
mod client;
mod clock;
mod config;
mod error;
mod fair;
pub mod ratelimit_groups;
mod signature;

pub use client::{BodyDecoder, HttpClient, HttpStats, Request, Response, StatsSnapshot};
pub use clock::{ServerClock, describe_skew};
pub use config::HttpConfig;
pub use error::HttpError;
pub use signature::{Signer, sign};
