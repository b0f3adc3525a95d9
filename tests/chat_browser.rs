//! The chat gateway example in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, types into the room pages and reads what they show.
//!
//! - On memory: two pages on the Rust gateway chat in one room.
//! - With the `redis` feature: one page on the Rust gateway and one on the Django project of
//!   `examples/chat/django` (daphne, channels_redis, the tutorial's consumer), sharing a Redis:
//!   each types a line and both pages show both lines.
//!
//! Screenshots of each page, and of the two side by side, are kept under
//! `target/chat-browser/`. Chromium and chromedriver are Debian's `chromium` and
//! `chromium-driver` (`.ci/run` installs them when missing); `CHANNEL_LAYER_CHROMIUM` and
//! `CHANNEL_LAYER_CHROMEDRIVER` name others.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::chat::{ChatServer, Site};
use support::redis_server::free_port;

const PATIENCE: Duration = Duration::from_secs(20);

fn program(env: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.into()));
    path.exists().then_some(path)
}

/// Where the screenshots go.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chat-browser");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

/// A chromedriver of our own, on a free port, killed (by pid) when dropped.
struct Driver {
    process: Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Driver {
    fn start() -> Option<Driver> {
        let (Some(chromium), Some(chromedriver)) = (
            program("CHANNEL_LAYER_CHROMIUM", "/usr/bin/chromium"),
            program("CHANNEL_LAYER_CHROMEDRIVER", "/usr/bin/chromedriver"),
        ) else {
            support::service_missing(
                "Chromium and chromedriver",
                "no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
            );
            return None;
        };
        let port = free_port();
        let process = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < PATIENCE, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver {
            process,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
        })
    }

    /// A new headless browser (its own Chromium process and profile).
    async fn browser(&self, width: u32, height: u32) -> Browser {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts a browser session");
        Browser { client }
    }
}

/// One browser window on one page.
struct Browser {
    client: Client,
}

impl Browser {
    /// Opens a room page and waits until its websocket is open.
    async fn open_room(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css("body[data-state='open']"))
            .await
            .unwrap_or_else(|e| panic!("{url}: the page's websocket never opened: {e}"));
    }

    /// Types `text` into the page's input and presses its Send button.
    async fn say(&self, text: &str) {
        let input = self.client.find(Locator::Id("line")).await.expect("#line");
        input.send_keys(text).await.expect("typing");
        let send = self.client.find(Locator::Id("send")).await.expect("#send");
        send.click().await.expect("clicking Send");
    }

    /// The chat lines the page shows, oldest first.
    async fn lines(&self) -> Vec<String> {
        let shown = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll('#log li:not(.note)'), li => li.textContent);",
                vec![],
            )
            .await
            .expect("reading the log");
        serde_json::from_value(shown).expect("a list of lines")
    }

    /// Waits until the page shows exactly `expected`.
    async fn wait_for_lines(&self, name: &str, expected: &[&str]) {
        let started = Instant::now();
        loop {
            let lines = self.lines().await;
            if lines == expected {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{name} shows {lines:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).expect("writing the screenshot");
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Shows two screenshots side by side, each with a caption, and screenshots that.
#[cfg(feature = "redis")]
async fn side_by_side(viewer: &Browser, left: (&str, &Path), right: (&str, &Path), out: &Path) {
    let figure = |(caption, image): (&str, &Path)| {
        format!(
            "<figure><figcaption>{caption}</figcaption><img src=\"{}\"></figure>",
            image.file_name().unwrap().to_string_lossy()
        )
    };
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>\
         body {{ margin: 0; padding: 12px; background: #e8e8e8; font: 15px system-ui, sans-serif; \
         display: flex; gap: 12px; }}\
         figure {{ margin: 0; }} figcaption {{ padding: 4px 2px; font-weight: 600; }}\
         img {{ display: block; border: 1px solid #999; background: white; }}\
         </style></head><body>{}{}</body></html>",
        figure(left),
        figure(right)
    );
    let page = out.with_extension("html");
    std::fs::write(&page, html).expect("writing the side-by-side page");
    viewer
        .client
        .goto(&format!("file://{}", page.display()))
        .await
        .expect("the side-by-side page loads");
    tokio::time::sleep(Duration::from_millis(300)).await;
    viewer.screenshot(out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_the_rust_gateway_chat_in_one_room() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let server = ChatServer::start("memory://");
    let room = format!("{}/chat/lobby/", server.base_url());
    let ada = driver.browser(560, 620).await;
    let bob = driver.browser(560, 620).await;
    ada.open_room(&room).await;
    bob.open_room(&room).await;
    server.wait_for_members("chat_lobby", 2, PATIENCE).await;

    ada.say("hello from ada").await;
    ada.wait_for_lines("ada's page", &["hello from ada"]).await;
    bob.wait_for_lines("bob's page", &["hello from ada"]).await;
    bob.say("hi ada, bob here").await;
    let both = ["hello from ada", "hi ada, bob here"];
    ada.wait_for_lines("ada's page", &both).await;
    bob.wait_for_lines("bob's page", &both).await;

    let dir = artefacts();
    ada.screenshot(&dir.join("memory-ada.png")).await;
    bob.screenshot(&dir.join("memory-bob.png")).await;
    ada.close().await;
    bob.close().await;
    // Both pages left the room when their browsers closed.
    server.wait_for_members("chat_lobby", 0, PATIENCE).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_rust_and_a_page_on_django_chat_in_one_room() {
    use support::chat::DjangoChat;
    use support::redis_server::RedisServer;

    let Some(driver) = Driver::start() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rust = ChatServer::start(&redis.url());
    let Some(django) = tokio::task::block_in_place(|| DjangoChat::start(&redis.url())) else {
        return;
    };
    let on_rust = driver.browser(560, 620).await;
    let on_django = driver.browser(560, 620).await;
    on_rust
        .open_room(&format!("{}/chat/lobby/", rust.base_url()))
        .await;
    on_django
        .open_room(&format!("{}/chat/lobby/", django.base_url()))
        .await;
    // The gateway reads the group from Redis: the Django page's channel is in it too.
    rust.wait_for_members("chat_lobby", 2, PATIENCE).await;

    on_rust.say("Hello from the Rust gateway").await;
    let first = ["Hello from the Rust gateway"];
    on_rust.wait_for_lines("the Rust page", &first).await;
    on_django.wait_for_lines("the Django page", &first).await;
    on_django.say("And hello back from Django").await;
    let both = ["Hello from the Rust gateway", "And hello back from Django"];
    on_rust.wait_for_lines("the Rust page", &both).await;
    on_django.wait_for_lines("the Django page", &both).await;

    let dir = artefacts();
    let rust_png = dir.join("redis-rust.png");
    let django_png = dir.join("redis-django.png");
    on_rust.screenshot(&rust_png).await;
    on_django.screenshot(&django_png).await;
    on_django.close().await;
    on_rust.close().await;

    let viewer = driver.browser(1180, 720).await;
    side_by_side(
        &viewer,
        (&format!("Rust gateway: {}", rust.base_url()), &rust_png),
        (
            &format!("Django Channels: {}", django.base_url()),
            &django_png,
        ),
        &dir.join("rust-and-django.png"),
    )
    .await;
    viewer.close().await;
    rust.wait_for_members("chat_lobby", 0, PATIENCE).await;
}
