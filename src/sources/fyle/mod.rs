//! The Fyle platform source: authorised API calls, resources and filters,
//! and the keyset pager.

mod client;
mod config;
mod defaults;
mod pager;
mod source;
mod writeback;

pub use client::{FyleClient, FyleError};
pub use config::{ADMIN_RESOURCES, FilterValue, FundSource, FyleSourceConfig, Preset};
pub use defaults::default_columns;
pub use pager::{Page, PagerStats, Window, fetch_window, first_page_query, fyle_timestamp};
pub use source::FyleSource;
pub use writeback::{
    WriteBackConfig, WriteBackSummary, pending_plans, plan_path, run_pending, stage_plan,
    write_back,
};
