//! Signed commits: with `repo.allowed_signers`, only a commit with a valid SSH signature by an
//! allowed signer is deployed.
//!
//! This is git's own scheme for `gpg.format = ssh` (git-config(1), "gpg.ssh.allowedSignersFile"):
//! the signature is an SSHSIG in the commit's `gpgsig` header over the commit without that
//! header, in the namespace "git", checked by `ssh-keygen -Y find-principals` (who may have
//! signed) and `ssh-keygen -Y verify` (did they). The allowed signers file is OpenSSH's format
//! (ssh-keygen(1), "ALLOWED SIGNERS"), so validity windows and namespaces work as in git.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::Cmd;

/// Verifies the signature of `commit` in the bare repository `repo_dir`; returns the principal
/// that signed it. `scratch` is a directory for the signature file.
pub fn verify(
    repo_dir: &Path,
    commit: &str,
    allowed_signers: &Path,
    scratch: &Path,
) -> Result<String> {
    let repo = crate::git::open_local(repo_dir)?;
    let id = crate::git::commit_id(commit)?;
    let object = repo
        .find_commit(id)
        .with_context(|| format!("reading commit {commit}"))?;
    let (signature, signed) = object
        .signature()
        .with_context(|| format!("reading the signature of commit {commit}"))?
        .ok_or_else(|| {
            anyhow!("commit {commit} is not signed, and repo.allowed_signers requires it")
        })?;
    if !signature.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        bail!(
            "commit {commit} is signed, but not with an SSH key (gpg.format = ssh); only SSH signatures can be checked"
        );
    }
    let sig_file = scratch.join("commit.sig");
    let mut sig_text = signature.to_vec();
    sig_text.push(b'\n');
    crate::state::write_atomic(&sig_file, &sig_text)?;

    let found = Cmd::new("ssh-keygen")
        .args(["-Y", "find-principals", "-f"])
        .arg(allowed_signers)
        .arg("-s")
        .arg(&sig_file)
        .output()?;
    let principals: Vec<String> = found
        .stdout_str()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if !found.status.success() || principals.is_empty() {
        bail!(
            "commit {commit} is signed by a key that {} does not allow{}",
            allowed_signers.display(),
            stderr_note(&found)
        );
    }
    let payload = signed.to_bstring().to_vec();
    let mut last = None;
    for principal in &principals {
        let cmd = Cmd::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "git", "-f"])
            .arg(allowed_signers)
            .args(["-I", principal, "-s"])
            .arg(&sig_file)
            .stdin_bytes(payload.clone());
        let out = cmd.output()?;
        if out.status.success() {
            return Ok(principal.clone());
        }
        last = Some(cmd.failure(&out));
    }
    Err(last.unwrap_or_else(|| anyhow!("no signer to check")))
        .with_context(|| format!("the signature of commit {commit} does not verify"))
}

fn stderr_note(out: &crate::cmd::Output) -> String {
    let tail = out.stderr_tail();
    if tail.is_empty() {
        String::new()
    } else {
        format!(" ({tail})")
    }
}
