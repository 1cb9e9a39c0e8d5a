//! Integration tests for iso (filled in by the owning issue).
