//! Fault injection for the crash-safety tests (`tests/crash.rs`).
//!
//! Built with the `fault-injection` feature, the process SIGKILLs itself (and, when it leads its
//! own process group, everything it started: a power cut for this run) where the environment
//! says:
//!
//! * `PULLNIX_CRASH_AT=NAME[#K]`: at the named point NAME, the K-th time it gets there (points
//!   such as `state.before-rename` are passed several times in one run). With the variable set,
//!   every point passed is logged (`fault injection: passed NAME`, debug).
//! * `PULLNIX_CRASH_CMD=PATTERN[#K]@MS`: MS milliseconds after the K-th external command whose
//!   logged command line contains PATTERN started, while it runs; if it ends sooner, right
//!   when it ends, before pullnix looks at its result. `gix fetch` and `gix probe` count as
//!   commands (the network part of a fetch, and the reachability check).
//! * `PULLNIX_CRASH_CMD=PATTERN[#K]+`: right after that command ended: between its end and
//!   whatever pullnix does next (usually a state write).
//!
//! Every kill first logs where it landed (`fault injection: killed …`), which the tests count.
//! SIGKILL is the harshest interruption there is: no destructors, no flush. Builds without the
//! feature compile all of this to nothing.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::Arc;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// `NAME#K` or `NAME`: the name and K (1 when absent or unreadable).
    fn name_and_nth(spec: &str) -> (&str, u32) {
        match spec.rsplit_once('#') {
            Some((t, n)) => (t, n.parse::<u32>().unwrap_or(1)),
            None => (spec, 1),
        }
    }

    pub fn hit(name: &str) {
        static HITS: AtomicU32 = AtomicU32::new(0);
        let Some(spec) = std::env::var_os("PULLNIX_CRASH_AT") else {
            return;
        };
        let spec = spec.to_string_lossy();
        let (target, nth) = name_and_nth(&spec);
        if target == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            kill(&format!("at {name}"));
        }
        // The crash tests learn from this which points a run passes.
        crate::debug!("fault injection: passed {name}");
    }

    enum When {
        During(Duration),
        After,
    }

    struct CmdSpec {
        pattern: String,
        nth: u32,
        when: When,
    }

    fn cmd_spec() -> Option<&'static CmdSpec> {
        static SPEC: OnceLock<Option<CmdSpec>> = OnceLock::new();
        SPEC.get_or_init(|| {
            let raw = std::env::var("PULLNIX_CRASH_CMD").ok()?;
            let (rest, when) = if let Some(r) = raw.strip_suffix('+') {
                (r.to_owned(), When::After)
            } else {
                let (r, ms) = raw.rsplit_once('@')?;
                (
                    r.to_owned(),
                    When::During(Duration::from_millis(ms.parse().ok()?)),
                )
            };
            let (pattern, nth) = name_and_nth(&rest);
            Some(CmdSpec {
                pattern: pattern.to_owned(),
                nth,
                when,
            })
        })
        .as_ref()
    }

    /// One external command (or gix network operation) as seen by the fault injection; ending
    /// it (dropping it) may kill the process.
    pub struct Span {
        armed: Option<Armed>,
    }

    struct Armed {
        label: String,
        started: Instant,
        /// Set once the kill is under way, so that it happens once.
        fired: Arc<AtomicBool>,
    }

    /// Marks the start of `line` (the command line as logged). `short` names it in the report.
    pub fn span(line: &str, short: &str) -> Span {
        static MATCHES: AtomicU32 = AtomicU32::new(0);
        let Some(spec) = cmd_spec() else {
            return Span { armed: None };
        };
        if !line.contains(&spec.pattern) || MATCHES.fetch_add(1, Ordering::SeqCst) + 1 != spec.nth {
            return Span { armed: None };
        }
        let armed = Armed {
            label: short.to_owned(),
            started: Instant::now(),
            fired: Arc::new(AtomicBool::new(false)),
        };
        if let When::During(after) = spec.when {
            let fired = Arc::clone(&armed.fired);
            let label = armed.label.clone();
            std::thread::spawn(move || {
                std::thread::sleep(after);
                if !fired.swap(true, Ordering::SeqCst) {
                    kill(&format!(
                        "during {label} ({} ms after it started)",
                        after.as_millis()
                    ));
                }
            });
        }
        Span { armed: Some(armed) }
    }

    impl Drop for Span {
        fn drop(&mut self) {
            if let Some(a) = &self.armed
                && !a.fired.swap(true, Ordering::SeqCst)
            {
                kill(&format!(
                    "after {} ended ({} ms after it started)",
                    a.label,
                    a.started.elapsed().as_millis()
                ));
            }
        }
    }

    /// SIGKILL for this run: the whole process group if this process leads it (the tests start
    /// pullnix that way, as systemd starts a service), else only this process.
    fn kill(landing: &str) -> ! {
        use rustix::process::{Signal, getpgrp, getpid, kill_process, kill_process_group};
        crate::warn!("fault injection: killed {landing}");
        let me = getpid();
        if getpgrp() == me {
            let _ = kill_process_group(me, Signal::KILL);
        }
        let _ = kill_process(me, Signal::KILL);
        // SIGKILL cannot be caught; this only runs if kill(2) itself failed.
        std::process::abort();
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{hit, span};

#[cfg(not(feature = "fault-injection"))]
#[inline]
pub fn hit(_name: &str) {}

/// Without the feature a span is nothing.
#[cfg(not(feature = "fault-injection"))]
pub struct Span;

#[cfg(not(feature = "fault-injection"))]
#[inline]
pub fn span(_line: &str, _short: &str) -> Span {
    Span
}
