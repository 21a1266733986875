//! Telling the outside world, after every sync, confirm, boot-check and rollback, whatever its
//! outcome: Prometheus metrics for node-exporter's textfile collector, and an optional command
//! that gets `pullnix status --json` on stdin (a webhook, an ntfy push, anything). Neither may
//! fail a deployment: problems are logged as warnings.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::Cmd;
use crate::context::Ctx;
use crate::state::write_atomic_mode;
use crate::status::{self, Status};

pub fn after(ctx: &Ctx) {
    let cfg = &ctx.cfg.report;
    if ctx.paths.textfile.is_none() && cfg.command.is_empty() {
        return;
    }
    let status = match status::gather(ctx) {
        Ok(s) => s,
        Err(e) => {
            crate::warn!("report: cannot read the status: {e:#}");
            return;
        }
    };
    if let Some(path) = &ctx.paths.textfile
        && let Err(e) = write_textfile(path, &status)
    {
        crate::warn!("report: {e:#}");
    }
    if !cfg.command.is_empty()
        && let Err(e) = run_command(&cfg.command, cfg.timeout.unwrap_or(30), &status)
    {
        crate::warn!("report command failed: {e:#}");
    }
}

fn run_command(argv: &[String], timeout: u64, status: &Status) -> Result<()> {
    let json = serde_json::to_string(status).context("serialising the status")?;
    Cmd::from_argv(argv)?
        .stdin_bytes(crate::log::shown_json(&json).into_bytes())
        .timeout(Duration::from_secs(timeout))
        .run()?;
    Ok(())
}

/// Writes the metrics atomically (temp + rename in the same directory), so node-exporter never
/// reads half a file (node-exporter's textfile collector documentation asks for exactly that).
fn write_textfile(path: &Path, s: &Status) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // node-exporter reads it as its own user.
    write_atomic_mode(path, metrics(s).as_bytes(), 0o644)
        .with_context(|| format!("writing metrics to {}", path.display()))
}

/// Prometheus text exposition format, version 0.0.4.
pub fn metrics(s: &Status) -> String {
    let mut m = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
    };
    let host = format!("host=\"{}\"", escape(&s.host));
    let plain = |v: f64| vec![(format!("{{{host}}}"), v)];
    #[allow(clippy::cast_precision_loss)] // Unix seconds and counters are far below 2^52.
    let f = |v: u64| v as f64;
    if let Some(t) = s.last_check {
        gauge(
            "pullnix_last_check_timestamp_seconds",
            "When the remote was last asked for the branch.",
            &plain(f(t)),
        );
    }
    if let Some(l) = &s.last {
        gauge(
            "pullnix_last_result_timestamp_seconds",
            "When the last result was recorded.",
            &plain(f(l.at)),
        );
        gauge(
            "pullnix_last_result",
            "The last result (deployed, reverted, build-failed, ...) as a label; always 1.",
            &[(format!("{{{host},result=\"{}\"}}", escape(&l.result)), 1.0)],
        );
    }
    if let Some(d) = &s.deployed {
        gauge(
            "pullnix_deployed_info",
            "The deployed commit and system; always 1.",
            &[(
                format!(
                    "{{{host},commit=\"{}\",system=\"{}\"}}",
                    escape(&d.commit),
                    escape(&d.system.display().to_string())
                ),
                1.0,
            )],
        );
        gauge(
            "pullnix_deployed_timestamp_seconds",
            "When the deployed commit was confirmed.",
            &plain(f(d.at)),
        );
    }
    if let Some(g) = s.profile_generation {
        gauge(
            "pullnix_generation",
            "The system profile's current generation.",
            &plain(f(u64::from(g))),
        );
    }
    gauge(
        "pullnix_pending",
        "1 while a candidate is armed and not yet confirmed or reverted.",
        &plain(if s.pending.is_some() { 1.0 } else { 0.0 }),
    );
    gauge(
        "pullnix_rollbacks_total",
        "Reverts and rollbacks so far.",
        &plain(f(s.rollbacks)),
    );
    gauge(
        "pullnix_lock_busy_seconds",
        "How long syncs have found the lock taken by another process; 0 when they did not.",
        &plain(f(s
            .lock_busy_since
            .map_or(0, |t| crate::state::now().saturating_sub(t)))),
    );
    gauge(
        "pullnix_bad_commits",
        "Commits recorded as bad (not retried until the branch moves).",
        &plain(f(s.bad_commits.len() as u64)),
    );
    m
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}
