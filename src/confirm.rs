//! Ending an armed deployment: confirm the candidate or go back to the previous generation.
//!
//! Every function here starts from what the state file says and is safe to run again after being
//! killed at any point: each step either checks whether it already happened or is idempotent
//! (setting a profile to its current target, re-running `switch-to-configuration`, renaming an
//! already blessed entry), and the phase is written before the step it announces.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::context::Ctx;
use crate::exit::Exit;
use crate::failpoint;
use crate::profile::Profile;
use crate::state::{Deployed, Pending, Phase, State, Unknown, now};
use crate::switch::{self, Action};
use crate::{bless, git, health, paths, watchdog};

/// How far an in-flight deployment got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Confirmed,
    /// Reverted; `bad` says whether the commit was recorded as bad.
    Reverted {
        bad: bool,
        reason: String,
    },
    /// Not over yet: boot mode asked for a reboot into the candidate or (`reverting`) back to
    /// the previous generation, or boot-check opened the confirmation window after booting the
    /// candidate. The next boot-check or confirm carries on.
    Underway {
        reverting: bool,
        reason: String,
    },
}

impl Ended {
    /// The error a command reports for this ending, if any.
    pub fn into_result(self) -> Result<()> {
        match self {
            Ended::Confirmed
            | Ended::Underway {
                reverting: false, ..
            } => Ok(()),
            Ended::Reverted { reason, .. } | Ended::Underway { reason, .. } => {
                Err(anyhow!("{reason}")).context(Exit::Unhealthy)
            }
        }
    }
}

/// Drives a pending deployment, found in any phase, to its end.
pub fn resume(ctx: &Ctx, state: &mut State) -> Result<Ended> {
    let p = pending(state)?;
    if rebooted_since(p.boot_id.as_deref(), ctx.boot_id().as_deref()) {
        // The machine rebooted since this record was written, and boot-check has not accounted
        // for that boot (it failed, or never ran): what the phase says no longer holds (an
        // activated test-mode candidate is gone, a boot-mode one may run), so do its job first.
        crate::warn!(
            "the deployment of {} was recorded before the machine rebooted, and boot-check has \
             not accounted for this boot: doing that first",
            short(&p.commit)
        );
        return handle_boot(ctx, state);
    }
    crate::notice!(
        "resuming deployment of {} ({}) in phase {:?}",
        short(&p.commit),
        p.candidate.display(),
        p.phase
    );
    match p.phase {
        Phase::Armed => {
            let what = format!("activation of {} was interrupted", short(&p.commit));
            revert_attempt(ctx, state, &what, true)
        }
        Phase::Rebooting => {
            // The machine has not been through boot-check since the candidate became the boot
            // default, so the reboot is still owed.
            switch::reboot(&ctx.cfg.switch).context(Exit::Activation)?;
            Ok(Ended::Underway {
                reverting: false,
                reason: format!("waiting for the reboot into {}", short(&p.commit)),
            })
        }
        Phase::Activated => {
            if now() >= p.deadline {
                let reason = format!(
                    "candidate {} was not confirmed before its deadline",
                    short(&p.commit)
                );
                revert(ctx, state, &reason, true, true)
            } else {
                health_loop(ctx, state)
            }
        }
        Phase::Confirming => finish_confirm(ctx, state),
        Phase::Reverting => finish_revert(ctx, state, true),
    }
}

/// Repeats the health checks until they all pass (confirm) or the deadline passes (revert).
pub fn health_loop(ctx: &Ctx, state: &mut State) -> Result<Ended> {
    let interval = Duration::from_secs(ctx.cfg.confirm.interval.max(1));
    let mut round = 0u32;
    loop {
        round += 1;
        let p = pending(state)?;
        watchdog::status(&format!(
            "confirming {}: health check round {round}",
            short(&p.commit)
        ));
        failpoint::hit("confirm.checking");
        let failed = health::failures(ctx);
        if failed.is_empty() {
            crate::notice!(
                "health checks passed for {} in round {round}",
                short(&p.commit)
            );
            set_phase(ctx, state, Phase::Confirming)?;
            failpoint::hit("confirm.passed");
            return finish_confirm(ctx, state);
        }
        let left = p.deadline.saturating_sub(now());
        for f in &failed {
            crate::warn!("health check failed (round {round}, {left}s to deadline): {f}");
        }
        if left == 0 {
            let reason = format!(
                "health checks of {} still failing at the deadline: {}",
                short(&p.commit),
                failed.join("; ")
            );
            return revert(ctx, state, &reason, true, true);
        }
        watchdog::sleep(interval.min(Duration::from_secs(left)));
    }
}

/// Makes the confirmed candidate permanent: newest profile generation, boot default, blessed
/// boot entry, recorded as deployed.
pub fn finish_confirm(ctx: &Ctx, state: &mut State) -> Result<Ended> {
    let p = pending(state)?;
    let profile = ctx.profile();
    let made_default = (|| -> Result<()> {
        if profile.current().is_none_or(|g| g.system != p.candidate) {
            profile.set(&p.candidate)?;
        }
        failpoint::hit("confirm.profile-set");
        switch::run(&ctx.cfg.switch, &p.candidate, Action::Boot)
    })();
    if let Err(e) = made_default {
        // A healthy candidate that cannot be made permanent must not stay running as a half
        // state; go back and try again later (more likely the machine's fault than the
        // commit's, so it counts as an interrupted attempt).
        let what = format!(
            "{} passed its health checks but could not be made the boot default: {e:#}",
            short(&p.commit)
        );
        revert_attempt(ctx, state, &what, true)?;
        return Err(anyhow!(what)).context(Exit::Activation);
    }
    failpoint::hit("confirm.boot-set");
    let generation = profile.current().map(|g| g.number);
    if ctx.cfg.boot.counting
        && let Some(n) = generation
    {
        bless::bless(&ctx.paths.entries_dir, n)?;
    }
    if let Err(e) = git::pin_deployed(&ctx.paths.repo_dir(), &p.commit) {
        crate::warn!("could not pin the deployed commit in the local repository: {e:#}");
    }
    let message = format!(
        "deployed {} as generation {}",
        p.commit,
        generation.map_or_else(|| "?".to_owned(), |n| n.to_string())
    );
    state.deployed = Some(Deployed {
        commit: p.commit.clone(),
        system: p.candidate.clone(),
        generation,
        at: now(),
        unknown: Unknown::new(),
    });
    state.pending = None;
    if state
        .attempts
        .as_ref()
        .is_some_and(|a| a.commit == p.commit)
    {
        state.attempts = None;
    }
    state.record("deployed", Some(&p.commit), message.clone());
    state.save(&ctx.paths.state_file())?;
    crate::notice!("{message}");
    watchdog::status(&message);
    Ok(Ended::Confirmed)
}

/// Starts going back to the previous generation: records why first, then does it.
pub fn revert(
    ctx: &Ctx,
    state: &mut State,
    reason: &str,
    bad: bool,
    activate: bool,
) -> Result<Ended> {
    crate::error!("reverting: {reason}");
    let moved = profile_moved(&ctx.profile(), &pending(state)?);
    let p = state
        .pending
        .as_mut()
        .ok_or_else(|| anyhow!("nothing to revert"))?;
    p.phase = Phase::Reverting;
    p.revert_reason = Some(reason.to_owned());
    p.revert_marks_bad = bad;
    p.restore_boot |= moved;
    p.boot_id = ctx.boot_id();
    state.save(&ctx.paths.state_file())?;
    failpoint::hit("revert.recorded");
    finish_revert(ctx, state, activate)
}

/// Reverts an attempt that ended for a reason other than the candidate's health (a kill, a
/// reboot, a machine problem). It is counted, and only the `confirm.max_attempts`-th such
/// attempt records the commit as bad, so a commit is neither retried forever nor blamed for
/// one power cut.
fn revert_attempt(ctx: &Ctx, state: &mut State, what: &str, activate: bool) -> Result<Ended> {
    let p = pending(state)?;
    let n = state.count_attempt(&p.commit);
    let max = ctx.cfg.confirm.max_attempts;
    let reason = format!("{what} (attempt {n} of {max})");
    revert(ctx, state, &reason, n >= max, activate)
}

/// Whether the candidate reached the system profile: the profile moved off the previous
/// generation, or a generation of the candidate exists beside it.
fn profile_moved(profile: &Profile<'_>, p: &Pending) -> bool {
    let Some(prev) = p.previous_generation else {
        return false;
    };
    profile.current().is_some_and(|g| g.number != prev)
        || candidate_generations(profile, p, prev).is_ok_and(|g| !g.is_empty())
}

/// The generations made for the candidate: newer than the previous one, with its system.
fn candidate_generations(profile: &Profile<'_>, p: &Pending, prev: u32) -> Result<Vec<u32>> {
    Ok(profile
        .generations()?
        .into_iter()
        .filter(|g| g.number > prev && g.system == p.candidate)
        .map(|g| g.number)
        .collect())
}

/// Makes the previous generation the profile's and the boot loader's default again and deletes
/// the candidate's generation, so that neither `rollback` nor the boot loader's fallback (when a
/// later candidate does not boot) can ever land on it. Each step is idempotent and the record
/// says to redo all of them ([`Pending::restore_boot`]) until the revert is finished: a kill
/// between moving the profile back and installing the boot loader would otherwise leave the
/// reverted candidate the boot default.
fn restore_previous_boot(ctx: &Ctx, p: &Pending, prev: u32) -> Result<()> {
    let profile = ctx.profile();
    if profile.current().is_none_or(|g| g.number != prev) {
        profile.switch_generation(prev)?;
    }
    failpoint::hit("revert.profile-switched");
    profile.delete_generations(&candidate_generations(&profile, p, prev)?)?;
    // The boot loader defaults to the system its installer is run for.
    let system = profile
        .current()
        .map_or_else(|| p.previous.clone(), |g| g.system);
    switch::run(&ctx.cfg.switch, &system, Action::Boot)
}

/// Puts the previous generation back (profile and boot default if the candidate had reached
/// them, and the running system unless `activate` is false because a reboot already did), then
/// disarms.
pub fn finish_revert(ctx: &Ctx, state: &mut State, activate: bool) -> Result<Ended> {
    let p = pending(state)?;
    let mut reason = p
        .revert_reason
        .clone()
        .unwrap_or_else(|| "reverted".to_owned());
    if let Some(prev) = p.previous_generation
        && (p.restore_boot || profile_moved(&ctx.profile(), &p))
    {
        restore_previous_boot(ctx, &p, prev).context(Exit::Activation)?;
    }
    failpoint::hit("revert.profile-restored");
    let running = paths::read_link(&ctx.paths.current_system);
    if activate && p.boot && running.as_deref() == Some(p.candidate.as_path()) {
        // The candidate's kernel and initrd run: only a reboot gets back. The record stays
        // "reverting" until boot-check sees the previous generation booted.
        watchdog::status(&format!("rebooting back to {}", p.previous.display()));
        switch::reboot(&ctx.cfg.switch).context(Exit::Activation)?;
        return Ok(Ended::Underway {
            reverting: true,
            reason: format!("{reason}; rebooting into the previous generation"),
        });
    }
    if activate {
        watchdog::status(&format!("reverting to {}", p.previous.display()));
        if let Err(e) = switch::run(&ctx.cfg.switch, &p.previous, Action::Test) {
            // A switch that activated the system but could not start some unit ends with an
            // error too; then the previous generation does run again, and its failing unit is
            // no reason to stay half way (a record stuck in `reverting` would stop every sync).
            let runs = paths::read_link(&ctx.paths.current_system).as_deref()
                == Some(p.previous.as_path());
            if !(switch::units_failed(&e) && runs) {
                return Err(e)
                    .context(
                        "re-activating the previous generation failed; the next run tries again",
                    )
                    .context(Exit::Activation);
            }
            crate::warn!("the previous generation runs again, but: {e:#}");
            reason = format!(
                "{reason}; the previous generation runs again, but some of its units failed to start"
            );
        }
    }
    failpoint::hit("revert.activated");
    if p.revert_marks_bad {
        state.mark_bad(&p.commit, &reason);
    }
    state.rollbacks += 1;
    state.pending = None;
    state.record("reverted", Some(&p.commit), reason.clone());
    state.save(&ctx.paths.state_file())?;
    crate::notice!(
        "back on {}{}",
        p.previous.display(),
        if p.revert_marks_bad {
            format!(
                "; commit {} is recorded as bad and will not be retried until the branch moves",
                short(&p.commit)
            )
        } else {
            String::new()
        }
    );
    Ok(Ended::Reverted {
        bad: p.revert_marks_bad,
        reason,
    })
}

pub fn set_phase(ctx: &Ctx, state: &mut State, phase: Phase) -> Result<()> {
    let p = state
        .pending
        .as_mut()
        .ok_or_else(|| anyhow!("no pending deployment"))?;
    p.phase = phase;
    p.boot_id = ctx.boot_id();
    state.save(&ctx.paths.state_file())
}

fn pending(state: &State) -> Result<Pending> {
    state
        .pending
        .clone()
        .ok_or_else(|| anyhow!("no pending deployment"))
}

/// `pullnix confirm`.
///
/// Started by the sync that activated a candidate (`confirm.unit`), at every boot, and again by
/// every switch-to-configuration that runs while it is not active: a switch starts every active
/// target (multi-user.target, and with boot counting boot-complete.target), which starts this
/// unit, and waits for those jobs. Such a switch is often run by the pullnix that holds
/// `STATE/lock` (a sync activating a candidate, a revert, a rollback).
///
/// The unit is `Type=notify`: its start job ends at `READY=1`, and boot-complete.target (with
/// boot counting) waits for that. So `READY=1` comes with the verdict only when the verdict
/// decides whether this boot is good (a boot-mode candidate in its own boot; nobody else holds
/// the lock then), and before anything else otherwise, in particular before waiting for the
/// lock: a start job that lasted a whole confirmation, or a wait for the pullnix running the
/// switch, would make that switch wait for boot-complete.target, which waits for this unit.
/// The record is read without the lock first (it is replaced by atomic renames), so a run with
/// nothing in flight exits at once; any other waits for the lock and then does what the record
/// says, as every command does: after a sync that activated a candidate, that is confirming it
/// (this run, started by the sync's own switch, is the one the sync's `systemctl start` then
/// finds running).
pub fn command(ctx: &Ctx) -> Result<()> {
    ctx.check_root()?;
    ctx.ensure_state_dir()?;
    let seen = State::load(&ctx.paths.state_file())?;
    let Some(what) = confirm_work(&seen, ctx.boot_id().as_deref()) else {
        watchdog::ready();
        crate::info!("nothing to confirm");
        return Ok(());
    };
    if !decides_this_boot(ctx, &seen) {
        watchdog::ready();
    }
    let _lock = wait_for_lock(ctx, what)?;
    crate::repair::owned(&ctx.paths);
    let mut state = State::load(&ctx.paths.state_file())?;
    if !decides_this_boot(ctx, &state) {
        watchdog::ready();
    }
    crate::rollback::finish(ctx, &mut state)?;
    if state.pending.is_none() {
        watchdog::ready();
        crate::info!("nothing to confirm");
        return Ok(());
    }
    let ended = resume(ctx, &mut state)?;
    if ended == Ended::Confirmed {
        watchdog::ready();
    }
    ended.into_result()
}

/// What a record in flight is, for the log; `None` when nothing is in flight.
fn confirm_work(state: &State, boot: Option<&str>) -> Option<&'static str> {
    if state.rollback.is_some() {
        return Some("a rollback");
    }
    let p = state.pending.as_ref()?;
    if rebooted_since(p.boot_id.as_deref(), boot) {
        return Some("a deployment from before the last boot");
    }
    Some(match p.phase {
        Phase::Activated | Phase::Confirming => "a candidate in its confirmation window",
        Phase::Armed => "a candidate being activated",
        Phase::Rebooting => "a candidate waiting for the reboot into it",
        Phase::Reverting => "a candidate being reverted",
    })
}

/// Takes `STATE/lock`, waiting for whoever holds it, and keeps `WATCHDOG=1` going meanwhile (a
/// sync may hold it for a build, a rollback for its switch).
fn wait_for_lock(ctx: &Ctx, what: &str) -> Result<crate::lock::Lock> {
    let path = ctx.paths.lock_file();
    let mut said = false;
    loop {
        if let Some(lock) = crate::lock::Lock::try_acquire(&path)? {
            return Ok(lock);
        }
        if !said {
            crate::info!(
                "{what} is in flight and another pullnix holds {}: waiting for it",
                path.display()
            );
            said = true;
        }
        watchdog::sleep(Duration::from_millis(200));
    }
}

/// Whether this confirm's verdict decides if the running boot is good: the machine booted the
/// unconfirmed candidate (boot mode). Then boot-complete.target, and with it systemd-bless-boot,
/// must wait for the verdict, and never be reached when the candidate is reverted.
fn decides_this_boot(ctx: &Ctx, state: &State) -> bool {
    state.pending.as_ref().is_some_and(|p| {
        p.boot
            && paths::read_link(&ctx.paths.booted_system).as_deref() == Some(p.candidate.as_path())
    })
}

/// Whether the machine rebooted since a record written in boot `recorded` (`now` is the
/// running boot). Unknown either way counts as not rebooted: that is how every command but
/// boot-check read records before boot ids were kept.
fn rebooted_since(recorded: Option<&str>, now: Option<&str>) -> bool {
    matches!((recorded, now), (Some(r), Some(n)) if r != n)
}

/// Whether a record from boot `recorded` still has to be accounted for by boot-check in boot
/// `now`: unless both are known and the same. (A record of an older pullnix has no boot id,
/// and a boot-check always acted on it.)
fn unaccounted(recorded: Option<&str>, now: Option<&str>) -> bool {
    !matches!((recorded, now), (Some(r), Some(n)) if r == n)
}

fn boot_work(state: &State, boot: Option<&str>) -> bool {
    state
        .rollback
        .as_ref()
        .is_some_and(|r| unaccounted(r.boot_id.as_deref(), boot))
        || state
            .pending
            .as_ref()
            .is_some_and(|p| unaccounted(p.boot_id.as_deref(), boot))
}

/// `pullnix boot-check`: runs at every boot, before anything is confirmed, and is the one place
/// that knows a boot happened.
///
/// It also runs when a switch-to-configuration starts multi-user.target while it is not active
/// (it failed at boot, or it is new: the first deployment that enables pullnix), and then
/// multi-user.target, which is ordered after it, waits for it, while the pullnix that runs the
/// switch may hold `STATE/lock`. So it decides without the lock whether a boot happened since
/// the record was written (the kernel's boot id, kept in the record), and does nothing in the
/// boot that wrote it. When it has work but the lock is taken (never at a real boot: the other
/// units are ordered after it), the pullnix that holds it accounts for the boot itself (see
/// [`resume`]), so it leaves the record to that one.
pub fn boot_check(ctx: &Ctx) -> Result<()> {
    ctx.check_root()?;
    ctx.ensure_state_dir()?;
    let boot = ctx.boot_id();
    let seen = State::load(&ctx.paths.state_file())?;
    if !boot_work(&seen, boot.as_deref()) {
        crate::info!(
            "boot-check: {}",
            if seen.pending.is_none() && seen.rollback.is_none() {
                "no deployment in flight"
            } else {
                "nothing to account for: the deployment in flight was recorded in this boot"
            }
        );
        return Ok(());
    }
    let Some(_lock) = crate::lock::Lock::try_acquire(&ctx.paths.lock_file())? else {
        crate::notice!(
            "boot-check: another pullnix holds {}; it accounts for this boot",
            ctx.paths.lock_file().display()
        );
        return Ok(());
    };
    crate::repair::owned(&ctx.paths);
    let mut state = State::load(&ctx.paths.state_file())?;
    if let Some(r) = state.rollback.as_mut()
        && unaccounted(r.boot_id.as_deref(), boot.as_deref())
    {
        // Finishing a rollback does not depend on the boot: only noted, so that a boot-check
        // started again in this boot leaves it to the next run if this one cannot finish it.
        r.boot_id.clone_from(&boot);
        state.save(&ctx.paths.state_file())?;
    }
    crate::rollback::finish(ctx, &mut state)?;
    if !state
        .pending
        .as_ref()
        .is_some_and(|p| unaccounted(p.boot_id.as_deref(), boot.as_deref()))
    {
        crate::info!("boot-check: no deployment in flight from before this boot");
        return Ok(());
    }
    handle_boot(ctx, &mut state)?.into_result()
}

/// What a boot means for the deployment in flight, recorded before this boot: the machine came
/// up on the candidate (count the try), or on something else (the candidate is gone: revert,
/// without re-activating what already runs). Every write it makes records this boot's id with
/// it.
fn handle_boot(ctx: &Ctx, state: &mut State) -> Result<Ended> {
    let p = pending(state)?;
    let booted = paths::read_link(&ctx.paths.booted_system);
    if booted.as_deref() == Some(p.candidate.as_path()) {
        return booted_into_candidate(ctx, state, &p);
    }
    // The machine came up on something other than the candidate: usually the previous
    // generation, but it can be another one (picked in the boot menu, or the boot loader's
    // fallback). The record must say what runs, so anything but the previous generation is
    // replaced by it.
    let on_previous = booted.as_deref() == Some(p.previous.as_path());
    let came_up_on = booted.map_or_else(
        || "an unknown system".to_owned(),
        |b| b.display().to_string(),
    );
    if !on_previous {
        crate::warn!(
            "boot-check: the machine came up on {came_up_on}, neither the candidate nor the \
             previous generation {}; activating the previous generation",
            p.previous.display()
        );
    }
    let activate = !on_previous;
    match p.phase {
        Phase::Reverting => {
            // Going back does not depend on the boot beyond `activate`: noted first, so that
            // a boot-check started again in this boot leaves an unfinished revert to the next
            // sync or confirm instead of waiting for their lock.
            if let Some(pm) = state.pending.as_mut() {
                pm.boot_id = ctx.boot_id();
            }
            state.save(&ctx.paths.state_file())?;
            finish_revert(ctx, state, activate)
        }
        Phase::Rebooting | Phase::Activated | Phase::Confirming if p.boot => {
            // It was the boot default, so the boot loader gave up on it (boot counting) or
            // someone chose another entry: the candidate does not boot.
            let reason = format!(
                "candidate {} did not boot: the machine came up on {came_up_on}",
                short(&p.commit)
            );
            revert(ctx, state, &reason, true, activate)
        }
        _ => {
            // Test mode (or before the boot default moved): the reboot itself went back to the
            // previous generation, which stayed the boot default.
            let what = format!(
                "the machine rebooted before {} was confirmed (it came up on {came_up_on})",
                short(&p.commit)
            );
            revert_attempt(ctx, state, &what, activate)
        }
    }
}

/// The booted system is the unconfirmed candidate: count the boot try and open the
/// confirmation window, or give up when the tries are used.
fn booted_into_candidate(ctx: &Ctx, state: &mut State, p: &Pending) -> Result<Ended> {
    match p.phase {
        Phase::Confirming => finish_confirm(ctx, state),
        Phase::Reverting => {
            if let Some(pm) = state.pending.as_mut() {
                pm.boot_id = ctx.boot_id();
            }
            state.save(&ctx.paths.state_file())?;
            finish_revert(ctx, state, true)
        }
        Phase::Armed | Phase::Rebooting | Phase::Activated => {
            let left = p.boot_tries_left.saturating_sub(1);
            if left == 0 {
                let reason = format!(
                    "candidate {} booted {} times without being confirmed",
                    short(&p.commit),
                    ctx.cfg.confirm.boot_tries
                );
                return revert(ctx, state, &reason, true, true);
            }
            if let Some(pm) = state.pending.as_mut() {
                // One write: the try is counted and this boot accounted for together, so a
                // boot-check started again in this boot neither counts it twice nor misses it.
                pm.boot_tries_left = left;
                pm.phase = Phase::Activated;
                pm.deadline = now() + ctx.cfg.confirm.timeout;
                pm.boot_id = ctx.boot_id();
            }
            state.save(&ctx.paths.state_file())?;
            failpoint::hit("boot-check.counted");
            crate::notice!(
                "boot-check: booted unconfirmed candidate {}; {left} boot tries left, confirmation window open",
                short(&p.commit)
            );
            Ok(Ended::Underway {
                reverting: false,
                reason: "booted the candidate".to_owned(),
            })
        }
    }
}

pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
