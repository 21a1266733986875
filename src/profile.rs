//! The system profile: `PROFILE -> PROFILE-N-link -> /nix/store/...-nixos-system-...`.
//!
//! Generations are read straight from those symlinks (the layout nix-env has always used), which
//! is cheaper and steadier than parsing `nix-env --list-generations` text; changes go through
//! `nix-env` so that nix keeps its GC roots and locking rules.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd::Cmd;

pub struct Profile<'a> {
    pub path: &'a Path,
    nix_env: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: u32,
    pub system: PathBuf,
}

impl<'a> Profile<'a> {
    pub fn new(path: &'a Path, nix_env: &'a str) -> Profile<'a> {
        Profile { path, nix_env }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn generation_number(&self, link_name: &str) -> Option<u32> {
        link_name
            .strip_prefix(&format!("{}-", self.name()))?
            .strip_suffix("-link")?
            .parse()
            .ok()
    }

    /// The generation the profile points at, if the profile exists.
    pub fn current(&self) -> Option<Generation> {
        let link = std::fs::read_link(self.path).ok()?;
        let number = self.generation_number(&link.file_name()?.to_string_lossy())?;
        let gen_link = self.path.with_file_name(link.file_name()?);
        Some(Generation {
            number,
            system: std::fs::read_link(gen_link).ok()?,
        })
    }

    /// All generations, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let Some(dir) = self.path.parent() else {
            return Ok(Vec::new());
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut gens = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(number) = self.generation_number(&name)
                && let Ok(system) = std::fs::read_link(entry.path())
            {
                gens.push(Generation { number, system });
            }
        }
        gens.sort_by_key(|g| g.number);
        Ok(gens)
    }

    /// Makes `system` the profile's current generation (a new one unless it already is current).
    pub fn set(&self, system: &Path) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Cmd::new(self.nix_env)
            .arg("-p")
            .arg(self.path)
            .arg("--set")
            .arg(system)
            .run()
            .with_context(|| {
                format!(
                    "setting profile {} to {}",
                    self.path.display(),
                    system.display()
                )
            })?;
        Ok(())
    }

    /// Deletes generations (never the current one: nix-env refuses that). Their GC roots go
    /// with them, and the boot loader drops their entries the next time it is installed.
    pub fn delete_generations(&self, numbers: &[u32]) -> Result<()> {
        if numbers.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
        Cmd::new(self.nix_env)
            .arg("-p")
            .arg(self.path)
            .arg("--delete-generations")
            .args(&list)
            .run()
            .with_context(|| {
                format!(
                    "deleting generations {} of profile {}",
                    list.join(", "),
                    self.path.display()
                )
            })?;
        Ok(())
    }

    /// Points the profile back at an existing generation.
    pub fn switch_generation(&self, number: u32) -> Result<()> {
        Cmd::new(self.nix_env)
            .arg("-p")
            .arg(self.path)
            .arg("--switch-generation")
            .arg(number.to_string())
            .run()
            .with_context(|| {
                format!(
                    "switching profile {} to generation {number}",
                    self.path.display()
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_generations_from_symlinks() {
        let d = std::env::temp_dir().join(format!("pullnix-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink("/nix/store/a-sys", d.join("system-1-link")).unwrap();
        std::os::unix::fs::symlink("/nix/store/b-sys", d.join("system-12-link")).unwrap();
        std::os::unix::fs::symlink("/nix/store/x", d.join("other-3-link")).unwrap();
        std::os::unix::fs::symlink("system-12-link", d.join("system")).unwrap();
        let link = d.join("system");
        let p = Profile::new(&link, "nix-env");
        let cur = p.current().unwrap();
        assert_eq!(cur.number, 12);
        assert_eq!(cur.system, Path::new("/nix/store/b-sys"));
        let all = p.generations().unwrap();
        assert_eq!(
            all.iter().map(|g| g.number).collect::<Vec<_>>(),
            vec![1, 12]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
