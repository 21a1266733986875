//! The one place where pullnix runs other programs.
//!
//! Every command is logged with its argv before it starts. "Could not start" (missing binary,
//! permissions) and "ran but failed" are different errors, because they call for different fixes,
//! and a failure keeps the tail of the program's stderr so the admin sees nix's or vulnix's own
//! explanation in `pullnix status` and in the journal without re-running anything.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// How much of a failing command's stderr is kept in the error.
const STDERR_TAIL_LINES: usize = 15;
const STDERR_TAIL_BYTES: usize = 4096;

/// How long a [`Session`]'s program gets to exit on its own once its input is closed, and then
/// after SIGTERM, before it is killed.
const SESSION_GRACE: Duration = Duration::from_secs(5);
const SESSION_TERM_GRACE: Duration = Duration::from_secs(2);

pub struct Cmd {
    argv: Vec<OsString>,
    timeout: Option<Duration>,
    /// Bytes for the child's stdin; `None` gives it /dev/null.
    stdin: Option<Vec<u8>>,
    /// Variables set for the child on top of pullnix's own environment.
    env: Vec<(OsString, OsString)>,
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr)
    }
}

/// The last few lines of `bytes`, trimmed, at most a few KiB.
pub fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let mut out = lines[start..].join("\n");
    if out.len() > STDERR_TAIL_BYTES {
        let mut cut = out.len() - STDERR_TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("...{}", &out[cut..]);
    }
    out
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            timeout: None,
            stdin: None,
            env: Vec::new(),
        }
    }

    /// A command from a configured argv list (health checks, report hooks).
    pub fn from_argv(argv: &[String]) -> Result<Self> {
        let (program, rest) = argv
            .split_first()
            .ok_or_else(|| anyhow!("empty command line"))?;
        Ok(Cmd::new(program).args(rest))
    }

    #[must_use]
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.argv.push(a.as_ref().to_owned());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    #[must_use]
    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    /// Sets an environment variable for the child (shown in the logged command line).
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The argv as one shell-like line, for logs and error messages.
    pub fn display(&self) -> String {
        let mut s = String::new();
        let assignments = self.env.iter().map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            kv
        });
        let words: Vec<OsString> = assignments.chain(self.argv.iter().cloned()).collect();
        for (i, a) in words.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let a = a.to_string_lossy();
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "\"'$&;|<>*?()".contains(c))
            {
                let _ = write!(s, "'{}'", a.replace('\'', r"'\''"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }

    fn program(&self) -> &Path {
        Path::new(&self.argv[0])
    }

    /// The program's file name and, when it is a verb (`nix build`, `switch-to-configuration
    /// test`, `systemctl start`), the first argument: how the end of a command is logged.
    fn short(&self) -> String {
        let name = self
            .program()
            .file_name()
            .map_or_else(|| self.argv[0].to_string_lossy(), |n| n.to_string_lossy());
        match self.argv.get(1).map(|a| a.to_string_lossy()) {
            Some(verb) if !verb.starts_with('-') && !verb.contains('/') && !verb.is_empty() => {
                format!("{name} {verb}")
            }
            _ => name.into_owned(),
        }
    }

    /// Runs to completion and returns the output whatever the exit status; only "could not start"
    /// and "timed out" are errors here. Use [`Cmd::run`] when a non-zero exit is a failure.
    pub fn output(&self) -> Result<Output> {
        let line = self.display();
        crate::info!("running: {line}");
        let mut command = Command::new(self.program());
        command
            .args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if self.timeout.is_some() {
            // A process group of its own, so that a timeout kills the whole tree (`sh -c` and
            // what it started): a surviving grandchild would keep our pipes open forever.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let started = Instant::now();
        // Ends (and may kill, with fault injection) when this function returns.
        let _span = crate::failpoint::span(&line, &self.short());
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            // Written from a thread so a child that does not read cannot block us; a child that
            // exits early just closes the pipe.
            thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&bytes);
            });
        }
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let status = match self.timeout {
            None => child
                .wait()
                .with_context(|| format!("waiting for `{line}`"))?,
            Some(limit) => wait_with_timeout(&mut child, limit)
                .with_context(|| format!("waiting for `{line}`"))?
                .ok_or_else(|| {
                    anyhow!(
                        "`{line}` did not finish within {}s and was killed",
                        limit.as_secs()
                    )
                })?,
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        // The end of every command is in the log too, so that a run that stops (a kill, a power
        // cut) shows whether it stopped during a command or after it.
        crate::debug!(
            "finished: {} {} after {} ms",
            self.short(),
            describe(status),
            started.elapsed().as_millis()
        );
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs to completion; a non-zero exit is an error carrying the stderr tail.
    pub fn run(&self) -> Result<Output> {
        let out = self.output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failure(&out))
        }
    }

    /// The error for a command that ran and failed.
    pub fn failure(&self, out: &Output) -> anyhow::Error {
        let tail = out.stderr_tail();
        let status = describe(out.status);
        if tail.is_empty() {
            anyhow!("`{}` {status}", self.display())
        } else {
            anyhow!(
                "`{}` {status}; its stderr ends with: {tail}",
                self.display()
            )
        }
    }
}

/// A program pullnix talks to over its stdin and stdout while it runs: ssh carrying the git
/// protocol (`ssh.rs`). Its stderr is read line by line on a thread of its own.
///
/// Ending it is [`Session::end`] (or dropping it) after the caller has closed the program's stdin,
/// which is how a client says "done" to ssh: ssh passes the EOF on, the remote side exits, ssh
/// exits. The program gets [`SESSION_GRACE`] to do that on its own, then SIGTERM, then SIGKILL;
/// it is always reaped, so nothing outlives pullnix.
pub struct Session {
    child: Child,
    line: String,
    stderr: Option<thread::JoinHandle<()>>,
    ended: bool,
}

impl Cmd {
    /// Starts the program with its stdin and stdout as pipes for the caller; every non-empty line
    /// it writes on stderr goes to `on_stderr_line`.
    pub fn session(
        &self,
        mut on_stderr_line: impl FnMut(&str) + Send + 'static,
    ) -> Result<(Session, ChildStdin, ChildStdout)> {
        let line = self.display();
        crate::info!("running: {line}");
        let mut child = Command::new(self.program())
            .args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let stderr = child.stderr.take().map(|pipe| {
            thread::spawn(move || {
                for raw in BufReader::new(pipe).split(b'\n') {
                    let Ok(raw) = raw else { break };
                    let text = String::from_utf8_lossy(&raw);
                    let text = text.trim_end();
                    if !text.is_empty() {
                        on_stderr_line(text);
                    }
                }
            })
        });
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let session = Session {
            child,
            line,
            stderr,
            ended: false,
        };
        match (stdin, stdout) {
            (Some(stdin), Some(stdout)) => Ok((session, stdin, stdout)),
            _ => Err(anyhow!("`{}` started without pipes", session.line)),
        }
    }
}

impl Session {
    /// Waits for the program to exit (see [`Session`]) and for its stderr to be read to the end.
    /// Returns its exit status, `None` when it had to be killed. Call it after closing stdin.
    pub fn end(&mut self) -> Option<ExitStatus> {
        self.end_within(SESSION_GRACE, SESSION_TERM_GRACE)
    }

    fn end_within(&mut self, grace: Duration, term_grace: Duration) -> Option<ExitStatus> {
        if self.ended {
            return None;
        }
        self.ended = true;
        let status = wait_or_stop(&mut self.child, grace, term_grace);
        match status {
            Some(s) if !s.success() => crate::debug!("`{}` {}", self.line, describe(s)),
            None => crate::warn!(
                "`{}` did not exit within {:?} after its input was closed and was stopped",
                self.line,
                grace
            ),
            Some(_) => {}
        }
        if let Some(reader) = self.stderr.take() {
            // Normally done as soon as the program has exited; a grandchild that inherited the
            // pipe (an ssh ProxyCommand) must not hold pullnix up.
            let start = Instant::now();
            while !reader.is_finished() && start.elapsed() < term_grace {
                thread::sleep(Duration::from_millis(1));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        status
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end();
    }
}

/// Waits for `child` to exit; after `grace`, sends SIGTERM, after `term_grace` more, SIGKILL.
/// Always reaps it. `None` when it had to be signalled.
fn wait_or_stop(child: &mut Child, grace: Duration, term_grace: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut terminated = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (!terminated).then_some(status),
            Ok(None) => {}
            Err(_) => break,
        }
        let waited = start.elapsed();
        if waited >= grace + term_grace {
            break;
        }
        if waited >= grace && !terminated {
            terminated = true;
            if let Some(pid) = rustix::process::Pid::from_raw(child.id().cast_signed()) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        // Most programs are gone within a few milliseconds of EOF: poll finely at first.
        let step = if waited < Duration::from_millis(100) {
            1
        } else {
            20
        };
        thread::sleep(Duration::from_millis(step));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".to_owned(),
    }
}

/// Drains a pipe on its own thread so a chatty child can never block on a full pipe buffer.
fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` at most `limit`; kills it and returns `None` when the limit passes.
fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() >= limit {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id().cast_signed()) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_failure_and_bad_exit_are_told_apart() {
        let err = Cmd::new("/nonexistent/pullnix-no-such-program")
            .run()
            .unwrap_err();
        assert!(
            format!("{err:#}")
                .starts_with("could not start `/nonexistent/pullnix-no-such-program`")
        );

        let err = Cmd::new("/bin/sh")
            .args(["-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.contains("first\nthe real reason"), "{msg}");
    }

    #[test]
    fn stdin_reaches_the_child() {
        let out = Cmd::new("/bin/sh")
            .args(["-c", "tr a-z A-Z"])
            .stdin_bytes(b"status json".to_vec())
            .run()
            .unwrap();
        assert_eq!(out.stdout_str(), "STATUS JSON");
    }

    #[test]
    fn timeout_kills_the_child() {
        let err = Cmd::new("/bin/sh")
            .args(["-c", "sleep 30; true"])
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(format!("{err:#}").contains("did not finish within 0s"));
    }

    #[test]
    fn stderr_tail_keeps_only_the_end() {
        let many = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let t = tail(many.as_bytes());
        assert!(t.starts_with("line 85"), "{t}");
        assert!(t.ends_with("line 99"));
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let c = Cmd::new("nix").args(["build", "a b", "it's"]);
        assert_eq!(c.display(), r"nix build 'a b' 'it'\''s'");
        let e = Cmd::new("chroot").arg("/mnt").env("A", "1 2");
        assert_eq!(e.display(), "'A=1 2' chroot /mnt");
    }

    #[test]
    fn a_session_ends_when_its_input_is_closed() {
        use std::io::{Read as _, Write as _};
        use std::sync::{Arc, Mutex};
        let said = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&said);
        let (mut session, mut stdin, mut stdout) = Cmd::new("/bin/sh")
            .args(["-c", "echo hello >&2; cat; echo bye >&2"])
            .session(move |line| keep.lock().unwrap().push(line.to_owned()))
            .unwrap();
        stdin.write_all(b"ping").unwrap();
        drop(stdin);
        let mut echoed = String::new();
        stdout.read_to_string(&mut echoed).unwrap();
        assert_eq!(echoed, "ping");
        let status = session.end().unwrap();
        assert!(status.success());
        assert_eq!(*said.lock().unwrap(), ["hello", "bye"]);
    }

    #[test]
    fn a_session_that_does_not_end_is_stopped_and_reaped() {
        // `exec sleep`: one process, so the pid checked below is the program itself.
        let (mut session, stdin, _stdout) = Cmd::new("/bin/sh")
            .args(["-c", "exec sleep 30"])
            .session(|_| {})
            .unwrap();
        drop(stdin);
        let pid = session.child.id();
        let start = Instant::now();
        assert!(
            session
                .end_within(Duration::from_millis(100), Duration::from_millis(100))
                .is_none()
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        // Reaped: the pid is gone, not a zombie.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn env_reaches_the_child() {
        let out = Cmd::new("/bin/sh")
            .args(["-c", "printf %s \"$PULLNIX_TEST_VAR\""])
            .env("PULLNIX_TEST_VAR", "set")
            .run()
            .unwrap();
        assert_eq!(out.stdout_str(), "set");
    }
}
