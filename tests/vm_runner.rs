//! Integration tests for vm_runner (filled in by the owning issue).
