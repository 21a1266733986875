//! pullnix: pull-based NixOS deployment. This file only dispatches; see `sync.rs` for the
//! pipeline and README.md for the exit codes.

mod bless;
mod bootstrap;
mod cli;
mod closure;
mod cmd;
mod config;
mod confirm;
mod context;
mod exit;
mod failpoint;
mod fleet;
mod git;
mod health;
mod hosts;
mod http;
mod install;
mod inventory;
mod lock;
mod log;
mod nix;
mod paths;
mod profile;
mod pxe;
mod repair;
mod repo_url;
mod report;
mod rollback;
mod scan;
mod signature;
mod ssh;
mod state;
mod status;
mod switch;
mod sync;
mod wake;
mod watchdog;

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::Command;
use crate::context::Ctx;
use crate::exit::Exit;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("pullnix: {e:#}");
            watchdog::status(&format!("failed: {e:#}"));
            ExitCode::from(Exit::code_of(&e))
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let args = cli::parse(args)
        .context("try `pullnix --help`")
        .context(Exit::Usage)?;
    let ctx = || Ctx::load(&args.config, args.root.as_deref());
    match args.command {
        Command::Help => {
            print!("{}", cli::USAGE);
            Ok(())
        }
        Command::Version => {
            println!("pullnix {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Sync { wait, retry } => {
            reported(&ctx()?, |c| sync::sync(c, &sync::Options { wait, retry }))
        }
        Command::Confirm => reported(&ctx()?, confirm::command),
        Command::BootCheck => reported(&ctx()?, confirm::boot_check),
        Command::Rollback { to } => reported(&ctx()?, |c| rollback::rollback(c, to)),
        Command::Status { json } => status::command(&ctx()?, json),
        Command::Bootstrap(a) => bootstrap::command(&a, args.root.as_deref()),
        Command::Install(a) => install::command(&a, &args.config, args.root.as_deref()),
        Command::Fleet(a) => fleet::command(&a),
        Command::Wake(a) => wake::command(&a),
        Command::PxeApi(a) => pxe::command(&a),
    }
}

/// Runs a command that can change the system, then reports (metrics, report command) whatever
/// its outcome.
fn reported(ctx: &Ctx, command: impl FnOnce(&Ctx) -> Result<()>) -> Result<()> {
    let result = command(ctx);
    report::after(ctx);
    result
}
