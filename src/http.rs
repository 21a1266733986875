//! A small, strict HTTP/1.x server for pullnix's provisioning side: `pxe-api`'s boot and report
//! listeners now, an operator-side collector later. It knows nothing of what it serves: a
//! handler gets a parsed [`Request`] and gives a [`Response`].
//!
//! Written for peers that may be hostile and slow on purpose (a provisioning LAN):
//!
//! * one request per connection (`Connection: close`), one thread per connection;
//! * a deadline for the whole request, from `accept` to its last body byte
//!   ([`Limits::deadline`]): a client trickling one byte every few seconds is cut off at the
//!   deadline however steadily it trickles, not only when it pauses longer than a timeout;
//! * at most [`Limits::per_client`] connections at once per client address (an IPv6 client is
//!   its /64, which one host usually owns whole), so one address cannot take every slot;
//! * at most [`Limits::total`] in all; when that is reached, a newcomer from an address holding
//!   fewer connections than the busiest address takes the slot of that address's oldest
//!   connection, so many slow addresses together cannot lock out anyone else either;
//! * a strict parser (RFC 9112, a deliberately narrow subset): `HTTP/1.0` or `HTTP/1.1` only,
//!   CRLF line ends only (a bare LF or CR is refused: RFC 9112 2.2 lets a server accept them,
//!   and disagreeing about them is how requests get smuggled past proxies), origin-form targets
//!   of visible ASCII, token method and field names, no folded lines, at most one
//!   `Content-Length` and only digits in it, no `Transfer-Encoding`, bounded head size, header
//!   count and body size;
//! * nothing a peer sent reaches the log raw: refusals are logged with a reason of their own
//!   words, request lines with the path only (the query is where secrets go), shortened, and
//!   connection-level warnings at most once per [`LOG_WINDOW`] per kind, with a count of those
//!   left out, so that a flood does not flood the journal too.
//!
//! Why not a crate: the candidates were tried with the requests above (README "Dependencies"):
//! `tiny_http` 0.12 sets (and offers) no read timeout and accepts duplicate and contradicting
//! `Content-Length` headers and `Content-Length: 5, 5` (read as an empty body); hyper 1.x
//! accepts bare-LF requests and merges duplicate `Content-Length` headers, and bounds only the
//! head in time, not the body; httparse 1.10 (a parser only) accepts bare LF and leaves every
//! `Content-Length` rule to the caller.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::exit::Exit;

/// Connection-level warnings of one kind are logged at most once per window.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// What one server accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// From `accept` to the last byte of the request; the answer gets the same again at most.
    pub deadline: Duration,
    /// Connections at once from one client address (IPv6: one /64).
    pub per_client: usize,
    /// Connections at once in all.
    pub total: usize,
    /// Bytes of the request line and header fields, CRLFs included.
    pub max_head: usize,
    /// Header fields.
    pub max_headers: usize,
    /// Bytes of a request body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            deadline: Duration::from_secs(10),
            per_client: 8,
            total: 256,
            max_head: 8 * 1024,
            max_headers: 32,
            max_body: 64 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A request that passed the parser. pxe-api's handlers need only the method, the target and
/// the peer; the rest is for handlers that read bodies (the later status collector).
#[derive(Debug)]
#[allow(dead_code)]
pub struct Request {
    pub method: String,
    /// Origin form: `/path` with an optional `?query`, visible ASCII only.
    pub target: String,
    pub version: Version,
    /// Field names as sent (compare them ignoring case), values without surrounding blanks.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query, without `?`; empty if there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The value of `name` in the query (`a=1&name=value`), undecoded.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query().split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
    }
}

/// An answer, and a note for the request's log line.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: &'static str,
    pub note: String,
}

impl Response {
    /// A `text/plain` answer: `body` and a newline.
    pub fn text(status: u16, body: &str, note: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: format!("{body}\n"),
            allow: "",
            note: note.into(),
        }
    }

    pub fn json(value: &serde_json::Value, note: impl Into<String>) -> Response {
        Response {
            content_type: "application/json",
            body: format!("{value}\n"),
            ..Response::text(200, "", note)
        }
    }

    pub fn not_allowed(allow: &'static str) -> Response {
        Response {
            allow,
            ..Response::text(405, "method not allowed", format!("(only {allow})"))
        }
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let allow = if self.allow.is_empty() {
            String::new()
        } else {
            format!("Allow: {}\r\n", self.allow)
        };
        let retry = if self.status == 503 {
            "Retry-After: 2\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             {allow}{retry}Connection: close\r\nCache-Control: no-store\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A bound listener, not yet serving.
pub struct Server {
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
}

impl Server {
    /// Binds `addr`; `name` starts every log line (`pxe-api`). A bind failure is exit 2.
    pub fn bind(addr: SocketAddr, name: &'static str, limits: Limits) -> Result<Server> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))
            .context(Exit::Usage)?;
        Ok(Server {
            listener,
            name,
            limits,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("reading the listening address")
    }

    /// Serves forever.
    pub fn run(self, handler: Arc<Handler>) {
        let shared = Arc::new(Shared {
            name: self.name,
            limits: self.limits,
            handler,
            table: Mutex::new(Table::default()),
            log: Mutex::new(HashMap::new()),
        });
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => admit(&shared, stream),
                Err(e) => {
                    // EMFILE, ECONNABORTED and the like: this connection is lost, the server is
                    // not.
                    shared.warn_throttled("accept", &format!("accepting a connection failed: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

struct Shared {
    name: &'static str,
    limits: Limits,
    handler: Arc<Handler>,
    table: Mutex<Table>,
    /// Per kind of warning: when its window started and how many were left out since.
    log: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Shared {
    /// Logs the first warning of each `kind` per [`LOG_WINDOW`], counting the others.
    fn warn_throttled(&self, kind: &'static str, message: &str) {
        let now = Instant::now();
        let left_out = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            match log.get_mut(kind) {
                Some((start, n)) if now.duration_since(*start) < LOG_WINDOW => {
                    *n += 1;
                    return;
                }
                Some(entry) => std::mem::replace(entry, (now, 0)).1,
                None => {
                    log.insert(kind, (now, 0));
                    0
                }
            }
        };
        let more = if left_out > 0 {
            format!(" (and {left_out} more like it since the last such line)")
        } else {
            String::new()
        };
        crate::warn!("{}: {message}{more}", self.name);
    }
}

/// Open connections by client key.
#[derive(Default)]
struct Table {
    next_id: u64,
    total: usize,
    by_client: HashMap<IpAddr, Vec<Slot>>,
}

struct Slot {
    id: u64,
    since: Instant,
    peer: SocketAddr,
    /// A second handle on the socket, to shut it down when the slot is taken away.
    stream: TcpStream,
}

/// Who counts as one client: an IPv4 address, or the /64 of an IPv6 one (IPv4-mapped IPv6
/// addresses of a dual-stack listener count as the IPv4 address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// What the table says about a new connection.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Admitted(u64),
    /// Admitted after taking this connection's slot.
    Evicted(u64, SocketAddr, usize),
    TooManyFromClient,
    Full,
}

impl Table {
    fn admit(&mut self, limits: &Limits, peer: SocketAddr, stream: TcpStream) -> Admission {
        let key = client_key(peer.ip());
        let own = self.by_client.get(&key).map_or(0, Vec::len);
        if own >= limits.per_client {
            return Admission::TooManyFromClient;
        }
        let mut evicted = None;
        if self.total >= limits.total {
            // The busiest client, and of equally busy ones the one with the oldest connection.
            let busiest = self
                .by_client
                .iter()
                .filter(|(_, slots)| !slots.is_empty())
                .max_by(|(_, a), (_, b)| {
                    a.len()
                        .cmp(&b.len())
                        .then_with(|| b[0].since.cmp(&a[0].since))
                })
                .map(|(k, slots)| (*k, slots.len()));
            match busiest {
                Some((victim_key, n)) if n > own => {
                    if let Some(slots) = self.by_client.get_mut(&victim_key) {
                        let victim = slots.remove(0);
                        if slots.is_empty() {
                            self.by_client.remove(&victim_key);
                        }
                        self.total -= 1;
                        // Its thread's next read fails at once and it ends.
                        let _ = victim.stream.shutdown(Shutdown::Both);
                        evicted = Some((victim.id, victim.peer, n));
                    }
                }
                _ => return Admission::Full,
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.by_client.entry(key).or_default().push(Slot {
            id,
            since: Instant::now(),
            peer,
            stream,
        });
        self.total += 1;
        match evicted {
            Some((_, victim, n)) => Admission::Evicted(id, victim, n),
            None => Admission::Admitted(id),
        }
    }

    /// Frees the slot `id` of `peer`, unless it was taken away already.
    fn release(&mut self, peer: SocketAddr, id: u64) {
        let key = client_key(peer.ip());
        if let Some(slots) = self.by_client.get_mut(&key)
            && let Some(i) = slots.iter().position(|s| s.id == id)
        {
            slots.remove(i);
            if slots.is_empty() {
                self.by_client.remove(&key);
            }
            self.total -= 1;
        }
    }
}

/// Runs on the accepting thread: decides at once, never waits for the client.
fn admit(shared: &Arc<Shared>, stream: TcpStream) {
    let accepted = Instant::now();
    let Ok(peer) = stream.peer_addr() else {
        return; // gone already
    };
    let admission = match stream.try_clone() {
        Ok(handle) => shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&shared.limits, peer, handle),
        // Out of descriptors: as good as full.
        Err(_) => Admission::Full,
    };
    let id = match admission {
        Admission::Admitted(id) => id,
        Admission::Evicted(id, victim, n) => {
            shared.warn_throttled(
                "evicted",
                &format!(
                    "{} connections at once, the most of them ({n}) from the address of {victim}: \
                     closed its oldest to serve {peer}",
                    shared.limits.total
                ),
            );
            id
        }
        refused => {
            let why = if refused == Admission::TooManyFromClient {
                format!(
                    "{peer}: refused with 503, already {} connections from this address",
                    shared.limits.per_client
                )
            } else {
                format!(
                    "{peer}: refused with 503, {} connections at once and none to spare",
                    shared.limits.total
                )
            };
            shared.warn_throttled("refused", &why);
            // Without waiting: a client that does not read must not hold up the next accept.
            let mut stream = stream;
            let _ = stream.set_nonblocking(true);
            let _ = stream.write_all(&Response::text(503, "busy", "").bytes(false));
            return;
        }
    };
    let conn_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("{}-conn", shared.name))
        .stack_size(512 * 1024)
        .spawn(move || {
            connection(stream, peer, accepted, &conn_shared);
            conn_shared
                .table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release(peer, id);
        });
    if let Err(e) = spawned {
        shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(peer, id);
        shared.warn_throttled("spawn", &format!("cannot start a connection thread: {e}"));
    }
}

/// Why a request was not handed to the handler.
#[derive(Debug)]
enum Failure {
    /// Answer this and log the note.
    Refuse(Response),
    /// The deadline passed: 408.
    TimedOut,
    /// The client closed (or its slot was taken): nothing to answer.
    Closed,
}

fn connection(mut stream: TcpStream, peer: SocketAddr, accepted: Instant, shared: &Shared) {
    let limits = &shared.limits;
    let deadline = accepted + limits.deadline;
    let request = read_request(&mut stream, deadline, limits);
    // The answer gets at most as long again as the request had: a client that does not read
    // cannot keep the thread either.
    let _ = stream.set_write_timeout(Some(limits.deadline));
    match request {
        Ok(mut request) => {
            request.peer = Some(peer);
            let response = (shared.handler)(&request);
            let sent = stream
                .write_all(&response.bytes(request.method == "HEAD"))
                .and_then(|()| stream.flush());
            let failed = sent
                .err()
                .map(|e| format!(" (sending the answer failed: {e})"))
                .unwrap_or_default();
            crate::info!(
                "{}: {peer} {} \"{}\" -> {} {}{failed}",
                shared.name,
                request.method,
                shown_target(&request.target),
                response.status,
                response.note
            );
        }
        Err(Failure::Refuse(response)) => {
            shared.warn_throttled(
                "bad request",
                &format!(
                    "{peer}: bad request, answered {}: {}",
                    response.status, response.note
                ),
            );
            let _ = stream.write_all(&response.bytes(false));
            linger(stream);
        }
        Err(Failure::TimedOut) => {
            shared.warn_throttled(
                "deadline",
                &format!(
                    "{peer}: request not complete within {}s, answered 408",
                    limits.deadline.as_secs()
                ),
            );
            let _ = stream.write_all(&Response::text(408, "request timeout", "").bytes(false));
        }
        Err(Failure::Closed) => shared.warn_throttled(
            "closed",
            &format!("{peer}: connection closed before the request was complete"),
        ),
    }
}

/// After an early answer: stop sending, and read a little of what the client still sends, so
/// that closing with unread data (which makes Linux send a reset) does not destroy the answer
/// before the client has read it.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// The target for a log line: the path only (a query is where secrets go), escaped, at most
/// 120 characters.
fn shown_target(target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut shown: String = path.escape_debug().take(120).collect();
    if path.escape_debug().nth(120).is_some() {
        shown.push('…');
    }
    if !query.is_empty() {
        shown.push_str("?…");
    }
    shown
}

/// Reads from `stream` until `deadline`, whatever the pace of the client.
struct Deadlined<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::TimedOut);
            }
            if self.stream.set_read_timeout(Some(left)).is_err() {
                return Err(Failure::Closed);
            }
            match self.stream.read(buf) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Failure::TimedOut);
                }
                Err(_) => return Err(Failure::Closed),
            }
        }
    }
}

fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
    limits: &Limits,
) -> Result<Request, Failure> {
    let mut conn = Deadlined { stream, deadline };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        // Refused as soon as it shows, not only once the head is complete.
        check_line_ends(&buf).map_err(Failure::Refuse)?;
        if buf.len() >= limits.max_head {
            return Err(Failure::Refuse(too_large_head(limits)));
        }
        let want = (limits.max_head + 4 - buf.len()).min(chunk.len());
        let n = conn.read(&mut chunk[..want])?;
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end - 4 > limits.max_head {
        return Err(Failure::Refuse(too_large_head(limits)));
    }
    let head = parse_head(&buf[..head_end - 4], limits).map_err(Failure::Refuse)?;
    let mut body = buf.split_off(head_end);
    if body.len() > head.content_length {
        // Pipelined requests are not served (one request per connection).
        body.truncate(head.content_length);
    }
    while body.len() < head.content_length {
        let want = (head.content_length - body.len()).min(chunk.len());
        let n = conn.read(&mut chunk[..want])?;
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request {
        method: head.method,
        target: head.target,
        version: head.version,
        headers: head.headers,
        body,
        peer: None,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(note: &str) -> Response {
    Response::text(400, "bad request", note)
}

fn too_large_head(limits: &Limits) -> Response {
    Response::text(
        431,
        "request header fields too large",
        format!("request head longer than {} bytes", limits.max_head),
    )
}

/// Every LF must follow a CR and every CR precede an LF (a CR last in `buf` may still get its
/// LF).
fn check_line_ends(buf: &[u8]) -> Result<(), Response> {
    for (i, &b) in buf.iter().enumerate() {
        let ok = match b {
            b'\n' => i > 0 && buf[i - 1] == b'\r',
            b'\r' => buf.get(i + 1).is_none_or(|&next| next == b'\n'),
            _ => true,
        };
        if !ok {
            return Err(bad("a line ends in a bare LF or CR, not CRLF"));
        }
    }
    Ok(())
}

/// The parsed head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    version: Version,
    headers: Vec<(String, String)>,
    content_length: usize,
}

/// RFC 9110 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the head without its final CRLF CRLF. Refusals name what is wrong in fixed words and
/// numbers, never in the peer's bytes.
fn parse_head(head: &[u8], limits: &Limits) -> Result<Head, Response> {
    check_line_ends(head)?;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the request line is not METHOD SP TARGET SP VERSION"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad("the method is not a token"));
    }
    // Origin form only (RFC 9112 3.2.1): what a client asking this server directly sends.
    if target.first() != Some(&b'/') || !target.iter().all(u8::is_ascii_graphic) {
        return Err(bad("the target is not an absolute path of visible ASCII"));
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err(bad("the version is not HTTP/1.0 or HTTP/1.1")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= limits.max_headers {
            return Err(Response::text(
                431,
                "request header fields too large",
                format!("more than {} header fields", limits.max_headers),
            ));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(bad("a header line has no colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // A line starting with a blank is an obsolete continuation (RFC 9112 5.2), and a blank
        // before the colon is refused by RFC 9112 5.1: both are not tokens here.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad("a header name is not a token"));
        }
        let value = value.trim_ascii();
        if !value
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || b.is_ascii_graphic())
        {
            return Err(bad("a header value has a control or non-ASCII character"));
        }
        // Both are ASCII by now.
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    let named = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
    };
    let hosts = named("host").count();
    if hosts > 1 || (version == Version::Http11 && hosts == 0) {
        // RFC 9112 3.2: exactly one Host in HTTP/1.1.
        return Err(bad("not exactly one Host header"));
    }
    let lengths: Vec<&str> = named("content-length").map(|(_, v)| v.as_str()).collect();
    if named("transfer-encoding").next().is_some() {
        // Chunked bodies would need a decoder for data that is never used; with a
        // Content-Length as well, it is a request-smuggling shape (RFC 9112 6.1).
        return Err(if lengths.is_empty() {
            Response::text(
                411,
                "length required",
                "Transfer-Encoding is not accepted, send Content-Length",
            )
        } else {
            bad("both Transfer-Encoding and Content-Length")
        });
    }
    let content_length = match lengths[..] {
        [] => 0,
        [v] if !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse::<usize>()
            .map_err(|_| bad("Content-Length is not a number"))?,
        [_] => return Err(bad("Content-Length is not only digits")),
        _ => return Err(bad("more than one Content-Length")),
    };
    if content_length > limits.max_body {
        return Err(Response::text(
            413,
            "request body too large",
            format!(
                "request body of {content_length} bytes, more than {}",
                limits.max_body
            ),
        ));
    }
    Ok(Head {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        version,
        headers,
        content_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn parse(head: &str) -> Result<Head, (u16, String)> {
        let head = head.strip_suffix("\r\n\r\n").unwrap_or(head);
        parse_head(head.as_bytes(), &Limits::default()).map_err(|r| (r.status, r.note))
    }

    #[test]
    fn accepts_what_clients_send() {
        let h = parse("GET /v1/boot/52:54:00:12:34:56 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/v1/boot/52:54:00:12:34:56");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.content_length, 0);
        assert_eq!(
            h.headers[1],
            ("User-Agent".into(), "Go-http-client/1.1".into())
        );
        let h = parse("POST /v1/installed/x?token=ab HTTP/1.0\r\nContent-Length:\t 5 ").unwrap();
        assert_eq!((h.version, h.content_length), (Version::Http10, 5));
        // HTTP/1.0 needs no Host.
        assert!(parse("GET / HTTP/1.0").is_ok());
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        for (head, status, needle) in [
            ("GET / HTTP/1.1\nHost: x", 400, "bare LF"),
            ("GET / HTTP/1.1\r\nHost: x\n", 400, "bare LF"),
            ("GET / HTTP/1.1\r\nHost: x\ry: z", 400, "bare LF or CR"),
            ("GET / HTTP/1.2\r\nHost: x", 400, "version"),
            ("GET / HTTP/2.0\r\nHost: x", 400, "version"),
            ("GET / http/1.1\r\nHost: x", 400, "version"),
            ("GET /", 400, "request line"),
            ("GET  / HTTP/1.1\r\nHost: x", 400, "request line"),
            ("GET / HTTP/1.1 \r\nHost: x", 400, "request line"),
            ("G(T / HTTP/1.1\r\nHost: x", 400, "method"),
            ("GET http://x/ HTTP/1.1\r\nHost: x", 400, "target"),
            ("GET * HTTP/1.1\r\nHost: x", 400, "target"),
            ("GET /\x1b[31m HTTP/1.1\r\nHost: x", 400, "target"),
            ("GET /ü HTTP/1.1\r\nHost: x", 400, "target"),
            ("GET / HTTP/1.1", 400, "Host"),
            ("GET / HTTP/1.1\r\nHost: x\r\nHost: y", 400, "Host"),
            (
                "GET / HTTP/1.1\r\nHost: x\r\n folded: y",
                400,
                "header name",
            ),
            ("GET / HTTP/1.1\r\nHost : x", 400, "header name"),
            ("GET / HTTP/1.1\r\nHost: x\r\nno colon", 400, "colon"),
            (
                "GET / HTTP/1.1\r\nHost: x\u{1b}]52;c;aGk=\u{7}",
                400,
                "control",
            ),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: \u{0}", 400, "control"),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5",
                400,
                "more than one",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 3",
                400,
                "more than one",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5",
                400,
                "only digits",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5",
                400,
                "only digits",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1",
                400,
                "only digits",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10",
                400,
                "only digits",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:",
                400,
                "only digits",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999",
                400,
                "only digits",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000",
                413,
                "70000",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
                411,
                "Transfer-Encoding",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
                400,
                "both",
            ),
        ] {
            let (got, note) = parse(head).expect_err(head);
            assert_eq!(got, status, "{head:?}: {note}");
            assert!(note.contains(needle), "{head:?}: {note}");
        }
        let many = (0..40).fold(String::new(), |mut s, i| {
            let _ = write!(s, "\r\nX-{i}: y");
            s
        });
        let (got, _) = parse(&format!("GET / HTTP/1.1\r\nHost: x{many}")).unwrap_err();
        assert_eq!(got, 431);
    }

    #[test]
    fn refusals_do_not_repeat_the_request() {
        let (_, note) = parse("GET /\u{1b}]52;c;aGk=\u{7} HTTP/1.1\r\nHost: x").unwrap_err();
        assert!(!note.contains('\u{1b}') && !note.contains("52;"), "{note}");
    }

    #[test]
    fn targets_are_logged_without_query_and_shortened() {
        assert_eq!(
            shown_target("/v1/installed/aa?token=secret"),
            "/v1/installed/aa?…"
        );
        assert_eq!(shown_target("/a\"b"), "/a\\\"b");
        let long = format!("/{}", "x".repeat(300));
        let shown = shown_target(&long);
        assert_eq!(shown.chars().count(), 121);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn clients_are_addresses_and_ipv6_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(client_key(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    /// Connected pairs of sockets on loopback, the server side for the table.
    fn sockets(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (0..n)
            .map(|_| {
                let client = TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                (client, server)
            })
            .collect()
    }

    #[test]
    fn the_table_caps_per_client_and_evicts_from_the_busiest() {
        let limits = Limits {
            per_client: 2,
            total: 4,
            ..Limits::default()
        };
        let mut table = Table::default();
        let mut socks = sockets(8).into_iter();
        let mut admit = |ip: &str| {
            let (_client, server) = socks.next().unwrap();
            let peer = SocketAddr::new(ip.parse().unwrap(), 1000);
            table.admit(&limits, peer, server)
        };
        assert!(matches!(admit("10.0.0.1"), Admission::Admitted(_)));
        assert!(matches!(admit("10.0.0.1"), Admission::Admitted(_)));
        assert_eq!(admit("10.0.0.1"), Admission::TooManyFromClient);
        assert!(matches!(admit("10.0.0.2"), Admission::Admitted(_)));
        assert!(matches!(admit("10.0.0.3"), Admission::Admitted(_)));
        // Full: a newcomer takes the oldest slot of the busiest client (10.0.0.1, two).
        match admit("10.0.0.4") {
            Admission::Evicted(_, victim, 2) => assert_eq!(victim.ip().to_string(), "10.0.0.1"),
            other => panic!("{other:?}"),
        }
        // Now every client holds one: nobody holds more than a newcomer from 10.0.0.2 would.
        assert_eq!(admit("10.0.0.2"), Admission::Full);
        assert_eq!(table.total, 4);
    }
}
