//! Integration tests for diskforge live in this package's test targets (see `Cargo.toml`).
//!
//! Each target covers one area and talks to the crates and tool binaries as a user would.
//! Privileged tests skip with a visible `SKIPPED … needs root` line when not root; tests that
//! need kernel features this host lacks (iso9660, vfat, device-mapper, loop partition scanning)
//! live in `vm-tests/` instead and run under `cargo xtask vm-test`.
