//! Outputs, state and leases in Azure Blob Storage, against a real endpoint
//! (Azurite, Microsoft's emulator, started per test) and the real binary: the
//! same scenarios tests/object_storage.rs runs against S3.

mod common;

use common::azurite::Azurite;
use common::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_azure_equals_ground_truth_and_reads_back_with_csv_and_parquet_readers() {
    let azure = Azurite::start("exports").await;
    scenarios::export_equals_ground_truth(&azure, &azure.emulator_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_azure_configured_as_an_account_with_an_endpoint_equals_ground_truth() {
    scenarios::export_equals_ground_truth(&Azurite::start("accounts").await, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_on_one_pipeline_in_azure_commit_exactly_once() {
    scenarios::racing_commit_exactly_once(&Azurite::start("racing").await).await;
}

/// Runs killed at each step of the commit in Azure leave exactly-once
/// outputs and no temporary object once the next runs recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_upload_or_mid_commit_in_azure_leaves_exactly_once_outputs() {
    scenarios::killed_runs_leave_exactly_once(&Azurite::start("crashes").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_killed_run_in_azure_is_taken_over_only_after_it_expires() {
    scenarios::lease_taken_over_only_after_expiry(&Azurite::start("leases").await).await;
}

/// Azure copies blobs server-side with `If-None-Match: *`: a file above the
/// multipart threshold is placed without passing through this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_a_large_file_in_azure_copies_it_in_the_store() {
    scenarios::large_file_is_placed_by_a_copy_in_the_store(&Azurite::start("placing").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_a_vault_in_azure_lose_no_rotated_token() {
    scenarios::vault_updates_lose_no_rotated_token(&Azurite::start("vaults").await).await;
}
