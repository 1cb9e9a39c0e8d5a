//! `disk-image-create` as its users meet it before running it: every `--help` page fits 80
//! columns and is snapshotted, and its man page and shell completions render and complete.

use diskforge_testutil::help::{assert_fits_columns, check_dist, help_pages};

const BIN: &str = env!("CARGO_BIN_EXE_disk-image-create");

#[test]
fn help_pages_fit_80_columns() {
    for page in help_pages(BIN, "disk-image-create") {
        assert_fits_columns(&page);
        insta::assert_snapshot!(page.name.clone(), page.text);
    }
}

#[test]
fn man_pages_and_completions_work() {
    let dir = diskforge_testutil::scratch_dir();
    check_dist(BIN, &help_pages(BIN, "disk-image-create"), dir.path());
}
