//! What every command needs: the parsed config, the root-relative paths and the host name.

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::paths::Paths;

pub struct Ctx {
    pub cfg: Config,
    pub paths: Paths,
    pub host: String,
}

impl Ctx {
    pub fn load(config: &Path, root: Option<&Path>) -> Result<Ctx> {
        let cfg = Config::load(config)?;
        let paths = Paths::new(&cfg, root);
        let host = match &cfg.host {
            Some(h) => h.clone(),
            None => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        };
        Ok(Ctx { cfg, paths, host })
    }

    /// Refuses a root prefix that does not exist, before anything is fetched, built or created
    /// below it (a mistyped `--root` must not get a state directory of its own).
    pub fn check_root(&self) -> Result<()> {
        if self.paths.root.is_dir() {
            return Ok(());
        }
        Err(anyhow::anyhow!(
            "the root {} (--root, or `root` in the config) is not a directory",
            self.paths.root.display()
        ))
        .context(crate::exit::Exit::Usage)
    }

    /// Creates the state directory (mode 0700: it holds the repository and the record).
    pub fn ensure_state_dir(&self) -> Result<()> {
        crate::state::create_private_dir(&self.paths.state_dir)
            .context("creating the state directory")
    }

    /// The id of the running boot, `None` when the kernel does not say (then every record counts
    /// as written in another boot by boot-check, and in this one by everyone else: the behaviour
    /// from before boot ids were recorded).
    pub fn boot_id(&self) -> Option<String> {
        let id = std::fs::read_to_string(&self.paths.boot_id).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_owned())
    }

    pub fn profile(&self) -> crate::profile::Profile<'_> {
        crate::profile::Profile::new(&self.paths.profile, &self.cfg.switch.nix_env)
    }
}
