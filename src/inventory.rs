//! The fleet inventory (`hosts.toml`): which machines `pullnix fleet` talks to and how to reach
//! them over ssh. Like the config file, every table rejects unknown keys, so a typo is an error
//! naming the key and the line instead of a setting silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::exit::Exit;

/// Where the inventory is looked for when `--inventory` is not given.
pub const DEFAULT_PATH: &str = "/etc/pullnix/hosts.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub defaults: Defaults,
    /// By name; a `BTreeMap` so every listing comes out in the same (sorted) order.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostEntry>,
}

/// Settings for every host, each of which a host entry may override.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// ssh login user; unset: whatever ssh would pick (its config, then the local user).
    pub user: Option<String>,
    /// ssh port; unset: ssh's default (its config, then 22).
    pub port: Option<u16>,
    /// Private key, used alone (`IdentitiesOnly=yes`) so an agent's keys cannot get in the way.
    pub identity: Option<PathBuf>,
    /// Pinned host keys; when set, ssh checks strictly against this file only.
    pub known_hosts: Option<PathBuf>,
    /// Seconds one host may take, connection included.
    pub timeout: u64,
    /// Hosts contacted at once.
    pub parallel: usize,
    /// The remote pullnix command line, before `status --json`.
    pub pullnix: Vec<String>,
    /// What `fleet refresh` runs on the host.
    pub refresh_command: Vec<String>,
    /// Run the remote command under coreutils' `timeout` (see `fleet::ssh_command` for why).
    pub remote_timeout: bool,
    /// The local ssh client.
    pub ssh: String,
    /// Extra ssh arguments, placed before the destination (e.g. `["-o", "ProxyJump=bastion"]`).
    pub ssh_options: Vec<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            user: None,
            port: None,
            identity: None,
            known_hosts: None,
            timeout: 10,
            parallel: 16,
            pullnix: vec!["pullnix".into()],
            refresh_command: ["systemctl", "start", "--no-block", "pullnix.service"]
                .map(String::from)
                .to_vec(),
            remote_timeout: true,
            ssh: "ssh".into(),
            ssh_options: Vec::new(),
        }
    }
}

/// One `[hosts.NAME]` table as written; unset keys come from `[defaults]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub timeout: Option<u64>,
    pub pullnix: Option<Vec<String>>,
    pub refresh_command: Option<Vec<String>>,
    pub remote_timeout: Option<bool>,
}

/// A host with the defaults filled in: everything needed to reach it.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub timeout: u64,
    pub pullnix: Vec<String>,
    pub refresh_command: Vec<String>,
    pub remote_timeout: bool,
}

impl Inventory {
    /// Reads and validates the file. Every failure is a usage error (exit 2).
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading inventory {}", path.display()))
            .context(Exit::Usage)?;
        Inventory::parse(&text)
            .with_context(|| format!("invalid inventory {}", path.display()))
            .context(Exit::Usage)
    }

    pub fn parse(text: &str) -> Result<Inventory> {
        let inv: Inventory =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        inv.validate()?;
        Ok(inv)
    }

    fn validate(&self) -> Result<()> {
        let d = &self.defaults;
        if d.timeout == 0 {
            bail!("`defaults.timeout` must be at least 1 second");
        }
        if d.parallel == 0 {
            bail!("`defaults.parallel` must be at least 1");
        }
        if d.ssh.is_empty() {
            bail!("`defaults.ssh` must not be empty");
        }
        check_user("defaults.user", d.user.as_deref())?;
        check_known_hosts("defaults.known_hosts", d.known_hosts.as_deref())?;
        check_argv("defaults.pullnix", &d.pullnix)?;
        check_argv("defaults.refresh_command", &d.refresh_command)?;
        for (name, h) in &self.hosts {
            let key = |k: &str| format!("hosts.{name}.{k}");
            // ssh would read an address starting with `-` as an option; whitespace and `@`
            // would change what it connects to.
            if h.address.is_empty()
                || h.address.starts_with('-')
                || h.address.contains(|c: char| c.is_whitespace() || c == '@')
            {
                bail!(
                    "`{}` {:?} is not a host name or IP address",
                    key("address"),
                    h.address
                );
            }
            check_user(&key("user"), h.user.as_deref())?;
            check_known_hosts(&key("known_hosts"), h.known_hosts.as_deref())?;
            if h.timeout == Some(0) {
                bail!("`{}` must be at least 1 second", key("timeout"));
            }
            if let Some(p) = &h.pullnix {
                check_argv(&key("pullnix"), p)?;
            }
            if let Some(r) = &h.refresh_command {
                check_argv(&key("refresh_command"), r)?;
            }
        }
        Ok(())
    }

    /// Every host, defaults applied, sorted by name.
    pub fn all(&self) -> Vec<Host> {
        self.hosts.keys().filter_map(|n| self.host(n)).collect()
    }

    /// The named hosts and every host carrying at least one of `tags`, sorted by name, each
    /// once. A name not in the inventory, or a tag no host has, is a usage error: a typo must
    /// stop the command, not quietly shrink the selection to fewer machines (or none).
    pub fn select(&self, names: &[String], tags: &[String], source: &Path) -> Result<Vec<Host>> {
        if let Some(n) = names.iter().find(|n| !self.hosts.contains_key(*n)) {
            return Err(anyhow!("unknown host {n:?} (not in {})", source.display()))
                .context(Exit::Usage);
        }
        let known: BTreeSet<&str> = self
            .hosts
            .values()
            .flat_map(|h| h.tags.iter().map(String::as_str))
            .collect();
        if let Some(t) = tags.iter().find(|t| !known.contains(t.as_str())) {
            // Naming the tags that do exist makes the typo obvious without opening the file.
            let there = if known.is_empty() {
                "it has no tags at all".to_owned()
            } else {
                format!(
                    "its tags: {}",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                )
            };
            return Err(anyhow!(
                "unknown tag {t:?} (no host in {} has it; {there})",
                source.display()
            ))
            .context(Exit::Usage);
        }
        Ok(self
            .hosts
            .iter()
            .filter(|(n, h)| names.contains(n) || h.tags.iter().any(|t| tags.contains(t)))
            .filter_map(|(n, _)| self.host(n))
            .collect())
    }

    fn host(&self, name: &str) -> Option<Host> {
        let h = self.hosts.get(name)?;
        let d = &self.defaults;
        Some(Host {
            name: name.to_owned(),
            address: h.address.clone(),
            port: h.port.or(d.port),
            user: h.user.clone().or_else(|| d.user.clone()),
            tags: h.tags.clone(),
            identity: h.identity.clone().or_else(|| d.identity.clone()),
            known_hosts: h.known_hosts.clone().or_else(|| d.known_hosts.clone()),
            timeout: h.timeout.unwrap_or(d.timeout),
            pullnix: h.pullnix.clone().unwrap_or_else(|| d.pullnix.clone()),
            refresh_command: h
                .refresh_command
                .clone()
                .unwrap_or_else(|| d.refresh_command.clone()),
            remote_timeout: h.remote_timeout.unwrap_or(d.remote_timeout),
        })
    }
}

impl Host {
    /// `user@address:port` with the parts that are set, for listings.
    pub fn destination(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.address);
        if let Some(p) = self.port {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }
}

fn check_user(key: &str, user: Option<&str>) -> Result<()> {
    if let Some(u) = user
        && (u.is_empty()
            || u.starts_with('-')
            || u.contains(|c: char| c.is_whitespace() || c == '@'))
    {
        bail!("`{key}` {u:?} is not a user name");
    }
    Ok(())
}

/// The file goes into `-o UserKnownHostsFile=…`, where ssh splits on whitespace and expands
/// `%` tokens, so such paths would silently name another file.
fn check_known_hosts(key: &str, path: Option<&Path>) -> Result<()> {
    if let Some(p) = path
        && p.to_str().is_none_or(|s| {
            s.is_empty() || s.contains(|c: char| c.is_whitespace() || "\"%".contains(c))
        })
    {
        bail!(
            "`{key}` {:?} must be a path without whitespace, quotes or `%`",
            p.display().to_string()
        );
    }
    Ok(())
}

fn check_argv(key: &str, argv: &[String]) -> Result<()> {
    if argv.first().is_none_or(String::is_empty) {
        bail!("`{key}` must name a command");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_what_a_host_leaves_out() {
        let inv = Inventory::parse(
            "[defaults]\nuser = \"root\"\ntimeout = 5\n\n\
             [hosts.b]\naddress = \"10.0.0.2\"\nport = 2222\ntimeout = 3\n\n\
             [hosts.a]\naddress = \"a.example.org\"\ntags = [\"edge\"]\n",
        )
        .unwrap();
        let all = inv.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "a");
        assert_eq!(all[0].timeout, 5);
        assert_eq!(all[0].destination(), "root@a.example.org");
        assert_eq!(all[0].pullnix, ["pullnix"]);
        assert_eq!(
            all[0].refresh_command,
            ["systemctl", "start", "--no-block", "pullnix.service"]
        );
        assert_eq!(all[1].timeout, 3);
        assert_eq!(all[1].destination(), "root@10.0.0.2:2222");
        assert_eq!(inv.defaults.parallel, 16);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Inventory::parse("[hosts.a]\naddress = \"x\"\n\n[hosts.b]\nadress = \"y\"\n")
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 5"), "{msg}");
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn nonsense_values_are_rejected_with_the_key() {
        for (text, key) in [
            (
                "[hosts.a]\naddress = \"-oProxyCommand=x\"\n",
                "hosts.a.address",
            ),
            ("[hosts.a]\naddress = \"u@h\"\n", "hosts.a.address"),
            ("[defaults]\nparallel = 0\n", "defaults.parallel"),
            ("[defaults]\ntimeout = 0\n", "defaults.timeout"),
            ("[defaults]\npullnix = []\n", "defaults.pullnix"),
            (
                "[defaults]\nknown_hosts = \"/a b\"\n",
                "defaults.known_hosts",
            ),
            (
                "[hosts.a]\naddress = \"h\"\nuser = \"-l\"\n",
                "hosts.a.user",
            ),
            (
                "[hosts.a]\naddress = \"h\"\nrefresh_command = []\n",
                "hosts.a.refresh_command",
            ),
        ] {
            let msg = format!("{:#}", Inventory::parse(text).unwrap_err());
            assert!(msg.contains(key), "{key}: {msg}");
        }
    }

    #[test]
    fn unknown_host_is_a_usage_error() {
        let inv = Inventory::parse("[hosts.a]\naddress = \"h\"\n").unwrap();
        let err = inv
            .select(&["a".into(), "zz".into()], &[], Path::new("/i.toml"))
            .unwrap_err();
        assert_eq!(Exit::code_of(&err), 2);
        assert!(format!("{err:#}").contains("\"zz\""));
        let picked = inv
            .select(&["a".into(), "a".into()], &[], Path::new("/i.toml"))
            .unwrap();
        assert_eq!(picked.len(), 1);
    }

    fn tagged() -> Inventory {
        Inventory::parse(
            "[hosts.c]\naddress = \"h\"\ntags = [\"edge\", \"eu\"]\n\
             [hosts.a]\naddress = \"h\"\ntags = [\"eu\"]\n\
             [hosts.b]\naddress = \"h\"\ntags = [\"core\"]\n\
             [hosts.d]\naddress = \"h\"\n",
        )
        .unwrap()
    }

    fn names(hosts: &[Host]) -> Vec<&str> {
        hosts.iter().map(|h| h.name.as_str()).collect()
    }

    fn pick(inv: &Inventory, hosts: &[&str], tags: &[&str]) -> Result<Vec<Host>> {
        let own = |w: &[&str]| w.iter().map(|&s| s.to_owned()).collect::<Vec<_>>();
        inv.select(&own(hosts), &own(tags), Path::new("/i.toml"))
    }

    #[test]
    fn tags_select_every_host_with_any_of_them() {
        let inv = tagged();
        assert_eq!(names(&pick(&inv, &[], &["eu"]).unwrap()), ["a", "c"]);
        assert_eq!(names(&pick(&inv, &[], &["edge"]).unwrap()), ["c"]);
        assert_eq!(
            names(&pick(&inv, &[], &["core", "edge", "core"]).unwrap()),
            ["b", "c"]
        );
        // Names and tags add up, and a host picked both ways comes once.
        assert_eq!(
            names(&pick(&inv, &["d", "c"], &["eu"]).unwrap()),
            ["a", "c", "d"]
        );
    }

    #[test]
    fn a_tag_no_host_has_is_a_usage_error_naming_it() {
        let inv = tagged();
        let err = pick(&inv, &["a"], &["eu", "eu-west"]).unwrap_err();
        assert_eq!(Exit::code_of(&err), 2);
        let msg = format!("{err:#}");
        assert!(msg.contains("unknown tag \"eu-west\""), "{msg}");
        assert!(msg.contains("/i.toml"), "{msg}");
        assert!(msg.contains("its tags: core, edge, eu"), "{msg}");
        let bare = Inventory::parse("[hosts.a]\naddress = \"h\"\n").unwrap();
        let msg = format!("{:#}", pick(&bare, &[], &["x"]).unwrap_err());
        assert!(msg.contains("it has no tags at all"), "{msg}");
        // A wrong host name is reported even when the tags are fine.
        let err = pick(&inv, &["zz"], &["eu"]).unwrap_err();
        assert!(format!("{err:#}").contains("unknown host \"zz\""));
    }

    #[test]
    fn remote_timeout_is_on_unless_turned_off() {
        let inv = Inventory::parse(
            "[hosts.a]\naddress = \"h\"\n[hosts.b]\naddress = \"h\"\nremote_timeout = false\n",
        )
        .unwrap();
        assert!(inv.defaults.remote_timeout);
        let all = inv.all();
        assert!(all[0].remote_timeout && !all[1].remote_timeout);
        let off = Inventory::parse(
            "[defaults]\nremote_timeout = false\n[hosts.a]\naddress = \"h\"\n\
             remote_timeout = true\n[hosts.b]\naddress = \"h\"\n",
        )
        .unwrap();
        let all = off.all();
        assert!(all[0].remote_timeout && !all[1].remote_timeout);
    }
}
