//! pullnix: pull-based NixOS deployment. This file only dispatches; see `sync.rs` for the
//! pipeline and README.md for the exit codes.

mod bless;
mod cli;
mod cmd;
mod config;
mod confirm;
mod context;
mod exit;
mod failpoint;
mod git;
mod health;
mod lock;
mod log;
mod nix;
mod paths;
mod profile;
mod rollback;
mod scan;
mod state;
mod status;
mod switch;
mod sync;
mod watchdog;

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::Command;
use crate::context::Ctx;
use crate::exit::Exit;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("pullnix: {e:#}");
            watchdog::status(&format!("failed: {e:#}"));
            ExitCode::from(Exit::code_of(&e))
        }
    }
}

fn run() -> Result<()> {
    let args = cli::parse(std::env::args().skip(1))
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
        Command::Sync { wait, retry } => sync::sync(&ctx()?, &sync::Options { wait, retry }),
        Command::Confirm => confirm::command(&ctx()?),
        Command::BootCheck => confirm::boot_check(&ctx()?),
        Command::Rollback { to } => rollback::rollback(&ctx()?, to),
        Command::Status { json } => status::command(&ctx()?, json),
    }
}
