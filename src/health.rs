//! Health checks that decide whether an activated candidate is kept.
//!
//! Each check answers "healthy now?"; the confirm loop repeats them until all pass or the deadline
//! comes. systemctl is asked through its exit codes and its one-word `is-system-running` answer,
//! both documented as stable interfaces in systemctl(1).

use std::time::Duration;

use crate::cmd::Cmd;
use crate::context::Ctx;
use crate::{git, watchdog};

/// Runs every configured check; returns one sentence per failing check (empty: healthy).
///
/// `WATCHDOG=1` goes out before each check, so the confirm unit's `WatchdogSec` has to outlast
/// the longest single check (the NixOS module asserts it for the commands), not a whole round.
pub fn failures(ctx: &Ctx) -> Vec<String> {
    let h = &ctx.cfg.health;
    let mut failed = Vec::new();
    watchdog::ping();
    if h.remote
        && let Err(e) = git::Remote::new(&ctx.cfg.repo).probe(&ctx.paths.repo_dir())
    {
        failed.push(format!(
            "git remote {} is not reachable: {e:#}",
            crate::repo_url::redact(&ctx.cfg.repo.url)
        ));
    }
    for unit in &h.units {
        watchdog::ping();
        match Cmd::new(&h.systemctl)
            .args(["is-active", "--quiet", unit])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(_) => failed.push(format!("unit {unit} is not active")),
            Err(e) => failed.push(format!("checking unit {unit}: {e:#}")),
        }
    }
    if h.system_running {
        watchdog::ping();
        match Cmd::new(&h.systemctl).arg("is-system-running").output() {
            Ok(out) => {
                let word = out.stdout_str().trim().to_owned();
                if word != "running" {
                    failed.push(format!(
                        "systemctl is-system-running says {word:?}, not \"running\""
                    ));
                }
            }
            Err(e) => failed.push(format!("asking systemctl is-system-running: {e:#}")),
        }
    }
    for c in &h.command {
        watchdog::ping();
        let result = Cmd::from_argv(&c.argv).and_then(|cmd| {
            let cmd = cmd.timeout(Duration::from_secs(c.timeout));
            cmd.run().map(|_| ())
        });
        if let Err(e) = result {
            failed.push(format!("health command {:?} failed: {e:#}", c.name));
        }
    }
    failed
}
