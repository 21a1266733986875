//! Closure mode: no evaluation on the device.
//!
//! CI builds each host's toplevel, signs it into a binary cache and commits the store path to
//! the repository (a file per host). The agent reads that path from exactly the fetched commit and
//! substitutes it with `nix-store --realise`, restricted to the configured caches and keys with
//! `require-sigs = true`: an unsigned, wrongly signed or tampered path is refused by nix itself
//! ("lacks a valid signature", "hash mismatch"), and nothing on the system changes.
//!
//! `nix-store --realise` does nothing for a path that is already valid in the local store, and
//! any local user can put one there: build a fake "system" through the nix-daemon, or add one
//! by content. So after the realisation the whole closure is verified every time, against the
//! configured keys only (`nix store verify --recursive --sigs-needed 1`, with
//! `trusted-public-keys` and no `secret-key-files`, whose public halves nix would trust too):
//! every path must carry a valid signature by one of them, its own or one the configured caches
//! hold for it (`--substituter`). A signature is checked against the local path's own hash, so
//! a path built here with exactly the contents CI signed passes, and one with any other
//! contents (a local user's non-deterministic build of the same derivation) does not. Nix counts a content-addressed path
//! as signed by itself (its name is the hash of its contents); inside a signed closure that is
//! sound, the signature fixes the reference, but as the pinned path itself it proves nothing,
//! so the pin must be an input-addressed path with a signature of its own.

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
    pin_in(&repo, crate::git::commit_id(commit)?, file)
}

fn pin_in(repo: &gix::Repository, id: gix::ObjectId, file: &str) -> Result<PathBuf> {
    let commit = id.to_hex().to_string();
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

/// Substitutes the signed `path` from the configured caches, keeping `out_link` as its GC root,
/// then verifies its whole closure against the configured keys ([`verify`]); `nix` is the `nix`
/// program.
pub fn substitute(cfg: &Closure, nix: &str, path: &Path, out_link: &Path) -> Result<()> {
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
    verify(cfg, nix, path)
}

/// Refuses `path` unless it and every path it references carry a valid signature by one of
/// `closure.trusted_public_keys`, however they came into the store (see the module comment).
pub fn verify(cfg: &Closure, nix: &str, path: &Path) -> Result<()> {
    let nix_command = ["--extra-experimental-features", "nix-command"];
    let keys = cfg.trusted_public_keys.join(" ");
    let info = Cmd::new(nix)
        .args(nix_command)
        .args(["path-info", "--json"])
        .arg(path)
        .run()
        .with_context(|| format!("asking nix about {}", path.display()))?;
    if let Some(ca) = content_address(&info.stdout)
        .with_context(|| format!("reading `nix path-info --json {}`", path.display()))?
    {
        bail!(
            "{} is content-addressed ({ca}): anyone can add such a path to the store, and nix \
             counts it as signed by itself; a pinned system must be a build signed by \
             closure.trusted_public_keys",
            path.display()
        );
    }
    let cmd = Cmd::new(nix)
        .args(nix_command)
        .args([
            "store",
            "verify",
            "--recursive",
            "--no-contents",
            "--sigs-needed",
            "1",
        ])
        .args(["--option", "trusted-public-keys", &keys])
        .args(["--option", "secret-key-files", ""])
        .args(
            cfg.substituters
                .iter()
                .flat_map(|s| ["--substituter", s.as_str()]),
        )
        .arg(path);
    let out = cmd.output()?;
    match out.status.code() {
        Some(0) => {
            crate::info!(
                "the closure of {} is signed by closure.trusted_public_keys",
                path.display()
            );
            Ok(())
        }
        // nix store verify: bit 2 is "untrusted" (no valid signature by the keys).
        Some(c) if c & 2 != 0 => Err(cmd.failure(&out)).with_context(|| {
            format!(
                "the closure of {} is not signed by any of closure.trusted_public_keys: a path \
                 that was already in the local store (built or added there, by anyone) is not \
                 what the cache signed",
                path.display()
            )
        }),
        _ => Err(cmd.failure(&out))
            .with_context(|| format!("verifying the closure of {}", path.display())),
    }
}

/// The `ca` field of `nix path-info --json` for one path: Nix 2.8 prints an array of objects,
/// newer versions an object keyed by path.
fn content_address(stdout: &[u8]) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(stdout)?;
    let info = match &v {
        serde_json::Value::Array(items) => items.first(),
        serde_json::Value::Object(map) => map.values().next(),
        _ => None,
    }
    .ok_or_else(|| anyhow!("no path info"))?;
    Ok(info
        .get("ca")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned))
}

/// With `closure.allow_downgrade` off: the commit of `deployed`'s history (before it) that
/// already pinned `candidate`, if one did. A pin that goes back to such a closure is a
/// downgrade, refused like a rewind of the branch; `file` is the pin file's path.
pub fn pinned_earlier(
    repo_dir: &Path,
    deployed: &str,
    deployed_system: &Path,
    file: &str,
    candidate: &Path,
) -> Result<Option<String>> {
    if candidate == deployed_system {
        return Ok(None);
    }
    let repo = crate::git::open_local(repo_dir)?;
    let Ok(start) = repo.find_commit(crate::git::commit_id(deployed)?) else {
        // The deployed commit's objects are gone: the history cannot tell (the rewind check
        // has refused such a commit already unless rewinds are allowed).
        return Ok(None);
    };
    let walk = repo
        .rev_walk([start.id])
        .all()
        .with_context(|| format!("walking the history of {deployed}"))?;
    for info in walk {
        let info = info.with_context(|| format!("walking the history of {deployed}"))?;
        if pin_in(&repo, info.id, file).is_ok_and(|p| p == candidate) {
            return Ok(Some(info.id.to_hex().to_string()));
        }
    }
    Ok(None)
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
    fn path_info_of_old_and_new_nix() {
        let nix_2_8 =
            br#"[{"path":"/nix/store/a-x","narHash":"sha256-x","ca":"fixed:r:sha256:1v"}]"#;
        assert_eq!(
            content_address(nix_2_8).unwrap().as_deref(),
            Some("fixed:r:sha256:1v")
        );
        let newer = br#"{"/nix/store/a-x":{"narHash":"sha256-x","ca":null,"signatures":[]}}"#;
        assert_eq!(content_address(newer).unwrap(), None);
        assert_eq!(
            content_address(br#"[{"path":"/nix/store/a-x"}]"#).unwrap(),
            None
        );
        assert!(content_address(b"[]").is_err());
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
