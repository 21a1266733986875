//! `pullnix sync`: the whole pipeline, top to bottom.
//!
//!   lock -> finish an interrupted run -> fetch -> skip? -> refuse rewinds -> build -> scan
//!        -> arm -> activate (`switch-to-configuration test`) -> confirm (inline or handed over)
//!
//! Nothing on the system changes before the candidate is armed in the state file, and the boot
//! default only changes after the candidate proved healthy (in `confirm`), so a crash or reboot at
//! any point lands on the previous generation or on the confirmed candidate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use crate::cmd::Cmd;
use crate::config::Mode;
use crate::confirm::{self, Ended, short};
use crate::context::Ctx;
use crate::exit::Exit;
use crate::failpoint;
use crate::state::{FailedBuild, Pending, Phase, State, now};
use crate::switch::{self, Action};
use crate::{closure, git, lock, nix, paths, scan, signature, watchdog};

pub struct Options {
    /// Queue behind a running instance instead of exiting with "already running".
    pub wait: bool,
    /// Rebuild a commit whose build failed recently.
    pub retry: bool,
}

pub fn sync(ctx: &Ctx, opts: &Options) -> Result<()> {
    ctx.check_root()?;
    ctx.ensure_state_dir()?;
    let _lock = take_lock(ctx, opts)?;
    failpoint::hit("sync.locked");
    crate::repair::owned(&ctx.paths);
    let mut state = State::load(&ctx.paths.state_file())?;

    // An earlier run was interrupted, or a confirmation is still open: end it first. A revert of
    // a commit that is now known bad ends this pass with its error; an interrupted attempt that
    // is allowed another try falls through and is fetched and retried below. A revert or a
    // rollback that cannot be finished (the generation to go back to no longer activates) must
    // not stop the machine from ever deploying again: the pass goes on, and a new commit is
    // deployed from what runs.
    let mut stuck = None;
    if let Err(e) = crate::rollback::finish(ctx, &mut state) {
        crate::error!("could not finish the interrupted rollback: {e:#}");
        stuck = Some(e);
    }
    if stuck.is_none() && state.pending.is_some() {
        match confirm::resume(ctx, &mut state) {
            Ok(Ended::Reverted { bad: true, reason }) => {
                return Err(anyhow!("{reason}")).context(Exit::Unhealthy);
            }
            Ok(ended @ Ended::Underway { .. }) => return ended.into_result(),
            Ok(Ended::Reverted { bad: false, .. } | Ended::Confirmed) => {}
            Err(e)
                if state
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.phase == Phase::Reverting) =>
            {
                crate::error!("could not finish the revert: {e:#}");
                stuck = Some(e);
            }
            Err(e) => return Err(e),
        }
    }

    // What a candidate is armed to go back to; refused before anything is fetched if it is not
    // a system that can be gone back to.
    let current = running_system(ctx)?;
    let remote = git::Remote::new(&ctx.cfg.repo);
    let head = fetch(ctx, &mut state, &remote)?;
    let stuck_commit = state.pending.as_ref().map(|p| p.commit.clone());
    if let Some(skip) = skip_reason(ctx, &state, &head, opts) {
        crate::info!("{skip}");
        return stuck.map_or(Ok(()), Err);
    }
    if let Some(e) = stuck.take_if(|_| stuck_commit.as_deref() == Some(head.as_str())) {
        return Err(e);
    }
    if stuck.is_some() {
        crate::warn!(
            "the branch moved to {}: deploying it from the running system {}",
            short(&head),
            current.display()
        );
    }
    check_signature(ctx, &mut state, &head)?;
    refuse_rewind(ctx, &mut state, &head)?;
    if ctx.cfg.closure.enable {
        refuse_closure_downgrade(ctx, &mut state, &head)?;
    }
    let candidate = build(ctx, &mut state, &remote, &head)?;

    // The stuck revert or rollback stays recorded (and retried) until the new commit replaces
    // it, in the same state write.
    if current == candidate
        && ctx
            .profile()
            .current()
            .is_some_and(|g| g.system == candidate)
    {
        if let Some(e) = &stuck {
            abandon(&mut state, e);
        }
        return record_unchanged(ctx, &mut state, &head, &candidate);
    }
    if ctx.cfg.scan.enable {
        scan(ctx, &mut state, &head, &candidate)?;
    }
    if let Some(e) = &stuck {
        abandon(&mut state, e);
    }
    let boot = match ctx.cfg.switch.mode {
        Mode::Test => false,
        Mode::Boot => true,
        Mode::Auto => switch::needs_reboot(&current, &candidate),
    };
    arm(ctx, &mut state, &head, &candidate, current, boot)?;
    if boot {
        return activate_by_reboot(ctx, &mut state, &head, &candidate);
    }
    activate(ctx, &mut state, &head, &candidate)?;

    // Confirm: by a fresh process of the new generation if a unit is configured, else here.
    // A real switch-to-configuration has usually started that unit already (every active
    // target wants it): that run found the candidate armed, and waits for this sync's lock to
    // confirm it; `start` then finds it running and leaves it be.
    if !ctx.cfg.confirm.unit.is_empty() {
        let unit = &ctx.cfg.confirm.unit;
        match Cmd::new(&ctx.cfg.health.systemctl)
            .args(["start", "--no-block", unit])
            .run()
        {
            Ok(_) => {
                crate::notice!("activated {}; {unit} confirms it", short(&head));
                return Ok(());
            }
            Err(e) => crate::warn!("could not hand confirmation to {unit}, confirming here: {e:#}"),
        }
    }
    confirm::health_loop(ctx, &mut state)?.into_result()
}

/// The running system (`/run/current-system`): what a candidate goes back to when it fails.
/// Refused (exit 2) unless it is a NixOS system that can be activated again.
fn running_system(ctx: &Ctx) -> Result<PathBuf> {
    let link = &ctx.paths.current_system;
    let Some(system) = paths::read_link(link) else {
        return Err(anyhow!(
            "{} does not exist: cannot tell which system is running, so there is nothing to \
             roll back to (is this NixOS, and is --root right?)",
            link.display()
        ))
        .context(Exit::Usage);
    };
    if !system.join("bin/switch-to-configuration").is_file() {
        let what = if system.exists() {
            "is not a NixOS system (no bin/switch-to-configuration)"
        } else {
            "does not exist"
        };
        return Err(anyhow!(
            "{} points at {}, which {what}: a candidate could not be reverted to it, so nothing \
             is deployed (is --root right?)",
            link.display(),
            system.display()
        ))
        .context(Exit::Usage);
    }
    Ok(system)
}

/// Gives up a revert or a rollback that cannot be finished, so that a new commit can be armed
/// from what runs. Only recorded with the new arming (one state write).
fn abandon(state: &mut State, err: &anyhow::Error) {
    if let Some(p) = state.pending.take() {
        let reason = p
            .revert_reason
            .clone()
            .unwrap_or_else(|| "reverted".to_owned());
        if p.revert_marks_bad {
            state.mark_bad(&p.commit, &reason);
        }
        state.record(
            "revert-failed",
            Some(&p.commit),
            format!("gave up reverting {} ({reason}): {err:#}", short(&p.commit)),
        );
    }
    if let Some(r) = state.rollback.take() {
        state.record(
            "rollback-failed",
            None,
            format!(
                "gave up the rollback to generation {}: {err:#}",
                r.to_generation
            ),
        );
    }
}

/// One instance at a time: `--wait` queues behind a running one; otherwise a held lock ends
/// this pass (exit 3), or says deployments are stalled once it has been held too long.
fn take_lock(ctx: &Ctx, opts: &Options) -> Result<lock::Lock> {
    let wait = if opts.wait {
        lock::Wait::Queue
    } else {
        lock::Wait::Fail {
            stalled_after: ctx.cfg.lock_stalled_after,
        }
    };
    lock::Lock::acquire(&ctx.paths.lock_file(), wait)
}

/// Records that this pass ended with `err` (`status`, the journal and the metrics show it) and
/// hands the error back for the caller to return; a failure to save the record wins.
pub(crate) fn recorded(
    ctx: &Ctx,
    state: &mut State,
    result: &str,
    commit: Option<&str>,
    err: anyhow::Error,
) -> Result<anyhow::Error> {
    state.record(result, commit, format!("{err:#}"));
    state.save(&ctx.paths.state_file())?;
    Ok(err)
}

/// Fetches the branch and returns the commit it points at; records when the remote was asked.
pub(crate) fn fetch(ctx: &Ctx, state: &mut State, remote: &git::Remote<'_>) -> Result<String> {
    watchdog::status("fetching");
    let fetched = remote.fetch(&ctx.paths.repo_dir());
    if let Err(e) = crate::state::touch(&ctx.paths.last_check_file()) {
        crate::warn!("could not record the time of this check: {e:#}");
    }
    match fetched {
        Ok(head) => {
            failpoint::hit("sync.fetched");
            Ok(head)
        }
        Err(e) => Err(recorded(ctx, state, "fetch-failed", None, e)?),
    }
}

/// With `repo.allowed_signers`, refuses a commit without a valid signature by an allowed signer.
pub(crate) fn check_signature(ctx: &Ctx, state: &mut State, head: &str) -> Result<()> {
    let Some(signers) = &ctx.cfg.repo.allowed_signers else {
        return Ok(());
    };
    match signature::verify(&ctx.paths.repo_dir(), head, signers, &ctx.paths.state_dir) {
        Ok(principal) => {
            crate::info!("commit {} is signed by {principal}", short(head));
            Ok(())
        }
        Err(e) => Err(recorded(ctx, state, "refused", Some(head), e)?).context(Exit::Refused),
    }
}

/// Refuses a remote commit that does not descend from the deployed one.
fn refuse_rewind(ctx: &Ctx, state: &mut State, head: &str) -> Result<()> {
    let Some(dep) = &state.deployed else {
        return Ok(());
    };
    if ctx.cfg.repo.allow_non_fast_forward
        || git::is_ancestor(&ctx.paths.repo_dir(), &dep.commit, head)?
    {
        return Ok(());
    }
    let msg = format!(
        "branch {:?} is at {head}, which does not descend from the deployed commit {} \
         (force-push or downgrade); set repo.allow_non_fast_forward = true to accept it",
        ctx.cfg.repo.branch, dep.commit
    );
    Err(recorded(ctx, state, "refused", Some(head), anyhow!(msg))?).context(Exit::Refused)
}

/// Closure mode: refuses a pin that goes back to a closure an earlier commit than the deployed
/// one pinned (the commits move forward, the system backward), unless `closure.allow_downgrade`.
fn refuse_closure_downgrade(ctx: &Ctx, state: &mut State, head: &str) -> Result<()> {
    let Some(dep) = &state.deployed else {
        return Ok(());
    };
    if ctx.cfg.closure.allow_downgrade {
        return Ok(());
    }
    let file = closure::file_for(&ctx.cfg.closure, &ctx.host);
    let repo = ctx.paths.repo_dir();
    let Ok(pin) = closure::pinned_path(&repo, head, &file) else {
        // A missing or malformed pin is the build step's error to report.
        return Ok(());
    };
    let Some(earlier) = closure::pinned_earlier(&repo, &dep.commit, &dep.system, &file, &pin)?
    else {
        return Ok(());
    };
    let msg = format!(
        "commit {head} pins {}, the closure that the older commit {earlier} pinned, not the \
         deployed {} of {}: a downgrade; set closure.allow_downgrade = true to accept it (e.g. \
         for a revert)",
        pin.display(),
        dep.system.display(),
        dep.commit
    );
    Err(recorded(ctx, state, "refused", Some(head), anyhow!(msg))?).context(Exit::Refused)
}

/// Builds exactly the fetched commit; a failure is recorded with nix's stderr tail.
pub(crate) fn build(
    ctx: &Ctx,
    state: &mut State,
    remote: &git::Remote<'_>,
    head: &str,
) -> Result<PathBuf> {
    crate::notice!(
        "deploying {head} of {}",
        crate::repo_url::redact(&ctx.cfg.repo.url)
    );
    let attr = nix::toplevel_attr(&ctx.host);
    let file = closure::file_for(&ctx.cfg.closure, &ctx.host);
    let closure_mode = ctx.cfg.closure.enable;
    watchdog::status(&if closure_mode {
        format!("substituting the closure of {}", short(head))
    } else {
        format!("building {}", short(head))
    });
    let obtained = obtain(ctx, remote, head, &attr, &file, &ctx.paths.candidate_link())
        .and_then(|path| nix::ensure_toplevel(&path).map(|()| path));
    let built = if closure_mode {
        obtained
            .with_context(|| format!("fetching the closure commit {head} pins for {}", ctx.host))
            .context(Exit::Build)
    } else {
        obtained.with_context(|| format!("building {attr} of commit {head}"))
    };
    match built {
        Ok(candidate) => {
            crate::info!("built {}", candidate.display());
            failpoint::hit("sync.built");
            Ok(candidate)
        }
        Err(e) => {
            state.failed_build = Some(FailedBuild {
                commit: head.to_owned(),
                error: format!("{e:#}"),
                at: now(),
                unknown: crate::state::Unknown::new(),
            });
            Err(recorded(ctx, state, "build-failed", Some(head), e)?)
        }
    }
}

/// The store path `head` provides: `attr` of its flake, built; or in closure mode (nothing is
/// evaluated) the prebuilt path it pins in the repository file `pin_file`, substituted from the
/// configured caches with signatures required. `out_link` becomes its GC root.
pub(crate) fn obtain(
    ctx: &Ctx,
    remote: &git::Remote<'_>,
    head: &str,
    attr: &str,
    pin_file: &str,
    out_link: &Path,
) -> Result<PathBuf> {
    if ctx.cfg.closure.enable {
        let path = closure::pinned_path(&ctx.paths.repo_dir(), head, pin_file)?;
        closure::substitute(&ctx.cfg.closure, &ctx.cfg.build.nix, &path, out_link)?;
        Ok(path)
    } else {
        let repo = ctx.paths.repo_dir();
        let flake = nix::flake_ref(&repo, &remote.tracking_ref(), head, &ctx.cfg.repo.flake_dir);
        crate::repair::prepare_nix_git_cache(&repo);
        match nix::build(&ctx.cfg, &flake, attr, out_link) {
            Err(e) if crate::repair::failed_in_git(&e) => {
                // Most likely Nix's own copy of the repository, broken by a build that was
                // killed; it is made again from the local repository.
                crate::warn!("nix build failed in git; building again with a fresh copy: {e:#}");
                crate::repair::clear_nix_git_cache(&repo);
                nix::build(&ctx.cfg, &flake, attr, out_link)
            }
            built => built,
        }
    }
}

/// The vulnerability gate. A commit with findings is recorded as bad; a scanner that fails
/// blocks the candidate for this pass only (fail closed), and the next poll scans again.
pub(crate) fn scan(ctx: &Ctx, state: &mut State, head: &str, candidate: &Path) -> Result<()> {
    watchdog::status(&format!("scanning {}", short(head)));
    match scan::scan(&ctx.cfg.scan, candidate) {
        Ok(scan::Verdict::Clean) => {
            failpoint::hit("sync.scanned");
            Ok(())
        }
        Ok(scan::Verdict::Blocked(msg)) => {
            state.mark_bad(head, &format!("blocked by the vulnerability scan: {msg}"));
            Err(recorded(ctx, state, "blocked", Some(head), anyhow!(msg))?).context(Exit::Blocked)
        }
        Err(e) => {
            let e = if ctx.cfg.closure.enable {
                // vulnix reads the closure's derivations, which a substituted closure lacks.
                e.context(
                    "in closure mode vulnix needs the .drv files, which the device does not \
                     have: scan in CI and set scan.enable = false (README, \"Closure mode\")",
                )
            } else {
                e
            };
            Err(recorded(ctx, state, "scan-failed", Some(head), e)?)
        }
    }
}

/// Writes the pending record before anything on the system changes.
fn arm(
    ctx: &Ctx,
    state: &mut State,
    head: &str,
    candidate: &Path,
    previous: PathBuf,
    boot: bool,
) -> Result<()> {
    let armed_at = now();
    state.pending = Some(Pending {
        commit: head.to_owned(),
        candidate: candidate.to_path_buf(),
        previous,
        previous_generation: ctx.profile().current().map(|g| g.number),
        phase: Phase::Armed,
        armed_at,
        deadline: armed_at + ctx.cfg.confirm.timeout,
        boot_tries_left: ctx.cfg.confirm.boot_tries,
        boot,
        revert_reason: None,
        revert_marks_bad: false,
        restore_boot: false,
        boot_id: ctx.boot_id(),
        unknown: crate::state::Unknown::new(),
    });
    state.save(&ctx.paths.state_file())?;
    failpoint::hit("sync.armed");
    Ok(())
}

/// `switch-to-configuration test`: the candidate runs, the boot default stays where it was.
fn activate(ctx: &Ctx, state: &mut State, head: &str, candidate: &Path) -> Result<()> {
    watchdog::status(&format!("activating {}", short(head)));
    if let Err(e) = switch::run(&ctx.cfg.switch, candidate, Action::Test) {
        let reason = format!("activating {}: {e:#}", short(head));
        confirm::revert(ctx, state, &reason, true, true)?;
        return Err(e).context(Exit::Activation);
    }
    failpoint::hit("sync.switched");
    if let Some(p) = state.pending.as_mut() {
        p.phase = Phase::Activated;
        // The confirmation window starts when the candidate actually runs.
        p.deadline = now() + ctx.cfg.confirm.timeout;
        p.boot_id = ctx.boot_id();
    }
    state.save(&ctx.paths.state_file())?;
    failpoint::hit("sync.activated");
    Ok(())
}

/// Boot mode: the candidate becomes the (boot-counted) boot default and the machine reboots into
/// it; boot-check counts the boot and confirm decides after it.
fn activate_by_reboot(ctx: &Ctx, state: &mut State, head: &str, candidate: &Path) -> Result<()> {
    watchdog::status(&format!("making {} the boot default", short(head)));
    let profile = ctx.profile();
    let made_default = (|| -> Result<()> {
        if profile.current().is_none_or(|g| g.system != candidate) {
            profile.set(candidate)?;
        }
        failpoint::hit("sync.profile-set");
        switch::run(&ctx.cfg.switch, candidate, Action::Boot)
    })();
    if let Err(e) = made_default {
        let reason = format!("making {} the boot default: {e:#}", short(head));
        confirm::revert(ctx, state, &reason, true, true)?;
        return Err(e).context(Exit::Activation);
    }
    failpoint::hit("sync.boot-set");
    confirm::set_phase(ctx, state, Phase::Rebooting)?;
    failpoint::hit("sync.rebooting");
    crate::notice!("{} is the boot default; rebooting into it", short(head));
    switch::reboot(&ctx.cfg.switch).context(Exit::Activation)
}

/// Why this pass can stop right after the fetch, if it can.
fn skip_reason(ctx: &Ctx, state: &State, head: &str, opts: &Options) -> Option<String> {
    if state.deployed.as_ref().is_some_and(|d| d.commit == head) {
        return Some(format!("up to date at {}", short(head)));
    }
    if let Some(bad) = state.is_bad(head) {
        return Some(format!(
            "branch is still at {}, recorded as bad ({}); waiting for the branch to move",
            short(head),
            bad.reason
        ));
    }
    if let Some(f) = &state.failed_build
        && f.commit == head
        && !opts.retry
    {
        let age = now().saturating_sub(f.at);
        if age < ctx.cfg.build.retry_failed_after {
            return Some(format!(
                "the build of {} failed {age}s ago; retrying after {}s (or run `sync --retry`)",
                short(head),
                ctx.cfg.build.retry_failed_after
            ));
        }
    }
    None
}

/// The new commit builds to the system that already runs: nothing to switch.
fn record_unchanged(
    ctx: &Ctx,
    state: &mut State,
    head: &str,
    system: &std::path::Path,
) -> Result<()> {
    let generation = ctx.profile().current().map(|g| g.number);
    state.deployed = Some(crate::state::Deployed {
        commit: head.to_owned(),
        system: system.to_path_buf(),
        generation,
        at: now(),
        unknown: crate::state::Unknown::new(),
    });
    state.record(
        "deployed",
        Some(head),
        format!(
            "{} builds the running system; nothing to switch",
            short(head)
        ),
    );
    state.save(&ctx.paths.state_file())?;
    if let Err(e) = git::pin_deployed(&ctx.paths.repo_dir(), head) {
        crate::warn!("could not pin the deployed commit: {e:#}");
    }
    crate::notice!(
        "{} builds the running system; recorded as deployed",
        short(head)
    );
    Ok(())
}
