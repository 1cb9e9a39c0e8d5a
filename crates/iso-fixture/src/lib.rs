//! Installer-like hybrid test ISO builder and QEMU boot checks (work in progress: see the issue that owns this crate).
