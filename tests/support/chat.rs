//! The chat gateway example (`examples/chat`) and its Django half, run as subprocesses for the
//! chat tests, with a small HTTP GET for their pages and `/stats`.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::python::{python_venv, venv_python};
use super::redis_server::free_port;

/// How long a server may take to start.
const STARTUP: Duration = Duration::from_secs(60);

/// A child process killed (by its pid, through `Child`) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `chat` example.
pub struct ChatServer {
    addr: SocketAddr,
    _process: Process,
}

impl ChatServer {
    /// Starts the example on a free port with the layer `url`, and waits until it listens.
    ///
    /// # Panics
    ///
    /// When it cannot be built or does not start (with what it printed).
    pub fn start(url: &str) -> ChatServer {
        ChatServer::start_with(url, &[])
    }

    /// As [`start`](Self::start), with more of the example's arguments.
    pub fn start_with(url: &str, args: &[&str]) -> ChatServer {
        let binary = super::example::example_binary("chat");
        let mut child = Command::new(binary)
            .args(["--url", url, "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the chat example runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let process = Process(child);
        // The example prints `chat: listening on http://ADDR/` once it listens.
        let (found_tx, found_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut seen = String::new();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("chat: listening on http://") {
                    let _ = found_tx.send(Ok(rest.trim_end_matches('/').to_owned()));
                    break;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            let _ = found_tx.send(Err(seen));
            // Keep draining so the example never blocks on a full pipe.
            for _ in lines {}
        });
        let addr = match found_rx.recv_timeout(STARTUP) {
            Ok(Ok(addr)) => addr.parse().expect("the example prints its address"),
            Ok(Err(seen)) => panic!("the chat example exited before listening:\n{seen}"),
            Err(_) => panic!("the chat example did not listen within {STARTUP:?}"),
        };
        ChatServer {
            addr,
            _process: process,
        }
    }

    /// The example's process id.
    pub fn pid(&self) -> u32 {
        self._process.0.id()
    }

    /// The example's resident memory, in MiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// The example's `/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = http_get(self.addr, "/stats");
        assert_eq!(status, 200, "GET /stats: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /stats: {e}: {body}"))
    }

    /// GET `path` from the example: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// Waits (within `patience`) until `/stats` shows `members` members in `group`, and returns
    /// those stats. For a multi-threaded tokio test.
    ///
    /// # Panics
    ///
    /// When the group does not reach that size in time (with the last stats seen).
    pub async fn wait_for_members(
        &self,
        group: &str,
        members: u64,
        patience: Duration,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let stats = tokio::task::block_in_place(|| self.stats());
            if stats["groups"][group].as_u64().unwrap_or(0) == members {
                return stats;
            }
            assert!(
                started.elapsed() < patience,
                "{group} never had {members} members: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A chat site listening on loopback: the Rust example or the Django project.
pub trait Site {
    /// Where it listens.
    fn addr(&self) -> SocketAddr;

    /// `http://ADDR`, without a trailing slash.
    fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://ADDR/ws/chat/<room>/`.
    fn room_socket(&self, room: &str) -> String {
        format!("ws://{}/ws/chat/{room}/", self.addr())
    }
}

impl Site for ChatServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Site for DjangoChat {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The Django project of `examples/chat/django` served by daphne from the test venv.
pub struct DjangoChat {
    addr: SocketAddr,
    _process: Process,
}

/// The Django project's folder.
pub fn django_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat/django")
}

impl DjangoChat {
    /// Starts daphne with the chat project on a free port, its layer on `redis_url`, and waits
    /// until it serves its index page.
    ///
    /// Returns `None` (after [`super::service_missing`]) when the venv cannot be made.
    ///
    /// # Panics
    ///
    /// When daphne starts but never serves (with its output).
    pub fn start(redis_url: &str) -> Option<DjangoChat> {
        let venv = python_venv()?;
        let dir = super::scratch_root().join(format!("django-chat-{}", free_port()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        let log_path = dir.join("daphne.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let port = free_port();
        let child = Command::new(venv_python(&venv))
            .args(["-m", "daphne", "-b", "127.0.0.1", "-p", &port.to_string()])
            .arg("chatsite.asgi:application")
            .current_dir(django_dir())
            .env("CHAT_REDIS_URL", redis_url)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("the venv's python runs");
        let mut process = Process(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = process.0.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("daphne exited ({status}) before serving:\n{log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && http_get(addr, "/").0 == 200
            {
                break;
            }
            if started.elapsed() > STARTUP {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("daphne did not serve within {STARTUP:?}:\n{log}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Some(DjangoChat {
            addr,
            _process: process,
        })
    }
}

/// A plain HTTP/1.0 GET on loopback: status and body. Enough for a test's look at a page
/// (an HTTP client crate would add a stack of dependencies for this one request).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fail = |e: std::io::Error| -> (u16, String) { (0, format!("GET {path}: {e}")) };
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) => return fail(e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return fail(e);
    }
    let mut response = Vec::new();
    if let Err(e) = stream.take(16 << 20).read_to_end(&mut response) {
        return fail(e);
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}
