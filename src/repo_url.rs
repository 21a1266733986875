//! The repository URL: which transport it names, and how it may be shown.
//!
//! The transport is decided by gix's own URL parser, the one that later connects, so that every
//! spelling git accepts for ssh (`ssh://`, the legacy `git+ssh://` and `ssh+git://`, scp-like
//! `user@host:path` and `host:path`) gets the deploy key, the host key pin and `BatchMode`, and
//! nothing with another transport does.
//!
//! A URL may carry a secret in its userinfo (`https://user:token@host/…`). It is never written
//! anywhere as is: logs, the state file, the journal, `status` and fleet output show it with the
//! userinfo hidden ([`redact`]).

use std::borrow::Cow;

use anyhow::{Result, anyhow};

/// How pullnix talks to the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A local path or `file://`.
    Local,
    /// Through the `ssh` binary.
    Ssh,
    /// `git://`: plain text, unauthenticated.
    Git,
    /// `http://`: plain text, unauthenticated.
    Http,
    /// `https://`: TLS.
    Https,
}

impl Transport {
    /// Whether anyone on the network path can change what is fetched.
    pub fn is_plain_text(self) -> bool {
        matches!(self, Transport::Git | Transport::Http)
    }
}

/// The transport of `url`, as gix sees it.
pub fn transport(url: &str) -> Result<Transport> {
    let parsed = gix::url::parse(url.as_bytes())
        .map_err(|e| anyhow!("{:?} is not a repository URL: {e}", redact(url)))?;
    Ok(match parsed.scheme {
        gix::url::Scheme::File => Transport::Local,
        gix::url::Scheme::Ssh => Transport::Ssh,
        gix::url::Scheme::Git => Transport::Git,
        gix::url::Scheme::Http => Transport::Http,
        gix::url::Scheme::Https => Transport::Https,
        other => {
            return Err(anyhow!(
                "{:?} uses the transport {:?}, which pullnix does not fetch over (file://, a \
                 path, git://, http(s)://, ssh://)",
                redact(url),
                other.as_str()
            ));
        }
    })
}

/// `text` with the userinfo of every `scheme://userinfo@host` in it hidden: all of it as `***`,
/// except that the user name of an ssh URL (`ssh://git@host`, not a secret, and part of how the
/// server is reached) stays and only a password after it is hidden.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| "/?#\"'<>\\`".contains(c) || c.is_whitespace() || c.is_control())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                let scheme = scheme_before(before);
                let is_ssh = matches!(scheme, "ssh" | "git+ssh" | "ssh+git");
                match userinfo.split_once(':') {
                    Some((user, _)) if is_ssh => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None if is_ssh => out.push_str(userinfo),
                    _ => out.push_str("***"),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The scheme ending right before `://` at the end of `before` (`"… https://"` → `https`).
fn scheme_before(before: &str) -> &str {
    let head = &before[..before.len() - 3];
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .map_or(0, |i| i + 1);
    &head[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_come_from_gix() {
        for (url, want) in [
            ("ssh://git@example.org/fleet.git", Transport::Ssh),
            ("git+ssh://git@example.org/fleet.git", Transport::Ssh),
            ("ssh+git://git@example.org/fleet.git", Transport::Ssh),
            ("git@example.org:fleet.git", Transport::Ssh),
            ("example.org:fleet.git", Transport::Ssh),
            ("git://127.0.0.1:9418/fleet.git", Transport::Git),
            ("http://example.org/fleet.git", Transport::Http),
            ("https://user:token@example.org/fleet.git", Transport::Https),
            ("file:///srv/fleet.git", Transport::Local),
            ("/srv/fleet.git", Transport::Local),
            ("./fleet:with-colon.git", Transport::Local),
        ] {
            assert_eq!(transport(url).unwrap(), want, "{url}");
        }
        let e = transport("rad://z3gqcJUoA1n9HaHKufZs5FCSGazv5").unwrap_err();
        assert!(format!("{e}").contains("does not fetch over"), "{e}");
    }

    #[test]
    fn userinfo_is_hidden_wherever_a_url_appears() {
        for (text, want) in [
            (
                "fetching branch \"main\" from https://deploy:s3cr3t@git.example.org/fleet.git",
                "fetching branch \"main\" from https://***@git.example.org/fleet.git",
            ),
            (
                "https://ghp_TOKEN@github.com/o/r.git and http://u:p@h:8080/x",
                "https://***@github.com/o/r.git and http://***@h:8080/x",
            ),
            (
                "ssh://git@example.org/fleet.git",
                "ssh://git@example.org/fleet.git",
            ),
            (
                "git+ssh://git:pw@example.org/fleet.git",
                "git+ssh://git:***@example.org/fleet.git",
            ),
            ("\"https://a:b@h/x\" (url)", "\"https://***@h/x\" (url)"),
            ("https://h/path@not-userinfo", "https://h/path@not-userinfo"),
            ("no url here", "no url here"),
            ("git@example.org:fleet.git", "git@example.org:fleet.git"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }
}
