//! A websocket chat gateway on the channel layer: the rooms of Django Channels' tutorial chat
//! app, served by axum, with every message passed through the layer's groups.
//!
//! ```text
//! cargo run --example chat -- [--url memory://] [--listen 127.0.0.1:8000]
//! ```
//!
//! - `GET /` asks for a room name; `GET /chat/<room>/` is the room's page.
//! - `GET /ws/chat/<room>/` is the room's websocket. Clients send `{"message": "..."}` and
//!   receive `{"message": "..."}`. Each connection gets its own process-specific channel
//!   (`new_channel`), joins the group `chat_<room>` and `group_send`s every message it is sent
//!   as `{"type": "chat.message", "message": "..."}`, which is what the tutorial's consumer
//!   sends and handles. A connection that closes leaves the group (`group_discard`).
//! - `GET /stats` returns the layer's counters, the open connections and the rooms' member
//!   counts as JSON. What it asks of the layer is bounded (at most 100 rooms, members counted,
//!   not read) and it is worked out at most once a second, however often it is asked.
//!
//! What the gateway refuses, before a socket is opened:
//! - a websocket whose `Origin` is another site's (a page elsewhere opening a room in a
//!   visitor's browser): only the gateway's own host (the request's `Host`) and the origins
//!   given with `--allowed-origin` are let in, others get 403. A client that sends no
//!   `Origin` (not a browser) is let in;
//! - connections past `--max-connections` (default 1,000), with 503;
//! - frames and messages over 64 KiB, at the websocket layer, so nothing larger is buffered.
//!
//! On `memory://` (the default) this is a complete chat server. With `--url redis://...` (the
//! `redis` feature) it shares its rooms with a Django Channels app on the same Redis and
//! prefix: `examples/chat/django` holds one, and README ("A chat gateway beside Django") shows
//! how to run both halves.
//!
//! A slow client never holds up a room: its channel fills while its socket is blocked, and
//! `group_send` then skips it and counts the skip (`group_skipped_full` in `/stats`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use channel_layer::prelude::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;

/// The page that asks for a room; shared with the Django project.
const INDEX_PAGE: &str = include_str!("index.html");
/// A room's page; shared with the Django project (it finds its room in its own address).
const ROOM_PAGE: &str = include_str!("room.html");
/// Replaced in the pages by the name of the server that serves them.
const SERVER_MARK: &str = "{{ server }}";
/// The largest websocket message a client may send (a chat line, not a file); frames and
/// messages are refused at the websocket layer past it, before they are buffered.
const MAX_FRAME: usize = 64 * 1024;
/// The most bytes written to a socket and not yet taken by the client: past this the client
/// is too slow, and its connection ends.
const MAX_UNSENT: usize = 4 * MAX_FRAME;
/// A socket's read buffer to begin with (it grows for a frame that needs more, up to
/// [`MAX_FRAME`]); small, since chat lines are.
const READ_BUFFER: usize = 8 * 1024;
/// The most rooms `/stats` reports on.
const STATS_ROOMS: usize = 100;
/// How long `/stats` serves the same answer.
const STATS_FRESH: Duration = Duration::from_secs(1);
/// The group of a room; the same name as the tutorial's consumer uses.
const GROUP_PREFIX: &str = "chat_";
/// The message type of a chat line, handled by the tutorial consumer's `chat_message`.
const CHAT_MESSAGE: &str = "chat.message";

#[derive(Debug)]
struct Options {
    url: String,
    listen: SocketAddr,
    name: String,
    renew: Duration,
    ping: Duration,
    allowed_origins: Vec<String>,
    max_connections: usize,
}

const USAGE: &str = "usage: chat [--url URL] [--listen ADDR:PORT] [--name TEXT] [--renew SECS]
            [--ping SECS] [--allowed-origin ORIGIN]... [--max-connections N]

  --url URL          the channel layer (default: $CHANNEL_LAYER_URL, else memory://)
  --listen ADDR:PORT where to serve (default 127.0.0.1:8000; port 0 picks a free one)
  --name TEXT        the server's name shown on its pages (default: Rust (axum))
  --renew SECS       how often an open connection renews its group membership, which lapses
                     group_expiry after the latest group_add (default 60; keep it below
                     the layer's group_expiry)
  --ping SECS        how often a connection is pinged; one that sends nothing (not even the
                     pong a browser answers with) for two of these is closed and leaves its
                     room (default 20)
  --allowed-origin ORIGIN
                     a site whose pages may open rooms' websockets, as scheme://host[:port]
                     (repeatable; * allows every site). Pages of the gateway's own host are
                     always allowed; a websocket from any other Origin is refused with 403
  --max-connections N
                     the most websockets open at once (default 1000); more are refused
                     with 503 while the open ones go on";

fn parse_options(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        url: std::env::var("CHANNEL_LAYER_URL").unwrap_or_else(|_| "memory://".into()),
        listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
        name: "Rust (axum)".into(),
        renew: Duration::from_secs(60),
        ping: Duration::from_secs(20),
        allowed_origins: Vec::new(),
        max_connections: 1000,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--url" => options.url = value("--url")?,
            "--listen" => {
                let text = value("--listen")?;
                options.listen = text
                    .parse()
                    .map_err(|e| format!("--listen {text:?}: {e} (expected ADDR:PORT)"))?;
            }
            "--name" => options.name = value("--name")?,
            "--renew" => options.renew = seconds("--renew", &value("--renew")?)?,
            "--ping" => options.ping = seconds("--ping", &value("--ping")?)?,
            "--allowed-origin" => {
                let text = value("--allowed-origin")?;
                let origin = if text == "*" {
                    text
                } else {
                    normalized_origin(&text).ok_or_else(|| {
                        format!("--allowed-origin {text:?}: expected scheme://host[:port] or *")
                    })?
                };
                options.allowed_origins.push(origin);
            }
            "--max-connections" => {
                let text = value("--max-connections")?;
                options.max_connections = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| format!("--max-connections {text:?}: expected 1 to 1000000"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

/// A duration flag's value: seconds, 0.01 to 86400.
fn seconds(flag: &str, text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.01 && *secs <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} {text:?}: expected seconds, 0.01 to 86400"))
}

/// What every request handler shares.
#[derive(Debug)]
struct App {
    layer: AnyLayer,
    name: String,
    renew: Duration,
    ping: Duration,
    /// Open websocket connections.
    connections: AtomicU64,
    /// Connections closed because the client went silent (no frame, not even a pong, for two
    /// ping intervals).
    timed_out: AtomicU64,
    /// Client frames that were not `{"message": <text>}`; answered with an error, not sent.
    refused_frames: AtomicU64,
    /// Origins besides the gateway's own whose pages may open sockets (normalized; `*`: all).
    allowed_origins: Vec<String>,
    /// The most websockets open at once.
    max_connections: usize,
    /// Websockets open or being opened (each holds a [`Slot`]).
    slots: AtomicUsize,
    /// Websockets refused for their `Origin`.
    refused_origins: AtomicU64,
    /// Websockets refused because `max_connections` were open.
    refused_full: AtomicU64,
    /// The latest `/stats` answer's rooms and when they were worked out.
    rooms: Mutex<Option<(Instant, serde_json::Value)>>,
    /// Whether a `/stats` request is working the rooms out.
    working_out_rooms: AtomicBool,
}

/// One websocket's place among the `max_connections`; given back when dropped.
struct Slot(Arc<App>);

impl Slot {
    fn take(app: &Arc<App>) -> Option<Slot> {
        app.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < app.max_connections).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(app.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

#[tokio::main]
async fn main() {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("chat: {problem}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    // Building a network layer connects, which blocks: keep it off the async workers.
    let url = options.url.clone();
    let layer = match tokio::task::spawn_blocking(move || AnyLayer::from_url(&url)).await {
        Ok(Ok(layer)) => layer,
        Ok(Err(e)) => {
            eprintln!("chat: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("chat: building the layer failed: {e}");
            std::process::exit(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("chat: cannot listen on {}: {e}", options.listen);
            std::process::exit(1);
        }
    };
    let app = Arc::new(App {
        layer,
        name: options.name,
        renew: options.renew,
        ping: options.ping,
        connections: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
        refused_frames: AtomicU64::new(0),
        allowed_origins: options.allowed_origins,
        max_connections: options.max_connections,
        slots: AtomicUsize::new(0),
        refused_origins: AtomicU64::new(0),
        refused_full: AtomicU64::new(0),
        rooms: Mutex::new(None),
        working_out_rooms: AtomicBool::new(false),
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/chat/{room}/", get(room))
        .route("/ws/chat/{room}/", get(websocket))
        .route("/stats", get(stats))
        .with_state(app.clone());
    match listener.local_addr() {
        // Tests read this line to find the port.
        Ok(addr) => println!("chat: listening on http://{addr}/"),
        Err(e) => println!("chat: listening ({e})"),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("chat: server failed: {e}");
    }
    // Wake waiting receives (they end with `Closed`) and hand back what is buffered.
    let layer = app.layer.clone();
    let _ = tokio::task::spawn_blocking(move || layer.close()).await;
}

fn page(app: &App, template: &str) -> Response {
    let body = template.replace(SERVER_MARK, &escape_html(&app.name));
    ([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

async fn index(State(app): State<Arc<App>>) -> Response {
    page(&app, INDEX_PAGE)
}

async fn room(State(app): State<Arc<App>>, Path(room): Path<String>) -> Response {
    if let Err(e) = room_group(&room) {
        return (StatusCode::NOT_FOUND, e).into_response();
    }
    page(&app, ROOM_PAGE)
}

/// The group of `room`, or why the room's name cannot be one.
fn room_group(room: &str) -> Result<String, String> {
    let group = format!("{GROUP_PREFIX}{room}");
    channel_layer::name::validate_group(&group)
        .map(|()| group)
        .map_err(|e| format!("no such room {room:?}: {e}"))
}

async fn websocket(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let group = match room_group(&room) {
        Ok(group) => group,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    if let Err(why) = origin_allowed(&headers, &app.allowed_origins) {
        app.refused_origins.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let Some(slot) = Slot::take(&app) else {
        app.refused_full.fetch_add(1, Ordering::Relaxed);
        let why = format!(
            "too many connections: {} are open, the most this gateway takes",
            app.max_connections
        );
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    upgrade
        .max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_UNSENT)
        .on_upgrade(move |socket| connection(app, group, socket, slot))
}

/// Whether a websocket with these request headers may open: no `Origin` (not a browser), an
/// `Origin` naming the host the request was sent to (the gateway's own pages), or one of
/// `allowed` (normalized, or `*`). Otherwise why not.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    let refused = || {
        let shown: String = String::from_utf8_lossy(origin.as_bytes())
            .chars()
            .take(200)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        format!("websockets from origin {shown:?} are not allowed here")
    };
    let origin = origin
        .to_str()
        .ok()
        .and_then(normalized_origin)
        .ok_or_else(refused)?;
    if allowed.contains(&origin) {
        return Ok(());
    }
    // The gateway's own pages: the origin's host and port are those the request was sent to.
    let (scheme, authority) = origin.split_once("://").ok_or_else(refused)?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| normalized_origin(&format!("{scheme}://{h}")));
    match host {
        Some(host)
            if host
                .strip_prefix(scheme)
                .and_then(|h| h.strip_prefix("://"))
                == Some(authority) =>
        {
            Ok(())
        }
        _ => Err(refused()),
    }
}

/// `scheme://host[:port]` in lower case with the scheme's default port left out, if `text`
/// is an origin of that shape (http, https, ws or wss; no path, user or query).
fn normalized_origin(text: &str) -> Option<String> {
    let (scheme, authority) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => "80",
        "https" | "wss" => "443",
        _ => return None,
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty()
        || authority.len() > 300
        || authority.chars().any(|c| {
            matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace() || c.is_control()
        })
    {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    // A port is what follows the last ':' unless that is inside an IPv6 literal's brackets.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority.as_str(), None),
    };
    if host.is_empty() {
        return None;
    }
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(port) if port.parse::<u16>().is_err() => None,
        Some(port) if port == default_port => Some(format!("{scheme}://{host}")),
        Some(port) => Some(format!("{scheme}://{host}:{port}")),
        None => Some(format!("{scheme}://{host}")),
    }
}

/// One websocket: joins the room's group on its own channel, forwards the channel's chat
/// messages to the socket and the socket's lines to the group, and leaves when either ends.
/// Its `slot` is given back when it ends.
async fn connection(app: Arc<App>, group: String, socket: WebSocket, slot: Slot) {
    let _slot = slot;
    let layer = &app.layer;
    let channel = match layer.new_channel("chat") {
        Ok(channel) => channel,
        Err(e) => return refuse(socket, &e.to_string()).await,
    };
    if let Err(e) = layer.group_add_async(&group, &channel).await {
        return refuse(socket, &format!("cannot join {group}: {e}")).await;
    }
    app.connections.fetch_add(1, Ordering::Relaxed);
    let (mut to_client, mut from_client) = socket.split();
    // The socket's writer is shared: the forwarder sends chat lines, the reader answers
    // malformed frames. A blocked socket (a slow client) stops only this connection's
    // forwarder; its channel then fills and the room's group sends skip it.
    let (errors_tx, mut errors_rx) = tokio::sync::mpsc::channel::<String>(8);

    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + app.renew, app.renew);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + app.ping, app.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the client was last heard from, in milliseconds since the connection opened.
    let opened = Instant::now();
    let heard = AtomicU64::new(0);
    let since_opened = || u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);

    let forward = async {
        loop {
            let frame = tokio::select! {
                _ = renew.tick() => {
                    // Membership lapses group_expiry after the latest group_add: renew it
                    // while the socket is open.
                    if let Err(e) = layer.group_add_async(&group, &channel).await {
                        eprintln!("chat: renewing {channel} in {group} failed: {e}");
                    }
                    continue;
                }
                _ = ping.tick() => {
                    // Browsers answer pings by themselves; the pong keeps the socket alive.
                    if to_client.send(Frame::Ping(Bytes::new())).await.is_err() {
                        break;
                    }
                    continue;
                }
                received = layer.receive_async(&channel) => match received {
                    Ok(message) => match chat_line(&message) {
                        Some(text) => json!({ "message": text }).to_string(),
                        None => continue, // not a chat line: nothing to show
                    },
                    Err(_) => break, // the layer closed or failed: end the connection
                },
                Some(error) = errors_rx.recv() => json!({ "error": error }).to_string(),
            };
            if to_client
                .send(Frame::Text(Utf8Bytes::from(frame)))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let read = async {
        while let Some(Ok(frame)) = from_client.next().await {
            heard.store(since_opened(), Ordering::Relaxed);
            let text = match frame {
                Frame::Text(text) => text,
                Frame::Close(_) => break,
                _ => continue,
            };
            match parse_line(&text) {
                Ok(line) => {
                    let message = Message::new(CHAT_MESSAGE).with("message", line);
                    if let Err(e) = layer.group_send_async(&group, message).await {
                        let _ = errors_tx.try_send(format!("not sent: {e}"));
                    }
                }
                Err(problem) => {
                    app.refused_frames.fetch_add(1, Ordering::Relaxed);
                    let _ = errors_tx.try_send(problem);
                }
            }
        }
    };
    // A client that has gone without a word (a pulled cable, a suspended laptop) is let go,
    // even while the forwarder is stuck writing to it, so its membership does not linger.
    let watchdog = async {
        let silence = u64::try_from((app.ping * 2).as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(app.ping / 2).await;
            if since_opened().saturating_sub(heard.load(Ordering::Relaxed)) > silence {
                app.timed_out.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    };
    tokio::select! {
        () = forward => {}
        () = read => {}
        () = watchdog => {}
    }
    app.connections.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = layer.group_discard_async(&group, &channel).await {
        eprintln!("chat: leaving {group} failed: {e}");
    }
}

/// Closes a socket that could not join its room, saying why.
async fn refuse(mut socket: WebSocket, why: &str) {
    eprintln!("chat: refused a connection: {why}");
    let frame = json!({ "error": why }).to_string();
    let _ = socket.send(Frame::Text(Utf8Bytes::from(frame))).await;
    let _ = socket.send(Frame::Close(None)).await;
}

/// The text of a `chat.message`, if `message` is one.
fn chat_line(message: &Message) -> Option<&str> {
    if message.message_type() != Some(CHAT_MESSAGE) {
        return None;
    }
    message.get("message").and_then(Value::as_str)
}

/// The line in a client frame `{"message": "..."}`, or what is wrong with the frame.
fn parse_line(frame: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(frame).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("message") {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        _ => Err("expected {\"message\": <text>}".into()),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let m = app.layer.metrics();
    let mut body = json!({
        "connections": app.connections.load(Ordering::Relaxed),
        "refused_frames": app.refused_frames.load(Ordering::Relaxed),
        "timed_out": app.timed_out.load(Ordering::Relaxed),
        "sent": m.sent,
        "received": m.received,
        "rejected_full": m.rejected_full,
        "expired": m.expired,
        "group_sends": m.group_sends,
        "group_deliveries": m.group_deliveries,
        "group_skipped_full": m.group_skipped_full,
        "group_skipped_failed": m.group_skipped_failed,
        "lost": m.lost,
        "open_sockets": app.slots.load(Ordering::Relaxed),
        "max_connections": app.max_connections,
        "refused_origins": app.refused_origins.load(Ordering::Relaxed),
        "refused_full": app.refused_full.load(Ordering::Relaxed),
    });
    if let Some(groups) = rooms(&app).await {
        body["groups"] = groups;
    }
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Members per group, for whoever watches the rooms: at most [`STATS_ROOMS`] groups, their
/// members counted and not read (see `inspect`'s cost), worked out at most once per
/// [`STATS_FRESH`] however often `/stats` is asked, so asking it cannot load the layer's server.
async fn rooms(app: &App) -> Option<serde_json::Value> {
    if !app.layer.capabilities().inspect {
        return None;
    }
    // Only one request at a time works them out; the others meanwhile get the last answer.
    let last = app.rooms.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((at, groups)) = &last {
        if at.elapsed() < STATS_FRESH {
            return Some(groups.clone());
        }
    }
    /// Set while a request works the rooms out; cleared when it ends, however it ends (the
    /// client may hang up meanwhile, dropping the request).
    struct Working<'a>(&'a AtomicBool);
    impl Drop for Working<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    if app.working_out_rooms.swap(true, Ordering::AcqRel) {
        return last.map(|(_, groups)| groups);
    }
    let working = Working(&app.working_out_rooms);
    let seen = app.layer.inspect_async(STATS_ROOMS).await;
    drop(working);
    let groups: serde_json::Map<String, serde_json::Value> = seen
        .ok()?
        .groups
        .iter()
        .map(|g| (g.name.clone(), json!(g.member_count)))
        .collect();
    let groups = serde_json::Value::Object(groups);
    *app.rooms.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), groups.clone()));
    Some(groups)
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_objects_with_a_text_message() {
        assert_eq!(parse_line(r#"{"message": "hi"}"#), Ok("hi".into()));
        assert!(parse_line("hi").unwrap_err().starts_with("not JSON"));
        assert!(parse_line(r#"{"message": 3}"#).is_err());
        assert!(parse_line(r#"{"text": "hi"}"#).is_err());
    }

    #[test]
    fn rooms_are_group_names() {
        assert_eq!(room_group("lobby"), Ok("chat_lobby".into()));
        assert!(room_group("a room").is_err());
        assert!(room_group(&"x".repeat(200)).is_err());
    }

    #[test]
    fn only_chat_messages_are_shown() {
        let line = Message::new(CHAT_MESSAGE).with("message", "hi");
        assert_eq!(chat_line(&line), Some("hi"));
        assert_eq!(
            chat_line(&Message::new("other").with("message", "hi")),
            None
        );
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape_html("<a&'\">"), "&lt;a&amp;&#39;&quot;&gt;");
    }
}
