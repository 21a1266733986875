//! Closure mode: no evaluation on the device.
//!
//! CI builds each host's toplevel, signs it into a binary cache and commits the store path to
//! the repository (a file per host). The agent reads that path from exactly the fetched commit and
//! substitutes it with `nix-store --realise`, restricted to the configured caches and keys with
//! `require-sigs = true`: an unsigned, wrongly signed or tampered path is refused by nix itself
//! ("lacks a valid signature", "hash mismatch"), and nothing on the system changes.
//!
//! A path that is already valid in the local store is not checked again: it got there through a
//! trusted build or an earlier verified substitution.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::Cmd;
use crate::config::Closure;

/// The repository file naming the host's closure.
pub fn file_for(cfg: &Closure, host: &str) -> String {
    cfg.file.replace("{host}", host)
}

/// Reads the store path that `commit` pins for the host.
pub fn pinned_path(repo_dir: &Path, commit: &str, file: &str) -> Result<PathBuf> {
    let repo = crate::git::open_local(repo_dir)?;
    let id = crate::git::commit_id(commit)?;
    let tree = repo
        .find_commit(id)
        .and_then(|c| c.tree())
        .with_context(|| format!("reading the tree of commit {commit}"))?;
    let entry = tree
        .lookup_entry_by_path(file)
        .with_context(|| format!("looking up {file} in commit {commit}"))?
        .ok_or_else(|| {
            anyhow!("commit {commit} has no file {file} (closure.file) naming this host's closure")
        })?;
    let blob = entry
        .object()
        .with_context(|| format!("reading {file} in commit {commit}"))?;
    let text = String::from_utf8_lossy(&blob.data).into_owned();
    parse(&text).with_context(|| format!("{file} in commit {commit}"))
}

/// The one store path in the file: the first line that is not empty or a `#` comment.
fn parse(text: &str) -> Result<PathBuf> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| anyhow!("names no store path"))?;
    let name = line
        .strip_prefix("/nix/store/")
        .ok_or_else(|| anyhow!("{line:?} is not a /nix/store path"))?;
    // A store path is /nix/store/<32 base-32 chars>-<name>, with nothing below it.
    let valid_hash = name.len() > 33
        && name.as_bytes()[32] == b'-'
        && name[..32]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_hash || name.contains('/') || name.contains(char::is_whitespace) {
        bail!("{line:?} is not a store path");
    }
    Ok(PathBuf::from(line))
}

/// Substitutes the signed `path` from the configured caches, keeping `out_link` as its GC root.
pub fn substitute(cfg: &Closure, path: &Path, out_link: &Path) -> Result<()> {
    if cfg.substituters.is_empty() || cfg.trusted_public_keys.is_empty() {
        bail!("closure mode needs closure.substituters and closure.trusted_public_keys");
    }
    Cmd::new(&cfg.nix_store)
        .arg("--realise")
        .arg(path)
        .arg("--add-root")
        .arg(out_link)
        .args(["--option", "substituters", &cfg.substituters.join(" ")])
        .args([
            "--option",
            "trusted-public-keys",
            &cfg.trusted_public_keys.join(" "),
        ])
        .args(["--option", "require-sigs", "true"])
        .run()
        .with_context(|| format!("substituting {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_are_checked() {
        let good = "/nix/store/cz5kvgxmdv8qaw009y8gqfpkrsp48pj9-nixos-system-edge";
        assert_eq!(
            parse(&format!("# built by CI\n\n{good}\n")).unwrap(),
            Path::new(good)
        );
        for bad in [
            "",
            "# only a comment",
            "/tmp/evil",
            "/nix/store/short-name",
            "/nix/store/cz5kvgxmdv8qaw009y8gqfpkrsp48pj9-nixos-system-edge/bin",
            "/nix/store/CZ5KVGXMDV8QAW009Y8GQFPKRSP48PJ9-x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_placeholder() {
        let cfg = Closure {
            file: "hosts/{host}/toplevel".into(),
            ..Closure::default()
        };
        assert_eq!(file_for(&cfg, "edge-1"), "hosts/edge-1/toplevel");
    }
}
