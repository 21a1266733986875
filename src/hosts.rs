//! The provisioning hosts file: which bare-metal machine (by MAC address) gets which network
//! boot, and which configuration of the fleet flake its installer is told to install. Read by
//! `pullnix pxe-api` and, for names instead of MAC addresses, by `pullnix wake`.
//!
//! Like the config file and the fleet inventory, every table rejects unknown keys, and every
//! mistake is an error naming the key and its line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use toml::Spanned;

use crate::exit::Exit;

/// The cmdline placeholder for the URL an installer reports success to. It is left in
/// [`Host::cmdline`] as is: `pxe-api` fills it in per request, with a token it keeps in its
/// state directory.
pub const REPORT: &str = "{report}";

/// A 48-bit hardware address. Written as `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF` or
/// `aabbccddeeff` (any case); always shown as lower case with colons, the form pixiecore uses
/// in its API requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses the three accepted spellings; `None` for anything else (mixed separators,
    /// missing or extra digits, other characters).
    pub fn parse(s: &str) -> Option<Mac> {
        let digits: Vec<&str> = if s.len() == 12 {
            (0..6)
                .map(|i| s.get(2 * i..2 * i + 2))
                .collect::<Option<_>>()?
        } else if s.len() == 17 {
            let sep = if s.contains(':') { ':' } else { '-' };
            s.split(sep).collect()
        } else {
            return None;
        };
        if digits.len() != 6 {
            return None;
        }
        let mut mac = [0u8; 6];
        for (byte, pair) in mac.iter_mut().zip(digits) {
            if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        Mac::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff)"
            ))
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Boot,
    #[serde(default)]
    hosts: BTreeMap<String, Entry>,
}

/// What a machine boots; every key may be set in `[defaults]` and overridden per host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Boot {
    kernel: Option<String>,
    initrd: Option<Vec<String>>,
    cmdline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    mac: Spanned<Mac>,
    /// `nixosConfigurations.<flake_attr>` of the fleet flake; defaults to the table's name.
    #[serde(alias = "host")]
    flake_attr: Option<String>,
    kernel: Option<String>,
    initrd: Option<Vec<String>>,
    cmdline: Option<String>,
}

/// One machine with the defaults applied and the placeholders `{host}` and `{mac}` of its
/// command line filled in (`{report}` is `pxe-api`'s, see [`REPORT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub mac: Mac,
    pub flake_attr: String,
    pub kernel: String,
    pub initrd: Vec<String>,
    pub cmdline: String,
}

#[derive(Debug)]
pub struct Hosts {
    hosts: Vec<Host>,
    by_mac: HashMap<Mac, usize>,
}

impl Hosts {
    /// Reads and validates the file. Every failure is a usage error (exit 2).
    pub fn load(path: &Path) -> Result<Hosts> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading hosts file {}", path.display()))
            .context(Exit::Usage)?;
        Hosts::parse(&text)
            .with_context(|| format!("invalid hosts file {}", path.display()))
            .context(Exit::Usage)
    }

    pub fn parse(text: &str) -> Result<Hosts> {
        let file: File =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        let line_of = |span: std::ops::Range<usize>| {
            text.get(..span.start)
                .map_or(0, |t| t.matches('\n').count())
                + 1
        };
        let d = &file.defaults;
        let mut hosts = Vec::new();
        let mut by_mac: HashMap<Mac, usize> = HashMap::new();
        for (name, e) in &file.hosts {
            let key = |k: &str| format!("hosts.{name}.{k}");
            let line = line_of(e.mac.span());
            let mac = *e.mac.get_ref();
            if let Some(&other) = by_mac.get(&mac) {
                bail!(
                    "`{}` at line {line}: MAC address {mac} is already used by host {:?}",
                    key("mac"),
                    hosts_name(&hosts, other)
                );
            }
            let flake_attr = e.flake_attr.clone().unwrap_or_else(|| name.clone());
            if flake_attr.is_empty() || flake_attr.contains(char::is_whitespace) {
                bail!(
                    "`{}` (host at line {line}) {flake_attr:?} is not a configuration name",
                    key("flake_attr")
                );
            }
            let kernel = e.kernel.clone().or_else(|| d.kernel.clone());
            let Some(kernel) = kernel.filter(|k| !k.trim().is_empty()) else {
                bail!(
                    "`{}` (host at line {line}): no kernel, set it here or in `defaults.kernel`",
                    key("kernel")
                );
            };
            let initrd = e
                .initrd
                .clone()
                .or_else(|| d.initrd.clone())
                .unwrap_or_default();
            if initrd.iter().any(|i| i.trim().is_empty()) {
                bail!(
                    "`{}` (host at line {line}): empty initrd URL",
                    key("initrd")
                );
            }
            let cmdline = e
                .cmdline
                .as_deref()
                .or(d.cmdline.as_deref())
                .unwrap_or_default()
                .replace("{host}", &flake_attr)
                .replace("{mac}", &mac.to_string());
            by_mac.insert(mac, hosts.len());
            hosts.push(Host {
                name: name.clone(),
                mac,
                flake_attr,
                kernel,
                initrd,
                cmdline,
            });
        }
        Ok(Hosts { hosts, by_mac })
    }

    pub fn by_mac(&self, mac: Mac) -> Option<&Host> {
        self.by_mac.get(&mac).map(|&i| &self.hosts[i])
    }

    pub fn by_name(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }
}

fn hosts_name(hosts: &[Host], i: usize) -> &str {
    hosts.get(i).map_or("?", |h| h.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings() {
        let want = Mac([0x52, 0x54, 0, 0x12, 0x34, 0xab]);
        for s in ["52:54:00:12:34:ab", "52-54-00-12-34-AB", "5254001234Ab"] {
            assert_eq!(Mac::parse(s), Some(want), "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:ab");
        for s in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:ab:cd",
            "52:54-00:12:34:ab",
            "5254.0012.34ab",
            "52:54:00:12:34:zz",
            "52:54:0:123:34:ab",
            "52540012345",
            "+2540012345a",
            "ü2540012345",
        ] {
            assert_eq!(Mac::parse(s), None, "{s}");
        }
    }

    const GOOD: &str = r#"
[defaults]
kernel = "file:///srv/bzImage"
initrd = ["file:///srv/initrd"]
cmdline = "init=/x pullnix.host={host} pullnix.mac={mac} pullnix.report={report}"

[hosts.edge-01]
mac = "52-54-00-12-34-56"

[hosts.edge-02]
mac = "525400123457"
host = "edge-two"
initrd = []
cmdline = "quiet"
"#;

    #[test]
    fn defaults_and_placeholders() {
        let h = Hosts::parse(GOOD).unwrap();
        assert_eq!(h.len(), 2);
        let one = h.by_mac(Mac::parse("52:54:00:12:34:56").unwrap()).unwrap();
        assert_eq!(one.name, "edge-01");
        assert_eq!(one.flake_attr, "edge-01");
        assert_eq!(one.kernel, "file:///srv/bzImage");
        assert_eq!(one.initrd, ["file:///srv/initrd"]);
        assert_eq!(
            one.cmdline,
            "init=/x pullnix.host=edge-01 pullnix.mac=52:54:00:12:34:56 pullnix.report={report}"
        );
        let two = h.by_name("edge-02").unwrap();
        assert_eq!(two.flake_attr, "edge-two");
        assert!(two.initrd.is_empty());
        assert_eq!(two.cmdline, "quiet");
    }

    #[test]
    fn mistakes_name_key_and_line() {
        for (text, needles) in [
            (
                "[hosts.a]\nmac = \"52:54:00:12:34:56\"\nkernel = \"k\"\n\n[hosts.b]\nmac = \"52:54:00:12:34:56\"\nkernel = \"k\"\n",
                &["hosts.b.mac", "line 6", "\"a\""][..],
            ),
            (
                "[hosts.a]\nkernel = \"k\"\nmac = \"52:54:00:12:34\"\n",
                &["line 3", "not a MAC address"][..],
            ),
            ("[defaults]\nkernal = \"k\"\n", &["line 2", "kernal"][..]),
            (
                "[hosts.a]\nmac = \"52:54:00:12:34:56\"\n",
                &["hosts.a.kernel", "line 2"][..],
            ),
            (
                "[hosts.a]\nmac = \"52:54:00:12:34:56\"\nkernel = \"k\"\ninitrd = [\"\"]\n",
                &["hosts.a.initrd"][..],
            ),
            (
                "[hosts.a]\nmac = \"52:54:00:12:34:56\"\nkernel = \"k\"\nflake_attr = \"a b\"\n",
                &["hosts.a.flake_attr"][..],
            ),
        ] {
            let msg = format!("{:#}", Hosts::parse(text).unwrap_err());
            for n in needles {
                assert!(msg.contains(n), "{n}: {msg}");
            }
        }
    }
}
