//! Every system path pullnix touches, below one root prefix.
//!
//! On a real machine the root is `/`. The test suite points it at a temporary directory so the
//! real binary can deploy into a fake "system" on a machine that is not NixOS.

use std::path::{Path, PathBuf};

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Paths {
    /// The root prefix itself (`/` on a real machine).
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub profile: PathBuf,
    pub current_system: PathBuf,
    pub booted_system: PathBuf,
    pub entries_dir: PathBuf,
    pub textfile: Option<PathBuf>,
    /// The kernel's random id of the running boot (proc(5), `/proc/sys/kernel/random/boot_id`),
    /// below the root so that tests can fake a reboot.
    pub boot_id: PathBuf,
}

impl Paths {
    pub fn new(cfg: &Config, root_override: Option<&Path>) -> Paths {
        let root = root_override.unwrap_or(&cfg.root).to_path_buf();
        Paths {
            state_dir: under(&root, &cfg.state_dir),
            profile: under(&root, &cfg.switch.profile),
            // NixOS's activation script points these at the running and the booted toplevel:
            // https://github.com/NixOS/nixpkgs/blob/master/nixos/modules/system/activation/activation-script.nix
            current_system: under(&root, Path::new("/run/current-system")),
            booted_system: under(&root, Path::new("/run/booted-system")),
            entries_dir: under(&root, &cfg.boot.entries_dir),
            textfile: cfg.report.textfile.as_deref().map(|t| under(&root, t)),
            boot_id: under(&root, Path::new("/proc/sys/kernel/random/boot_id")),
            root,
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("lock")
    }
    /// Its modification time is the time of the last check of the remote.
    pub fn last_check_file(&self) -> PathBuf {
        self.state_dir.join("last-check")
    }
    pub fn repo_dir(&self) -> PathBuf {
        self.state_dir.join("repo.git")
    }
    /// `nix build --out-link` target: an indirect GC root that keeps the candidate alive between
    /// build and activation.
    pub fn candidate_link(&self) -> PathBuf {
        self.state_dir.join("candidate")
    }
}

/// `root` joined with an absolute `path` (`Path::join` would discard the root).
pub fn under(root: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Where a symlink such as `/run/current-system` points, if it exists.
pub fn read_link(path: &Path) -> Option<PathBuf> {
    std::fs::read_link(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_keeps_the_root() {
        assert_eq!(
            under(Path::new("/tmp/r"), Path::new("/var/lib/x")),
            Path::new("/tmp/r/var/lib/x")
        );
        assert_eq!(
            under(Path::new("/"), Path::new("/var/lib/x")),
            Path::new("/var/lib/x")
        );
        assert_eq!(
            under(Path::new("/tmp/r"), Path::new("/")),
            Path::new("/tmp/r")
        );
    }
}
