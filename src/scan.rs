//! The vulnerability gate: vulnix over the candidate's closure.
//!
//! vulnix exits 2 both for "found vulnerabilities" and for its own crashes, so the exit code
//! decides nothing: the verdict comes from its `--json` output alone. Output that does not parse
//! as vulnix's list blocks the candidate (fail closed): a scanner that silently stopped working
//! must not turn into "no findings".

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cmd::Cmd;
use crate::config::Scan;
use crate::exit::Exit;

/// One entry of `vulnix --json`.
#[derive(Debug, Deserialize)]
struct Finding {
    name: String,
    #[serde(default)]
    affected_by: Vec<String>,
    #[serde(default)]
    whitelisted: Vec<String>,
    #[serde(default)]
    cvssv3_basescore: BTreeMap<String, Option<f64>>,
}

/// A vulnerability at or above the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub package: String,
    pub cve: String,
    /// `None`: the NVD gives no `CVSSv3` score; counted as blocking.
    pub score: Option<f64>,
}

/// What vulnix said about a candidate.
pub enum Verdict {
    Clean,
    /// Findings at or above the threshold, as one sentence.
    Blocked(String),
}

/// Runs vulnix on `system`. An error means the scanner itself failed (no verdict); the caller
/// blocks the candidate for now but does not hold it against the commit.
pub fn scan(cfg: &Scan, system: &Path) -> Result<Verdict> {
    let mut cmd = Cmd::new(&cfg.vulnix).arg("--json");
    for w in &cfg.whitelist {
        cmd = cmd.arg("-w").arg(w);
    }
    if !cfg.mirror.is_empty() {
        cmd = cmd.args(["-m", &cfg.mirror]);
    }
    if !cfg.cache_dir.is_empty() {
        cmd = cmd.args(["-c", &cfg.cache_dir]);
    }
    let cmd = cmd.args(&cfg.extra_args).arg(system);
    let out = cmd.output().context(Exit::Blocked)?;
    let blockers = match verdict(&out.stdout, cfg.min_cvss) {
        Ok(b) => b,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("vulnix gave no usable report ({})", cmd.failure(&out)))
                .context(Exit::Blocked);
        }
    };
    if blockers.is_empty() {
        crate::info!(
            "vulnix: nothing at or above CVSS {} in {}",
            cfg.min_cvss,
            system.display()
        );
        return Ok(Verdict::Clean);
    }
    let list: Vec<String> = blockers
        .iter()
        .map(|b| match b.score {
            Some(s) => format!("{} {} ({s})", b.package, b.cve),
            None => format!("{} {} (no CVSSv3 score)", b.package, b.cve),
        })
        .collect();
    Ok(Verdict::Blocked(format!(
        "{} vulnerabilities at or above CVSS {}: {}",
        blockers.len(),
        cfg.min_cvss,
        list.join(", ")
    )))
}

/// The blocking findings in vulnix's JSON; an error when it is not vulnix JSON.
fn verdict(stdout: &[u8], min_cvss: f64) -> Result<Vec<Blocker>> {
    let text = std::str::from_utf8(stdout).context("vulnix output is not UTF-8")?;
    if text.trim().is_empty() {
        bail!("vulnix printed nothing");
    }
    let findings: Vec<Finding> =
        serde_json::from_str(text).context("parsing vulnix --json output")?;
    let mut blockers = Vec::new();
    for f in findings {
        for cve in &f.affected_by {
            if f.whitelisted.contains(cve) {
                continue;
            }
            let score = f.cvssv3_basescore.get(cve).copied().flatten();
            if score.is_none_or(|s| s >= min_cvss) {
                blockers.push(Blocker {
                    package: f.name.clone(),
                    cve: cve.clone(),
                    score,
                });
            }
        }
    }
    Ok(blockers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_whitelist_and_missing_scores() {
        let j = br#"[
          {"name":"openssl-1.0.1","pname":"openssl","version":"1.0.1","derivation":"/nix/store/x.drv",
           "affected_by":["CVE-1","CVE-2","CVE-3"],"whitelisted":["CVE-3"],
           "cvssv3_basescore":{"CVE-1":9.8,"CVE-2":3.1,"CVE-3":10.0}},
          {"name":"foo-1","affected_by":["CVE-4"],"whitelisted":[],"cvssv3_basescore":{}}
        ]"#;
        let b = verdict(j, 7.0).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].cve, "CVE-1");
        assert_eq!(
            b[1],
            Blocker {
                package: "foo-1".into(),
                cve: "CVE-4".into(),
                score: None
            }
        );
        assert_eq!(verdict(j, 0.0).unwrap().len(), 3);
        assert!(verdict(b"[]", 7.0).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_pass() {
        assert!(verdict(b"", 7.0).is_err());
        assert!(verdict(b"Traceback (most recent call last):", 7.0).is_err());
        assert!(verdict(b"{\"x\":1}", 7.0).is_err());
    }
}
