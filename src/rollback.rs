//! `pullnix rollback [--to GEN]`: the admin's way back.
//!
//! The system profile is pointed at the chosen generation and `switch-to-configuration switch`
//! activates it and makes it the boot default. The commit that was deployed is recorded as bad so
//! the next sync does not simply roll forward again; pushing a new commit moves on.
//!
//! Like a deployment it is recorded before anything changes (`rollback` in the state file), and
//! every later run of `rollback`, `sync`, `confirm` or `boot-check` first finishes a rollback it
//! finds there: a rollback killed half way never leaves the profile, the running system and the
//! boot default disagreeing with each other or with the record.

use anyhow::{Context, Result, anyhow, bail};

use crate::context::Ctx;
use crate::exit::Exit;
use crate::failpoint;
use crate::state::{Deployed, Rollback, State, Unknown, now};
use crate::switch::{self, Action};

pub fn rollback(ctx: &Ctx, to: Option<u32>) -> Result<()> {
    ctx.check_root()?;
    ctx.ensure_state_dir()?;
    let _lock = crate::lock::Lock::acquire(&ctx.paths.lock_file(), crate::lock::Wait::Queue)?;
    crate::repair::owned(&ctx.paths);
    let mut state = State::load(&ctx.paths.state_file())?;
    if let Some(p) = &state.pending {
        return Err(anyhow!(
            "a deployment of {} is in flight (phase {:?}); run `pullnix confirm` to finish it first",
            p.commit,
            p.phase
        ))
        .context(Exit::Busy);
    }
    if let Some(r) = state.rollback.clone() {
        // The rollback asked for before was interrupted: that one is what the admin wanted.
        crate::notice!(
            "finishing the interrupted rollback from generation {} to {}",
            r.from_generation,
            r.to_generation
        );
        finish(ctx, &mut state)?;
        if to.is_none_or(|n| n == r.to_generation) {
            return Ok(());
        }
    }
    let profile = ctx.profile();
    let current = profile.current().ok_or_else(|| {
        anyhow!(
            "system profile {} does not exist",
            ctx.paths.profile.display()
        )
    })?;
    let gens = profile.generations()?;
    let target = match to {
        Some(n) => gens
            .iter()
            .find(|g| g.number == n)
            .ok_or_else(|| {
                let have: Vec<String> = gens.iter().map(|g| g.number.to_string()).collect();
                anyhow!(
                    "generation {n} does not exist; there are: {}",
                    have.join(", ")
                )
            })
            .context(Exit::Usage)?,
        None => gens
            .iter()
            .rev()
            .find(|g| g.number < current.number)
            .ok_or_else(|| {
                anyhow!(
                    "generation {} is the oldest; nothing to roll back to",
                    current.number
                )
            })
            .context(Exit::Usage)?,
    }
    .clone();
    if target.number == current.number {
        bail!("generation {} is already current", current.number);
    }
    crate::notice!(
        "rolling back from generation {} to {} ({})",
        current.number,
        target.number,
        target.system.display()
    );
    state.rollback = Some(Rollback {
        from_generation: current.number,
        from_system: current.system,
        to_generation: target.number,
        to_system: target.system,
        at: now(),
        boot_id: ctx.boot_id(),
        unknown: Unknown::new(),
    });
    state.save(&ctx.paths.state_file())?;
    failpoint::hit("rollback.recorded");
    finish(ctx, &mut state)
}

/// Finishes the recorded rollback, if there is one: profile, activation and boot default, then
/// the record. Every step is idempotent, so whatever was done before a kill is done again
/// harmlessly.
pub fn finish(ctx: &Ctx, state: &mut State) -> Result<()> {
    let Some(r) = state.rollback.clone() else {
        return Ok(());
    };
    let profile = ctx.profile();
    if profile
        .current()
        .is_none_or(|g| g.number != r.to_generation)
    {
        profile
            .switch_generation(r.to_generation)
            .context(Exit::Activation)?;
    }
    failpoint::hit("rollback.profile-set");
    switch::run(&ctx.cfg.switch, &r.to_system, Action::Switch).context(Exit::Activation)?;
    failpoint::hit("rollback.switched");
    let message = format!(
        "rolled back by the admin from generation {} to {}",
        r.from_generation, r.to_generation
    );
    if let Some(dep) = state.deployed.clone() {
        state.mark_bad(&dep.commit, &message);
        state.deployed = Some(Deployed {
            system: r.to_system.clone(),
            generation: Some(r.to_generation),
            at: now(),
            ..dep
        });
    }
    state.rollbacks += 1;
    state.rollback = None;
    let commit = state.deployed.as_ref().map(|d| d.commit.clone());
    state.record("rolled-back", commit.as_deref(), message.clone());
    state.save(&ctx.paths.state_file())?;
    crate::notice!("{message}");
    Ok(())
}
