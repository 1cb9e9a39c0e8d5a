//! Integration tests for loop_mount (filled in by the owning issue).
