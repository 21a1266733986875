//! `pullnix rollback [--to GEN]`: the admin's way back.
//!
//! The system profile is pointed at the chosen generation and `switch-to-configuration switch`
//! activates it and makes it the boot default. The commit that was deployed is recorded as bad so
//! the next sync does not simply roll forward again; pushing a new commit moves on.

use anyhow::{Context, Result, anyhow, bail};

use crate::context::Ctx;
use crate::exit::Exit;
use crate::state::{Deployed, State, now};
use crate::switch::{self, Action};

pub fn rollback(ctx: &Ctx, to: Option<u32>) -> Result<()> {
    ctx.check_root()?;
    ctx.ensure_state_dir()?;
    let _lock = crate::lock::Lock::acquire(&ctx.paths.lock_file(), true)?;
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
    profile.switch_generation(target.number)?;
    switch::run(&ctx.cfg.switch, &target.system, Action::Switch).context(Exit::Activation)?;
    let message = format!(
        "rolled back by the admin from generation {} to {}",
        current.number, target.number
    );
    if let Some(dep) = state.deployed.clone() {
        state.mark_bad(&dep.commit, &message);
        state.deployed = Some(Deployed {
            system: target.system.clone(),
            generation: Some(target.number),
            at: now(),
            ..dep
        });
    }
    state.rollbacks += 1;
    let commit = state.deployed.as_ref().map(|d| d.commit.clone());
    state.record("rolled-back", commit.as_deref(), message.clone());
    state.save(&ctx.paths.state_file())?;
    crate::notice!("{message}");
    Ok(())
}
