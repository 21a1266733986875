//! The ssh transport: pullnix runs `ssh` itself and speaks the git protocol over its stdin and
//! stdout.
//!
//! Not gix's own ssh transport, for three reasons measured with `bench/run.sh`:
//! - it ends a session by sending SIGKILL to its child, which is the `sh -c` that runs the configured ssh
//!   command, so `ssh` (and anything between) lived on as orphans after every poll;
//! - after every read from ssh's stdout that returned fewer bytes than asked for (a pipe does that
//!   whenever ssh has not written a whole packet line yet) it waited up to 5 ms for an error line
//!   on stderr (`ReadStdoutFailOnError` in gix-transport 0.62, `client/blocking_io/file.rs`): 41
//!   such waits in a cold fetch of the benchmark's 6 MB pack, time in which the fetch waited
//!   rather than worked;
//! - it copies ssh's stderr to ours raw, without a priority prefix, while the error it reports
//!   says only "failed to fill whole buffer".
//!
//! Here ssh is a [`Session`] of `cmd.rs`: logged with its argv, its stderr lines become journal
//! warnings and are kept beside the repository so the fetch error can quote them, and the session
//! ends the way git ends it: stdin closed, ssh exits on its own and is reaped.
//!
//! The command is what git runs for `ssh://` and scp-like URLs (`connect.c`, `fill_ssh_args`):
//! `ssh [-o SendEnv=GIT_PROTOCOL] [-p PORT] [USER@]HOST "git-upload-pack 'PATH'"`, with
//! `GIT_PROTOCOL=version=2` in ssh's environment for protocol v2
//! (<https://git-scm.com/docs/gitprotocol-v2#_ssh_and_file_transport>).

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout};

use anyhow::{Result, anyhow, bail};
use gix::bstr::BStr;
use gix::protocol::transport::client::blocking_io::{RequestWriter, SetServiceResponse};
use gix::protocol::transport::client::git::ConnectMode;
use gix::protocol::transport::client::git::blocking_io::Connection;
use gix::protocol::transport::client::{Error, MessageKind, TransportWithoutIO, WriteMode};
use gix::protocol::transport::{Protocol, Service};
use gix::url::ArgumentSafety;

use crate::cmd::{Cmd, Session};

/// A git connection over an ssh process that pullnix owns.
pub struct Transport {
    /// Dropped first: closing ssh's stdin is what tells it to finish.
    conn: Option<Connection<ChildStdout, ChildStdin>>,
    session: Session,
}

/// Starts `ssh OPTIONS… [USER@]HOST git-upload-pack 'PATH'` for `url` and returns the transport
/// over its stdin and stdout. Every line ssh prints on stderr is logged as a warning and appended
/// to `log`.
pub fn connect(
    url: &gix::Url,
    version: Protocol,
    options: &[String],
    log: &Path,
) -> Result<Transport> {
    let cmd = command(url, version, options)?;
    let log: PathBuf = log.to_owned();
    let (session, stdin, stdout) = cmd.session(move |line| {
        crate::warn!("ssh: {line}");
        if let Ok(mut f) = crate::state::open_append(&log) {
            let _ = writeln!(f, "{line}");
        }
    })?;
    let conn = Connection::new(
        stdout,
        stdin,
        version,
        url.path.clone(),
        None::<(String, Option<u16>)>,
        ConnectMode::Process,
        false,
    )
    .custom_url(Some(url.to_bstring()));
    Ok(Transport {
        conn: Some(conn),
        session,
    })
}

/// The ssh command line for `url`: never an argument ssh could read as an option.
fn command(url: &gix::Url, version: Protocol, options: &[String]) -> Result<Cmd> {
    let host = match (url.user_as_argument(), url.host_as_argument()) {
        (_, ArgumentSafety::Absent) => bail!("ssh URL without a host"),
        (ArgumentSafety::Dangerous(user), _) => {
            bail!("ssh user name {user:?} would be read as an option")
        }
        (_, ArgumentSafety::Dangerous(host)) => {
            bail!("ssh host name {host:?} would be read as an option")
        }
        (ArgumentSafety::Usable(user), ArgumentSafety::Usable(host)) => format!("{user}@{host}"),
        (ArgumentSafety::Absent, ArgumentSafety::Usable(host)) => host.to_owned(),
    };
    // `ssh://host/~/repo` and `host:~/repo` are relative to the remote home, as for git.
    let path = gix::url::expand_path::for_shell(url.path.clone());
    let path = String::from_utf8(path.into())
        .map_err(|_| anyhow!("the repository path in the ssh URL is not UTF-8"))?;
    if path.trim_start().starts_with('-') {
        bail!("the repository path {path:?} would be read as an option");
    }
    let mut cmd = Cmd::new("ssh").args(options);
    if version != Protocol::V1 {
        cmd = cmd
            .args(["-o", "SendEnv=GIT_PROTOCOL"])
            .env("GIT_PROTOCOL", format!("version={}", version as usize));
    }
    if let Some(port) = url.port {
        cmd = cmd.arg("-p").arg(port.to_string());
    }
    Ok(cmd
        .arg(host)
        .arg(format!("git-upload-pack {}", shell_quote(&path))))
}

/// Single quotes for the remote shell, as git's `sq_quote_buf` does.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Transport {
    fn conn(&mut self) -> Result<&mut Connection<ChildStdout, ChildStdin>, Error> {
        self.conn.as_mut().ok_or(Error::MissingHandshake)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        drop(self.conn.take());
        self.session.end();
    }
}

impl TransportWithoutIO for Transport {
    fn to_url(&self) -> Cow<'_, BStr> {
        self.conn
            .as_ref()
            .map_or(Cow::Borrowed("ssh://".into()), TransportWithoutIO::to_url)
    }

    fn connection_persists_across_multiple_requests(&self) -> bool {
        true
    }

    fn configure(&mut self, _config: &dyn std::any::Any) -> gix::Result {
        Ok(())
    }
}

impl gix::protocol::transport::client::blocking_io::Transport for Transport {
    fn handshake<'a>(
        &mut self,
        service: Service,
        extra_parameters: &'a [(&'a str, Option<&'a str>)],
    ) -> Result<SetServiceResponse<'_>, Error> {
        self.conn()?.handshake(service, extra_parameters)
    }

    fn request(
        &mut self,
        write_mode: WriteMode,
        on_into_read: MessageKind,
        trace: bool,
    ) -> Result<RequestWriter<'_>, Error> {
        self.conn()?.request(write_mode, on_into_read, trace)
    }
}

/// The lines ssh printed during the last fetch, for the error message.
pub fn said(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let tail = crate::cmd::tail(&text);
    (!tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(url: &str, version: Protocol) -> Result<String> {
        let url = gix::url::parse(url)?;
        Ok(command(&url, version, &["-o".into(), "BatchMode=yes".into()])?.display())
    }

    #[test]
    fn the_command_is_the_one_git_runs() {
        assert_eq!(
            argv("ssh://git@example.org:2222/srv/fleet.git", Protocol::V2).unwrap(),
            "GIT_PROTOCOL=version=2 ssh -o BatchMode=yes -o SendEnv=GIT_PROTOCOL -p 2222 \
             git@example.org 'git-upload-pack '\\''/srv/fleet.git'\\'''"
        );
        assert_eq!(
            argv("example.org:fleet.git", Protocol::V1).unwrap(),
            "ssh -o BatchMode=yes example.org 'git-upload-pack '\\''fleet.git'\\'''"
        );
        assert_eq!(
            argv("ssh://example.org/~/it's.git", Protocol::V1).unwrap(),
            "ssh -o BatchMode=yes example.org 'git-upload-pack '\\''~/it'\\''\\'\\'''\\''s.git'\\'''"
        );
    }

    #[test]
    fn nothing_in_the_url_becomes_an_ssh_option() {
        for url in [
            "ssh://-oProxyCommand=x@example.org/r.git",
            "ssh://-oProxyCommand=x/r.git",
        ] {
            let err = argv(url, Protocol::V2).unwrap_err();
            assert!(
                format!("{err:#}").contains("would be read as an option"),
                "{url}: {err:#}"
            );
        }
    }
}
