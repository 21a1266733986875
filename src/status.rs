//! `pullnix status [--json]`: what runs, what is deployed, what is in flight, what happened last.
//! Read-only and lock-free: the state file is only ever replaced atomically.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::context::Ctx;
use crate::paths;
use crate::state::{BadCommit, Deployed, FailedBuild, Outcome, Pending, Rollback, State};

#[derive(Serialize)]
pub struct Status {
    pub host: String,
    pub current_system: Option<PathBuf>,
    pub booted_system: Option<PathBuf>,
    pub profile_generation: Option<u32>,
    pub profile_system: Option<PathBuf>,
    pub deployed: Option<Deployed>,
    pub pending: Option<Pending>,
    /// A `pullnix rollback` that was interrupted; the next run of any command finishes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    pub last: Option<Outcome>,
    pub last_check: Option<u64>,
    pub failed_build: Option<FailedBuild>,
    pub bad_commits: Vec<BadCommit>,
    pub rollbacks: u64,
    /// Since when syncs have found the lock taken (Unix seconds); null when nobody did.
    pub lock_busy_since: Option<u64>,
}

pub fn gather(ctx: &Ctx) -> Result<Status> {
    let state = State::load(&ctx.paths.state_file())?;
    let generation = ctx.profile().current();
    Ok(Status {
        host: ctx.host.clone(),
        current_system: paths::read_link(&ctx.paths.current_system),
        booted_system: paths::read_link(&ctx.paths.booted_system),
        profile_generation: generation.as_ref().map(|g| g.number),
        profile_system: generation.map(|g| g.system),
        deployed: state.deployed,
        pending: state.pending,
        rollback: state.rollback,
        last: state.last,
        last_check: crate::state::touched_at(&ctx.paths.last_check_file()),
        failed_build: state.failed_build,
        bad_commits: state.bad,
        rollbacks: state.rollbacks,
        lock_busy_since: crate::lock::busy_since(&ctx.paths.lock_file()),
    })
}

pub fn command(ctx: &Ctx, json: bool) -> Result<()> {
    let s = gather(ctx)?;
    // What the record says may quote peers (a remote's stderr) and, from older versions, a URL
    // with its userinfo.
    let text = if json {
        crate::log::shown_json(&serde_json::to_string_pretty(&s)?) + "\n"
    } else {
        crate::log::shown(&render(&s))
    };
    print!("{text}");
    Ok(())
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-23T17:04:12Z` (days-to-civil conversion from
/// <https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
pub fn fmt_time(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn opt_path(p: Option<&PathBuf>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| p.display().to_string())
}

fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "host:           {}", s.host);
    let _ = writeln!(o, "current system: {}", opt_path(s.current_system.as_ref()));
    let _ = writeln!(o, "booted system:  {}", opt_path(s.booted_system.as_ref()));
    let _ = writeln!(
        o,
        "profile:        {}",
        match (s.profile_generation, &s.profile_system) {
            (Some(n), Some(p)) => format!("generation {n} -> {}", p.display()),
            _ => "-".to_owned(),
        }
    );
    match &s.deployed {
        Some(d) => {
            let _ = writeln!(
                o,
                "deployed:       {} at {} ({})",
                d.commit,
                fmt_time(d.at),
                d.system.display()
            );
        }
        None => {
            let _ = writeln!(o, "deployed:       nothing yet");
        }
    }
    if let Some(p) = &s.pending {
        let _ = writeln!(
            o,
            "in flight:      {} phase {:?}, deadline {}, {} boot tries left ({})",
            p.commit,
            p.phase,
            fmt_time(p.deadline),
            p.boot_tries_left,
            p.candidate.display()
        );
    }
    if let Some(r) = &s.rollback {
        let _ = writeln!(
            o,
            "in flight:      rollback from generation {} to {} ({}), since {}",
            r.from_generation,
            r.to_generation,
            r.to_system.display(),
            fmt_time(r.at)
        );
    }
    if let Some(l) = &s.last {
        let _ = writeln!(
            o,
            "last result:    {} at {}: {}",
            l.result,
            fmt_time(l.at),
            l.message
        );
    }
    let _ = writeln!(
        o,
        "last check:     {}",
        s.last_check.map_or_else(|| "never".to_owned(), fmt_time)
    );
    for b in &s.bad_commits {
        let _ = writeln!(o, "bad commit:     {} ({})", b.commit, b.reason);
    }
    let _ = writeln!(o, "rollbacks:      {}", s.rollbacks);
    if let Some(since) = s.lock_busy_since {
        let _ = writeln!(
            o,
            "lock:           taken by another process since at least {} ({}s); syncs are not running",
            fmt_time(since),
            crate::state::now().saturating_sub(since)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::fmt_time;

    #[test]
    fn rfc3339() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_time(1_795_453_452), "2026-11-23T17:04:12Z");
    }
}
