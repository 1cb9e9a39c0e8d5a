//! Mounts: plain, bind, overlay with many lowers; guards and teardown stacks (work in progress: see the issue that owns this crate).
