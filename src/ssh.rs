//! Runs `ssh` on behalf of gix with its stderr turned into journal lines.
//!
//! gix starts the configured ssh command and copies whatever ssh prints on stderr straight to
//! ours: multi-line banners ("REMOTE HOST IDENTIFICATION HAS CHANGED") without a priority
//! prefix, while the error gix reports is only "failed to fill whole buffer". So the ssh command
//! pullnix configures is pullnix itself (`pullnix __ssh LOG ssh ARGS…`): it runs the real ssh
//! with stdin and stdout passed through untouched (they carry the git protocol), logs each stderr
//! line as a warning, and keeps the lines in LOG so the fetch error can quote them.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow};

/// Runs `argv` and returns the exit code to pass on (255, ssh's own code for its errors, when
/// ssh died of a signal).
pub fn run(log: &Path, argv: &[String]) -> Result<u8> {
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| anyhow!("__ssh needs a command to run"))?;
    let mut child = Command::new(program)
        .args(rest)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{program}`"))?;
    let mut keep = crate::state::open_append(log).ok();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            crate::warn!("ssh: {text}");
            if let Some(f) = keep.as_mut() {
                let _ = writeln!(f, "{text}");
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{program}`"))?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(255))
}

/// The lines ssh printed during the last fetch, for the error message.
pub fn said(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let tail = crate::cmd::tail(&text);
    (!tail.is_empty()).then_some(tail)
}
