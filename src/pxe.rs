//! `pullnix pxe-api`: the boot API that pixiecore asks in API mode (`pixiecore api URL`, or
//! `services.pixiecore.mode = "api"` with `apiServer = "http://…"` in nixpkgs'
//! nixos/modules/services/networking/pixiecore.nix), so that exactly the machines of
//! the provisioning hosts file network-boot the installer, each told which configuration to
//! install.
//!
//! The contract, from pixiecore's README.api.md (danderson/netboot): pixiecore sends
//! `GET <prefix>/v1/boot/<mac>` for every PXE client it sees, the MAC in Go's
//! `net.HardwareAddr` form (`aa:bb:cc:dd:ee:ff`). A 200 answer with a JSON object
//! `{"kernel": URL, "initrd": [URL, …], "cmdline": STRING}` (`initrd` and `cmdline` optional;
//! `file://`, `http(s)://` or a path relative to the API server) boots it; any other status makes
//! pixiecore ignore the machine. pixiecore expands `cmdline` as a Go text/template (`{{ URL … }}`),
//! so pullnix's own `{host}`/`{mac}`/`{report}` placeholders use single braces and are filled in
//! here.
//!
//! Machines whose firmware tries the network before the disk would reinstall on every boot. With
//! `--state DIR`, the installer reports success (`POST /v1/installed/<mac>?token=…`, the URL that
//! `{report}` becomes) and from then on the machine's boot requests are answered 404, so its
//! firmware falls through to the disk. The token is random per machine and handed out only in
//! that machine's boot answer: it proves nothing but "I was booted as this MAC", and all it can
//! do is stop the reinstall of that one machine.
//!
//! Two listeners, because the two endpoints have different clients: boot answers carry every
//! listed machine's report token, so they go only to pixiecore (`--listen`, loopback unless
//! `--expose-report-tokens`); installers report on the provisioning network
//! (`--report-listen`), where nothing else is served. The HTTP side (deadlines, per-client
//! caps, strict parsing) is `http.rs`.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File};
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::json;

use crate::exit::Exit;
use crate::hosts::{Host, Hosts, Mac, REPORT};
use crate::http::{self, Request, Response};

/// `pullnix pxe-api …` as given on the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Args {
    /// Serve the API.
    Serve(Serve),
    /// `forget`: let machines install again.
    Forget {
        state: PathBuf,
        hosts: Option<PathBuf>,
        targets: Vec<String>,
    },
    /// `installed`: list the machines that reported a finished installation.
    Installed { state: PathBuf, json: bool },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Serve {
    pub hosts: PathBuf,
    /// Where pixiecore asks for boots.
    pub listen: SocketAddr,
    /// Where installers report.
    pub report_listen: Option<SocketAddr>,
    pub state: Option<PathBuf>,
    /// Base URL under which installers reach the report listener, without a trailing slash.
    pub public_url: Option<String>,
    /// Serve boot answers (which carry report tokens) on a non-loopback `listen`.
    pub expose_report_tokens: bool,
}

const USAGE: &str = "usage: pullnix pxe-api --hosts FILE [--listen ADDR:PORT] [--state DIR \
                     --report-listen ADDR:PORT --public-url URL] [--expose-report-tokens]";
const USAGE_FORGET: &str = "usage: pullnix pxe-api forget --state DIR [--hosts FILE] MAC|HOST...";
const USAGE_INSTALLED: &str = "usage: pullnix pxe-api installed --state DIR [--json]";

/// Parses what follows `pxe-api`.
pub fn parse(rest: &[String]) -> Result<Args> {
    match rest.split_first() {
        Some((first, more)) if first == "forget" => parse_forget(more),
        Some((first, more)) if first == "installed" => parse_installed(more),
        _ => parse_serve(rest).map(Args::Serve),
    }
}

fn parse_serve(rest: &[String]) -> Result<Serve> {
    let mut hosts = None;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut report_listen = None;
    let mut state = None;
    let mut public_url = None;
    let mut expose_report_tokens = false;
    let address = |flag: &str, v: String| -> Result<SocketAddr> {
        v.parse()
            .map_err(|_| anyhow!("{flag} {v:?} is not an ADDRESS:PORT"))
    };
    let mut flags = crate::cli::Flags::new(rest);
    while let Some((flag, inline)) = flags.next_word() {
        match flag {
            "--hosts" => hosts = Some(PathBuf::from(flags.value(flag, inline)?)),
            "--listen" => listen = address(flag, flags.value(flag, inline)?)?,
            "--report-listen" => {
                report_listen = Some(address(flag, flags.value(flag, inline)?)?);
            }
            "--state" => state = Some(PathBuf::from(flags.value(flag, inline)?)),
            "--public-url" => public_url = Some(parse_public_url(&flags.value(flag, inline)?)?),
            "--expose-report-tokens" => {
                crate::cli::Flags::no_value(flag, inline)?;
                expose_report_tokens = true;
            }
            other => bail!("unexpected argument {other:?} for pxe-api; {USAGE}"),
        }
    }
    let hosts = hosts.ok_or_else(|| anyhow!("pxe-api needs --hosts FILE; {USAGE}"))?;
    if report_listen.is_some_and(|r| r == listen && r.port() != 0) {
        bail!(
            "--report-listen and --listen are both {listen}; give the reports a port of their own"
        );
    }
    Ok(Serve {
        hosts,
        listen,
        report_listen,
        state,
        public_url,
        expose_report_tokens,
    })
}

/// `http(s)://HOST[:PORT][/PREFIX]`, trailing slashes dropped. It ends up on a kernel command
/// line, where whitespace would split it, and gets `?token=` appended, so no query either.
fn parse_public_url(v: &str) -> Result<String> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"));
    let url = v.trim_end_matches('/');
    match rest {
        Some(r)
            if !r.trim_end_matches('/').is_empty()
                && !v.contains(|c: char| c.is_whitespace() || c.is_control())
                && !v.contains(['?', '#', '"']) =>
        {
            Ok(url.to_owned())
        }
        _ => bail!(
            "--public-url {v:?} is not an http:// or https:// URL without spaces or query \
             (e.g. http://10.0.0.1:8080)"
        ),
    }
}

fn parse_forget(rest: &[String]) -> Result<Args> {
    let mut state = None;
    let mut hosts = None;
    let mut targets = Vec::new();
    let mut flags = crate::cli::Flags::new(rest);
    while let Some((flag, inline)) = flags.next_word() {
        match flag {
            "--state" => state = Some(PathBuf::from(flags.value(flag, inline)?)),
            "--hosts" => hosts = Some(PathBuf::from(flags.value(flag, inline)?)),
            s if s.starts_with('-') && Mac::parse(s).is_none() => {
                bail!("unknown option {s:?} for pxe-api forget; {USAGE_FORGET}")
            }
            word => targets.push(word.to_owned()),
        }
    }
    let state = state.ok_or_else(|| anyhow!("pxe-api forget needs --state DIR; {USAGE_FORGET}"))?;
    if targets.is_empty() {
        bail!("pxe-api forget needs at least one MAC address or host name; {USAGE_FORGET}");
    }
    if hosts.is_none()
        && let Some(bad) = targets.iter().find(|t| Mac::parse(t).is_none())
    {
        bail!(
            "{bad:?} is not a MAC address (aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff); \
             host names need --hosts FILE"
        );
    }
    Ok(Args::Forget {
        state,
        hosts,
        targets,
    })
}

fn parse_installed(rest: &[String]) -> Result<Args> {
    let mut state = None;
    let mut json = false;
    let mut flags = crate::cli::Flags::new(rest);
    while let Some((flag, inline)) = flags.next_word() {
        match flag {
            "--state" => state = Some(PathBuf::from(flags.value(flag, inline)?)),
            "--json" => {
                crate::cli::Flags::no_value(flag, inline)?;
                json = true;
            }
            other => {
                bail!("unexpected argument {other:?} for pxe-api installed; {USAGE_INSTALLED}")
            }
        }
    }
    let state =
        state.ok_or_else(|| anyhow!("pxe-api installed needs --state DIR; {USAGE_INSTALLED}"))?;
    Ok(Args::Installed { state, json })
}

pub fn command(args: &Args) -> Result<()> {
    match args {
        Args::Serve(s) => serve_command(s),
        Args::Forget {
            state,
            hosts,
            targets,
        } => forget_command(state, hosts.as_deref(), targets),
        Args::Installed { state, json } => installed_command(state, *json),
    }
}

/// What every connection thread shares.
struct Api {
    hosts: Hosts,
    store: Option<Store>,
    public_url: Option<String>,
}

fn serve_command(args: &Serve) -> Result<()> {
    let hosts = Hosts::load(&args.hosts)?;
    let reporting = hosts.iter().find(|h| h.cmdline.contains(REPORT));
    // A `{report}` that cannot be filled in would boot installers that can never report, so
    // the machine would reinstall forever: refuse before the first boot, not during it.
    if let Some(host) = reporting {
        let missing: Vec<&str> = [
            (args.state.is_none(), "--state DIR"),
            (args.report_listen.is_none(), "--report-listen ADDR:PORT"),
            (args.public_url.is_none(), "--public-url URL"),
        ]
        .iter()
        .filter_map(|&(absent, opt)| absent.then_some(opt))
        .collect();
        if !missing.is_empty() {
            return Err(anyhow!(
                "the cmdline of host {:?} in {} uses {REPORT}, which needs {}",
                host.name,
                args.hosts.display(),
                missing.join(" and ")
            ))
            .context(Exit::Usage);
        }
        // Every boot answer carries a report token: whoever can ask for the boot of a listed
        // MAC could mark that machine installed.
        if !args.listen.ip().to_canonical().is_loopback() && !args.expose_report_tokens {
            return Err(anyhow!(
                "--listen {} is not a loopback address, and boot answers carry the report token \
                 of every listed machine (the cmdline of host {:?} uses {REPORT}): anyone who \
                 reaches it could mark machines installed. Run pixiecore on this machine and \
                 listen on 127.0.0.1, or pass --expose-report-tokens",
                args.listen,
                host.name
            ))
            .context(Exit::Usage);
        }
    }
    if args.report_listen.is_some() && args.state.is_none() {
        return Err(anyhow!(
            "--report-listen needs --state DIR, where the reports are recorded; {USAGE}"
        ))
        .context(Exit::Usage);
    }
    let store = args.state.as_deref().map(Store::create).transpose()?;
    // pixiecore asks from one address, so a per-client cap would only cap pixiecore: the
    // deadline and the total are what count on this listener.
    let boot_limits = http::Limits {
        per_client: 64,
        ..http::Limits::default()
    };
    let boot_server = http::Server::bind(args.listen, "pxe-api", boot_limits)?;
    let report_server = args
        .report_listen
        .map(|addr| http::Server::bind(addr, "pxe-api", http::Limits::default()))
        .transpose()?;
    let boot_addr = boot_server.local_addr()?;
    let reports = match &report_server {
        Some(s) => format!(" and on {} (installers' reports)", s.local_addr()?),
        None => String::new(),
    };
    let remembering = args.state.as_ref().map_or_else(String::new, |d| {
        format!(", remembering installed machines in {}", d.display())
    });
    crate::notice!(
        "pxe-api: listening on {boot_addr} (boot requests, for pixiecore){reports}, {} host(s) \
         from {}{remembering}",
        hosts.len(),
        args.hosts.display()
    );
    if reporting.is_some() && args.expose_report_tokens && !boot_addr.ip().is_loopback() {
        crate::warn!(
            "pxe-api: --expose-report-tokens: boot answers, with every listed machine's report \
             token, go to anyone who reaches {boot_addr}"
        );
    }
    if store.is_some() && reporting.is_none() {
        crate::notice!(
            "pxe-api: no host's cmdline has {REPORT}, so no installer can report; every boot \
             request of a machine not already marked installed boots the installer"
        );
    }
    let api = Arc::new(Api {
        hosts,
        store,
        public_url: args.public_url.clone(),
    });
    if let Some(server) = report_server {
        let api = Arc::clone(&api);
        std::thread::Builder::new()
            .name("pxe-api-report".into())
            .spawn(move || server.run(Arc::new(move |r: &Request| report_api(r, &api))))
            .context("starting the report listener's thread")?;
    }
    boot_server.run(Arc::new(move |r: &Request| boot_api(r, &api)));
    Ok(())
}

/// The boot listener: only `/v1/boot/<mac>`.
fn boot_api(request: &Request, api: &Api) -> Response {
    let path = request.path();
    if let Some(mac) = path.strip_prefix("/v1/boot/") {
        boot(request, mac, api)
    } else if path.starts_with("/v1/installed/") {
        Response::text(
            404,
            "not found",
            "(reports go to the report listener, --report-listen)",
        )
    } else {
        Response::text(404, "not found", "(no such endpoint)")
    }
}

/// The report listener: only `/v1/installed/<mac>`. Boot answers carry report tokens, so they
/// are never given here.
fn report_api(request: &Request, api: &Api) -> Response {
    let path = request.path();
    if let Some(mac) = path.strip_prefix("/v1/installed/") {
        installed_report(request, mac, api)
    } else if path.starts_with("/v1/boot/") {
        Response::text(
            404,
            "not found",
            "(boot requests are answered only on the boot listener, --listen)",
        )
    } else {
        Response::text(404, "not found", "(no such endpoint)")
    }
}

/// The hosts-file machine a request path names, with the "MAC is NAME" its log line starts
/// with; a 404 answer for anything else.
fn machine<'a>(mac_text: &str, api: &'a Api) -> Result<(Mac, &'a Host, String), Response> {
    let Some(mac) = Mac::parse(mac_text) else {
        return Err(Response::text(
            404,
            "not a MAC address",
            "(not a MAC address)",
        ));
    };
    let Some(host) = api.hosts.by_mac(mac) else {
        return Err(Response::text(
            404,
            "unknown machine",
            format!("{mac} unknown"),
        ));
    };
    Ok((mac, host, format!("{mac} is {}", host.name)))
}

/// `GET /v1/boot/<mac>`: pixiecore asking whether and what to boot.
fn boot(request: &Request, mac_text: &str, api: &Api) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::not_allowed("GET, HEAD");
    }
    let (mac, host, who) = match machine(mac_text, api) {
        Ok(m) => m,
        Err(answer) => return answer,
    };
    if let Some(store) = &api.store {
        match store.marker(mac) {
            // Not booting is the safe side: the firmware goes on to the disk.
            Err(e) => {
                return Response::text(
                    500,
                    "internal error",
                    format!("{who}, but whether it is installed is unknown: {e:#}"),
                );
            }
            Ok(Some(m)) => {
                return Response::text(
                    404,
                    "installed",
                    format!(
                        "{who}, installed since {} (reported from {}); \
                         `pullnix pxe-api forget --state {} {mac}` makes it install again",
                        m.since(),
                        m.peer.as_deref().unwrap_or("?"),
                        store.dir.display()
                    ),
                );
            }
            Ok(None) => {}
        }
    }
    let mut cmdline = host.cmdline.clone();
    if cmdline.contains(REPORT) {
        // The start refuses `{report}` without both options, so this is only defensive.
        let (Some(store), Some(url)) = (&api.store, &api.public_url) else {
            return Response::text(
                500,
                "internal error",
                format!("{who}, but {REPORT} needs --state and --public-url"),
            );
        };
        let token = match store.token(mac) {
            Ok(t) => t,
            Err(e) => return Response::text(500, "internal error", format!("{who}: {e:#}")),
        };
        cmdline = cmdline.replace(REPORT, &format!("{url}/v1/installed/{mac}?token={token}"));
    }
    let mut spec = json!({ "kernel": host.kernel, "initrd": host.initrd });
    if !cmdline.is_empty() {
        spec["cmdline"] = json!(cmdline);
    }
    Response::json(&spec, format!("{who} (installs {})", host.flake_attr))
}

/// `POST /v1/installed/<mac>?token=T`: the installer saying it is done.
fn installed_report(request: &Request, mac_text: &str, api: &Api) -> Response {
    let Some(store) = &api.store else {
        return Response::text(
            404,
            "not found",
            "(installed machines are not remembered without --state)",
        );
    };
    if request.method != "POST" {
        return Response::not_allowed("POST");
    }
    let (mac, host, who) = match machine(mac_text, api) {
        Ok(m) => m,
        Err(answer) => return answer,
    };
    let given = request.query_value("token");
    // Checking the token and spending it must not interleave with another report or a boot
    // request handing out a new token.
    let _guard = store.lock.lock().unwrap_or_else(PoisonError::into_inner);
    let expected = match store.read_token(mac) {
        Ok(t) => t,
        Err(e) => return Response::text(500, "internal error", format!("{who}: {e:#}")),
    };
    if expected.is_none()
        && let Some(g) = given.filter(|g| !g.is_empty())
        && let Ok(Some(done)) = store.marker(mac)
        && done.token.as_deref().is_some_and(|t| same_secret(t, g))
    {
        return Response::text(
            200,
            "installed",
            format!("{who}: the same report again, already recorded"),
        );
    }
    let refusal = match (&expected, given) {
        (_, None | Some("")) => Some("no token given"),
        (None, Some(_)) => Some("no boot token outstanding (installed already, or never booted)"),
        (Some(e), Some(g)) if !same_secret(e, g) => Some("wrong token"),
        (Some(_), Some(_)) => None,
    };
    if let Some(why) = refusal {
        return Response::text(403, "forbidden", format!("{who}: report refused, {why}"));
    }
    let peer = request
        .peer
        .map_or_else(|| "?".to_owned(), |p| p.ip().to_canonical().to_string());
    let marker = json!({
        "mac": mac.to_string(),
        "host": host.name,
        "at": crate::state::now(),
        "peer": peer,
        "token": given,
    });
    if let Err(e) = store.mark_installed(mac, &marker) {
        return Response::text(500, "internal error", format!("{who}: {e:#}"));
    }
    Response::text(
        200,
        "installed",
        format!("{who}, installed (reported from {peer}); its next network boot goes to its disk"),
    )
}

/// Compares in time independent of where the first difference is, so that answer times do not
/// tell a guesser how much of a token is right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The state directory: `tokens/<mac>` (the outstanding report token, mode 0600 in a 0700
/// directory) and `installed/<mac>` (JSON, written when the installer reported success). File
/// names are MAC addresses in the canonical lower-case form. The files are read on every
/// request, so `forget` takes effect without restarting the server.
struct Store {
    dir: PathBuf,
    /// Serializes this server's token and marker changes.
    lock: Mutex<()>,
}

/// An `installed/<mac>` file. Only its existence counts; the fields are for people, so a
/// damaged file still means "installed".
#[derive(Debug, Default, Deserialize)]
struct Marker {
    host: Option<String>,
    at: Option<u64>,
    peer: Option<String>,
    /// The token the report came with: the same report again (an installer retrying after
    /// its answer was lost) is acknowledged instead of refused.
    token: Option<String>,
}

impl Marker {
    fn since(&self) -> String {
        self.at
            .map_or_else(|| "an unknown time".to_owned(), crate::status::fmt_time)
    }
}

impl Store {
    /// For the server: creates what is missing.
    fn create(dir: &Path) -> Result<Store> {
        let store = Store {
            dir: dir.to_owned(),
            lock: Mutex::new(()),
        };
        for (sub, mode) in [
            (store.dir.join("tokens"), 0o700),
            (store.dir.join("installed"), 0o755),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&sub)
                .and_then(|()| fs::set_permissions(&sub, fs::Permissions::from_mode(mode)))
                .with_context(|| format!("creating state directory {}", sub.display()))
                .context(Exit::Usage)?;
        }
        Ok(store)
    }

    /// For `forget` and `installed`: a directory that does not exist is most likely a typo.
    fn existing(dir: &Path) -> Result<Store> {
        if !dir.is_dir() {
            return Err(anyhow!(
                "state directory {} does not exist (it is the --state DIR of the serving \
                 `pullnix pxe-api`)",
                dir.display()
            ))
            .context(Exit::Usage);
        }
        Ok(Store {
            dir: dir.to_owned(),
            lock: Mutex::new(()),
        })
    }

    fn token_path(&self, mac: Mac) -> PathBuf {
        self.dir.join("tokens").join(mac.to_string())
    }

    fn marker_path(&self, mac: Mac) -> PathBuf {
        self.dir.join("installed").join(mac.to_string())
    }

    fn read_token(&self, mac: Mac) -> Result<Option<String>> {
        let path = self.token_path(mac);
        match fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading boot token {}", path.display())),
        }
    }

    /// The machine's outstanding token, made on its first boot request: every boot until the
    /// report hands out the same one, so an installer booted earlier can still report.
    fn token(&self, mac: Mac) -> Result<String> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = self.read_token(mac)? {
            return Ok(t);
        }
        let token = random_hex()?;
        let path = self.token_path(mac);
        crate::state::write_atomic(&path, format!("{token}\n").as_bytes())
            .and_then(|()| {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("making {} private", path.display()))
            })
            .with_context(|| format!("storing the boot token of {mac}"))?;
        Ok(token)
    }

    /// `Some` if the machine is marked installed.
    fn marker(&self, mac: Mac) -> Result<Option<Marker>> {
        let path = self.marker_path(mac);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading marker {}", path.display()));
            }
        };
        Ok(Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            crate::warn!(
                "pxe-api: marker {} is damaged ({e}); the machine still counts as installed",
                path.display()
            );
            Marker::default()
        })))
    }

    /// Writes the marker first, then spends the token: a crash in between leaves a machine
    /// that is installed (and a stale token that `forget` removes).
    fn mark_installed(&self, mac: Mac, marker: &serde_json::Value) -> Result<()> {
        let path = self.marker_path(mac);
        crate::state::write_atomic(&path, format!("{marker}\n").as_bytes())
            .with_context(|| format!("writing marker {}", path.display()))?;
        remove(&self.token_path(mac))?;
        Ok(())
    }

    /// Every installed machine, by MAC address.
    fn list(&self) -> Result<Vec<(Mac, Marker)>> {
        let dir = self.dir.join("installed");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut macs = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            // Leftover temporary files of an interrupted write are not markers.
            if let Some(mac) = name.to_str().and_then(Mac::parse)
                && name.to_str() == Some(mac.to_string().as_str())
            {
                macs.push(mac);
            }
        }
        macs.sort_unstable();
        let mut out = Vec::new();
        for mac in macs {
            // Gone since the listing: `forget` ran meanwhile.
            if let Some(m) = self.marker(mac)? {
                out.push((mac, m));
            }
        }
        Ok(out)
    }
}

/// Removes `path`; `false` if it was not there.
fn remove(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// 128 random bits as 32 hex digits.
fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a boot token")?;
    let mut hex = String::with_capacity(32);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

fn forget_command(state: &Path, hosts_file: Option<&Path>, targets: &[String]) -> Result<()> {
    let store = Store::existing(state)?;
    let hosts = hosts_file.map(Hosts::load).transpose()?;
    // Every argument is resolved before anything is removed: a typo forgets nothing.
    let mut machines = Vec::new();
    for t in targets {
        let machine = match (Mac::parse(t), &hosts) {
            (Some(mac), h) => (
                mac,
                h.as_ref()
                    .and_then(|h| h.by_mac(mac))
                    .map(|h| h.name.clone()),
            ),
            (None, Some(h)) => {
                let host = h
                    .by_name(t)
                    .ok_or_else(|| {
                        anyhow!(
                            "{t:?} is neither a MAC address nor a host in {}",
                            hosts_file.unwrap_or(Path::new("?")).display()
                        )
                    })
                    .context(Exit::Usage)?;
                (host.mac, Some(host.name.clone()))
            }
            (None, None) => {
                return Err(anyhow!(
                    "{t:?} is not a MAC address; host names need --hosts FILE"
                ))
                .context(Exit::Usage);
            }
        };
        machines.push(machine);
    }
    for (mac, name) in machines {
        let marker = store.marker(mac)?;
        let name = name.or_else(|| marker.as_ref().and_then(|m| m.host.clone()));
        let who = name.map_or_else(|| mac.to_string(), |n| format!("{n} ({mac})"));
        let had_marker = remove(&store.marker_path(mac))?;
        // An outstanding token is dropped too: the next boot hands out a fresh one, and an
        // installer still running from before can no longer mark the machine installed.
        let had_token = remove(&store.token_path(mac))?;
        let token = if had_token {
            " and dropped its report token"
        } else {
            ""
        };
        match marker {
            Some(m) if had_marker => crate::notice!(
                "pxe-api: forgot that {who} is installed (since {}){token}; its next network \
                 boot installs it again",
                m.since()
            ),
            _ => crate::notice!("pxe-api: {who} is not marked installed, nothing to forget{token}"),
        }
    }
    Ok(())
}

fn installed_command(state: &Path, json: bool) -> Result<()> {
    let store = Store::existing(state)?;
    let list = store.list()?;
    let text = if json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|(mac, m)| {
                json!({
                    "mac": mac.to_string(),
                    "host": m.host,
                    "at": m.at,
                    "peer": m.peer,
                })
            })
            .collect();
        serde_json::to_string_pretty(&items).context("formatting the list as JSON")? + "\n"
    } else {
        let rows: Vec<[String; 4]> = list
            .iter()
            .map(|(mac, m)| {
                [
                    mac.to_string(),
                    m.host.clone().unwrap_or_else(|| "?".into()),
                    m.at.map_or_else(|| "?".into(), crate::status::fmt_time),
                    m.peer.clone().unwrap_or_else(|| "?".into()),
                ]
            })
            .collect();
        let width = rows
            .iter()
            .map(|r| r[1].chars().count())
            .max()
            .unwrap_or(0)
            .max("HOST".len());
        let mut out = String::new();
        for [mac, host, since, peer] in
            std::iter::once(["MAC", "HOST", "INSTALLED", "FROM"].map(str::to_owned)).chain(rows)
        {
            let _ = writeln!(out, "{mac:<17}  {host:<width$}  {since:<20}  {peer}");
        }
        out
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    fn serve_args(s: &str) -> Serve {
        match p(s).unwrap() {
            Args::Serve(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options() {
        let a = serve_args("--hosts /h.toml");
        assert_eq!(a.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(a.state, None);
        let a = serve_args("--listen=0.0.0.0:81 --hosts=/h.toml");
        assert_eq!(a.listen.port(), 81);
        assert_eq!(a.hosts, PathBuf::from("/h.toml"));
        assert_eq!(a.report_listen, None);
        assert!(!a.expose_report_tokens);
        let a = serve_args(
            "--hosts /h --state /s --public-url http://10.0.0.1:8080/ --report-listen \
             10.0.0.1:8080 --expose-report-tokens",
        );
        assert_eq!(a.state, Some(PathBuf::from("/s")));
        assert_eq!(a.public_url.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(
            a.report_listen,
            Some(SocketAddr::from(([10, 0, 0, 1], 8080)))
        );
        assert!(a.expose_report_tokens);
        assert!(p("").is_err());
        assert!(p("--hosts /h --listen 8080").is_err());
        assert!(p("--hosts /h --report-listen 8080").is_err());
        assert!(p("--hosts /h --expose-report-tokens=yes").is_err());
        let same = format!(
            "{:#}",
            p("--hosts /h --report-listen 127.0.0.1:8080").unwrap_err()
        );
        assert!(same.contains("both 127.0.0.1:8080"), "{same}");
        assert!(p("--hosts /h extra").is_err());
        for url in [
            "10.0.0.1:8080",
            "http://",
            "ftp://x",
            "http://x/?a=b",
            "http://x/a\"b",
        ] {
            assert!(
                p(&format!("--hosts /h --public-url {url}")).is_err(),
                "{url}"
            );
        }
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            p("forget --state /s --hosts /h edge-01 52-54-00-12-34-56").unwrap(),
            Args::Forget {
                state: "/s".into(),
                hosts: Some("/h".into()),
                targets: vec!["edge-01".into(), "52-54-00-12-34-56".into()],
            }
        );
        assert_eq!(
            p("installed --json --state=/s").unwrap(),
            Args::Installed {
                state: "/s".into(),
                json: true
            }
        );
        for (s, needle) in [
            ("forget --state /s", "at least one"),
            ("forget 52:54:00:12:34:56", "--state"),
            ("forget --state /s edge-01", "--hosts"),
            ("forget --state /s --all", "--all"),
            ("installed", "--state"),
            ("installed --state /s --json=yes", "--json"),
            ("installed --state /s x", "\"x\""),
        ] {
            let msg = format!("{:#}", p(s).unwrap_err());
            assert!(msg.contains(needle), "{s}: {msg}");
        }
    }

    #[test]
    fn routes() {
        let api = Api {
            hosts: Hosts::parse(
                "[hosts.a]\nmac = \"52:54:00:12:34:56\"\nkernel = \"/k\"\ncmdline = \"h={host}\"\n",
            )
            .unwrap(),
            store: None,
            public_url: None,
        };
        let request = |m: &str, t: &str| Request {
            method: m.into(),
            target: t.into(),
            version: http::Version::Http11,
            headers: Vec::new(),
            body: Vec::new(),
            peer: None,
        };
        let boot = |m: &str, t: &str| boot_api(&request(m, t), &api);
        let report = |m: &str, t: &str| report_api(&request(m, t), &api);
        let a = boot("GET", "/v1/boot/52-54-00-12-34-56");
        assert_eq!(a.status, 200);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v, json!({"kernel": "/k", "initrd": [], "cmdline": "h=a"}));
        assert_eq!(boot("GET", "/v1/boot/52:54:00:12:34:57").status, 404);
        assert_eq!(boot("GET", "/v1/boot/x").status, 404);
        assert_eq!(boot("GET", "/").status, 404);
        assert_eq!(boot("POST", "/v1/boot/52:54:00:12:34:56").status, 405);
        // Each listener serves its own endpoint only: boot answers never on the report side.
        assert_eq!(report("GET", "/v1/boot/52:54:00:12:34:56").status, 404);
        assert_eq!(
            boot("POST", "/v1/installed/52:54:00:12:34:56?token=x").status,
            404
        );
        // Without a state directory there is nothing to report to.
        assert_eq!(
            report("POST", "/v1/installed/52:54:00:12:34:56?token=x").status,
            404
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
        let t = random_hex().unwrap();
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(t, random_hex().unwrap());
    }
}
