//! `pullnix bootstrap`: the first deployment of a fresh machine (an installer, a cloud image, a
//! netbooted system) that has no pullnix configuration yet.
//!
//! It writes a minimal configuration from the command line (repository, branch, deploy key, host)
//! to `STATE/bootstrap.toml` and runs an ordinary `sync` with it: the same fetch, build, arm,
//! test-first activation, health check and confirmation. The configuration it deploys is expected
//! to enable `services.pullnix` with the same state directory, so from then on the machine's own
//! pullnix carries on from the recorded deployment.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::context::Ctx;
use crate::exit::Exit;
use crate::paths::under;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub url: String,
    pub branch: Option<String>,
    pub host: Option<String>,
    pub deploy_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

pub fn parse(words: &[String]) -> Result<Args> {
    let mut args = Args::default();
    let mut flags = crate::cli::Flags::new(words);
    while let Some((flag, inline)) = flags.next_word() {
        let mut value = || flags.value(flag, inline);
        match flag {
            "--url" => args.url = value()?,
            "--branch" => args.branch = Some(value()?),
            "--host" => args.host = Some(value()?),
            "--deploy-key" => args.deploy_key = Some(value()?.into()),
            "--known-hosts" => args.known_hosts = Some(value()?.into()),
            other => bail!("unknown option {other:?} for bootstrap"),
        }
    }
    if args.url.is_empty() {
        bail!(
            "usage: pullnix bootstrap --url URL [--branch B] [--host H] [--deploy-key FILE] [--known-hosts FILE]"
        );
    }
    Ok(args)
}

/// The host to deploy: `--host`, else `pullnix.host=` on the kernel command line (how the
/// netboot installer learns it from `pullnix pxe-api`), else the kernel host name.
fn host(args: &Args, root: &Path) -> Option<String> {
    if let Some(h) = &args.host {
        return Some(h.clone());
    }
    let cmdline = std::fs::read_to_string(under(root, Path::new("/proc/cmdline"))).ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pullnix.host="))
        .map(str::to_owned)
}

/// The configuration `bootstrap` writes, as TOML.
fn config_text(args: &Args, host: Option<&str>) -> Result<String> {
    let mut repo = toml::Table::new();
    repo.insert("url".into(), args.url.clone().into());
    if let Some(b) = &args.branch {
        repo.insert("branch".into(), b.clone().into());
    }
    if let Some(k) = &args.deploy_key {
        repo.insert("deploy_key".into(), k.display().to_string().into());
    }
    if let Some(k) = &args.known_hosts {
        repo.insert("known_hosts".into(), k.display().to_string().into());
    }
    let mut top = toml::Table::new();
    if let Some(h) = host {
        top.insert("host".into(), h.into());
    }
    top.insert("repo".into(), repo.into());
    let text = toml::to_string(&top).context("rendering the bootstrap configuration")?;
    Ok(format!(
        "# Written by `pullnix bootstrap`; the deployed configuration's services.pullnix replaces it.\n{text}"
    ))
}

pub fn command(args: &Args, root: Option<&Path>) -> Result<()> {
    let root = root.unwrap_or(Path::new("/"));
    let state_dir = under(root, Path::new("/var/lib/pullnix"));
    crate::state::create_private_dir(&state_dir).context(Exit::Usage)?;
    let host = host(args, root);
    let path = state_dir.join("bootstrap.toml");
    crate::state::write_atomic(&path, config_text(args, host.as_deref())?.as_bytes())?;
    crate::notice!(
        "bootstrap: deploying {} of {} with {}",
        host.as_deref().unwrap_or("this host name"),
        args.url,
        path.display()
    );
    let ctx = Ctx::load(&path, Some(root))?;
    crate::sync::sync(
        &ctx,
        &crate::sync::Options {
            wait: true,
            retry: true,
        },
    )?;
    crate::notice!("bootstrap: done; the deployed configuration's pullnix takes over from here");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        let a = parse(&words("--url git://h/r.git --host edge-1 --deploy-key /k")).unwrap();
        assert_eq!(a.url, "git://h/r.git");
        assert_eq!(a.host.as_deref(), Some("edge-1"));
        assert!(parse(&words("--host x")).is_err());
        assert!(parse(&words("--url u --bogus")).is_err());
        assert!(parse(&words("--url")).is_err());
    }

    #[test]
    fn config_is_valid_and_quoted() {
        let a = Args {
            url: "ssh://git@example.org/fleet \"x\".git".into(),
            deploy_key: Some("/run/keys/deploy key".into()),
            ..Args::default()
        };
        let text = config_text(&a, Some("edge-1")).unwrap();
        let cfg = crate::config::Config::parse(&text).unwrap();
        assert_eq!(cfg.repo.url, a.url);
        assert_eq!(cfg.host.as_deref(), Some("edge-1"));
        assert_eq!(cfg.repo.deploy_key, a.deploy_key);
    }

    #[test]
    fn host_from_the_kernel_command_line() {
        let d = std::env::temp_dir().join(format!("pullnix-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(d.join("proc")).unwrap();
        std::fs::write(
            d.join("proc/cmdline"),
            "init=/x pullnix.host=edge-7 quiet\n",
        )
        .unwrap();
        let a = Args {
            url: "u".into(),
            ..Args::default()
        };
        assert_eq!(host(&a, &d).as_deref(), Some("edge-7"));
        let b = Args {
            host: Some("given".into()),
            ..a
        };
        assert_eq!(host(&b, &d).as_deref(), Some("given"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
