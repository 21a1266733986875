//! Talking to the git remote with gix: fetch the deployed branch into a bare repository under the
//! state directory, check ancestry, and probe reachability for the health check.
//!
//! The bare repository only ever holds `refs/remotes/origin/<branch>` (what the remote said last)
//! and `refs/pullnix/deployed` (keeps the deployed commit's objects, so a force-push can still be
//! recognised as one). Nix builds from it with a `git+file://` URL pinned to the fetched commit.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow, bail};
use gix::remote::Direction;

use crate::config::Repo;
use crate::exit::Exit;

pub struct Remote<'a> {
    cfg: &'a Repo,
}

impl<'a> Remote<'a> {
    pub fn new(cfg: &'a Repo) -> Remote<'a> {
        Remote { cfg }
    }

    pub fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.cfg.branch)
    }

    fn refspec(&self) -> String {
        format!("+refs/heads/{}:{}", self.cfg.branch, self.tracking_ref())
    }

    /// Fetches the branch into the bare repository at `dir` (created on first use) and returns the
    /// commit the remote branch points at.
    pub fn fetch(&self, dir: &Path) -> Result<String> {
        let repo = self.open_or_init(dir)?;
        let url = self.cfg.url.as_str();
        let what = format!(
            "fetching branch {:?} from {}",
            self.cfg.branch,
            crate::repo_url::redact(url)
        );
        crate::info!("{what}");
        let remote = repo
            .remote_at(url)
            .and_then(|r| r.with_refspecs([self.refspec().as_str()], Direction::Fetch))
            .with_context(|| format!("invalid repository URL {:?}", crate::repo_url::redact(url)))
            .context(Exit::Usage)?;
        let fail = |e: anyhow::Error| {
            self.explain(e, dir)
                .context(what.clone())
                .context(Exit::Fetch)
        };
        // The network part, for the fault injection of the crash tests: a kill in here is a kill
        // while git's own processes (upload-pack, ssh) run and gix writes packs and refs.
        let _span = crate::failpoint::span(
            &format!("gix fetch {}", crate::repo_url::redact(url)),
            "gix fetch",
        );
        let prepared = self
            .credentials()
            .map_err(fail)
            .and_then(|credentials| self.connect(&remote, dir, credentials))
            .and_then(|c| {
                c.prepare_fetch(
                    gix::progress::Discard,
                    gix::remote::ref_map::Options::default(),
                )
                .map_err(anyhow::Error::from)
            })
            .map_err(fail)?;
        let head = branch_tip(prepared.ref_map(), &self.cfg.branch)
            .ok_or_else(|| anyhow!("the remote has no branch {:?}", self.cfg.branch))
            .map_err(fail)?;
        // Already have it: the poll ends after the ref advertisement, like `git ls-remote`, with
        // no negotiation and no ref transaction (dropping the prepared fetch ends the session).
        let tracking = repo
            .try_find_reference(self.tracking_ref().as_str())
            .ok()
            .flatten()
            .and_then(|mut r| r.peel_to_id().ok())
            .map(|id| id.detach().to_hex().to_string());
        if tracking.as_deref() == Some(head.as_str()) {
            crate::debug!("{what}: unchanged at {head}");
            return Ok(head);
        }
        prepared
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(anyhow::Error::from)
            .map_err(fail)?;
        crate::debug!("{what}: received {head}");
        Ok(head)
    }

    /// Asks the remote for its refs without fetching anything: the "remote still reachable"
    /// health check, run while the candidate is active.
    pub fn probe(&self, dir: &Path) -> Result<()> {
        let repo = self.open_or_init(dir)?;
        let remote = repo
            .remote_at(self.cfg.url.as_str())
            .and_then(|r| r.with_refspecs([self.refspec().as_str()], Direction::Fetch))?;
        let _span = crate::failpoint::span(
            &format!("gix probe {}", crate::repo_url::redact(&self.cfg.url)),
            "gix probe",
        );
        let (map, _) = self
            .credentials()
            .and_then(|credentials| self.connect(&remote, dir, credentials))
            .and_then(|c| {
                c.ref_map(
                    gix::progress::Discard,
                    gix::remote::ref_map::Options::default(),
                )
                .map_err(anyhow::Error::from)
            })
            .map_err(|e| self.explain(e, dir))?;
        branch_tip(&map, &self.cfg.branch)
            .map(|_| ())
            .ok_or_else(|| anyhow!("the remote has no branch {:?}", self.cfg.branch))
    }

    fn open_or_init(&self, dir: &Path) -> Result<gix::Repository> {
        self.check_deploy_key().context(Exit::Fetch)?;
        // What ssh says belongs to this connection only.
        let _ = std::fs::remove_file(ssh_log(dir));
        if !dir.join("HEAD").exists() {
            gix::init_bare(dir)
                .with_context(|| format!("creating bare repository {}", dir.display()))?;
        }
        // Isolated: the agent must behave the same whatever ~/.gitconfig or /etc/gitconfig say on
        // the device; only what pullnix's own config asks for applies.
        let mut overrides = Vec::new();
        if let Some(ca) = &self.cfg.ca_file {
            overrides.push(format!("http.sslCAInfo={}", ca.display()));
        }
        let opts = gix::open::Options::isolated().config_overrides(overrides);
        gix::open_opts(dir, opts)
            .with_context(|| format!("opening bare repository {}", dir.display()))
    }

    /// Whether gix talks ssh to this remote (decided by gix's own URL parser: `ssh://`,
    /// `git+ssh://`, `ssh+git://` and scp-like `user@host:path` alike).
    pub fn is_ssh(&self) -> bool {
        crate::repo_url::transport(&self.cfg.url)
            .is_ok_and(|t| t == crate::repo_url::Transport::Ssh)
    }

    /// The ssh options that use the deploy key and nothing else (`IdentitiesOnly`), never prompt
    /// (`BatchMode`), and check host keys against the configured file when there is one. ssh runs
    /// as pullnix's own child (see `ssh.rs`).
    fn ssh_options(&self, dir: &Path) -> Vec<String> {
        // LogLevel=ERROR: no "Permanently added … to the list of known hosts" on every poll.
        let mut opts: Vec<String> = ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
            .map(String::from)
            .into();
        if let Some(key) = &self.cfg.deploy_key {
            opts.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into()]);
            opts.push(key.to_string_lossy().into_owned());
        }
        // Without a pin (`repo.insecure_accept_new_host_keys`, validated in config.rs) the first
        // key a host shows is remembered in pullnix's own file and checked from then on; not
        // root's ~/.ssh/known_hosts, which would mix pullnix's trust with root's.
        let (checking, file) = match &self.cfg.known_hosts {
            Some(kh) => ("yes", kh.clone()),
            None => (
                "accept-new",
                ssh_log(dir).with_file_name("known_hosts.accepted"),
            ),
        };
        opts.extend([
            "-o".into(),
            format!("StrictHostKeyChecking={checking}"),
            "-o".into(),
            format!("UserKnownHostsFile={}", file.to_string_lossy()),
        ]);
        opts
    }

    /// A missing, foreign or group/world-readable key is reported before ssh gets to say
    /// something vaguer (ssh refuses keys readable by others: "UNPROTECTED PRIVATE KEY FILE").
    fn check_deploy_key(&self) -> Result<()> {
        // Only ssh uses the key; an https or git:// remote must not fail over a key it never
        // reads (the netboot installer's config names one for whatever URL the kernel gives).
        let Some(key) = self.cfg.deploy_key.as_ref().filter(|_| self.is_ssh()) else {
            return Ok(());
        };
        check_private_file(key, "deploy key", "repo.deploy_key")
    }

    /// The https credentials of `repo.credentials_file`, checked like a private key.
    fn credentials(&self) -> Result<Option<gix::sec::identity::Account>> {
        let Some(path) = &self.cfg.credentials_file else {
            return Ok(None);
        };
        check_private_file(path, "credentials file", "repo.credentials_file")?;
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading credentials file {} (repo.credentials_file)",
                path.display()
            )
        })?;
        let (mut username, mut password) = (None, None);
        for line in text.lines().map(str::trim) {
            match line.split_once('=') {
                Some(("username", v)) => username = Some(v.to_owned()),
                Some(("password", v)) => password = Some(v.to_owned()),
                _ if line.is_empty() || line.starts_with('#') => {}
                // Never quote the line: it may be the secret itself.
                _ => bail!(
                    "credentials file {} (repo.credentials_file) has a line that is neither \
                     username=… nor password=…",
                    path.display()
                ),
            }
        }
        match (username, password) {
            (Some(username), Some(password)) if !password.is_empty() => {
                Ok(Some(gix::sec::identity::Account {
                    username,
                    password,
                    oauth_refresh_token: None,
                }))
            }
            _ => bail!(
                "credentials file {} (repo.credentials_file) needs a username=… and a \
                 password=… line",
                path.display()
            ),
        }
    }

    fn explain(&self, e: anyhow::Error, dir: &Path) -> anyhow::Error {
        let mut e = e;
        if let Some(said) = crate::ssh::said(&ssh_log(dir)) {
            e = e.context(format!("ssh said: {said}"));
        }
        if self.is_ssh() && self.cfg.deploy_key.is_none() {
            e = e.context("no repo.deploy_key is configured for this ssh remote");
        }
        e
    }
}

/// Checks a secret that must be ours alone: a regular file (a symlink is followed, as
/// agenix/sops-nix use them, but the file it ends at counts), owned by the user pullnix runs
/// as (root), not readable or writable by anyone else. Another user's file, even a 0600 one
/// reached through a link, is refused: its owner could swap the secret.
fn check_private_file(path: &Path, what: &str, key: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{what} {} ({key}) is not readable", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} ({key}) is not a regular file", path.display());
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        bail!(
            "{what} {} ({key}) belongs to uid {}, not to uid {euid} that runs pullnix: its owner \
             could replace it; chown it",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} ({key}) has mode {mode:o}; others can read it: chmod 600 it",
            path.display()
        );
    }
    Ok(())
}

/// Where the ssh transport keeps what ssh printed: beside the repository.
fn ssh_log(repo_dir: &Path) -> std::path::PathBuf {
    repo_dir.with_file_name("ssh.log")
}

type Transport = Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>;

impl Remote<'_> {
    /// Connects to the remote for fetching.
    ///
    /// For ssh, pullnix runs ssh itself (see `ssh.rs`). For `git://` the socket is made here,
    /// with `TCP_NODELAY`: the request goes out as several small packet lines, and with Nagle's
    /// algorithm each one after the first waits for the server's delayed ACK (about 40 ms on
    /// Linux) — most of a no-op poll's time. gix's own connector does the same otherwise (5 s
    /// connect timeout, protocol from `protocol.version`).
    fn connect<'a, 'repo>(
        &self,
        remote: &'a gix::Remote<'repo>,
        dir: &Path,
        credentials: Option<gix::sec::identity::Account>,
    ) -> Result<gix::remote::Connection<'a, 'static, 'repo, Transport>> {
        let (url, version) = remote.sanitized_url_and_version(Direction::Fetch)?;
        if url.scheme == gix::url::Scheme::Ssh {
            let ssh = crate::ssh::connect(&url, version, &self.ssh_options(dir), &ssh_log(dir))?;
            let boxed: Transport = Box::new(ssh);
            return Ok(remote.to_connection_with_transport(boxed));
        }
        connect(remote, &url, version, credentials)
    }
}

fn connect<'a, 'repo>(
    remote: &'a gix::Remote<'repo>,
    url: &gix::Url,
    version: gix::protocol::transport::Protocol,
    credentials: Option<gix::sec::identity::Account>,
) -> Result<gix::remote::Connection<'a, 'static, 'repo, Transport>> {
    if url.scheme != gix::url::Scheme::Git {
        let connection = remote.connect(Direction::Fetch)?;
        let Some(account) = credentials else {
            return Ok(connection);
        };
        // Asked only when the server wants authentication (HTTP 401).
        return Ok(connection.with_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(context) => {
                Ok(Some(gix::credentials::protocol::Outcome {
                    identity: account.clone(),
                    next: context.into(),
                }))
            }
            _ => Ok(None),
        }));
    }
    let host = url
        .host()
        .ok_or_else(|| anyhow!("git:// URL without a host"))?;
    let port = url.port;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port.unwrap_or(9418)))
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
    let read = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| format!("connecting to git daemon at {addr}"))?;
    read.set_nodelay(true).context("setting TCP_NODELAY")?;
    let write = read.try_clone().context("cloning the git daemon socket")?;
    let connection = gix::protocol::transport::client::git::blocking_io::Connection::new(
        read,
        write,
        version,
        url.path.clone(),
        Some((host.to_owned(), port)),
        gix::protocol::transport::client::git::ConnectMode::Daemon,
        false,
    );
    let boxed: Transport = Box::new(connection);
    Ok(remote.to_connection_with_transport(boxed))
}

fn branch_tip(map: &gix::remote::fetch::RefMap, branch: &str) -> Option<String> {
    let want = format!("refs/heads/{branch}");
    map.remote_refs.iter().find_map(|r| {
        let (name, target, peeled) = r.unpack();
        (name == want.as_str())
            .then(|| peeled.or(target).map(|id| id.to_hex().to_string()))
            .flatten()
    })
}

/// Opens the local bare repository for questions about fetched commits (history, files,
/// signatures).
pub fn open_local(dir: &Path) -> Result<gix::Repository> {
    gix::open_opts(dir, gix::open::Options::isolated())
        .with_context(|| format!("opening bare repository {}", dir.display()))
}

/// A commit id as the state file and the logs spell it (40 hex digits).
pub fn commit_id(hex: &str) -> Result<gix::ObjectId> {
    gix::ObjectId::from_hex(hex.as_bytes()).with_context(|| format!("{hex:?} is not a commit id"))
}

/// Whether `ancestor` is `descendant` or one of its ancestors.
pub fn is_ancestor(dir: &Path, ancestor: &str, descendant: &str) -> Result<bool> {
    if ancestor == descendant {
        return Ok(true);
    }
    let repo = open_local(dir)?;
    let anc = commit_id(ancestor)?;
    let desc = commit_id(descendant)?;
    if repo.find_object(anc).is_err() {
        // The deployed commit's objects are gone (repository recreated): history cannot prove
        // anything, and refusing is the safe answer.
        return Ok(false);
    }
    let walk = repo
        .rev_walk([desc])
        .all()
        .with_context(|| format!("walking the history of {descendant}"))?;
    for info in walk {
        let info = info.with_context(|| format!("walking the history of {descendant}"))?;
        if info.id == anc {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Points `refs/pullnix/deployed` at `commit` so its objects stay in the repository.
pub fn pin_deployed(dir: &Path, commit: &str) -> Result<()> {
    let repo = open_local(dir)?;
    let id = commit_id(commit)?;
    repo.reference(
        "refs/pullnix/deployed",
        id,
        gix::refs::transaction::PreviousValue::Any,
        "pullnix: deployed",
    )
    .with_context(|| format!("updating refs/pullnix/deployed in {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_are_recognised() {
        for (u, ssh) in [
            ("ssh://git@example.org/fleet.git", true),
            ("git+ssh://git@example.org/fleet.git", true),
            ("ssh+git://git@example.org/fleet.git", true),
            ("git@example.org:fleet.git", true),
            ("https://example.org/fleet.git", false),
            ("file:///srv/fleet.git", false),
            ("/srv/fleet.git", false),
            ("git://127.0.0.1:9418/fleet.git", false),
        ] {
            let cfg = Repo {
                url: u.into(),
                branch: "main".into(),
                deploy_key: Some("/k ey".into()),
                known_hosts: None,
                insecure_accept_new_host_keys: true,
                ca_file: None,
                credentials_file: None,
                allowed_signers: None,
                insecure_plaintext_without_signatures: false,
                flake_dir: String::new(),
                allow_non_fast_forward: false,
            };
            let r = Remote::new(&cfg);
            assert_eq!(r.is_ssh(), ssh, "{u}");
            if ssh {
                let opts = r.ssh_options(Path::new("/state/repo.git")).join(" ");
                assert!(opts.contains("-i /k ey -o"), "{opts}");
                assert!(opts.contains("BatchMode=yes"), "{opts}");
                // Accepted host keys go to pullnix's own file, never root's known_hosts.
                assert!(
                    opts.contains("UserKnownHostsFile=/state/known_hosts.accepted"),
                    "{opts}"
                );
            }
        }
    }
}
