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
//! so pullnix's own `{host}`/`{mac}` placeholders use single braces and are filled in here.
//!
//! A deliberately tiny HTTP/1.1 server: one request per connection (`Connection: close`), one
//! thread per connection with a cap, short socket timeouts, nothing but that one endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::exit::Exit;
use crate::hosts::{Hosts, Mac};

/// Connections served at once; more are answered 503 and closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted; the API needs a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `pullnix pxe-api …` as given on the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub hosts: PathBuf,
    pub listen: SocketAddr,
}

const USAGE: &str = "usage: pullnix pxe-api --hosts FILE [--listen ADDR:PORT]";

/// Parses what follows `pxe-api`.
pub fn parse(rest: &[String]) -> Result<Args> {
    let mut hosts = None;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 8080));
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
            other => bail!("unexpected argument {other:?} for pxe-api; {USAGE}"),
        }
    }
    let hosts = hosts.ok_or_else(|| anyhow!("pxe-api needs --hosts FILE; {USAGE}"))?;
    Ok(Args { hosts, listen })
}

pub fn command(args: &Args) -> Result<()> {
    let hosts = Arc::new(Hosts::load(&args.hosts)?);
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))
        .context(Exit::Usage)?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    crate::notice!(
        "pxe-api: listening on {local}, {} host(s) from {}",
        hosts.len(),
        args.hosts.display()
    );
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
            let _ = respond(&mut stream, 503, "text/plain", b"busy\n", false);
            continue;
        }
        let hosts = Arc::clone(&hosts);
        let active_conn = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("pxe-api-conn".into())
            .spawn(move || {
                serve(stream, &hosts);
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
fn serve(mut stream: TcpStream, hosts: &Hosts) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let head = match read_head(&mut stream) {
        Ok(h) => h,
        Err(e) => {
            crate::warn!("pxe-api: {peer}: bad request: {e:#}");
            let _ = respond(&mut stream, 400, "text/plain", b"bad request\n", false);
            return;
        }
    };
    let answer = route(&head, hosts);
    let is_head = head.method == "HEAD";
    let (status, body, note) = answer;
    let written = respond(
        &mut stream,
        status,
        if status == 200 {
            "application/json"
        } else {
            "text/plain"
        },
        body.as_bytes(),
        is_head,
    );
    let failed = written
        .err()
        .map(|e| format!(" (sending the answer failed: {e})"))
        .unwrap_or_default();
    crate::info!(
        "pxe-api: {peer} {} {:?} -> {status} {note}{failed}",
        head.method,
        head.target
    );
}

struct Head {
    method: String,
    target: String,
}

/// Reads up to the blank line that ends the request head; the API has no request bodies.
fn read_head(stream: &mut TcpStream) -> Result<Head> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_REQUEST {
            bail!("request head longer than {MAX_REQUEST} bytes");
        }
        let n = stream.read(&mut chunk).context("reading the request")?;
        if n == 0 {
            bail!("connection closed before the end of the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if version.starts_with("HTTP/1.") && !method.is_empty() =>
        {
            Ok(Head {
                method: method.to_owned(),
                target: target.to_owned(),
            })
        }
        _ => bail!("malformed request line {line:?}"),
    }
}

/// Status, body and a note for the log line.
fn route(head: &Head, hosts: &Hosts) -> (u16, String, String) {
    let path = head.target.split('?').next().unwrap_or_default();
    let Some(mac_text) = path.strip_prefix("/v1/boot/") else {
        return (404, "not found\n".into(), "(no such endpoint)".into());
    };
    if head.method != "GET" && head.method != "HEAD" {
        return (405, "method not allowed\n".into(), "(only GET)".into());
    }
    let Some(mac) = Mac::parse(mac_text) else {
        return (
            404,
            "not a MAC address\n".into(),
            "(not a MAC address)".into(),
        );
    };
    let Some(host) = hosts.by_mac(mac) else {
        return (404, "unknown machine\n".into(), format!("{mac} unknown"));
    };
    let mut spec = json!({ "kernel": host.kernel, "initrd": host.initrd });
    if !host.cmdline.is_empty() {
        spec["cmdline"] = json!(host.cmdline);
    }
    (
        200,
        format!("{spec}\n"),
        format!("{mac} is {} (installs {})", host.name, host.flake_attr),
    )
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn options() {
        let a = p("--hosts /h.toml").unwrap();
        assert_eq!(a.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        let a = p("--listen=0.0.0.0:81 --hosts=/h.toml").unwrap();
        assert_eq!(a.listen.port(), 81);
        assert_eq!(a.hosts, PathBuf::from("/h.toml"));
        assert!(p("").is_err());
        assert!(p("--hosts /h --listen 8080").is_err());
        assert!(p("--hosts /h extra").is_err());
    }

    #[test]
    fn routes() {
        let hosts = Hosts::parse(
            "[hosts.a]\nmac = \"52:54:00:12:34:56\"\nkernel = \"/k\"\ncmdline = \"h={host}\"\n",
        )
        .unwrap();
        let r = |m: &str, t: &str| {
            route(
                &Head {
                    method: m.into(),
                    target: t.into(),
                },
                &hosts,
            )
        };
        let (s, body, _) = r("GET", "/v1/boot/52-54-00-12-34-56");
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"kernel": "/k", "initrd": [], "cmdline": "h=a"}));
        assert_eq!(r("GET", "/v1/boot/52:54:00:12:34:57").0, 404);
        assert_eq!(r("GET", "/v1/boot/x").0, 404);
        assert_eq!(r("GET", "/").0, 404);
        assert_eq!(r("POST", "/v1/boot/52:54:00:12:34:56").0, 405);
    }
}
