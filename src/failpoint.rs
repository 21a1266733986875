//! Named crash points for the crash-safety tests.
//!
//! Built with the `fault-injection` feature, `PULLNIX_CRASH_AT=NAME` makes the process SIGKILL
//! itself when it reaches the point NAME, and `NAME#K` at the K-th time it gets there (points
//! such as `state.before-rename` are passed several times in one run). SIGKILL is the harshest
//! interruption there is: no destructors, no flush, like a power cut for everything but the page
//! cache. Builds without the feature compile this to nothing.

#[cfg(feature = "fault-injection")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HITS: AtomicU32 = AtomicU32::new(0);

    let Some(spec) = std::env::var_os("PULLNIX_CRASH_AT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let (target, nth) = match spec.split_once('#') {
        Some((t, n)) => (t, n.parse::<u32>().unwrap_or(1)),
        None => (spec.as_ref(), 1),
    };
    if target != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        crate::warn!("fault injection: killing myself at {name}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this only runs if kill(2) itself failed.
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline]
pub fn hit(_name: &str) {}
