//! TEMPORARY interface stub in main; the real module lands from branch `sim`.
#![allow(missing_docs)]
use std::time::Duration;
pub struct SimConfig {
    pub seed: u64,
    pub expenses: usize,
    pub rate_limit: Option<u32>,
    pub token_ttl: Duration,
    pub faults: Faults,
    pub credentials: SimCredentials,
}
impl Default for SimConfig {
    fn default() -> Self {
        unimplemented!()
    }
}
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub error_rate: f64,
    pub burst_429: u32,
    pub latency: Duration,
    pub drop_rate: f64,
}
#[derive(Clone)]
pub struct SimCredentials {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}
pub struct Simulator;
impl Simulator {
    pub async fn start(_c: SimConfig) -> std::io::Result<Simulator> {
        unimplemented!()
    }
    pub fn accounts_url(&self) -> String {
        unimplemented!()
    }
    pub fn credentials(&self) -> &SimCredentials {
        unimplemented!()
    }
    pub async fn shutdown(self) {}
}
pub async fn run_until_ctrl_c(_c: SimConfig, _a: u16, _b: u16) -> std::io::Result<()> {
    unimplemented!()
}
