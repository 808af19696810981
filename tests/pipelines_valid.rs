//! Every pipeline file shipped in `pipelines/` is valid.

use std::path::Path;

#[test]
fn shipped_pipeline_files_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = expense_sync::config::load(&path) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(n >= 3, "expected the shipped pipelines, found {n}");
}

#[test]
fn the_built_in_demo_pipeline_is_the_file_in_pipelines() {
    let on_disk =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.toml"))
            .unwrap();
    assert_eq!(on_disk, expense_sync::cli::DEMO_PIPELINE);
}
