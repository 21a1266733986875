//! `pullnix bootstrap`: the first deployment of a fresh machine (an installer, a cloud image, a
//! netbooted system) that has no pullnix configuration yet.
//!
//! It writes a minimal configuration from the command line (repository, branch, deploy key, host)
//! to `STATE/bootstrap.toml` and runs an ordinary `sync` with it: the same fetch, build, arm,
//! test-first activation, health check and confirmation. The configuration it deploys is expected
//! to enable `services.pullnix` with the same state directory, so from then on the machine's own
//! pullnix carries on from the recorded deployment.
//!
//! The pins of the remote (`--known-hosts`, `--allowed-signers`) are copied into the state
//! directory, which outlives the installer's tmpfs and the first configuration: the deployed
//! configuration can name `/var/lib/pullnix/known_hosts` (and `allowed_signers`) and go on
//! trusting exactly what the bootstrap trusted, instead of trusting the first answer again.

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
    pub allowed_signers: Option<PathBuf>,
    pub insecure_accept_new_host_keys: bool,
    pub insecure_plaintext_without_signatures: bool,
}

const USAGE: &str = "usage: pullnix bootstrap --url URL [--branch B] [--host H] [--deploy-key FILE] \
                     [--known-hosts FILE] [--allowed-signers FILE] \
                     [--insecure-accept-new-host-keys] [--insecure-plaintext-without-signatures]";

pub fn parse(words: &[String]) -> Result<Args> {
    let mut args = Args::default();
    let mut flags = crate::cli::Flags::new(words);
    while let Some((flag, inline)) = flags.next_word() {
        match flag {
            "--url" => args.url = flags.value(flag, inline)?,
            "--branch" => args.branch = Some(flags.value(flag, inline)?),
            "--host" => args.host = Some(flags.value(flag, inline)?),
            "--deploy-key" => args.deploy_key = Some(flags.value(flag, inline)?.into()),
            "--known-hosts" => args.known_hosts = Some(flags.value(flag, inline)?.into()),
            "--allowed-signers" => args.allowed_signers = Some(flags.value(flag, inline)?.into()),
            "--insecure-accept-new-host-keys" => {
                crate::cli::Flags::no_value(flag, inline)?;
                args.insecure_accept_new_host_keys = true;
            }
            "--insecure-plaintext-without-signatures" => {
                crate::cli::Flags::no_value(flag, inline)?;
                args.insecure_plaintext_without_signatures = true;
            }
            other => bail!("unknown option {other:?} for bootstrap; {USAGE}"),
        }
    }
    if args.url.is_empty() {
        bail!("{USAGE}");
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

/// The configuration `bootstrap` writes, as TOML; `pins` are the copied `known_hosts` and
/// `allowed_signers` files.
fn config_text(args: &Args, host: Option<&str>, pins: &[(&str, PathBuf)]) -> Result<String> {
    let mut repo = toml::Table::new();
    repo.insert("url".into(), args.url.clone().into());
    if let Some(b) = &args.branch {
        repo.insert("branch".into(), b.clone().into());
    }
    if let Some(k) = &args.deploy_key {
        repo.insert("deploy_key".into(), k.display().to_string().into());
    }
    for (key, path) in pins {
        repo.insert((*key).into(), path.display().to_string().into());
    }
    for (key, set) in [
        (
            "insecure_accept_new_host_keys",
            args.insecure_accept_new_host_keys,
        ),
        (
            "insecure_plaintext_without_signatures",
            args.insecure_plaintext_without_signatures,
        ),
    ] {
        if set {
            repo.insert(key.into(), true.into());
        }
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
    let mut pins = Vec::new();
    for (key, from) in [
        ("known_hosts", &args.known_hosts),
        ("allowed_signers", &args.allowed_signers),
    ] {
        if let Some(from) = from {
            pins.push((key, copy_pin(from, &state_dir.join(key))?));
        }
    }
    let path = state_dir.join("bootstrap.toml");
    crate::state::write_atomic(&path, config_text(args, host.as_deref(), &pins)?.as_bytes())?;
    crate::notice!(
        "bootstrap: deploying {} of {} with {}",
        host.as_deref().unwrap_or("this host name"),
        crate::repo_url::redact(&args.url),
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

/// Copies a public pin file (host keys, allowed signers) to `to` (mode 0644: nothing secret).
pub fn copy_pin(from: &Path, to: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(from)
        .with_context(|| format!("reading {}", from.display()))
        .context(Exit::Usage)?;
    crate::state::write_atomic_mode(to, &bytes, 0o644)?;
    Ok(to.to_path_buf())
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
        let a = parse(&words(
            "--url git://h/r.git --allowed-signers /s --insecure-accept-new-host-keys",
        ))
        .unwrap();
        assert_eq!(a.allowed_signers.as_deref(), Some(Path::new("/s")));
        assert!(a.insecure_accept_new_host_keys && !a.insecure_plaintext_without_signatures);
        assert!(parse(&words("--url u --insecure-accept-new-host-keys=yes")).is_err());
    }

    #[test]
    fn config_is_valid_and_quoted() {
        let a = Args {
            url: "ssh://git@example.org/fleet.git".into(),
            deploy_key: Some("/run/keys/deploy \"key\"".into()),
            ..Args::default()
        };
        let pins = [("known_hosts", PathBuf::from("/var/lib/pullnix/known hosts"))];
        let text = config_text(&a, Some("edge-1"), &pins).unwrap();
        let cfg = crate::config::Config::parse(&text).unwrap();
        assert_eq!(cfg.repo.url, a.url);
        assert_eq!(cfg.host.as_deref(), Some("edge-1"));
        assert_eq!(cfg.repo.deploy_key, a.deploy_key);
        assert_eq!(cfg.repo.known_hosts, Some(pins[0].1.clone()));
        // Without the pin, the ssh remote is refused unless the risk is accepted by name.
        let text = config_text(&a, None, &[]).unwrap();
        assert!(crate::config::Config::parse(&text).is_err());
        let b = Args {
            insecure_accept_new_host_keys: true,
            ..a
        };
        let text = config_text(&b, None, &[]).unwrap();
        assert!(
            crate::config::Config::parse(&text)
                .unwrap()
                .repo
                .insecure_accept_new_host_keys
        );
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
