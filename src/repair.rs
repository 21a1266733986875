//! Putting back in shape what a kill, a power cut or a stray hand left behind in the places
//! pullnix works in, before it uses them. None of these may stop every later run:
//!
//! * git's lock files in `STATE/repo.git` (`refs/remotes/origin/main.lock` and the like): gix
//!   takes them while it updates refs and removes them after; a fetch killed in between leaves
//!   one, and every later fetch would fail "could not be obtained". pullnix holds `STATE/lock`
//!   whenever it touches the repository, so a lock file found then is always stale.
//! * a `STATE/repo.git` that is not a repository (a file, a half-created directory): it only
//!   caches the remote, so it is removed and fetched again.
//! * files pullnix owns that are the wrong kind (a directory where the journal, the time of the
//!   last check, ssh's log or the GC root of the candidate should be): moved aside
//!   (`NAME.broken-TIME`, with a warning), so nothing is lost and the next write succeeds.
//!   (`STATE/lock` is handled by `lock.rs`; `state.json` never: a record that cannot be read is
//!   exit 10, see `state.rs`.)
//! * Nix's own copy of the repository. For a `git+file://…?ref=…&rev=…` flake Nix 2.8 fetches
//!   into `$XDG_CACHE_HOME/nix/gitv3/<base32 sha256 of the URL>` (else `~/.cache/…`) and runs
//!   `git archive` there (nix src/libfetchers/git.cc). A `nix build` killed at the wrong moment
//!   leaves that directory without `HEAD` ("not a git repository") or with a commit whose blobs
//!   never arrived ("invalid object"), and Nix never repairs it: every later build of the
//!   repository fails. pullnix removes a directory without `HEAD` before building, and after a
//!   build that failed in git it removes the directory and builds once more.

use std::fs;
use std::path::{Path, PathBuf};

use crate::paths::Paths;
use crate::state::now;

/// Repairs what pullnix owns below the state directory, and the system profile; called with
/// `STATE/lock` held. Only warns when something cannot be repaired: the step that needs it then
/// fails with its own, more precise error.
pub fn owned(paths: &Paths) {
    if let Err(e) = profile(&paths.profile) {
        crate::warn!(
            "could not repair profile {}: {e:#}",
            paths.profile.display()
        );
    }
    let repo = paths.repo_dir();
    remove_leftovers(&paths.state_dir, "repo.git.stale-");
    if let Err(e) = repository(&repo) {
        crate::warn!("could not repair {}: {e:#}", repo.display());
    }
    let journal = crate::state::journal_path(&paths.state_file());
    for (path, kind) in [
        (journal, Kind::File),
        (paths.last_check_file(), Kind::File),
        (paths.state_dir.join("ssh.log"), Kind::File),
        (paths.candidate_link(), Kind::Symlink),
    ] {
        if let Err(e) = set_aside_unless(&path, kind) {
            crate::warn!("could not move {} aside: {e:#}", path.display());
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// A regular file (a symlink is left to the writer, which refuses to follow it).
    File,
    Symlink,
}

/// Moves `path` aside when it exists and is not of `kind`.
fn set_aside_unless(path: &Path, kind: Kind) -> std::io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let t = meta.file_type();
    let fine = match kind {
        Kind::File => t.is_file() || t.is_symlink(),
        Kind::Symlink => t.is_symlink(),
    };
    if fine {
        return Ok(());
    }
    let aside = aside_name(path, "broken");
    fs::rename(path, &aside)?;
    crate::warn!(
        "{} is not a {}: moved it to {}",
        path.display(),
        match kind {
            Kind::File => "regular file",
            Kind::Symlink => "symbolic link",
        },
        aside.display()
    );
    Ok(())
}

/// `PATH.WHAT-TIME` (and the process id if that exists already).
fn aside_name(path: &Path, what: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{what}-{}", now()));
    let candidate = PathBuf::from(&name);
    if fs::symlink_metadata(&candidate).is_err() {
        return candidate;
    }
    name.push(format!("-{}", std::process::id()));
    PathBuf::from(name)
}

/// Removes `dir` in a way a kill cannot leave half done: renamed first (atomic), then deleted;
/// what a kill leaves of the renamed copy is deleted by the next run ([`remove_leftovers`]).
fn discard_dir(dir: &Path, stale_prefix: &str) -> std::io::Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let stale = parent.join(format!("{stale_prefix}{}-{}", now(), std::process::id()));
    fs::rename(dir, &stale)?;
    fs::remove_dir_all(&stale)
}

/// Deletes what [`discard_dir`] did not get to delete before a kill.
fn remove_leftovers(dir: &Path, stale_prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(stale_prefix) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The system profile. nix-env makes a generation link under a temporary name
/// (`system-N-link.tmp-PID-RANDOM`) and renames it; killed in between, the temporary link stays.
/// Nix 2.8 takes it for generation N (its parser only looks for `-link`), so the next
/// `nix-env --set` of the same system points the profile at the temporary name (nix
/// src/libstore/profiles.cc, `parseName` and `createGeneration`), which pullnix, the boot loader
/// and the admin would then have to make sense of. The interrupted rename is completed (or the
/// copy dropped when the generation exists), and a profile pointing at a temporary name is
/// pointed at the proper one. Each step leaves a valid profile behind.
fn profile(profile: &Path) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (profile.parent(), profile.file_name()) else {
        return Ok(());
    };
    let name = name.to_string_lossy();
    let prefix = format!("{name}-");
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut leftovers = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some((num, _)) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once("-link.tmp-"))
            && num.parse::<u32>().is_ok()
        {
            let proper = format!("{name}-{num}-link");
            leftovers.push((file, proper));
        }
    }
    if leftovers.is_empty() {
        return Ok(());
    }
    // nix-env's own lock on the profile (an flock on PROFILE.lock, nix
    // src/libstore/pathlocks.cc): no nix-env changes the profile meanwhile.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}.lock")))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    for (tmp, proper) in leftovers {
        let (tmp_path, proper_path) = (dir.join(&tmp), dir.join(&proper));
        crate::warn!(
            "{} was left by an interrupted nix-env: completing it as {}",
            tmp_path.display(),
            proper_path.display()
        );
        if fs::symlink_metadata(&proper_path).is_err() {
            let target = fs::read_link(&tmp_path)?;
            std::os::unix::fs::symlink(&target, &proper_path)?;
        }
        if fs::read_link(profile).is_ok_and(|t| t == Path::new(&tmp)) {
            // Replaced through a rename, as nix-env does, so the profile never disappears.
            let new = dir.join(format!(".{name}.pullnix-{}", std::process::id()));
            let _ = fs::remove_file(&new);
            std::os::unix::fs::symlink(&proper, &new)?;
            fs::rename(&new, profile)?;
        }
        fs::remove_file(&tmp_path)?;
    }
    Ok(())
}

/// `STATE/repo.git`: removed unless it is a bare repository (it is fetched again), and
/// stripped of stale git lock files.
fn repository(repo: &Path) -> std::io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(repo) else {
        return Ok(());
    };
    if !meta.is_dir() {
        let aside = aside_name(repo, "broken");
        fs::rename(repo, &aside)?;
        crate::warn!(
            "{} is not a directory: moved it to {}; the repository is fetched again",
            repo.display(),
            aside.display()
        );
        return Ok(());
    }
    // gix creates HEAD last-but-one when it initialises a repository; without it, the
    // directory is an initialisation that was killed.
    if !repo.join("HEAD").is_file() || !repo.join("objects").is_dir() {
        crate::warn!(
            "{} is not a complete git repository (an interrupted first fetch?): removing it; \
             it is fetched again",
            repo.display()
        );
        return discard_dir(repo, "repo.git.stale-");
    }
    for lock in git_lock_files(repo) {
        crate::warn!(
            "removing {}, left by an interrupted git operation",
            lock.display()
        );
        fs::remove_file(&lock)?;
    }
    Ok(())
}

/// The lock files git (and gix) take in a bare repository: `*.lock` below `refs/`, and
/// `HEAD.lock`, `packed-refs.lock`, `config.lock`, `shallow.lock` beside them.
fn git_lock_files(repo: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&path, found),
                Ok(_) if path.extension().is_some_and(|x| x == "lock") => found.push(path),
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo.join("refs"), &mut found);
    for name in [
        "HEAD.lock",
        "packed-refs.lock",
        "config.lock",
        "shallow.lock",
    ] {
        let p = repo.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            found.push(p);
        }
    }
    found
}

/// Where Nix 2.8 keeps its copy of the repository pullnix builds from (see the module
/// documentation), if a cache directory can be told.
pub fn nix_git_cache(repo: &Path) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache"),
            // A system service has no HOME; Nix then takes root's home from the password
            // database, which is /root on NixOS.
            None if rustix::process::getuid().is_root() => PathBuf::from("/root/.cache"),
            None => return None,
        },
    };
    let url = format!("file://{}", repo.display());
    Some(
        base.join("nix/gitv3")
            .join(nix_base32(&sha256(url.as_bytes()))),
    )
}

/// Before a build: Nix's copy of the repository is removed when it has no `HEAD` (git would
/// say "not a git repository" for ever after).
pub fn prepare_nix_git_cache(repo: &Path) {
    let Some(cache) = nix_git_cache(repo) else {
        return;
    };
    if let Some(parent) = cache.parent() {
        remove_leftovers(parent, &stale_prefix(&cache));
    }
    if cache.is_dir() && !cache.join("HEAD").exists() {
        crate::warn!(
            "{} (Nix's copy of {}) has no HEAD, left by an interrupted nix build: removing it",
            cache.display(),
            repo.display()
        );
        clear_nix_git_cache(repo);
    }
}

/// Removes Nix's copy of the repository (Nix fetches it again from `repo`, a local copy).
pub fn clear_nix_git_cache(repo: &Path) {
    let Some(cache) = nix_git_cache(repo) else {
        return;
    };
    if fs::symlink_metadata(&cache).is_err() {
        return;
    }
    if let Err(e) = discard_dir(&cache, &stale_prefix(&cache)) {
        crate::warn!("could not remove {}: {e:#}", cache.display());
    }
}

fn stale_prefix(cache: &Path) -> String {
    format!(
        "{}.pullnix-stale-",
        cache
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )
}

/// Whether a failed `nix build` failed in git, working on its copy of the repository. Nix
/// reports that only as text ("program 'git' failed with exit code 128"); there is no
/// structured form to parse.
pub fn failed_in_git(err: &anyhow::Error) -> bool {
    format!("{err:#}").contains("program 'git' failed")
}

/// Nix's base-32 (nix src/libutil/hash.cc): its own alphabet, and the bits taken from the end
/// of the hash.
fn nix_base32(hash: &[u8]) -> String {
    const CHARS: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let len = (hash.len() * 8 - 1) / 5 + 1;
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let low = hash[i] >> j;
        let high = hash
            .get(i + 1)
            .map_or(0, |&h| u16::from(h) << (8 - j))
            .to_le_bytes()[0];
        out.push(char::from(CHARS[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// SHA-256's round constants (FIPS 180-4, 4.2.2).
const K: [u32; 64] = [
    0x428a_2f98,
    0x7137_4491,
    0xb5c0_fbcf,
    0xe9b5_dba5,
    0x3956_c25b,
    0x59f1_11f1,
    0x923f_82a4,
    0xab1c_5ed5,
    0xd807_aa98,
    0x1283_5b01,
    0x2431_85be,
    0x550c_7dc3,
    0x72be_5d74,
    0x80de_b1fe,
    0x9bdc_06a7,
    0xc19b_f174,
    0xe49b_69c1,
    0xefbe_4786,
    0x0fc1_9dc6,
    0x240c_a1cc,
    0x2de9_2c6f,
    0x4a74_84aa,
    0x5cb0_a9dc,
    0x76f9_88da,
    0x983e_5152,
    0xa831_c66d,
    0xb003_27c8,
    0xbf59_7fc7,
    0xc6e0_0bf3,
    0xd5a7_9147,
    0x06ca_6351,
    0x1429_2967,
    0x27b7_0a85,
    0x2e1b_2138,
    0x4d2c_6dfc,
    0x5338_0d13,
    0x650a_7354,
    0x766a_0abb,
    0x81c2_c92e,
    0x9272_2c85,
    0xa2bf_e8a1,
    0xa81a_664b,
    0xc24b_8b70,
    0xc76c_51a3,
    0xd192_e819,
    0xd699_0624,
    0xf40e_3585,
    0x106a_a070,
    0x19a4_c116,
    0x1e37_6c08,
    0x2748_774c,
    0x34b0_bcb5,
    0x391c_0cb3,
    0x4ed8_aa4a,
    0x5b9c_ca4f,
    0x682e_6ff3,
    0x748f_82ee,
    0x78a5_636f,
    0x84c8_7814,
    0x8cc7_0208,
    0x90be_fffa,
    0xa450_6ceb,
    0xbef9_a3f7,
    0xc671_78f2,
];

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 (FIPS 180-4), for the name of Nix's cache directory: a few dozen bytes, once per
/// build, not worth a dependency. The one-letter names are the standard's.
#[allow(clippy::many_single_char_names)]
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = H0;
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    let bits = u64::try_from(data.len()).unwrap_or(0).wrapping_mul(8);
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for (k, wi) in K.iter().zip(w.iter()) {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(*wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (hi, vi) in h.iter_mut().zip(v) {
            *hi = hi.wrapping_add(vi);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Two blocks.
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn nix_cache_directory_name() {
        // Measured with Nix 2.8: `nix build 'git+file:///tmp/exp16/repo.git?ref=…&rev=…#…'`
        // created ~/.cache/nix/gitv3/1aal1rqg…k2g1.
        assert_eq!(
            nix_base32(&sha256(b"file:///tmp/exp16/repo.git")),
            "1aal1rqg5mjb8divmh1i1yawc2av1pxs0gdzqyxg2ij4l390k2g1"
        );
    }

    #[test]
    fn stale_git_locks_and_broken_repositories_are_repaired() {
        let d = std::env::temp_dir().join(format!("pullnix-repair-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let repo = d.join("repo.git");
        fs::create_dir_all(repo.join("refs/remotes/origin")).unwrap();
        fs::create_dir_all(repo.join("objects")).unwrap();
        fs::write(repo.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        fs::write(repo.join("refs/remotes/origin/main.lock"), "").unwrap();
        fs::write(repo.join("packed-refs.lock"), "").unwrap();
        fs::write(repo.join("refs/remotes/origin/main"), "x\n").unwrap();
        repository(&repo).unwrap();
        assert!(!repo.join("refs/remotes/origin/main.lock").exists());
        assert!(!repo.join("packed-refs.lock").exists());
        assert!(repo.join("refs/remotes/origin/main").exists());

        // Half initialised: removed.
        fs::remove_file(repo.join("HEAD")).unwrap();
        repository(&repo).unwrap();
        assert!(!repo.exists());

        // A file: moved aside.
        fs::write(&repo, "not a repository").unwrap();
        repository(&repo).unwrap();
        assert!(!repo.exists());
        assert_eq!(
            fs::read_dir(&d)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("repo.git.broken-"))
                .count(),
            1
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
