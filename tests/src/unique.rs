//! Names no other test of any running process has (label, process id, a counter and the clock),
//! for test databases and Redis key prefixes; not random, and not a lock: two processes with the
//! same id at the same nanosecond would collide.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `LABEL_PID_SEQ_NANOS`: the label first, so a leftover is easy to trace to its test.
pub(crate) fn unique_name(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{label}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
