//! `pullnix install`: puts the host's system on the empty disks of a machine that was booted
//! into an installer (the network installer of `nix/netboot.nix`, or any NixOS live system), and
//! leaves it managed by pullnix. The whole pipeline, top to bottom:
//!
//!   lock -> host and repository (flags, kernel command line, config) -> fetch -> signature
//!        -> build (or substitute) the system -> scan -> build the disk script
//!        -> partition, format, mount -> copy the closure into the target's store
//!        -> target's system profile -> /etc/NIXOS -> deploy key -> seed pullnix's state
//!        -> boot loader (chroot) -> tell the provisioner -> reboot
//!
//! Everything that can fail for reasons in the repository (fetch, signature, evaluation, build,
//! scan) happens before the disks are touched: a bad commit leaves the machine as it was.
//!
//! The steps after the disk script do what nixpkgs' `nixos-install --system` does (see
//! pkgs/by-name/ni/nixos-install/nixos-install.sh and pkgs/by-name/ni/nixos-enter/nixos-enter.sh):
//! the closure goes into the target's store, the target's `system` profile points at it,
//! `/etc/NIXOS` marks the root as NixOS (switch-to-configuration refuses to run without it), and
//! `switch-to-configuration boot` runs chrooted with `NIXOS_INSTALL_BOOTLOADER=1` after the
//! system's activation script, with the installer's /dev, /proc and /sys bound in. Doing it here
//! rather than calling `nixos-install` keeps one tested code path for build and closure mode,
//! and lets the installed system start with pullnix's record of what it runs.
//!
//! Unlike nixos-install, the system is built (or substituted) in the installer's store and then
//! copied, so that nothing is wiped before it exists; on a netbooted installer that store is in
//! RAM, which must hold the closure once (README "Provisioning").

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::Cmd;
use crate::config::{Config, Partitioning};
use crate::context::Ctx;
use crate::exit::Exit;
use crate::paths::{Paths, under};
use crate::state::{Deployed, State, now};
use crate::{git, lock, switch, sync, watchdog};

/// `pullnix install …` as given on the command line; flags win over the kernel command line,
/// which wins over the config file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub host: Option<String>,
    pub url: Option<String>,
    pub branch: Option<String>,
    pub target: Option<PathBuf>,
    pub partitioning: Option<Partitioning>,
    pub no_reboot: bool,
    /// Do everything that does not touch the disks, say what would happen, and stop.
    pub dry_run: bool,
    /// Print the plan (and outcome) as one JSON object on stdout.
    pub json: bool,
}

const USAGE: &str = "usage: pullnix [--config FILE] install [--host NAME] [--url URL] [--branch B] \
                     [--target DIR] [--partitioning disko|none] [--no-reboot] [--dry-run] [--json]";

pub fn parse(words: &[String]) -> Result<Args> {
    let mut args = Args::default();
    let mut flags = crate::cli::Flags::new(words);
    while let Some((flag, inline)) = flags.next_word() {
        match flag {
            "--host" => args.host = Some(flags.value(flag, inline)?),
            "--url" => args.url = Some(flags.value(flag, inline)?),
            "--branch" => args.branch = Some(flags.value(flag, inline)?),
            "--target" => args.target = Some(flags.value(flag, inline)?.into()),
            "--partitioning" => {
                let v = flags.value(flag, inline)?;
                args.partitioning = Some(match v.as_str() {
                    "disko" => Partitioning::Disko,
                    "none" => Partitioning::None,
                    _ => bail!("--partitioning {v:?}: expected disko or none"),
                });
            }
            "--no-reboot" => {
                crate::cli::Flags::no_value(flag, inline)?;
                args.no_reboot = true;
            }
            "--dry-run" => {
                crate::cli::Flags::no_value(flag, inline)?;
                args.dry_run = true;
            }
            "--json" => {
                crate::cli::Flags::no_value(flag, inline)?;
                args.json = true;
            }
            other => bail!("unknown option {other:?} for install; {USAGE}"),
        }
    }
    Ok(args)
}

/// The `pullnix.*` words of the kernel command line (what `pullnix pxe-api` put there).
#[derive(Debug, Default, PartialEq, Eq)]
struct Kernel {
    host: Option<String>,
    repo: Option<String>,
    branch: Option<String>,
    report: Option<String>,
}

impl Kernel {
    fn read(root: &Path) -> Kernel {
        std::fs::read_to_string(under(root, Path::new("/proc/cmdline")))
            .map(|text| Kernel::parse(&text))
            .unwrap_or_default()
    }

    /// Words are separated by blanks; a double-quoted stretch may hold blanks, and the quotes are
    /// not part of the value (the kernel's own rule, Documentation/admin-guide/kernel-parameters).
    fn parse(text: &str) -> Kernel {
        let mut k = Kernel::default();
        for word in words(text) {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let slot = match key {
                "pullnix.host" => &mut k.host,
                "pullnix.repo" => &mut k.repo,
                "pullnix.branch" => &mut k.branch,
                "pullnix.report" => &mut k.report,
                _ => continue,
            };
            if !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        }
        k
    }
}

fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// A configuration name as it may appear in `nixosConfigurations.<name>`.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub fn command(args: &Args, config: &Path, root: Option<&Path>) -> Result<()> {
    let mut cfg = Config::load_unchecked(config)?;
    let root = root.map_or_else(|| cfg.root.clone(), Path::to_path_buf);
    let kernel = Kernel::read(&root);
    if let Some(url) = args.url.clone().or(kernel.repo) {
        cfg.repo.url = url;
    }
    if let Some(branch) = args.branch.clone().or(kernel.branch) {
        cfg.repo.branch = branch;
    }
    if let Some(target) = &args.target {
        cfg.install.target.clone_from(target);
    }
    if let Some(p) = args.partitioning {
        cfg.install.partitioning = p;
    }
    let host = args
        .host
        .clone()
        .or(kernel.host)
        .or_else(|| cfg.host.clone())
        .ok_or_else(|| {
            anyhow!(
                "no host to install: give --host, boot with pullnix.host=NAME on the kernel \
                 command line, or set `host` in {}",
                config.display()
            )
        })
        .context(Exit::Usage)?;
    if !valid_host(&host) {
        return Err(anyhow!(
            "{host:?} is not a configuration name (letters, digits, '.', '_', '-')"
        ))
        .context(Exit::Usage);
    }
    cfg.host = Some(host.clone());
    if cfg.repo.url.trim().is_empty() {
        return Err(anyhow!(
            "no repository: set repo.url in {} or boot with pullnix.repo=URL",
            config.display()
        ))
        .context(Exit::Usage);
    }
    cfg.validate()
        .with_context(|| {
            format!(
                "invalid config file {} (with the overrides)",
                config.display()
            )
        })
        .context(Exit::Usage)?;
    let paths = Paths::new(&cfg, Some(&root));
    let ctx = Ctx { cfg, paths, host };
    install(&ctx, kernel.report.as_deref(), args)
}

fn install(ctx: &Ctx, report: Option<&str>, args: &Args) -> Result<()> {
    let target = ctx.cfg.install.target.clone();
    crate::notice!(
        "install: {} from branch {:?} of {} onto {}",
        ctx.host,
        ctx.cfg.repo.branch,
        crate::repo_url::redact(&ctx.cfg.repo.url),
        target.display()
    );
    ctx.ensure_state_dir()?;
    let _lock = lock::Lock::acquire(
        &ctx.paths.lock_file(),
        lock::Wait::Fail {
            stalled_after: ctx.cfg.lock_stalled_after,
        },
    )?;
    let mut state = State::load(&ctx.paths.state_file())?;
    wait_for_deploy_key(ctx)?;

    // Everything the repository decides, before anything on the disks changes.
    let remote = git::Remote::new(&ctx.cfg.repo);
    let head = sync::fetch(ctx, &mut state, &remote)?;
    sync::check_signature(ctx, &mut state, &head)?;
    let system = sync::build(ctx, &mut state, &remote, &head)?;
    if ctx.cfg.scan.enable {
        sync::scan(ctx, &mut state, &head, &system)?;
    }
    let disk_script = match ctx.cfg.install.partitioning {
        Partitioning::Disko => Some(build_disk_script(ctx, &remote, &head)?),
        Partitioning::None => None,
    };

    let reboot = ctx.cfg.install.reboot && !args.no_reboot;
    let plan = |installed: bool| {
        serde_json::json!({
            "host": ctx.host,
            "repo": crate::repo_url::redact(&ctx.cfg.repo.url),
            "branch": ctx.cfg.repo.branch,
            "commit": head,
            "system": system,
            "disk_script": disk_script,
            "target": target,
            "target_mounted": is_mount_point(&target).unwrap_or(false),
            "report": report,
            "reboot": reboot,
            "installed": installed,
        })
    };
    if args.dry_run {
        crate::notice!(
            "install: dry run: would {}install {} ({}) onto {}{}; no disk was touched",
            disk_script
                .as_ref()
                .map(|d| format!("run {} (wiping the disks it names), then ", d.display()))
                .unwrap_or_default(),
            system.display(),
            crate::confirm::short(&head),
            target.display(),
            if reboot { " and reboot" } else { "" }
        );
        if args.json {
            println!("{}", crate::log::shown_json(&plan(false).to_string()));
        }
        return Ok(());
    }

    // From here on the machine changes.
    prepare_target(&target, disk_script.as_deref())?;
    copy_closure(ctx, &system, &target)?;
    let generation = set_target_profile(ctx, &system, &target)?;
    mark_nixos(&target)?;
    copy_deploy_key(ctx, &target)?;
    copy_pins(ctx, &target)?;
    seed_state(ctx, &target, &head, &system, generation)?;
    install_boot_loader(ctx, &target)?;
    crate::notice!(
        "install: {} ({}) installed on {}",
        ctx.host,
        crate::confirm::short(&head),
        target.display()
    );
    state.record(
        "installed",
        Some(&head),
        format!("installed {} on {}", system.display(), target.display()),
    );
    state.save(&ctx.paths.state_file())?;

    if let Some(url) = report {
        report_installed(url)?;
    }
    if args.json {
        println!("{}", crate::log::shown_json(&plan(true).to_string()));
    }
    if reboot {
        crate::notice!("install: rebooting into the installed system");
        switch::reboot(&ctx.cfg.switch)?;
    }
    Ok(())
}

/// A deploy key that is copied in over ssh after the installer booted (so that it is never
/// part of the network-booted image) is waited for, with a reminder once a minute.
fn wait_for_deploy_key(ctx: &Ctx) -> Result<()> {
    let Some(key) = &ctx.cfg.repo.deploy_key else {
        return Ok(());
    };
    if !git::Remote::new(&ctx.cfg.repo).is_ssh() {
        // Only ssh reads the key: an https or git:// repository (say, from pullnix.repo=) must
        // not wait for one.
        return Ok(());
    }
    let present = |k: &Path| std::fs::metadata(k).is_ok_and(|m| m.len() > 0);
    if present(key) || !ctx.cfg.install.wait_for_deploy_key {
        return Ok(());
    }
    let mut waited = 0u64;
    while !present(key) {
        if waited.is_multiple_of(60) {
            crate::notice!(
                "install: waiting for the deploy key at {} (copy it there as root, e.g. with scp)",
                key.display()
            );
            watchdog::status(&format!("waiting for the deploy key at {}", key.display()));
        }
        std::thread::sleep(Duration::from_secs(1));
        waited += 1;
    }
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the deploy key {} private", key.display()))?;
    Ok(())
}

/// Builds (or, in closure mode, substitutes) the script that partitions, formats and mounts the
/// host's disks, from the same commit as the system.
fn build_disk_script(ctx: &Ctx, remote: &git::Remote<'_>, head: &str) -> Result<PathBuf> {
    watchdog::status("building the disk script");
    let out_link = ctx.paths.state_dir.join("disk-script");
    let attr = ctx.cfg.install.disk_script.replace("{host}", &ctx.host);
    let file = ctx
        .cfg
        .install
        .disk_script_file
        .replace("{host}", &ctx.host);
    let built = sync::obtain(ctx, remote, head, &attr, &file, &out_link);
    let built = if ctx.cfg.closure.enable {
        built
    } else {
        built.with_context(|| {
            format!(
                "building {attr}: the host's configuration must provide it (disko's NixOS \
                 module does, from disko.devices), or use install.partitioning = \"none\""
            )
        })
    };
    let path = built
        .with_context(|| format!("getting the disk script of {} at {head}", ctx.host))
        .context(Exit::Build)?;
    let script = executable_in(&path)?;
    crate::info!("install: disk script {}", script.display());
    Ok(script)
}

/// The program a script derivation provides: the output itself (`writeScript`) or its only
/// `bin/` entry (`writeShellScriptBin`).
fn executable_in(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let bin = path.join("bin");
    let entries: Vec<PathBuf> = std::fs::read_dir(&bin)
        .with_context(|| format!("{} is neither a script nor has a bin/", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{} has {} programs in bin/; expected exactly one disk script",
            path.display(),
            entries.len()
        ),
    }
}

/// Runs the disk script (which destroys what is on the disks it names) and insists that the
/// target is then a mount point: installing into the installer's own tmpfs would "succeed" and
/// vanish at the reboot.
fn prepare_target(target: &Path, disk_script: Option<&Path>) -> Result<()> {
    if target == Path::new("/") {
        return Err(anyhow!(
            "install.target is /: refusing to install over the running system"
        ))
        .context(Exit::Usage);
    }
    if let Some(script) = disk_script {
        watchdog::status("partitioning");
        crate::notice!(
            "install: running the disk script {} (it wipes the disks it names)",
            script.display()
        );
        Cmd::new(script)
            .run()
            .context("partitioning, formatting and mounting the target disks")
            .context(Exit::Disks)?;
    }
    if !is_mount_point(target)? {
        return Err(anyhow!(
            "{} is not a mount point after {}; nothing was installed",
            target.display(),
            if disk_script.is_some() {
                "the disk script (does it mount under install.target, disko's rootMountPoint?)"
            } else {
                "install.partitioning = \"none\" (mount the new root there first)"
            }
        ))
        .context(Exit::Disks);
    }
    Ok(())
}

/// Whether `dir` is a mount point: listed in this process's mount table (which also catches a
/// bind mount from the same file system), or, where that cannot be read, on another device
/// than its parent, the test `mountpoint(1)` falls back to.
fn is_mount_point(dir: &Path) -> Result<bool> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("looking at the install target {}", dir.display()))
        .context(Exit::Disks)?;
    if !meta.is_dir() {
        return Err(anyhow!(
            "install target {} is not a directory",
            dir.display()
        ))
        .context(Exit::Disks);
    }
    let real = std::fs::canonicalize(dir)
        .with_context(|| format!("resolving the install target {}", dir.display()))?;
    if let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") {
        return Ok(mount_points(&table).any(|m| m == real));
    }
    let parent = std::fs::metadata(dir.join(".."))
        .with_context(|| format!("looking at the parent of {}", dir.display()))?;
    Ok(meta.dev() != parent.dev() || meta.ino() == parent.ino())
}

/// The mount points of a `/proc/PID/mountinfo` table: the fifth field, in which the kernel
/// writes blank, tab, newline and backslash as octal escapes (`\040` …), see proc(5).
fn mount_points(table: &str) -> impl Iterator<Item = PathBuf> + '_ {
    table.lines().filter_map(|line| {
        let field = line.split(' ').nth(4)?;
        let mut out = Vec::with_capacity(field.len());
        let bytes = field.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let octal = bytes.get(i + 1..i + 4).and_then(|d| {
                std::str::from_utf8(d)
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 8).ok())
            });
            match (bytes[i], octal) {
                (b'\\', Some(byte)) => {
                    out.push(byte);
                    i += 4;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
    })
}

/// The target's store as a Nix store URL: a local store whose real root is the target.
fn target_store(target: &Path) -> String {
    format!("local?root={}", target.display())
}

fn copy_closure(ctx: &Ctx, system: &Path, target: &Path) -> Result<()> {
    watchdog::status("copying the system to the target");
    // The closure is already trusted here (built locally, or substituted with signatures
    // checked), so the local-to-local copy does not need signatures again.
    Cmd::new(&ctx.cfg.build.nix)
        .args(["--extra-experimental-features", "nix-command", "copy"])
        .args(["--no-check-sigs", "--to", &target_store(target)])
        .arg(system)
        .run()
        .with_context(|| {
            format!(
                "copying the closure of {} into {}",
                system.display(),
                target.display()
            )
        })
        .context(Exit::Activation)?;
    Ok(())
}

/// Points the target's system profile at `system`; returns the generation number.
fn set_target_profile(ctx: &Ctx, system: &Path, target: &Path) -> Result<Option<u32>> {
    let profile = under(target, &ctx.cfg.switch.profile);
    if let Some(dir) = profile.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Cmd::new(&ctx.cfg.switch.nix_env)
        .args(["--store", &target_store(target)])
        .arg("-p")
        .arg(&profile)
        .arg("--set")
        .arg(system)
        .run()
        .with_context(|| format!("setting {} to {}", profile.display(), system.display()))
        .context(Exit::Activation)?;
    Ok(
        crate::profile::Profile::new(&profile, &ctx.cfg.switch.nix_env)
            .current()
            .map(|g| g.number),
    )
}

/// `/etc/NIXOS` (switch-to-configuration checks for it) and the `/etc/mtab` GRUB's installer
/// reads, as nixos-install leaves them.
fn mark_nixos(target: &Path) -> Result<()> {
    let etc = target.join("etc");
    std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    let marker = etc.join("NIXOS");
    std::fs::write(&marker, b"").with_context(|| format!("writing {}", marker.display()))?;
    let mtab = etc.join("mtab");
    let _ = std::fs::remove_file(&mtab);
    std::os::unix::fs::symlink("/proc/mounts", &mtab)
        .with_context(|| format!("linking {} to /proc/mounts", mtab.display()))?;
    Ok(())
}

/// The installed system fetches the same repository, so it gets the deploy key the installer
/// used (mode 0600 in a 0700 directory).
fn copy_deploy_key(ctx: &Ctx, target: &Path) -> Result<()> {
    let (Some(key), to) = (&ctx.cfg.repo.deploy_key, &ctx.cfg.install.deploy_key_to) else {
        return Ok(());
    };
    if to.is_empty() {
        return Ok(());
    }
    let from = key;
    if !from.exists() {
        // Not needed to fetch (no ssh remote) and never copied in: nothing to hand on.
        crate::info!(
            "install: no deploy key at {}, none copied to the installed system",
            from.display()
        );
        return Ok(());
    }
    let dest = under(target, Path::new(to));
    if let Some(dir) = dest.parent() {
        crate::state::create_private_dir(dir)?;
    }
    let bytes = std::fs::read(from)
        .with_context(|| format!("reading the deploy key {}", from.display()))?;
    crate::state::write_atomic(&dest, &bytes)?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", dest.display()))?;
    crate::info!("install: deploy key copied to {to} of the installed system");
    Ok(())
}

/// The installed system trusts what the installer trusted: the git server's host key
/// (`repo.known_hosts`) and the commit signers (`repo.allowed_signers`) are copied to
/// `install.known_hosts_to` and `install.allowed_signers_to` in it (mode 0644; by default in
/// pullnix's 0700 directory), instead of its first fetch trusting whatever answers.
fn copy_pins(ctx: &Ctx, target: &Path) -> Result<()> {
    let install = &ctx.cfg.install;
    for (from, to, what) in [
        (
            &ctx.cfg.repo.known_hosts,
            &install.known_hosts_to,
            "host key pin",
        ),
        (
            &ctx.cfg.repo.allowed_signers,
            &install.allowed_signers_to,
            "allowed signers",
        ),
    ] {
        let Some(from) = from.as_ref().filter(|_| !to.is_empty()) else {
            continue;
        };
        let dest = under(target, Path::new(to));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::bootstrap::copy_pin(from, &dest)
            .with_context(|| format!("copying the {what} {} into the target", from.display()))
            .context(Exit::Activation)?;
        crate::info!(
            "install: {what} {} copied to {to} of the installed system",
            from.display()
        );
    }
    Ok(())
}

/// The installed system's pullnix starts from a record of what it runs and a copy of the
/// repository, so its first sync is an incremental fetch that finds nothing new.
fn seed_state(
    ctx: &Ctx,
    target: &Path,
    head: &str,
    system: &Path,
    generation: Option<u32>,
) -> Result<()> {
    let paths = Paths::new(&ctx.cfg, Some(target));
    crate::state::create_private_dir(&paths.state_dir)?;
    let repo = paths.repo_dir();
    if !repo.exists() {
        // Copied beside it and renamed, so that an install cut short (and re-run onto the same,
        // unwiped target) never leaves a half-copied repository where pullnix looks for one.
        let partial = repo.with_extension("git.partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        Cmd::new("cp")
            .arg("-a")
            .arg(ctx.paths.repo_dir())
            .arg(&partial)
            .run()
            .with_context(|| format!("copying the repository to {}", partial.display()))?;
        std::fs::rename(&partial, &repo)
            .with_context(|| format!("renaming {} to {}", partial.display(), repo.display()))?;
    }
    if let Err(e) = git::pin_deployed(&repo, head) {
        crate::warn!("install: could not pin the installed commit: {e:#}");
    }
    let mut state = State::load(&paths.state_file())?;
    state.deployed = Some(Deployed {
        commit: head.to_owned(),
        system: system.to_path_buf(),
        generation,
        at: now(),
        unknown: crate::state::Unknown::new(),
    });
    state.record(
        "installed",
        Some(head),
        format!(
            "installed by `pullnix install` from {}",
            crate::repo_url::redact(&ctx.cfg.repo.url)
        ),
    );
    state.save(&paths.state_file())
}

/// `switch-to-configuration boot` inside the target, as nixos-install does it through
/// nixos-enter: the installer's /dev, /proc and /sys bound in, the activation script first
/// (allowed to fail, as there), then the boot loader with `NIXOS_INSTALL_BOOTLOADER=1`.
fn install_boot_loader(ctx: &Ctx, target: &Path) -> Result<()> {
    watchdog::status("installing the boot loader");
    let binds = Binds::mount(target)?;
    let profile = &ctx.cfg.switch.profile;
    let activated = Cmd::new("chroot")
        .arg(target)
        .arg(profile.join("activate"))
        .env("IN_NIXOS_ENTER", "1")
        .env(
            "LOCALE_ARCHIVE",
            profile.join("sw/lib/locale/locale-archive"),
        )
        .run();
    if let Err(e) = activated {
        crate::warn!(
            "install: the activation script failed in the target (going on, as nixos-enter does): {e:#}"
        );
    }
    let result = Cmd::new("chroot")
        .arg(target)
        .arg(profile.join("bin/switch-to-configuration"))
        .arg("boot")
        .env("NIXOS_INSTALL_BOOTLOADER", "1")
        .run()
        .context("installing the boot loader of the installed system")
        .context(Exit::Activation);
    binds.unmount();
    result.map(|_| ())
}

/// The installer's /dev, /proc and /sys, recursively bound into the target.
struct Binds {
    mounted: Vec<PathBuf>,
}

impl Binds {
    fn mount(target: &Path) -> Result<Binds> {
        let mut binds = Binds {
            mounted: Vec::new(),
        };
        for dir in ["dev", "proc", "sys"] {
            let at = target.join(dir);
            let made = std::fs::create_dir_all(&at)
                .with_context(|| format!("creating {}", at.display()))
                .and_then(|()| {
                    Cmd::new("mount")
                        .arg("--rbind")
                        .arg(Path::new("/").join(dir))
                        .arg(&at)
                        .run()
                })
                .and_then(|_| {
                    // A slave, so that unmounting it later cannot take the installer's own
                    // submounts (/dev/pts, /sys/fs/cgroup, …) with it.
                    Cmd::new("mount").arg("--make-rslave").arg(&at).run()
                });
            match made {
                Ok(_) => binds.mounted.push(at),
                Err(e) => {
                    binds.unmount();
                    return Err(e)
                        .with_context(|| format!("binding /{dir} into {}", target.display()))
                        .context(Exit::Activation);
                }
            }
        }
        Ok(binds)
    }

    fn unmount(mut self) {
        while let Some(at) = self.mounted.pop() {
            if Cmd::new("umount").arg("-R").arg(&at).run().is_err() {
                let _ = Cmd::new("umount").args(["-R", "-l"]).arg(&at).run();
            }
        }
    }
}

/// Tells the provisioner (`pullnix pxe-api`) that this machine is installed, so that it stops
/// offering the installer to it.
///
/// Until the provisioner has heard, rebooting would be a network boot into the installer again
/// for a machine whose firmware tries the network first, and the next install would wipe the
/// disks (now, or on some network boot months later). So a report that does not get through
/// (no connection, a timeout, a 408, 429 or 5xx answer: a provisioner restarting, a busy or
/// flooded one, a network still coming up) is tried again, after 1 s, then twice as long each
/// time up to a minute, for as long as it takes; each failed try is a warning on the console
/// and in the journal. pxe-api answers 200 to the same report again, so a try whose answer was
/// lost is harmless. A report the provisioner refuses (any other answer: a token dropped by
/// `pxe-api forget` during the install, a `--public-url` that leads elsewhere) will not get
/// through by trying again: that is an error (exit 14), and the machine is not rebooted.
fn report_installed(url: &str) -> Result<()> {
    const FIRST_DELAY: Duration = Duration::from_secs(1);
    const MAX_DELAY: Duration = Duration::from_secs(60);
    let mut delay = FIRST_DELAY;
    let mut attempt: u64 = 1;
    loop {
        match report_once(url) {
            Ok(status) => {
                let after = if attempt > 1 {
                    format!(", at attempt {attempt}")
                } else {
                    String::new()
                };
                crate::notice!("install: reported to the provisioner (HTTP {status}{after})");
                return Ok(());
            }
            Err(ReportFailure::Lost(why)) => {
                crate::warn!(
                    "install: the report to the provisioner did not get through (attempt \
                     {attempt}: {why}); trying again in {}s, and not rebooting until it does",
                    delay.as_secs()
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_DELAY);
                attempt += 1;
            }
            Err(ReportFailure::Refused(status, body)) => {
                return Err(anyhow!(
                    "the provisioner refused the report of this install (HTTP {status}: \
                     {body:?}). The system is installed, but this machine is not rebooted: its \
                     next network boot would install it again. On the provisioner, check \
                     `pullnix pxe-api installed` and its journal; then boot this machine from \
                     its disk, or restart pullnix-install to install and report again"
                ))
                .context(Exit::Unreported);
            }
            Err(ReportFailure::Broken(e)) => {
                return Err(e)
                    .context("reporting to the provisioner: curl could not be run")
                    .context(Exit::Unreported);
            }
        }
    }
}

/// Why one report attempt failed.
enum ReportFailure {
    /// Worth trying again.
    Lost(String),
    /// An answer that will not change: status and the start of the body.
    Refused(u16, String),
    /// curl itself could not be run.
    Broken(anyhow::Error),
}

/// One POST to `url`: the HTTP status of a 2xx answer.
fn report_once(url: &str) -> Result<u16, ReportFailure> {
    // The URL goes to curl in a config on stdin, not in argv: it carries the report token, and
    // every command line is logged (cmd.rs). A value in double quotes takes `\\` and `\"`
    // escapes (curl(1), --config).
    let config = format!(
        "url = \"{}\"\n",
        url.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let curl = Cmd::new("curl")
        .args(["--silent", "--show-error", "--proto", "=http,https"])
        .args(["--connect-timeout", "10", "--max-time", "20"])
        .args(["--request", "POST", "--write-out", "\n%{http_code}"])
        .args(["--config", "-"])
        .stdin_bytes(config.into_bytes())
        .timeout(Duration::from_secs(40));
    let out = curl.output().map_err(ReportFailure::Broken)?;
    if !out.status.success() {
        return Err(ReportFailure::Lost(curl.failure(&out).to_string()));
    }
    let text = out.stdout_str();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let status: u16 = code.trim().parse().unwrap_or(0);
    match status {
        200..=299 => Ok(status),
        408 | 429 | 500..=599 => Err(ReportFailure::Lost(format!("HTTP {status}"))),
        _ => Err(ReportFailure::Refused(
            status,
            body.trim().chars().take(200).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        let a = parse(&w(
            "--host edge-1 --target /t --partitioning none --no-reboot --dry-run --json",
        ))
        .unwrap();
        assert!(a.dry_run && a.json);
        assert_eq!(a.host.as_deref(), Some("edge-1"));
        assert_eq!(a.target.as_deref(), Some(Path::new("/t")));
        assert_eq!(a.partitioning, Some(Partitioning::None));
        assert!(a.no_reboot);
        assert!(parse(&w("--partitioning zfs")).is_err());
        assert!(parse(&w("--bogus")).is_err());
        assert!(parse(&w("--no-reboot=yes")).is_err());
        assert_eq!(parse(&[]).unwrap(), Args::default());
    }

    #[test]
    fn kernel_words() {
        let k = Kernel::parse(
            "init=/nix/store/x/init pullnix.host=edge-7 pullnix.repo=\"git://10.0.0.1/fleet.git\" \
             pullnix.report=http://10.0.0.1:8080/v1/installed/aa?token=1f pullnix.branch= quiet\n",
        );
        assert_eq!(k.host.as_deref(), Some("edge-7"));
        assert_eq!(k.repo.as_deref(), Some("git://10.0.0.1/fleet.git"));
        assert_eq!(
            k.report.as_deref(),
            Some("http://10.0.0.1:8080/v1/installed/aa?token=1f")
        );
        assert_eq!(k.branch, None);
        assert_eq!(Kernel::parse(""), Kernel::default());
        assert_eq!(words("a \"b c\" d"), ["a", "b c", "d"]);
    }

    #[test]
    fn a_report_url_is_never_an_option_to_curl() {
        // A kernel command line with pullnix.report=-K<file>: curl would read the file as its
        // configuration (here: fetch a file and write it where the attacker says, as root).
        let d = std::env::temp_dir().join(format!("pullnix-report-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let written = d.join("written-by-curl");
        std::fs::write(
            d.join("curlrc"),
            format!(
                "url = \"file:///etc/hostname\"\noutput = \"{}\"\n",
                written.display()
            ),
        )
        .unwrap();
        let injected = format!("-K{}", d.join("curlrc").display());
        assert!(report_once(&injected).is_err());
        assert!(!written.exists(), "curl took the report URL as an option");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn host_names() {
        for good in ["edge-1", "a", "host.example_2"] {
            assert!(valid_host(good), "{good}");
        }
        for bad in ["", "-x", "a b", "a\"b", "x/y", "ä"] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn mount_table_escapes() {
        let table = "36 35 98:0 /mnt1 /mnt/with\\040blank rw,noatime master:1 - ext3 /dev/root rw\n\
                     37 35 0:5 / /proc rw - proc proc rw\n";
        let points: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            points,
            [PathBuf::from("/mnt/with blank"), PathBuf::from("/proc")]
        );
    }

    #[test]
    fn mount_point_checks() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        let d = std::env::temp_dir().join(format!("pullnix-install-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(!is_mount_point(&d).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
        assert!(is_mount_point(Path::new("/nonexistent-pullnix")).is_err());
    }
}
