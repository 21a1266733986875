//! The configuration file (TOML). On NixOS it is rendered from `services.pullnix.settings` with
//! `pkgs.formats.toml`; every table rejects unknown keys so that a typo fails loudly instead of
//! silently falling back to a default. toml's own error text names the line, column and key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::exit::Exit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_root")]
    pub root: PathBuf,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Seconds a `sync` may find the lock taken (by anyone, continuously) before it fails with
    /// exit 15 instead of exit 3 ("already running", which the unit counts as success).
    #[serde(default = "default_lock_stalled_after")]
    pub lock_stalled_after: u64,
    /// Defaults to the kernel host name.
    #[serde(default)]
    pub host: Option<String>,
    pub repo: Repo,
    #[serde(default)]
    pub build: Build,
    #[serde(default)]
    pub scan: Scan,
    #[serde(default)]
    pub switch: Switch,
    #[serde(default)]
    pub confirm: Confirm,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default)]
    pub report: Report,
    #[serde(default)]
    pub closure: Closure,
    #[serde(default)]
    pub install: Install,
}

/// `pullnix install`: putting the host's system on the empty disks of a machine booted into an
/// installer (README "Provisioning").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Install {
    /// Where the disk script mounts the new root file system (disko's default is /mnt).
    pub target: PathBuf,
    pub partitioning: Partitioning,
    /// Attribute of the fleet flake (same commit) that partitions, formats and mounts;
    /// `{host}` is replaced.
    pub disk_script: String,
    /// Closure mode: the repository file pinning the disk script's store path.
    pub disk_script_file: String,
    /// Where the deploy key is copied in the installed system; empty: not copied.
    pub deploy_key_to: String,
    /// Where `repo.known_hosts` and `repo.allowed_signers` are copied in the installed system,
    /// so that it trusts the same host key and signers as the installer; empty: not copied.
    pub known_hosts_to: String,
    pub allowed_signers_to: String,
    /// Wait for `repo.deploy_key` to appear (copied in over ssh) instead of failing.
    pub wait_for_deploy_key: bool,
    pub reboot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioning {
    /// Build and run `install.disk_script`.
    Disko,
    /// The target is already mounted (by hand, or by a unit before pullnix).
    None,
}

impl Default for Install {
    fn default() -> Self {
        Install {
            target: "/mnt".into(),
            partitioning: Partitioning::Disko,
            disk_script: "nixosConfigurations.\"{host}\".config.system.build.diskoScript".into(),
            disk_script_file: "closures/{host}.disk-script".into(),
            deploy_key_to: "/var/lib/pullnix/deploy-key".into(),
            known_hosts_to: "/var/lib/pullnix/known_hosts".into(),
            allowed_signers_to: "/var/lib/pullnix/allowed_signers".into(),
            wait_for_deploy_key: false,
            reboot: true,
        }
    }
}

/// Closure mode: deploy the store path the commit pins, from a signed binary cache, without
/// evaluating anything on the device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Closure {
    pub enable: bool,
    /// The file in the repository holding the host's store path; `{host}` is replaced.
    pub file: String,
    pub substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
    pub nix_store: String,
    /// Deploy a pin that goes back to a closure an earlier commit pinned (like
    /// `repo.allow_non_fast_forward` for commits).
    pub allow_downgrade: bool,
}

impl Default for Closure {
    fn default() -> Self {
        Closure {
            enable: false,
            file: "closures/{host}".into(),
            substituters: Vec::new(),
            trusted_public_keys: Vec::new(),
            nix_store: "nix-store".into(),
            allow_downgrade: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default)]
    pub deploy_key: Option<PathBuf>,
    /// An OpenSSH `known_hosts` file pinning the server's host key; required for an ssh remote
    /// unless `insecure_accept_new_host_keys`.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// ssh without `known_hosts`: accept whatever host key answers first (and remember it in
    /// `STATE/known_hosts.accepted`). Whoever answers first then serves the configuration.
    #[serde(default)]
    pub insecure_accept_new_host_keys: bool,
    /// PEM bundle of the certificate authorities trusted for an https remote (instead of the
    /// system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// https only: a root-only file with `username=` and `password=` lines, so that the secret
    /// is neither in the URL nor in the (world-readable) configuration.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// OpenSSH allowed signers file: when set, only commits with a valid SSH signature by one of
    /// them are deployed.
    #[serde(default)]
    pub allowed_signers: Option<PathBuf>,
    /// git:// or http:// without `allowed_signers`: deploy whatever anyone on the network path
    /// serves.
    #[serde(default)]
    pub insecure_plaintext_without_signatures: bool,
    #[serde(default)]
    pub flake_dir: String,
    #[serde(default)]
    pub allow_non_fast_forward: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Build {
    pub nix: String,
    pub extra_args: Vec<String>,
    pub retry_failed_after: u64,
}

impl Default for Build {
    fn default() -> Self {
        Build {
            nix: "nix".into(),
            extra_args: Vec::new(),
            retry_failed_after: 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scan {
    pub enable: bool,
    pub vulnix: String,
    pub whitelist: Vec<PathBuf>,
    pub mirror: String,
    pub cache_dir: String,
    pub min_cvss: f64,
    pub extra_args: Vec<String>,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            enable: false,
            vulnix: "vulnix".into(),
            whitelist: Vec::new(),
            mirror: String::new(),
            cache_dir: String::new(),
            min_cvss: 7.0,
            extra_args: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Switch {
    pub profile: PathBuf,
    pub nix_env: String,
    pub systemd_run: bool,
    pub mode: Mode,
    pub reboot_command: Vec<String>,
}

/// How a candidate is first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `switch-to-configuration test`: no reboot; the boot default moves only once confirmed.
    Test,
    /// Boot-counted boot default, reboot into it, confirm after the boot.
    Boot,
    /// `boot` when kernel, initrd or kernel parameters change, else `test`.
    Auto,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            profile: "/nix/var/nix/profiles/system".into(),
            nix_env: "nix-env".into(),
            systemd_run: false,
            mode: Mode::Test,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Confirm {
    pub timeout: u64,
    pub interval: u64,
    pub boot_tries: u32,
    pub max_attempts: u32,
    pub unit: String,
}

impl Default for Confirm {
    fn default() -> Self {
        Confirm {
            timeout: 300,
            interval: 5,
            boot_tries: 3,
            max_attempts: 3,
            unit: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub remote: bool,
    pub units: Vec<String>,
    pub system_running: bool,
    pub systemctl: String,
    pub command: Vec<HealthCommand>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            remote: true,
            units: Vec::new(),
            system_running: false,
            systemctl: "systemctl".into(),
            command: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCommand {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default = "default_check_timeout")]
    pub timeout: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Boot {
    pub entries_dir: PathBuf,
    pub counting: bool,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            entries_dir: "/boot/loader/entries".into(),
            counting: false,
        }
    }
}

/// What pullnix tells the outside world after each sync, confirm, boot-check and rollback.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Report {
    /// node-exporter textfile collector file (below root); empty: none.
    pub textfile: Option<PathBuf>,
    /// Run with `pullnix status --json` on stdin (webhook, ntfy, anything); empty: none.
    pub command: Vec<String>,
    /// Seconds the command may take.
    pub timeout: Option<u64>,
}

/// A branch name that is a valid git ref (git-check-ref-format(1)) made only of characters that
/// mean nothing in a URL query (`nix::flake_ref` puts it into `?ref=`). The branch may come from
/// the kernel command line (`pullnix.branch=`), i.e. from whoever answered the network boot.
fn plain_branch(b: &str) -> bool {
    b.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c))
        && !b.starts_with('-')
        && !b.ends_with('.')
        && !b.contains("..")
        // Every component: not empty (no leading, trailing or double '/'), not starting with
        // '.', not ending in ".lock".
        && b.split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && c.strip_suffix(".lock").is_none())
}

fn default_root() -> PathBuf {
    "/".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/pullnix".into()
}
fn default_lock_stalled_after() -> u64 {
    3600
}
fn default_branch() -> String {
    "main".into()
}
fn default_check_timeout() -> u64 {
    30
}

impl Build {
    fn check(&self) -> Result<()> {
        if let Some(flag) = self.extra_args.iter().find(|a| {
            [
                "--no-write-lock-file",
                "--recreate-lock-file",
                "--update-input",
            ]
            .contains(&a.as_str())
        }) {
            bail!(
                "`build.extra_args` has {flag}: nix would then resolve flake inputs that the \
                 commit's flake.lock does not pin on the device, to whatever they are now; \
                 pullnix builds exactly what the commit locks (commit a flake.lock instead)"
            );
        }
        Ok(())
    }
}

impl Repo {
    fn check(&self) -> Result<()> {
        if !plain_branch(&self.branch) {
            bail!(
                "`repo.branch` {:?} is not a plain branch name (letters, digits, '.', '_', '-', \
                 '/'): it becomes part of the flake URL nix builds, where '&', '?', '#' or '%' \
                 would add parameters of their own",
                self.branch
            );
        }
        if self.flake_dir.contains(['?', '&', '#']) || self.flake_dir.starts_with('/') {
            bail!("`repo.flake_dir` must be a relative directory inside the repository");
        }
        self.check_transport()
    }

    /// The safe default for each transport (README "Security model"): whoever can answer for
    /// the remote must not be able to choose the configuration, unless the admin said so by a
    /// loudly named option.
    fn check_transport(&self) -> Result<()> {
        use crate::repo_url::Transport;
        let transport = crate::repo_url::transport(&self.url).context("`repo.url`")?;
        if transport == Transport::Ssh
            && self.known_hosts.is_none()
            && !self.insecure_accept_new_host_keys
        {
            bail!(
                "`repo.url` is an ssh remote and `repo.known_hosts` is not set: ssh would trust \
                 whichever host key answers first, and that host would then choose what runs as \
                 root here. Set `repo.known_hosts` to a file with the server's host key (e.g. \
                 `ssh-keyscan HOST`, checked out of band), or set \
                 `repo.insecure_accept_new_host_keys = true` to accept that risk"
            );
        }
        if transport.is_plain_text()
            && self.allowed_signers.is_none()
            && !self.insecure_plaintext_without_signatures
        {
            bail!(
                "`repo.url` is a plain-text transport (git:// or http://) and \
                 `repo.allowed_signers` is not set: anyone on the network path could serve a \
                 configuration of their own. Use https:// or ssh://, or require signed commits \
                 with `repo.allowed_signers`, or set \
                 `repo.insecure_plaintext_without_signatures = true` to accept that risk"
            );
        }
        if self.credentials_file.is_some() {
            if transport != Transport::Https {
                bail!(
                    "`repo.credentials_file` is only sent to https:// remotes (ssh uses \
                     `repo.deploy_key`; plain http would send it in the clear)"
                );
            }
            if gix::url::parse(self.url.as_bytes()).is_ok_and(|u| u.user().is_some()) {
                bail!(
                    "`repo.url` has a user name or password as well as `repo.credentials_file`: \
                     give the credentials in the file only"
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file. Every failure is a usage error (exit 2).
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))
            .context(Exit::Usage)?;
        Config::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))
            .context(Exit::Usage)
    }

    /// Reads the file without the checks, for a caller that fills in values (from the command
    /// line or the kernel's) before calling [`Config::validate`].
    pub fn load_unchecked(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))
            .context(Exit::Usage)?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
            .with_context(|| format!("invalid config file {}", path.display()))
            .context(Exit::Usage)
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        for (key, p) in [
            ("root", &self.root),
            ("state_dir", &self.state_dir),
            ("switch.profile", &self.switch.profile),
            ("boot.entries_dir", &self.boot.entries_dir),
        ] {
            if !p.is_absolute() {
                bail!(
                    "`{key}` must be an absolute path, got {:?}",
                    p.display().to_string()
                );
            }
        }
        if self.repo.url.trim().is_empty() {
            bail!("`repo.url` must not be empty");
        }
        self.repo.check()?;
        self.build.check()?;
        if let Some(h) = &self.host
            && (h.is_empty() || h.contains(['"', '\\', '\n']))
        {
            bail!("`host` {h:?} cannot name a nixosConfigurations attribute");
        }
        if self.switch.mode != Mode::Test && self.switch.reboot_command.is_empty() {
            bail!("`switch.reboot_command` must not be empty when `switch.mode` can reboot");
        }
        if self.confirm.timeout == 0 {
            bail!("`confirm.timeout` must be at least 1 second");
        }
        if self.confirm.boot_tries == 0 || self.confirm.max_attempts == 0 {
            bail!("`confirm.boot_tries` and `confirm.max_attempts` must be at least 1");
        }
        if !(0.0..=10.0).contains(&self.scan.min_cvss) {
            bail!("`scan.min_cvss` must be between 0.0 and 10.0");
        }
        if self.closure.enable
            && (self.closure.substituters.is_empty() || self.closure.trusted_public_keys.is_empty())
        {
            bail!(
                "`closure.enable` needs `closure.substituters` and `closure.trusted_public_keys`: unsigned closures are never deployed"
            );
        }
        if self.closure.enable
            && (self.closure.file.is_empty() || self.closure.file.starts_with('/'))
        {
            bail!("`closure.file` must be a path inside the repository");
        }
        if let Some(t) = &self.report.textfile
            && (!t.is_absolute() || t.extension().is_none_or(|e| e != "prom"))
        {
            bail!(
                "`report.textfile` must be an absolute path ending in .prom (node-exporter reads only those)"
            );
        }
        if !self.install.target.is_absolute()
            || self
                .install
                .target
                .to_string_lossy()
                .contains(['?', '&', '#', '%'])
        {
            // It becomes part of a Nix store URL (`local?root=…`).
            bail!("`install.target` must be an absolute path without ?, &, # or %");
        }
        for (key, to) in [
            ("install.deploy_key_to", &self.install.deploy_key_to),
            ("install.known_hosts_to", &self.install.known_hosts_to),
            (
                "install.allowed_signers_to",
                &self.install.allowed_signers_to,
            ),
        ] {
            if !to.is_empty() && !to.starts_with('/') {
                bail!("`{key}` must be an absolute path (or empty)");
            }
        }
        for c in &self.health.command {
            if c.argv.is_empty() {
                bail!("`health.command` {:?} has an empty `argv`", c.name);
            }
            if c.timeout == 0 {
                bail!(
                    "`health.command` {:?} needs a timeout of at least 1 second",
                    c.name
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = Config::parse("[repo]\nurl = \"file:///srv/fleet.git\"\n").unwrap();
        assert_eq!(c.repo.branch, "main");
        assert_eq!(c.state_dir, Path::new("/var/lib/pullnix"));
        assert_eq!(c.switch.profile, Path::new("/nix/var/nix/profiles/system"));
        assert_eq!(c.confirm.timeout, 300);
        assert!(c.health.remote);
        assert!(!c.scan.enable);
        assert!((c.scan.min_cvss - 7.0).abs() < f64::EPSILON);
        assert_eq!(c.switch.mode, Mode::Test);
        assert_eq!(c.switch.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(c.lock_stalled_after, 3600);
        let c = Config::parse("[repo]\nurl = \"x\"\n[switch]\nmode = \"auto\"\n").unwrap();
        assert_eq!(c.switch.mode, Mode::Auto);
        assert!(Config::parse("[repo]\nurl = \"x\"\n[switch]\nmode = \"reboot\"\n").is_err());
    }

    #[test]
    fn network_transports_need_their_pin_or_a_loud_opt_out() {
        let ok =
            |extra: &str, url: &str| Config::parse(&format!("[repo]\nurl = \"{url}\"\n{extra}"));
        for url in [
            "ssh://git@example.org/fleet.git",
            "git+ssh://git@example.org/fleet.git",
            "ssh+git://git@example.org/fleet.git",
            "git@example.org:fleet.git",
        ] {
            let msg = format!("{:#}", ok("", url).unwrap_err());
            assert!(
                msg.contains("repo.known_hosts") && msg.contains("insecure_accept_new_host_keys"),
                "{url}: {msg}"
            );
            ok("known_hosts = \"/etc/pullnix/known_hosts\"\n", url).unwrap();
            ok("insecure_accept_new_host_keys = true\n", url).unwrap();
        }
        for url in [
            "git://example.org/fleet.git",
            "http://example.org/fleet.git",
        ] {
            let msg = format!("{:#}", ok("", url).unwrap_err());
            assert!(
                msg.contains("repo.allowed_signers")
                    && msg.contains("insecure_plaintext_without_signatures"),
                "{url}: {msg}"
            );
            ok("allowed_signers = \"/etc/pullnix/allowed_signers\"\n", url).unwrap();
            ok("insecure_plaintext_without_signatures = true\n", url).unwrap();
        }
        for url in [
            "https://example.org/fleet.git",
            "file:///srv/fleet.git",
            "/srv/fleet.git",
        ] {
            ok("", url).unwrap();
        }
        let creds = "credentials_file = \"/etc/pullnix/credentials\"\n";
        ok(creds, "https://example.org/fleet.git").unwrap();
        for url in [
            "http://example.org/f.git",
            "ssh://git@example.org/f.git",
            "https://u:p@example.org/f.git",
        ] {
            let msg = format!("{:#}", ok(&format!("{creds}insecure_plaintext_without_signatures = true\ninsecure_accept_new_host_keys = true\n"), url).unwrap_err());
            assert!(msg.contains("credentials"), "{url}: {msg}");
        }
    }

    #[test]
    fn branch_names_stay_out_of_the_flake_url() {
        for good in ["main", "release/2026.11", "edge_01-canary", "v1.2"] {
            assert!(plain_branch(good), "{good}");
        }
        for bad in [
            "",
            "x&submodules=1&dir=sub",
            "x?rev=0",
            "x#frag",
            "a%26b",
            "a b",
            "-x",
            "/x",
            "x/",
            "a..b",
            "a//b",
            "a/.b",
            "x.lock",
            "a+b",
        ] {
            assert!(!plain_branch(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::parse("[repo]\nurl = \"x\"\n\n[confirm]\ntimout = 3\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 5"), "{msg}");
        assert!(msg.contains("timout"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line() {
        let err = Config::parse("[repo]\nurl = \"x\"\nbranch = 3\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn nonsense_values_are_rejected_with_the_key() {
        for (text, key) in [
            (
                "state_dir = \"var/lib\"\n[repo]\nurl = \"x\"\n",
                "state_dir",
            ),
            ("[repo]\nurl = \"\"\n", "repo.url"),
            ("[repo]\nurl = \"rad://z3gq\"\n", "repo.url"),
            ("[repo]\nurl = \"x\"\nbranch = \"a:b\"\n", "repo.branch"),
            (
                "[repo]\nurl = \"x\"\nbranch = \"x&submodules=1&dir=sub\"\n",
                "repo.branch",
            ),
            (
                "[repo]\nurl = \"x\"\n[confirm]\ntimeout = 0\n",
                "confirm.timeout",
            ),
            (
                "[repo]\nurl = \"x\"\n[scan]\nmin_cvss = 11.0\n",
                "scan.min_cvss",
            ),
            (
                "[repo]\nurl = \"x\"\n[[health.command]]\nname = \"a\"\nargv = []\n",
                "health.command",
            ),
        ] {
            let msg = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(msg.contains(key), "{key}: {msg}");
        }
    }
}
