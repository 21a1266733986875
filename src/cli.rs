//! Command-line parsing. Small enough to do by hand, which keeps the binary small and the
//! dependency list short.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

pub const USAGE: &str = "\
pullnix - pull-based NixOS deployment with rollback-armed activation

Usage: pullnix [--config FILE] [--root DIR] COMMAND [OPTIONS]

Commands:
  sync [--wait] [--retry]  fetch the branch; build, scan, activate and confirm a new commit
  confirm                  run the health checks of the armed candidate; keep it or revert
  boot-check               at early boot: count a boot try of an unconfirmed candidate
  rollback [--to GEN]      activate the previous (or given) generation of the system profile
  status [--json]          show current, booted and candidate systems and the last result
  bootstrap --url URL [--branch B] [--host H] [--deploy-key FILE] [--known-hosts FILE]
            [--allowed-signers FILE] [--insecure-accept-new-host-keys]
            [--insecure-plaintext-without-signatures]
                           first deployment of a fresh machine (writes STATE/bootstrap.toml)
  install [--host NAME] [--url URL] [--branch B] [--target DIR] [--partitioning disko|none]
          [--no-reboot] [--dry-run] [--json]
                           from an installer: build the host's system, partition, install it
                           on the disks, hand it to pullnix and reboot (README, Provisioning)
  fleet list [--json] [--tag TAG]...
                           list the hosts of the fleet inventory (with any of the tags)
  fleet status [--json] [--all | [--tag TAG]... [HOST...]]
                           ask every (or each named or tagged) host for `pullnix status --json`
                           over ssh; an unknown host or tag is exit 2 before any is contacted
  fleet refresh [--json] --all | [--tag TAG]... [HOST...]
                           start pullnix.service on the hosts now (does not wait for the sync)
  wake [--broadcast ADDR] [--port PORT] [--interface IFACE] [--hosts FILE] MAC|HOST...
                           send Wake-on-LAN magic packets
  pxe-api --hosts FILE [--listen ADDR:PORT] [--state DIR --report-listen ADDR:PORT
          --public-url URL] [--expose-report-tokens]
                           serve pixiecore's boot API (on --listen, loopback) for the
                           machines of a hosts file; with --state, installers report done
                           on --report-listen (the {report} URL), and a machine that did
                           is answered 404 and boots from its disk
  pxe-api forget --state DIR [--hosts FILE] MAC|HOST...
                           let installed machines network-boot the installer again
  pxe-api installed --state DIR [--json]
                           list the machines that reported a finished installation
  help                     show this text

Options:
  --config FILE   configuration file (default: $PULLNIX_CONFIG or /etc/pullnix/config.toml)
  --root DIR      prefix for every system path (state, profile, /run/current-system, /boot)
  --inventory FILE  fleet inventory (default: $PULLNIX_INVENTORY or /etc/pullnix/hosts.toml)
  -h, --help      show this text
  -V, --version   show the version

Exit codes: 0 ok, 1 internal error, 2 usage/config, 3 already running, 4 fetch failed,
5 commit refused, 6 build failed, 7 blocked by scan, 8 activation failed (reverted),
9 health checks failed (reverted), 10 state file unusable, 11 install target not ready,
12 some fleet hosts failed, 13 wake could not send, 14 install report refused,
15 lock taken for too long.
";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Sync {
        wait: bool,
        retry: bool,
    },
    Confirm,
    BootCheck,
    Rollback {
        to: Option<u32>,
    },
    Status {
        json: bool,
    },
    /// `pullnix bootstrap …` (see `bootstrap.rs`).
    Bootstrap(crate::bootstrap::Args),
    /// `pullnix install …` (see `install.rs`).
    Install(crate::install::Args),
    /// `pullnix fleet …` (see `fleet.rs`).
    Fleet(crate::fleet::Args),
    /// `pullnix wake …` (see `wake.rs`).
    Wake(crate::wake::Args),
    /// `pullnix pxe-api …` (see `pxe.rs`).
    PxeApi(crate::pxe::Args),
    Help,
    Version,
}

#[derive(Debug)]
pub struct Args {
    pub config: PathBuf,
    pub root: Option<PathBuf>,
    pub command: Command,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let args: Vec<String> = args.into_iter().collect();
    let mut config = None;
    let mut root = None;
    let mut words = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => config = Some(PathBuf::from(value(&mut it, &a)?)),
            "--root" => root = Some(PathBuf::from(value(&mut it, &a)?)),
            "-h" | "--help" => {
                return Ok(Args {
                    config: PathBuf::new(),
                    root: None,
                    command: Command::Help,
                });
            }
            "-V" | "--version" => {
                return Ok(Args {
                    config: PathBuf::new(),
                    root: None,
                    command: Command::Version,
                });
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            s if s.starts_with("--root=") => root = Some(PathBuf::from(&s["--root=".len()..])),
            _ => words.push(a),
        }
    }
    let config = config
        .or_else(|| std::env::var_os("PULLNIX_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/pullnix/config.toml"));
    let (name, rest) = words
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let command = match name.as_str() {
        "sync" => {
            let mut wait = false;
            let mut retry = false;
            for r in rest {
                match r.as_str() {
                    "--wait" => wait = true,
                    "--retry" => retry = true,
                    other => bail!("unknown option {other:?} for sync"),
                }
            }
            Command::Sync { wait, retry }
        }
        "confirm" => no_more(rest, name, Command::Confirm)?,
        "boot-check" => no_more(rest, name, Command::BootCheck)?,
        "rollback" => match rest {
            [] => Command::Rollback { to: None },
            [flag, n] if flag == "--to" => Command::Rollback {
                to: Some(
                    n.parse()
                        .map_err(|_| anyhow!("--to takes a generation number, got {n:?}"))?,
                ),
            },
            _ => bail!("usage: pullnix rollback [--to GEN]"),
        },
        "status" => match rest {
            [] => Command::Status { json: false },
            [j] if j == "--json" => Command::Status { json: true },
            _ => bail!("usage: pullnix status [--json]"),
        },
        "bootstrap" => Command::Bootstrap(crate::bootstrap::parse(rest)?),
        "install" => Command::Install(crate::install::parse(rest)?),
        "fleet" => Command::Fleet(crate::fleet::parse(rest)?),
        "wake" => Command::Wake(crate::wake::parse(rest)?),
        "pxe-api" => Command::PxeApi(crate::pxe::parse(rest)?),
        "help" => Command::Help,
        other => bail!("unknown command {other:?}"),
    };
    Ok(Args {
        config,
        root,
        command,
    })
}

/// A subcommand's words as options, `--flag value` or `--flag=value`, and plain arguments.
pub struct Flags<'a> {
    words: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    pub fn new(words: &'a [String]) -> Flags<'a> {
        Flags {
            words: words.iter(),
        }
    }

    /// The next word as `(word or flag, inline value of --flag=value)`.
    pub fn next_word(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        let word = self.words.next()?;
        Some(match word.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => (flag, Some(v)),
            _ => (word.as_str(), None),
        })
    }

    /// A flag that takes no value: `--json=yes` is a mistake, not `--json`.
    pub fn no_value(flag: &str, inline: Option<&str>) -> Result<()> {
        match inline {
            Some(v) => bail!("{flag} takes no value, got {flag}={v}"),
            None => Ok(()),
        }
    }

    /// The value of `flag`: its inline value, else the next word.
    pub fn value(&mut self, flag: &str, inline: Option<&str>) -> Result<String> {
        inline
            .map(str::to_owned)
            .or_else(|| self.words.next().cloned())
            .ok_or_else(|| anyhow!("{flag} needs a value"))
    }
}

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String> {
    it.next().ok_or_else(|| anyhow!("{flag} needs a value"))
}

fn no_more(rest: &[String], name: &str, c: Command) -> Result<Command> {
    if let Some(extra) = rest.first() {
        bail!("{name} takes no arguments, got {extra:?}");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn commands_and_global_options() {
        let a = p("--config /c.toml sync --wait --root /r").unwrap();
        assert_eq!(
            a.command,
            Command::Sync {
                wait: true,
                retry: false
            }
        );
        assert_eq!(a.config, PathBuf::from("/c.toml"));
        assert_eq!(a.root, Some(PathBuf::from("/r")));
        assert_eq!(
            p("rollback --to 7").unwrap().command,
            Command::Rollback { to: Some(7) }
        );
        assert_eq!(
            p("status --json").unwrap().command,
            Command::Status { json: true }
        );
        assert_eq!(p("--version").unwrap().command, Command::Version);
        assert_eq!(p("boot-check").unwrap().command, Command::BootCheck);
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(p("").is_err());
        assert!(p("deploy").is_err());
        assert!(p("sync --force").is_err());
        assert!(p("rollback --to x").is_err());
        assert!(p("confirm now").is_err());
        assert!(p("sync --config").is_err());
    }
}
