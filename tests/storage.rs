//! Integration tests for storage (filled in by the owning issue).
