//! Named crash points for the crash-safety tests.
//!
//! Built with the `fault-injection` feature, `PULLNIX_CRASH_AT=<name>` makes the process SIGKILL
//! itself when it reaches the point of that name: the harshest interruption there is (no
//! destructors, no flush), the same as a power cut for everything but the page cache. Release
//! builds compile this to nothing.

#[cfg(feature = "fault-injection")]
pub fn hit(name: &str) {
    if std::env::var_os("PULLNIX_CRASH_AT").is_some_and(|v| v == name) {
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
