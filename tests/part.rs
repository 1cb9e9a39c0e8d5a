//! Integration tests for part (filled in by the owning issue).
