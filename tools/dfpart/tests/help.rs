//! `dfpart` as its users meet it before running it: every `--help` page (the tool's and each
//! subcommand's) fits 80 columns and is snapshotted, and the man pages and shell completions
//! it writes through `diskforge_cli::dist_hook` render in `man` and complete in `bash`.

use diskforge_testutil::help::{assert_fits_columns, check_dist, help_pages};

const BIN: &str = env!("CARGO_BIN_EXE_dfpart");

#[test]
fn help_pages_fit_80_columns() {
    for page in help_pages(BIN, "dfpart") {
        assert_fits_columns(&page);
        insta::assert_snapshot!(page.name.clone(), page.text);
    }
}

#[test]
fn man_pages_and_completions_work() {
    let dir = diskforge_testutil::scratch_dir();
    check_dist(BIN, &help_pages(BIN, "dfpart"), dir.path());
}
