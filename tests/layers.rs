//! Integration tests for layers (filled in by the owning issue).
