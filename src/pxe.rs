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
//! A deliberately tiny HTTP/1.1 server: one request per connection (`Connection: close`), one
//! thread per connection with a cap, short socket timeouts, nothing but those two endpoints.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::json;

use crate::exit::Exit;
use crate::hosts::{Host, Hosts, Mac, REPORT};

/// Connections served at once; more are answered 503 and closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted; the API needs a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Largest request body read (and thrown away); the API uses none, but `curl -d` sends one.
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub listen: SocketAddr,
    pub state: Option<PathBuf>,
    /// Base URL under which installers reach this server, without a trailing slash.
    pub public_url: Option<String>,
}

const USAGE: &str =
    "usage: pullnix pxe-api --hosts FILE [--listen ADDR:PORT] [--state DIR] [--public-url URL]";
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
    let mut state = None;
    let mut public_url = None;
    let mut flags = crate::cli::Flags::new(rest);
    while let Some((flag, inline)) = flags.next_word() {
        match flag {
            "--hosts" => hosts = Some(PathBuf::from(flags.value(flag, inline)?)),
            "--listen" => {
                let v = flags.value(flag, inline)?;
                listen = v
                    .parse()
                    .map_err(|_| anyhow!("--listen {v:?} is not an ADDRESS:PORT"))?;
            }
            "--state" => state = Some(PathBuf::from(flags.value(flag, inline)?)),
            "--public-url" => public_url = Some(parse_public_url(&flags.value(flag, inline)?)?),
            other => bail!("unexpected argument {other:?} for pxe-api; {USAGE}"),
        }
    }
    let hosts = hosts.ok_or_else(|| anyhow!("pxe-api needs --hosts FILE; {USAGE}"))?;
    Ok(Serve {
        hosts,
        listen,
        state,
        public_url,
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
    // A `{report}` that cannot be filled in would boot installers that can never report, so
    // the machine would reinstall forever: refuse before the first boot, not during it.
    if let Some(host) = hosts.iter().find(|h| h.cmdline.contains(REPORT)) {
        let missing: Vec<&str> = [
            (args.state.is_none(), "--state DIR"),
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
    }
    let store = args.state.as_deref().map(Store::create).transpose()?;
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))
        .context(Exit::Usage)?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    let remembering = args.state.as_ref().map_or_else(String::new, |d| {
        format!(", remembering installed machines in {}", d.display())
    });
    crate::notice!(
        "pxe-api: listening on {local}, {} host(s) from {}{remembering}",
        hosts.len(),
        args.hosts.display()
    );
    if store.is_some() && !hosts.iter().any(|h| h.cmdline.contains(REPORT)) {
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
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE, ECONNABORTED and the like: this connection is lost, the server is not.
                crate::warn!("pxe-api: accepting a connection failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            crate::warn!("pxe-api: too many connections, refusing one with 503");
            let _ = respond(
                &mut stream,
                &Answer::text(503, "busy", String::new()),
                false,
            );
            continue;
        }
        let api = Arc::clone(&api);
        let active_conn = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("pxe-api-conn".into())
            .spawn(move || {
                serve(stream, &api);
                active_conn.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            crate::warn!("pxe-api: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

/// Answers one request on `stream` and logs it on one line.
fn serve(mut stream: TcpStream, api: &Api) {
    let peer = stream.peer_addr().ok();
    let peer_text = peer.map_or_else(|| "?".to_owned(), |a| a.to_string());
    let answer = match read_request(&mut stream) {
        Ok(head) => {
            let answer = route(&head, api, peer.map(|a| a.ip()));
            Ok((head, answer))
        }
        Err(bad) => Err(bad),
    };
    let (head, answer) = match answer {
        Ok(x) => x,
        Err(bad) => {
            crate::warn!("pxe-api: {peer_text}: bad request: {}", bad.note);
            let _ = respond(&mut stream, &bad, false);
            return;
        }
    };
    let written = respond(&mut stream, &answer, head.method == "HEAD");
    let failed = written
        .err()
        .map(|e| format!(" (sending the answer failed: {e})"))
        .unwrap_or_default();
    // The query is left out: it carries the report token, which has no place in a journal.
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    let query = if query.is_empty() { "" } else { "?…" };
    crate::info!(
        "pxe-api: {peer_text} {} \"{}{query}\" -> {} {}{failed}",
        head.method,
        path.escape_debug(),
        answer.status,
        answer.note
    );
}

struct Head {
    method: String,
    target: String,
}

/// An answer and a note for the log line.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    /// The `Allow` header of a 405.
    allow: &'static str,
    note: String,
}

impl Answer {
    fn text(status: u16, body: &str, note: String) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            body: format!("{body}\n"),
            allow: "",
            note,
        }
    }

    fn not_allowed(allow: &'static str) -> Answer {
        Answer {
            allow,
            ..Answer::text(405, "method not allowed", format!("(only {allow})"))
        }
    }
}

/// Reads the request head and whatever body it announces, which is thrown away: closing a
/// socket with unread data makes Linux send a reset, which can destroy the answer before the
/// client reads it. A request that cannot be served is an `Err` with the answer to give.
fn read_request(stream: &mut TcpStream) -> std::result::Result<Head, Answer> {
    let bad = |status: u16, body: &str, note: String| Answer::text(status, body, note);
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
            .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2));
        if let Some(end) = end {
            break end;
        }
        if buf.len() > MAX_REQUEST {
            return Err(bad(
                400,
                "bad request",
                format!("request head longer than {MAX_REQUEST} bytes"),
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(bad(
                    400,
                    "bad request",
                    "connection closed before the end of the request head".into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(bad(400, "bad request", format!("reading the request: {e}"))),
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let head = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if version.starts_with("HTTP/1.") && !method.is_empty() =>
        {
            Head {
                method: method.to_owned(),
                target: target.to_owned(),
            }
        }
        _ => {
            return Err(bad(
                400,
                "bad request",
                format!("malformed request line {line:?}"),
            ));
        }
    };
    let mut length = 0usize;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| {
                bad(
                    400,
                    "bad request",
                    format!("Content-Length {value:?} is not a number"),
                )
            })?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            // Chunked bodies would need a decoder for data that is never used.
            return Err(bad(
                411,
                "length required",
                format!("Transfer-Encoding {value:?} is not accepted"),
            ));
        }
    }
    if length > MAX_BODY {
        return Err(bad(
            413,
            "request body too large",
            format!("request body of {length} bytes, more than {MAX_BODY}"),
        ));
    }
    discard_body(stream, length.saturating_sub(buf.len() - head_end))?;
    Ok(head)
}

/// Reads and drops the `left` bytes of the body not read with the head.
fn discard_body(stream: &mut TcpStream, mut left: usize) -> std::result::Result<(), Answer> {
    let bad = |note: String| Answer::text(400, "bad request", note);
    let mut chunk = [0u8; 1024];
    while left > 0 {
        match stream.read(&mut chunk[..left.min(1024)]) {
            Ok(0) => {
                return Err(bad(format!(
                    "connection closed with {left} bytes of the body missing"
                )));
            }
            Ok(n) => left -= n,
            Err(e) => return Err(bad(format!("reading the request body: {e}"))),
        }
    }
    Ok(())
}

fn route(head: &Head, api: &Api, peer: Option<IpAddr>) -> Answer {
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    if let Some(mac) = path.strip_prefix("/v1/boot/") {
        boot(head, mac, api)
    } else if let Some(mac) = path.strip_prefix("/v1/installed/") {
        installed_report(head, mac, query, api, peer)
    } else {
        Answer::text(404, "not found", "(no such endpoint)".into())
    }
}

/// The hosts-file machine a request path names, with the "MAC is NAME" its log line starts
/// with; a 404 answer for anything else.
fn machine<'a>(mac_text: &str, api: &'a Api) -> Result<(Mac, &'a Host, String), Answer> {
    let Some(mac) = Mac::parse(mac_text) else {
        return Err(Answer::text(
            404,
            "not a MAC address",
            "(not a MAC address)".into(),
        ));
    };
    let Some(host) = api.hosts.by_mac(mac) else {
        return Err(Answer::text(
            404,
            "unknown machine",
            format!("{mac} unknown"),
        ));
    };
    Ok((mac, host, format!("{mac} is {}", host.name)))
}

/// `GET /v1/boot/<mac>`: pixiecore asking whether and what to boot.
fn boot(head: &Head, mac_text: &str, api: &Api) -> Answer {
    if head.method != "GET" && head.method != "HEAD" {
        return Answer::not_allowed("GET, HEAD");
    }
    let (mac, host, who) = match machine(mac_text, api) {
        Ok(m) => m,
        Err(answer) => return answer,
    };
    if let Some(store) = &api.store {
        match store.marker(mac) {
            // Not booting is the safe side: the firmware goes on to the disk.
            Err(e) => {
                return Answer::text(
                    500,
                    "internal error",
                    format!("{who}, but whether it is installed is unknown: {e:#}"),
                );
            }
            Ok(Some(m)) => {
                return Answer::text(
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
            return Answer::text(
                500,
                "internal error",
                format!("{who}, but {REPORT} needs --state and --public-url"),
            );
        };
        let token = match store.token(mac) {
            Ok(t) => t,
            Err(e) => return Answer::text(500, "internal error", format!("{who}: {e:#}")),
        };
        cmdline = cmdline.replace(REPORT, &format!("{url}/v1/installed/{mac}?token={token}"));
    }
    let mut spec = json!({ "kernel": host.kernel, "initrd": host.initrd });
    if !cmdline.is_empty() {
        spec["cmdline"] = json!(cmdline);
    }
    Answer {
        content_type: "application/json",
        body: format!("{spec}\n"),
        ..Answer::text(200, "", format!("{who} (installs {})", host.flake_attr))
    }
}

/// `POST /v1/installed/<mac>?token=T`: the installer saying it is done.
fn installed_report(
    head: &Head,
    mac_text: &str,
    query: &str,
    api: &Api,
    peer: Option<IpAddr>,
) -> Answer {
    let Some(store) = &api.store else {
        return Answer::text(
            404,
            "not found",
            "(installed machines are not remembered without --state)".into(),
        );
    };
    if head.method != "POST" {
        return Answer::not_allowed("POST");
    }
    let (mac, host, who) = match machine(mac_text, api) {
        Ok(m) => m,
        Err(answer) => return answer,
    };
    let given = query.split('&').find_map(|kv| kv.strip_prefix("token="));
    // Checking the token and spending it must not interleave with another report or a boot
    // request handing out a new token.
    let _guard = store.lock.lock().unwrap_or_else(PoisonError::into_inner);
    let expected = match store.read_token(mac) {
        Ok(t) => t,
        Err(e) => return Answer::text(500, "internal error", format!("{who}: {e:#}")),
    };
    if expected.is_none()
        && let Some(g) = given.filter(|g| !g.is_empty())
        && let Ok(Some(done)) = store.marker(mac)
        && done.token.as_deref().is_some_and(|t| same_secret(t, g))
    {
        return Answer::text(
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
        return Answer::text(403, "forbidden", format!("{who}: report refused, {why}"));
    }
    let peer = peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let marker = json!({
        "mac": mac.to_string(),
        "host": host.name,
        "at": crate::state::now(),
        "peer": peer,
        "token": given,
    });
    if let Err(e) = store.mark_installed(mac, &marker) {
        return Answer::text(500, "internal error", format!("{who}: {e:#}"));
    }
    Answer::text(
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

fn respond(stream: &mut TcpStream, answer: &Answer, head_only: bool) -> std::io::Result<()> {
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let allow = if answer.allow.is_empty() {
        String::new()
    } else {
        format!("Allow: {}\r\n", answer.allow)
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\nCache-Control: no-store\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(answer.body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()
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
        let a = serve_args("--hosts /h --state /s --public-url http://10.0.0.1:8080/");
        assert_eq!(a.state, Some(PathBuf::from("/s")));
        assert_eq!(a.public_url.as_deref(), Some("http://10.0.0.1:8080"));
        assert!(p("").is_err());
        assert!(p("--hosts /h --listen 8080").is_err());
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
        let r = |m: &str, t: &str| {
            route(
                &Head {
                    method: m.into(),
                    target: t.into(),
                },
                &api,
                None,
            )
        };
        let a = r("GET", "/v1/boot/52-54-00-12-34-56");
        assert_eq!(a.status, 200);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v, json!({"kernel": "/k", "initrd": [], "cmdline": "h=a"}));
        assert_eq!(r("GET", "/v1/boot/52:54:00:12:34:57").status, 404);
        assert_eq!(r("GET", "/v1/boot/x").status, 404);
        assert_eq!(r("GET", "/").status, 404);
        assert_eq!(r("POST", "/v1/boot/52:54:00:12:34:56").status, 405);
        // Without a state directory there is nothing to report to.
        assert_eq!(
            r("POST", "/v1/installed/52:54:00:12:34:56?token=x").status,
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
