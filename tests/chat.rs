//! The chat gateway example (`examples/chat`) driven by websocket clients, without a browser:
//! joining a room, leaving it, a slow client skipped and counted, a silent client let go,
//! malformed lines refused, and
//! (with the `redis` feature) one room shared with the Django project of `examples/chat/django`
//! running the Channels tutorial's consumer under daphne.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::chat::{ChatServer, Site};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);

/// Opens a room's socket as the site's own page would in a browser: with the `Origin` of the
/// site that serves it.
async fn join(url: &str) -> Socket {
    let origin = url
        .replacen("ws://", "http://", 1)
        .split("/ws/")
        .next()
        .expect("a room socket's address")
        .to_owned();
    join_from(url, Some(&origin))
        .await
        .unwrap_or_else(|e| panic!("websocket {url}: {e}"))
}

/// Opens a websocket with `origin` as its `Origin` header (none when `None`).
async fn join_from(
    url: &str,
    origin: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("an origin header"));
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The HTTP status a refused websocket handshake was answered with.
fn refused_status(outcome: Result<Socket, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match outcome {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("refused otherwise than with an HTTP status: {e}"),
        Ok(_) => panic!("the socket was opened"),
    }
}

async fn say(socket: &mut Socket, text: &str) {
    let line = json!({ "message": text }).to_string();
    socket.send(Frame::text(line)).await.expect("send a line");
}

/// The next JSON object the server sends, within `PATIENCE`.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a frame within the patience")
            .expect("the socket is open")
            .expect("a well-formed frame");
        match frame {
            Frame::Text(text) => return serde_json::from_str(&text).expect("JSON frames"),
            Frame::Close(why) => panic!("the server closed the socket: {why:?}"),
            _ => {}
        }
    }
}

async fn next_line(socket: &mut Socket) -> String {
    let frame = next_frame(socket).await;
    frame["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected {{\"message\": ...}}, got {frame}"))
        .to_owned()
}

/// Asserts that nothing arrives for a while.
async fn hears_nothing(socket: &mut Socket, within: Duration) {
    if let Ok(frame) = tokio::time::timeout(within, socket.next()).await {
        panic!("expected silence, got {frame:?}");
    }
}

#[test]
fn the_pages_are_served_and_bad_rooms_refused() {
    let server = ChatServer::start("memory://");
    let (status, index) = server.get("/");
    assert_eq!(status, 200);
    assert!(index.contains("served by <b>Rust (axum)</b>"), "{index}");
    let (status, room) = server.get("/chat/lobby/");
    assert_eq!(status, 200);
    assert!(
        room.contains("/ws/chat/"),
        "the room page opens the room's socket"
    );
    let (status, body) = server.get("/chat/no%20spaces/");
    assert_eq!(status, 404, "{body}");
    let (status, _) = server.get(&format!("/chat/{}/", "x".repeat(120)));
    assert_eq!(status, 404, "a room whose group name is too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_reaches_every_member_of_its_room_and_no_other() {
    let server = ChatServer::start("memory://");
    let mut ada = join(&server.room_socket("lobby")).await;
    let mut bob = join(&server.room_socket("lobby")).await;
    let mut cy = join(&server.room_socket("kitchen")).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;
    server.wait_for_members("chat_kitchen", 1, PATIENCE).await;

    say(&mut ada, "hello, lobby").await;
    assert_eq!(
        next_line(&mut ada).await,
        "hello, lobby",
        "the sender hears itself"
    );
    assert_eq!(next_line(&mut bob).await, "hello, lobby");
    say(&mut bob, "hi ada").await;
    assert_eq!(next_line(&mut ada).await, "hi ada");
    assert_eq!(next_line(&mut bob).await, "hi ada");
    hears_nothing(&mut cy, Duration::from_millis(300)).await;

    let stats = server.stats();
    assert_eq!(stats["group_sends"], 2, "{stats}");
    assert_eq!(stats["group_deliveries"], 4, "{stats}");
    assert_eq!(stats["connections"], 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_socket_leaves_its_group() {
    let server = ChatServer::start("memory://");
    let mut ada = join(&server.room_socket("lobby")).await;
    let mut bob = join(&server.room_socket("lobby")).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;

    bob.close(None).await.expect("close");
    drop(bob);
    let stats = server.wait_for_members("chat_lobby", 1, PATIENCE).await;
    assert_eq!(stats["connections"], 1, "{stats}");

    say(&mut ada, "anyone?").await;
    assert_eq!(next_line(&mut ada).await, "anyone?");
    let stats = server.stats();
    assert_eq!(stats["group_deliveries"], 1, "only ada was left: {stats}");
    assert_eq!(stats["group_skipped_full"], 0, "{stats}");

    // A socket cut without a close frame leaves too.
    let cy = join(&server.room_socket("lobby")).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;
    drop(cy);
    server.wait_for_members("chat_lobby", 1, PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_skipped_and_counted_and_holds_up_nobody() {
    // Small channels, so a client that stops reading fills its channel quickly.
    let server = ChatServer::start("memory://?capacity=5");
    let mut ada = join(&server.room_socket("lobby")).await;

    // A client that never reads, with a small receive window: once its socket is full, the
    // gateway's writes to it block, and its channel fills.
    let addr = server.addr();
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr).await.expect("connect");
    let (slow, _) = tokio_tungstenite::client_async(server.room_socket("lobby"), stream)
        .await
        .expect("the slow client joins");
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;

    // Ada says a line and waits to hear it before the next, so her own channel never holds
    // more than one: every skip is the slow client's.
    let line = "x".repeat(8 * 1024);
    const LINES: usize = 400;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..LINES {
        let text = format!("{i:04} {line}");
        let said = Instant::now();
        say(&mut ada, &text).await;
        assert_eq!(
            next_line(&mut ada).await,
            text,
            "ada hears every line, in order"
        );
        slowest = slowest.max(said.elapsed());
    }
    let elapsed = started.elapsed();
    // Held up by the slow client, a line would wait for it for ever (its socket never
    // drains): every line comes back to its sender within a bound far above a hop's time.
    assert!(
        slowest < Duration::from_secs(2),
        "a line took {slowest:?} to come back to its sender beside a client that reads nothing"
    );

    let stats = server.stats();
    let skipped = stats["group_skipped_full"].as_u64().unwrap();
    let delivered = stats["group_deliveries"].as_u64().unwrap();
    assert!(
        skipped > 0,
        "the slow client's full channel was skipped: {stats}"
    );
    assert_eq!(
        delivered + skipped,
        2 * LINES as u64,
        "every member of every send was either delivered or counted as skipped: {stats}"
    );
    eprintln!(
        "{LINES} lines of 8 KiB in {elapsed:?} (slowest {slowest:?}); slow client skipped {skipped} times"
    );
    // The room goes on.
    say(&mut ada, "still here").await;
    assert_eq!(next_line(&mut ada).await, "still here");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_renews_its_membership_before_it_lapses() {
    // Memberships lapse one second after the latest group_add; connections renew every 0.2 s.
    let server = ChatServer::start_with("memory://?group_expiry=1", &["--renew", "0.2"]);
    let mut ada = join(&server.room_socket("lobby")).await;
    let mut bob = join(&server.room_socket("lobby")).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    say(&mut ada, "still in?").await;
    assert_eq!(next_line(&mut ada).await, "still in?");
    assert_eq!(next_line(&mut bob).await, "still in?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_let_go_and_leaves_its_room_while_a_live_one_stays() {
    // Pings every 0.2 s; a client silent for two of them is closed.
    let server = ChatServer::start_with("memory://", &["--ping", "0.2"]);
    let mut ada = join(&server.room_socket("lobby")).await;
    // Connected, then never read from nor written to: its pings go unanswered.
    let silent = join(&server.room_socket("lobby")).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;
    // Ada reads (and so answers pings) for well over two intervals.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while let Ok(frame) = tokio::time::timeout_at(until.into(), ada.next()).await {
        match frame
            .expect("ada's socket stays open")
            .expect("a well-formed frame")
        {
            Frame::Ping(_) => pings += 1,
            Frame::Close(why) => panic!("a client that answers pings was closed: {why:?}"),
            _ => {}
        }
    }
    assert!(
        pings >= 3,
        "ada saw {pings} pings in 1.5 s at one per 0.2 s"
    );
    let stats = server.wait_for_members("chat_lobby", 1, PATIENCE).await;
    assert_eq!(stats["timed_out"], 1, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    say(&mut ada, "still here").await;
    assert_eq!(next_line(&mut ada).await, "still here");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_answered_with_an_error_and_not_sent() {
    let server = ChatServer::start("memory://");
    let mut ada = join(&server.room_socket("lobby")).await;
    let mut bob = join(&server.room_socket("lobby")).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;
    for bad in ["hello", r#"{"message": 3}"#, r#"{"text": "hi"}"#] {
        ada.send(Frame::text(bad)).await.unwrap();
        let answer = next_frame(&mut ada).await;
        assert!(answer["error"].is_string(), "{bad}: {answer}");
    }
    hears_nothing(&mut bob, Duration::from_millis(300)).await;
    let stats = server.stats();
    assert_eq!(stats["refused_frames"], 3, "{stats}");
    assert_eq!(stats["group_sends"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_site_cannot_open_a_room() {
    let server =
        ChatServer::start_with("memory://", &["--allowed-origin", "https://friend.example"]);
    let url = server.room_socket("lobby");
    for foreign in [
        "http://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        "https://friend.example:8443",
        &format!("http://{}", server.addr().ip()),
    ] {
        assert_eq!(
            refused_status(join_from(&url, Some(foreign)).await),
            403,
            "Origin {foreign}"
        );
    }
    // The gateway's own pages, the site allowed, and clients that are not browsers.
    let own = format!("http://{}", server.addr());
    let mut ada = join_from(&url, Some(&own)).await.expect("its own origin");
    let mut bob = join_from(&url, Some("https://FRIEND.example:443"))
        .await
        .expect("an allowed origin");
    let mut cy = join_from(&url, None).await.expect("no origin");
    server.wait_for_members("chat_lobby", 3, PATIENCE).await;
    say(&mut bob, "from a friend").await;
    for socket in [&mut ada, &mut bob, &mut cy] {
        assert_eq!(next_line(socket).await, "from a friend");
    }
    let stats = server.stats();
    assert_eq!(stats["refused_origins"], 5, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_limit_are_refused_before_they_are_buffered() {
    use tokio::io::AsyncWriteExt;
    let server = ChatServer::start("memory://");
    let mut ada = join(&server.room_socket("lobby")).await;
    server.wait_for_members("chat_lobby", 1, PATIENCE).await;
    let before = server.rss_mib();
    // 20 clients each send the header of a 15 MB frame, then the bytes, as fast as the
    // gateway takes them: it must close each at the header, not buffer 300 MB.
    let mut senders = Vec::new();
    for _ in 0..20 {
        let addr = server.addr();
        senders.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let key = "dGhlIHNhbXBsZSBub25jZQ==";
            let handshake = format!(
                "GET /ws/chat/lobby/ HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
            tcp.write_all(handshake.as_bytes())
                .await
                .expect("handshake");
            let mut answer = [0u8; 1024];
            let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut answer)
                .await
                .expect("an answer");
            assert!(
                answer[..n].starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&answer[..n])
            );
            // A masked text frame of 15,000,000 bytes: FIN+text, mask bit + 127, 8-byte length.
            let len: u64 = 15_000_000;
            let mut frame = vec![0x81, 0xff];
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            let _ = tcp.write_all(&frame).await;
            let chunk = vec![b'a' ^ 1; 64 * 1024];
            let mut sent = 0u64;
            while sent < len {
                if tcp.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            sent
        }));
    }
    let mut peak = before;
    let mut written = 0;
    for sender in senders {
        while !sender.is_finished() {
            peak = peak.max(server.rss_mib());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        written += sender.await.expect("sender");
    }
    peak = peak.max(server.rss_mib());
    println!(
        "20 clients sending 15 MB frames: the gateway went from {before:.1} to {peak:.1} MiB, {written} bytes written"
    );
    assert!(
        peak - before < 16.0,
        "the gateway grew from {before:.1} to {peak:.1} MiB on oversized frames"
    );
    assert!(
        written < 20 * 15_000_000,
        "the gateway read every oversized frame whole ({written} bytes)"
    );
    // The room goes on.
    say(&mut ada, "still here").await;
    assert_eq!(next_line(&mut ada).await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_while_the_open_ones_go_on() {
    let server = ChatServer::start_with("memory://", &["--max-connections", "5"]);
    let url = server.room_socket("lobby");
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(join(&url).await);
    }
    server.wait_for_members("chat_lobby", 5, PATIENCE).await;
    for _ in 0..20 {
        assert_eq!(refused_status(join_from(&url, None).await), 503);
    }
    say(&mut open[0], "we five").await;
    for socket in &mut open {
        assert_eq!(next_line(socket).await, "we five");
    }
    // A place freed is a place taken again.
    let leaving = open.pop().expect("five");
    drop(leaving);
    server.wait_for_members("chat_lobby", 4, PATIENCE).await;
    let started = Instant::now();
    let again = loop {
        match join_from(&url, None).await {
            Ok(socket) => break socket,
            Err(_) if started.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the freed place was never given again: {e}"),
        }
    };
    open.push(again);
    let stats = server.stats();
    assert_eq!(stats["refused_full"], 20, "{stats}");
    assert_eq!(stats["max_connections"], 5, "{stats}");
}

#[cfg(feature = "redis")]
mod with_django {
    use super::*;
    use support::chat::DjangoChat;
    use support::redis_server::RedisServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rust_and_django_clients_share_one_room_over_redis() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let rust = ChatServer::start(&redis.url());
        let Some(django) = tokio::task::block_in_place(|| DjangoChat::start(&redis.url())) else {
            return;
        };
        let mut on_rust = join(&rust.room_socket("lobby")).await;
        let mut on_django = join(&django.room_socket("lobby")).await;
        // The gateway lists the group from Redis: both halves' members are in it.
        rust.wait_for_members("chat_lobby", 2, PATIENCE).await;

        say(&mut on_rust, "from rust").await;
        assert_eq!(next_line(&mut on_rust).await, "from rust");
        assert_eq!(
            next_line(&mut on_django).await,
            "from rust",
            "Django's consumer got it"
        );
        say(&mut on_django, "from django").await;
        assert_eq!(next_line(&mut on_django).await, "from django");
        assert_eq!(
            next_line(&mut on_rust).await,
            "from django",
            "the gateway got it"
        );

        // Django's consumer leaves the group when its socket closes.
        on_django.close(None).await.unwrap();
        rust.wait_for_members("chat_lobby", 1, PATIENCE).await;
        say(&mut on_rust, "alone").await;
        assert_eq!(next_line(&mut on_rust).await, "alone");
    }
}

#[cfg(feature = "redis")]
mod big_rooms {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use channel_layer::prelude::*;
    use support::redis_server::RedisServer;

    use super::*;

    /// PINGs the server over one connection until `stop`, returning the slowest answer.
    fn slowest_ping(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
        std::thread::spawn(move || {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            conn.set_nodelay(true).ok();
            let mut slowest = Duration::ZERO;
            let mut reply = [0u8; 7];
            while !stop.load(Ordering::Acquire) {
                let started = Instant::now();
                conn.write_all(b"PING\r\n").expect("ping");
                conn.read_exact(&mut reply).expect("pong");
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            slowest
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inspect_and_stats_on_a_million_member_room_leave_redis_responsive() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let fill =
            b"for i = 1, 1000000 do redis.call('ZADD', KEYS[1], ARGV[1], 'member.' .. i) end";
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        redis.query(&[
            b"EVAL",
            fill,
            b"1",
            b"asgi:group:chat_crowd",
            now.as_bytes(),
        ]);
        let server = ChatServer::start(&redis.url());
        let layer = tokio::task::block_in_place(|| AnyLayer::from_url(&redis.url())).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let pings = slowest_ping(redis.port(), stop.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            let seen = layer.inspect_async(1).await.expect("inspect");
            let crowd = &seen.groups[0];
            assert_eq!(crowd.name, "chat_crowd");
            assert_eq!(crowd.member_count, 1_000_000);
            assert_eq!(crowd.members.len(), 1);
            assert!(!seen.complete);
        }
        for _ in 0..3 {
            let stats = tokio::task::block_in_place(|| server.stats());
            assert_eq!(stats["groups"]["chat_crowd"], 1_000_000, "{stats}");
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        stop.store(true, Ordering::Release);
        let slowest = pings.join().expect("pinger");
        println!(
            "inspect(1) and /stats on a million-member room: the slowest PING meanwhile {slowest:?}"
        );
        assert!(
            slowest < Duration::from_millis(50),
            "a PING waited {slowest:?} while the room was looked at"
        );
    }
}
