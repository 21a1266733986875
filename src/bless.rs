//! Boot counting for systemd-boot entries (Boot Loader Specification, "Boot counting":
//! <https://uapi-group.org/specifications/specs/boot_loader_specification/#boot-counting>).
//!
//! An entry named `NAME+LEFT[-DONE].conf` is being tried: systemd-boot decrements LEFT on each
//! boot and skips the entry once it reaches 0. Renaming it to `NAME.conf` marks it good ("blessed").
//! NixOS's systemd-boot builder writes `nixos-generation-N+TRIES.conf` when
//! `boot.loader.systemd-boot.bootCounting.enable` is on; systemd-bless-boot.service would bless
//! it at boot-complete.target on the next boot, but pullnix has already seen the candidate healthy
//! while running, so it blesses right away.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Renames every counted entry of `generation` (including its specialisations) to its blessed
/// name. Returns the new paths. Idempotent.
pub fn bless(entries_dir: &Path, generation: u32) -> Result<Vec<PathBuf>> {
    let mut blessed = Vec::new();
    let entries = match std::fs::read_dir(entries_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(blessed),
        Err(e) => return Err(e).with_context(|| format!("listing {}", entries_dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", entries_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = blessed_name(&name, generation) {
            let to = entries_dir.join(&base);
            std::fs::rename(entry.path(), &to).with_context(|| {
                format!(
                    "blessing boot entry {} as {}",
                    entry.path().display(),
                    to.display()
                )
            })?;
            crate::notice!("blessed boot entry {name} as {base}");
            blessed.push(to);
        }
    }
    if !blessed.is_empty() {
        std::fs::File::open(entries_dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", entries_dir.display()))?;
    }
    Ok(blessed)
}

/// `nixos-generation-7+3-1.conf` -> `nixos-generation-7.conf` for generation 7; `None` for
/// uncounted entries and other generations.
fn blessed_name(name: &str, generation: u32) -> Option<String> {
    let stem = name.strip_suffix(".conf")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let valid_counter = counter
        .split('-')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && counter.split('-').count() <= 2;
    if !valid_counter {
        return None;
    }
    let prefix = format!("nixos-generation-{generation}");
    let ours = base == prefix || base.starts_with(&format!("{prefix}-specialisation-"));
    ours.then(|| format!("{base}.conf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            blessed_name("nixos-generation-7+3.conf", 7).as_deref(),
            Some("nixos-generation-7.conf")
        );
        assert_eq!(
            blessed_name("nixos-generation-7+2-1.conf", 7).as_deref(),
            Some("nixos-generation-7.conf")
        );
        assert_eq!(
            blessed_name("nixos-generation-7-specialisation-gpu+3.conf", 7).as_deref(),
            Some("nixos-generation-7-specialisation-gpu.conf")
        );
        assert_eq!(blessed_name("nixos-generation-17+3.conf", 7), None);
        assert_eq!(blessed_name("nixos-generation-7.conf", 7), None);
        assert_eq!(blessed_name("nixos-generation-7+x.conf", 7), None);
    }

    #[test]
    fn renames_only_the_generation() {
        let d = std::env::temp_dir().join(format!("pullnix-bless-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for n in [
            "nixos-generation-6.conf",
            "nixos-generation-7+2-1.conf",
            "nixos-generation-8+3.conf",
        ] {
            std::fs::write(d.join(n), "title x\n").unwrap();
        }
        assert_eq!(bless(&d, 7).unwrap().len(), 1);
        assert!(d.join("nixos-generation-7.conf").exists());
        assert!(d.join("nixos-generation-8+3.conf").exists());
        assert!(bless(&d, 7).unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
