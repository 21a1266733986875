//! `pullnix fleet list | status | refresh`: the operator's view of many machines, over ssh.
//!
//! pullnix itself stays pull-based: nothing here deploys. `status` asks each machine's own
//! pullnix for `status --json` and `refresh` asks systemd to start a sync now instead of at the
//! next timer tick. Hosts are contacted in parallel, each under a hard timeout that kills its
//! ssh, so one dead or wedged machine costs at most its timeout and never blocks the others;
//! the remote command runs under a timeout of its own, so it does not outlive that ssh by long.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::cmd::{Cmd, Output};
use crate::exit::Exit;
use crate::inventory::{self, Defaults, Host, Inventory};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Status,
    Refresh,
}

/// `pullnix fleet …` as given on the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub action: Action,
    pub inventory: Option<PathBuf>,
    pub json: bool,
    pub all: bool,
    pub hosts: Vec<String>,
    /// `--tag`: hosts with any of these tags are selected too.
    pub tags: Vec<String>,
}

/// Parses what follows `fleet`.
pub fn parse(rest: &[String]) -> Result<Args> {
    let usage = "usage: pullnix fleet list|status|refresh [--json] [--inventory FILE] \
                 [--all|[--tag TAG]... [HOST...]]";
    let mut action = None;
    let mut args = Args {
        action: Action::List,
        inventory: None,
        json: false,
        all: false,
        hosts: Vec::new(),
        tags: Vec::new(),
    };
    let mut flags = crate::cli::Flags::new(rest);
    while let Some((word, inline)) = flags.next_word() {
        match word {
            "--json" => {
                crate::cli::Flags::no_value(word, inline)?;
                args.json = true;
            }
            "--all" => {
                crate::cli::Flags::no_value(word, inline)?;
                args.all = true;
            }
            "--inventory" => args.inventory = Some(PathBuf::from(flags.value(word, inline)?)),
            "--tag" => args.tags.push(flags.value(word, inline)?),
            s if s.starts_with('-') => bail!("unknown option {s:?} for fleet; {usage}"),
            s if action.is_none() => {
                action = Some(match s {
                    "list" => Action::List,
                    "status" => Action::Status,
                    "refresh" => Action::Refresh,
                    other => bail!("unknown fleet command {other:?}; {usage}"),
                });
            }
            s => args.hosts.push(s.to_owned()),
        }
    }
    args.action = action.ok_or_else(|| anyhow!("{usage}"))?;
    let named = !args.hosts.is_empty() || !args.tags.is_empty();
    match args.action {
        Action::List if args.all || !args.hosts.is_empty() => {
            bail!("fleet list takes no host names (it lists them all, or those with --tag)")
        }
        _ if args.all && named => bail!("give either --all or host names and tags"),
        // Starting syncs everywhere must be asked for; reading status may default to all.
        Action::Refresh if !args.all && !named => {
            bail!("fleet refresh needs --all or host names (or --tag TAG)")
        }
        _ => {}
    }
    Ok(args)
}

pub fn command(args: &Args) -> Result<()> {
    let path = args
        .inventory
        .clone()
        .or_else(|| std::env::var_os("PULLNIX_INVENTORY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(inventory::DEFAULT_PATH));
    let inv = Inventory::load(&path)?;
    // Resolved before any host is contacted, so an unknown name or tag changes nothing.
    let hosts = if args.all || (args.hosts.is_empty() && args.tags.is_empty()) {
        inv.all()
    } else {
        inv.select(&args.hosts, &args.tags, &path)?
    };
    match args.action {
        Action::List => {
            print!("{}", list(&hosts, args.json)?);
            Ok(())
        }
        Action::Status => status(&inv.defaults, &hosts, args.json, &path),
        Action::Refresh => refresh(&inv.defaults, &hosts, args.json, &path),
    }
}

fn list(hosts: &[Host], json: bool) -> Result<String> {
    if json {
        let list: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "address": h.address,
                    "port": h.port,
                    "user": h.user,
                    "tags": h.tags,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&list)? + "\n");
    }
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.destination(),
                if h.tags.is_empty() {
                    "-".to_owned()
                } else {
                    h.tags.join(",")
                },
            ]
        })
        .collect();
    Ok(table(&["HOST", "ADDRESS", "TAGS"], rows))
}

fn status(d: &Defaults, hosts: &[Host], json: bool, source: &Path) -> Result<()> {
    let answers = each_host(hosts, d.parallel, |h| {
        let mut remote = h.pullnix.clone();
        remote.extend(["status".to_owned(), "--json".to_owned()]);
        let out = call(h, d, &remote)?;
        parse_status(&out.stdout)
    });
    let now = crate::state::now();
    // Everything in the answers comes from the hosts (their status JSON, their ssh's stderr):
    // nothing of it reaches the operator's terminal raw (`log::shown`).
    let text = if json {
        crate::log::shown_json(&serde_json::to_string_pretty(&as_json(
            hosts,
            &answers,
            Clone::clone,
        ))?) + "\n"
    } else {
        let rows = hosts
            .iter()
            .zip(&answers)
            .map(|(h, a)| match a {
                Ok(v) => status_row(&h.name, v, now),
                Err(e) => {
                    let mut row = vec![h.name.clone()];
                    row.extend(std::iter::repeat_n("-".to_owned(), 5));
                    row.push(e.clone());
                    row
                }
            })
            .map(|row: Vec<String>| row.iter().map(|c| crate::log::shown(c)).collect())
            .collect();
        table(
            &[
                "HOST",
                "DEPLOYED",
                "LAST RESULT",
                "CHECKED",
                "PENDING",
                "ROLLBACKS",
                "ERROR",
            ],
            rows,
        )
    };
    print!("{text}");
    verdict("status", hosts, &answers, source)
}

fn refresh(d: &Defaults, hosts: &[Host], json: bool, source: &Path) -> Result<()> {
    let answers = each_host(hosts, d.parallel, |h| {
        call(h, d, &h.refresh_command).map(|_| ())
    });
    let text = if json {
        crate::log::shown_json(&serde_json::to_string_pretty(&as_json(
            hosts,
            &answers,
            |()| Value::Bool(true),
        ))?) + "\n"
    } else {
        let rows = hosts
            .iter()
            .zip(&answers)
            .map(|(h, a)| match a {
                Ok(()) => vec![h.name.clone(), "requested".to_owned(), String::new()],
                Err(e) => vec![h.name.clone(), "failed".to_owned(), crate::log::shown(e)],
            })
            .collect();
        table(&["HOST", "REFRESH", "ERROR"], rows)
    };
    print!("{text}");
    verdict("refresh", hosts, &answers, source)
}

/// `{host: {"ok": …} | {"error": "…"}}`: a reader tells the cases apart by the key alone.
fn as_json<T>(hosts: &[Host], answers: &[Result<T, String>], ok: impl Fn(&T) -> Value) -> Value {
    let mut map = Map::new();
    for (h, a) in hosts.iter().zip(answers) {
        let entry = match a {
            Ok(v) => json!({ "ok": ok(v) }),
            Err(e) => json!({ "error": e }),
        };
        map.insert(h.name.clone(), entry);
    }
    Value::Object(map)
}

/// Logs the summary; any host without an answer makes the whole command fail with exit 12.
fn verdict<T>(
    what: &str,
    hosts: &[Host],
    answers: &[Result<T, String>],
    source: &Path,
) -> Result<()> {
    let failed: Vec<&str> = hosts
        .iter()
        .zip(answers)
        .filter(|(_, a)| a.is_err())
        .map(|(h, _)| h.name.as_str())
        .collect();
    crate::notice!(
        "fleet {what}: {} of {} hosts of {} answered",
        hosts.len() - failed.len(),
        hosts.len(),
        source.display()
    );
    if failed.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "{} of {} hosts: {}",
        failed.len(),
        hosts.len(),
        failed.join(", ")
    )
    .context(Exit::HostsFailed))
}

/// Runs `job` for every host, at most `parallel` at once, and returns the results in host order.
/// Plain threads pulling from a shared counter: each host's ssh is its own process with its own
/// timeout, so the threads only wait.
fn each_host<T: Send>(
    hosts: &[Host],
    parallel: usize,
    job: impl Fn(&Host) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, hosts.len().max(1)) {
            let tx = tx.clone();
            let (next, job) = (&next, &job);
            s.spawn(move || {
                while let Some(h) = hosts.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = job(h);
                    match &result {
                        Ok(_) => crate::info!("fleet: {}: answered", h.name),
                        Err(e) => crate::warn!("fleet: {}: {e}", h.name),
                    }
                    let _ = tx.send((h.name.clone(), result));
                }
            });
        }
    });
    drop(tx);
    let mut done: Vec<(String, Result<T, String>)> = rx.into_iter().collect();
    // Names are unique (they are the inventory's keys) and `hosts` is sorted by name.
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(hosts.len());
    let mut done = done.into_iter().peekable();
    for h in hosts {
        match done.next_if(|(n, _)| *n == h.name) {
            Some((_, r)) => out.push(r),
            None => out.push(Err("no result (internal error)".to_owned())),
        }
    }
    out
}

/// Runs `remote` on the host through ssh; `Err` is the one-line reason shown to the operator.
fn call(h: &Host, d: &Defaults, remote: &[String]) -> Result<Output, String> {
    let cmd = ssh_command(h, d, remote);
    let limit = Duration::from_secs(h.timeout);
    let started = Instant::now();
    match cmd.output() {
        // `Cmd` kills the process group of an ssh that outlives the limit; say it plainly
        // instead of quoting the whole ssh command line into the table.
        Err(_) if started.elapsed() >= limit => {
            Err(format!("no answer within {}s (ssh was killed)", h.timeout))
        }
        Err(e) => Err(format!("{e:#}")),
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => {
            let said = one_line(&out.stderr);
            // ssh prefixes its own messages with "ssh: "; "ssh failed: ssh: …" says it twice.
            let said = said.strip_prefix("ssh: ").unwrap_or(&said);
            Err(match out.status.code() {
                // ssh's own failures (connection, authentication, host key) all exit 255.
                Some(255) => format!("ssh failed: {said}"),
                Some(c) => format!("remote command exited with status {c}: {said}"),
                None => format!("ssh was killed by a signal: {said}"),
            })
        }
    }
}

/// The tail of a stderr as one line, without the printk prefixes a remote pullnix writes.
fn one_line(stderr: &[u8]) -> String {
    let tail = crate::cmd::tail(stderr);
    let lines: Vec<&str> = tail
        .lines()
        .map(|l| {
            let b = l.as_bytes();
            if b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>' {
                &l[3..]
            } else {
                l
            }
        })
        .collect();
    if lines.is_empty() {
        "(nothing on stderr)".to_owned()
    } else {
        lines.join(" | ")
    }
}

/// Seconds the remote `timeout` waits after its SIGTERM before it sends SIGKILL.
const REMOTE_KILL_AFTER: u64 = 2;
/// Seconds the remote limit exceeds the host's `timeout`, so that on a fast connection our
/// kill still comes first and the operator sees one consistent "no answer within" message.
const REMOTE_GRACE: u64 = 1;

/// The ssh command line for one host. Never prompts (`BatchMode`), gives up connecting after the
/// host's timeout, and uses only the configured key; with `known_hosts` set the host key must be
/// in that file, otherwise ssh's own configuration decides.
fn ssh_command(h: &Host, d: &Defaults, remote: &[String]) -> Cmd {
    let mut c = Cmd::new(&d.ssh)
        .args([
            "-T",
            "-a",
            "-x",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
        ])
        .arg(format!("ConnectTimeout={}", h.timeout))
        .timeout(Duration::from_secs(h.timeout));
    if let Some(id) = &h.identity {
        c = c.arg("-i").arg(id).args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(kh) = &h.known_hosts {
        c = c
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", kh.display()));
    }
    c = c.args(&d.ssh_options);
    if let Some(p) = h.port {
        c = c.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &h.user {
        c = c.arg("-l").arg(u);
    }
    // Killing our ssh does not stop the remote command: without a tty sshd only closes the
    // command's pipes, and a command that is stuck (waiting on a lock, a hung mount, `sleep`)
    // never writes to notice. `ssh -tt` would get it a SIGHUP on disconnect, but a tty merges
    // stderr into stdout (and turns \n into \r\n), which breaks the JSON we parse. So the
    // remote command runs under coreutils' `timeout` with (slightly more than) the host's own
    // timeout instead: it makes itself a process group leader and signals the whole group, so
    // what the command started goes too. It is found through the remote PATH like `pullnix`
    // itself (on NixOS coreutils is always there); `remote_timeout = false` turns this off for
    // hosts without it. The remote clock starts only once ssh got in, so it never cuts off an
    // answer we would still have waited for.
    let timeout = [
        "timeout".to_owned(),
        "-k".to_owned(),
        REMOTE_KILL_AFTER.to_string(),
        h.timeout.saturating_add(REMOTE_GRACE).to_string(),
    ];
    let wrapper = if h.remote_timeout { &timeout[..] } else { &[] };
    // ssh joins its arguments with spaces and hands the result to the remote user's shell, so
    // the remote argv is quoted into one word here and arrives exactly as configured.
    let line: Vec<String> = wrapper
        .iter()
        .chain(remote)
        .map(|w| shell_quote(w))
        .collect();
    c.arg("--").arg(&h.address).arg(line.join(" "))
}

/// `word` as one POSIX shell word.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The parsed answer of `pullnix status --json`. Kept as JSON rather than `status::Status`: a
/// host may run an older or newer pullnix, and a field we do not know must not lose the host.
fn parse_status(stdout: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(stdout) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("answer is a JSON value but not a status object".to_owned()),
        Err(e) => {
            let text = String::from_utf8_lossy(stdout);
            let mut start: String = text.trim().chars().take(60).collect();
            start = start.replace('\n', " ");
            Err(format!(
                "answer is not `pullnix status --json` output ({e}): {start:?}"
            ))
        }
    }
}

fn status_row(name: &str, v: &Value, now: u64) -> Vec<String> {
    let text = |p: &str| v.pointer(p).and_then(Value::as_str);
    vec![
        name.to_owned(),
        text("/deployed/commit").map_or_else(|| "-".to_owned(), |c| c.chars().take(10).collect()),
        text("/last/result").unwrap_or("-").to_owned(),
        v["last_check"]
            .as_u64()
            .map_or_else(|| "never".to_owned(), |t| age(now.saturating_sub(t))),
        text("/pending/phase").unwrap_or("-").to_owned(),
        v["rollbacks"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        String::new(),
    ]
}

/// A duration in seconds as the largest whole unit that keeps two digits of detail.
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        7200..172_800 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|&h| h.to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i < last {
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn parses_actions_targets_and_options() {
        let a = p("status --json b a --inventory /i.toml").unwrap();
        assert_eq!(a.action, Action::Status);
        assert!(a.json && !a.all);
        assert_eq!(a.hosts, ["b", "a"]);
        assert!(a.tags.is_empty());
        assert_eq!(a.inventory, Some(PathBuf::from("/i.toml")));
        let a = p("refresh --tag edge x --tag=eu").unwrap();
        assert_eq!(
            (a.hosts, a.tags),
            (vec!["x".into()], vec!["edge".into(), "eu".into()])
        );
        assert_eq!(p("list --tag edge").unwrap().tags, ["edge"]);
        assert_eq!(p("status --tag edge").unwrap().tags, ["edge"]);
        assert_eq!(p("refresh --all").unwrap().action, Action::Refresh);
        assert_eq!(p("list --inventory=/x").unwrap().action, Action::List);
        assert!(p("status").unwrap().hosts.is_empty());
        for bad in [
            "",
            "deploy",
            "refresh",
            "status --all a",
            "list a",
            "status --force",
            "status --inventory",
            "status --json=yes",
            "refresh --all=1",
            "status --tag",
            "refresh --all --tag edge",
            "list --all --tag edge",
            "list --tag edge a",
        ] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn remote_words_survive_the_remote_shell() {
        assert_eq!(shell_quote("pullnix"), "pullnix");
        assert_eq!(shell_quote("/run/x/bin/pullnix"), "/run/x/bin/pullnix");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's;rm"), r"'it'\''s;rm'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn ssh_command_line() {
        let inv = Inventory::parse(
            "[defaults]\nuser = \"root\"\nidentity = \"/k\"\nknown_hosts = \"/kh\"\ntimeout = 7\n\
             [hosts.a]\naddress = \"10.0.0.5\"\nport = 2222\n",
        )
        .unwrap();
        let mut h = inv.all()[0].clone();
        let remote = ["pullnix".into(), "a b".into()];
        let c = ssh_command(&h, &inv.defaults, &remote);
        assert_eq!(
            c.display(),
            "ssh -T -a -x -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=7 -i /k \
             -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/kh \
             -p 2222 -l root -- 10.0.0.5 'timeout -k 2 8 pullnix '\\''a b'\\'''"
        );
        h.remote_timeout = false;
        let c = ssh_command(&h, &inv.defaults, &remote);
        assert!(
            c.display().ends_with("-- 10.0.0.5 'pullnix '\\''a b'\\'''"),
            "{}",
            c.display()
        );
    }

    #[test]
    fn status_rows_and_ages() {
        let v = json!({
            "deployed": {"commit": "0123456789abcdef", "at": 5},
            "last": {"result": "deployed"},
            "last_check": 1000,
            "pending": {"phase": "activated"},
            "rollbacks": 2,
        });
        assert_eq!(
            status_row("h", &v, 1030),
            [
                "h",
                "0123456789",
                "deployed",
                "30s ago",
                "activated",
                "2",
                ""
            ]
        );
        let fresh = json!({"deployed": null, "last": null, "last_check": null, "rollbacks": 0});
        assert_eq!(
            status_row("h", &fresh, 1),
            ["h", "-", "-", "never", "-", "0", ""]
        );
        assert_eq!(age(7199), "119m ago");
        assert_eq!(age(7200), "2h ago");
        assert_eq!(age(200_000), "2d ago");
    }

    #[test]
    fn answers_that_are_not_status_json_are_errors() {
        assert!(parse_status(b"{\"host\": \"a\"}").is_ok());
        assert!(parse_status(b"[1]").is_err());
        let e = parse_status(b"host: a\nlast: x\n").unwrap_err();
        assert!(e.contains("not `pullnix status --json` output"), "{e}");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "BB"],
            vec![
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), String::new()],
            ],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq\n");
    }

    #[test]
    fn stderr_tail_loses_priority_prefixes() {
        assert_eq!(
            one_line(b"<6>running: x\n<3>pullnix: boom\n"),
            "running: x | pullnix: boom"
        );
        assert_eq!(one_line(b""), "(nothing on stderr)");
    }
}
