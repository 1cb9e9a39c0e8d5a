//! Overlay layer stacks and OCI layers (work in progress: see the issue that owns this crate).
