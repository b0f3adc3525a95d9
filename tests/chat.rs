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

async fn join(url: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("websocket {url}: {e}"));
    socket
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
    for i in 0..LINES {
        let text = format!("{i:04} {line}");
        say(&mut ada, &text).await;
        assert_eq!(
            next_line(&mut ada).await,
            text,
            "ada hears every line, in order"
        );
    }
    let elapsed = started.elapsed();

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
    eprintln!("{LINES} lines of 8 KiB in {elapsed:?}; slow client skipped {skipped} times");
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
