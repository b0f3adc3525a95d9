//! A Python peer driving the real channels_redis (tests/interop/peer.py) in its own venv, and
//! conversions between its JSON message convention and [`Message`].
//!
//! The JSON convention (both directions): plain JSON for null, bool, int, float, str, list and
//! map; bytes as `{"$bytes": "<standard base64>"}`; NaN and infinities as
//! `{"$float": "nan" | "inf" | "-inf"}`.

#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use channel_layer::Message;
use serde_json::json;

use super::service_missing;

mod convention;

#[allow(unused_imports)] // each test binary uses a subset
pub use convention::{
    base64_decode, base64_encode, json_to_message, json_to_value, message_to_json, same_content,
    value_to_json,
};

// ===== The venv =====

/// What the venv holds; also the marker file's content, so changing a pin reinstalls.
pub const PINNED: &[&str] = &[
    "channels==4.3.2",
    "channels_redis==4.3.0",
    "cryptography",
    "django==5.2.19",
    "daphne==4.2.3",
];

/// The environment variable naming the Python used to create the venv (default `python3`).
pub const PYTHON_ENV: &str = "CHANNEL_LAYER_PYTHON";

/// How long to wait for another process that is installing the venv.
const INSTALL_WAIT: Duration = Duration::from_secs(15 * 60);

/// A lock older than this is considered abandoned, whoever holds it.
const STALE_LOCK: Duration = Duration::from_secs(20 * 60);

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv")
}

fn marker_path(venv: &Path) -> PathBuf {
    venv.join("channel-layer-interop.installed")
}

fn marker_content() -> String {
    let mut s = String::from("# pip install, done by tests/support/python.rs\n");
    for pin in PINNED {
        s.push_str(pin);
        s.push('\n');
    }
    s
}

/// The venv's interpreter.
pub fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn venv_ready(venv: &Path) -> bool {
    venv_python(venv).exists()
        && fs::read_to_string(marker_path(venv)).is_ok_and(|m| m == marker_content())
}

/// Ensures `target/interop-venv` (under the crate) holds [`PINNED`] and returns its path.
///
/// The first call on a machine creates the venv and runs pip (a minute or two); later calls
/// find the marker file written after a successful install and return at once. Concurrent
/// callers (test threads, or several test binaries) are serialized by a lock file; only one
/// installs, the others wait for it.
///
/// Returns `None` (after [`service_missing`]) when Python or pip is unavailable or fails; pip's
/// output is printed.
pub fn python_venv() -> Option<PathBuf> {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let venv = venv_dir();
    if venv_ready(&venv) {
        return Some(venv);
    }
    let _in_process = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    if venv_ready(&venv) {
        return Some(venv);
    }
    let lock_path = venv.with_extension("lock");
    let _lock = match FileLock::acquire(&lock_path, || venv_ready(&venv)) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Some(venv), // another process installed it meanwhile
        Err(why) => {
            service_missing("the Python venv for channels_redis", &why);
            return None;
        }
    };
    match install(&venv) {
        Ok(()) => Some(venv),
        Err(why) => {
            service_missing("Python with channels_redis", &why);
            None
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{shown} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(format!(
        "{shown} failed ({}): {} (full output printed above)",
        out.status,
        last.unwrap_or("no stderr").trim()
    ))
}

fn install(venv: &Path) -> Result<(), String> {
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".into());
    run(Command::new(&python).arg("--version"))
        .map_err(|e| format!("no usable Python (set {PYTHON_ENV} to choose one): {e}"))?;
    if venv.exists() {
        // A partial install (no marker) or different pins: start over.
        fs::remove_dir_all(venv)
            .map_err(|e| format!("cannot remove stale venv {}: {e}", venv.display()))?;
    }
    eprintln!(
        "creating {} with {} (first run only)",
        venv.display(),
        PINNED.join(" ")
    );
    run(Command::new(&python).args(["-m", "venv"]).arg(venv))?;
    run(Command::new(venv_python(venv))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--timeout", "60"])
        .args(PINNED)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"))?;
    run(Command::new(venv_python(venv)).args([
        "-c",
        "import channels, channels_redis.core, cryptography, msgpack, redis",
    ]))?;
    // Written last and atomically: its presence means the venv is complete.
    let marker = marker_path(venv);
    let tmp = marker.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, marker_content())
        .and_then(|()| fs::rename(&tmp, &marker))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))
}

/// A lock file created with `create_new`, holding the owner's pid; removed on drop.
struct FileLock {
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock, waiting for its holder. Returns `Ok(None)` (lock released) if `done()`
    /// is true before or right after taking it: the work is already done.
    fn acquire(path: &Path, done: impl Fn() -> bool) -> Result<Option<FileLock>, String> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let deadline = Instant::now() + INSTALL_WAIT;
        let mut told = false;
        loop {
            if done() {
                return Ok(None);
            }
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    let _ = write!(file, "{}", std::process::id());
                    let lock = FileLock {
                        path: path.to_owned(),
                    };
                    // The previous holder may have finished between `done()` and `open`.
                    return Ok(if done() { None } else { Some(lock) });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create lock {}: {e}", path.display())),
            }
            if lock_abandoned(path) {
                let _ = fs::remove_file(path);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "waited {INSTALL_WAIT:?} for {} (another test run installing the venv?)",
                    path.display()
                ));
            }
            if !told {
                eprintln!("waiting for {} (venv being installed)", path.display());
                told = true;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether the lock's holder is gone (its pid no longer runs, where `/proc` tells) or the lock
/// is too old to be believed.
fn lock_abandoned(path: &Path) -> bool {
    let age = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if age.is_some_and(|age| age > STALE_LOCK) {
        return true;
    }
    if !Path::new("/proc/self").exists() {
        return false;
    }
    match fs::read_to_string(path).map(|s| s.trim().parse::<u32>()) {
        Ok(Ok(pid)) => !Path::new(&format!("/proc/{pid}")).exists(),
        // Being written right now, or unreadable: give the writer a moment.
        _ => age.is_some_and(|age| age > Duration::from_secs(10)),
    }
}

// ===== The peer process =====

/// How long any request may take beyond its own `timeout` before the peer counts as hung.
const REQUEST_GRACE: Duration = Duration::from_secs(20);

/// Keep at most this much of the peer's stderr.
const STDERR_LIMIT: usize = 64 * 1024;

/// A Python process running tests/interop/peer.py: one `channels_redis.core.RedisChannelLayer`
/// on one event loop, driven by JSON lines.
///
/// Dropping it asks the peer to exit (closing its Redis pools) and kills it if it does not.
pub struct PythonPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    client_prefix: String,
    grace: Duration,
}

impl PythonPeer {
    /// Starts a peer and initializes its layer with `init`: the keyword arguments of
    /// `RedisChannelLayer` as JSON (`hosts` required; `prefix`, `capacity`, `expiry`,
    /// `group_expiry`, `channel_capacity`, `symmetric_encryption_keys`, ... optional).
    ///
    /// Returns `None` (after [`service_missing`]) when the venv cannot be set up.
    ///
    /// # Panics
    ///
    /// When the peer cannot start or rejects `init` (the panic shows its stderr).
    pub fn spawn(init: serde_json::Value) -> Option<PythonPeer> {
        let venv = python_venv()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/peer.py");
        let mut child = Command::new(venv_python(&venv))
            .arg("-u")
            .arg(&script)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, replies) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > STDERR_LIMIT {
                    let mut cut = s.len() - STDERR_LIMIT / 2;
                    while !s.is_char_boundary(cut) {
                        cut += 1;
                    }
                    s.replace_range(..cut, "[...]\n");
                }
            }
        });

        let stdin = child.stdin.take();
        let mut peer = PythonPeer {
            child,
            stdin,
            replies,
            stderr,
            client_prefix: String::new(),
            grace: REQUEST_GRACE,
        };
        let mut init = init;
        match init.as_object_mut() {
            Some(obj) => {
                obj.insert("op".into(), json!("init"));
            }
            None => panic!("PythonPeer::spawn wants a JSON object, got {init}"),
        }
        let reply = peer.request(init.clone());
        if reply["ok"] != json!(true) {
            panic!(
                "peer.py rejected {init}: {reply}\n--- peer stderr ---\n{}",
                peer.stderr()
            );
        }
        peer.client_prefix = reply["client_prefix"].as_str().unwrap_or_default().into();
        Some(peer)
    }

    /// The layer's `client_prefix` (32 hex digits; its process channels are
    /// `<prefix>.<client_prefix>!<local>`).
    pub fn client_prefix(&self) -> &str {
        &self.client_prefix
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long a request may take beyond its own `timeout` (20 s unless changed).
    pub fn set_request_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// What the peer wrote to stderr so far (tracebacks of failed commands included).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends one command and waits for its reply. A command's own `"timeout"` (seconds) is
    /// added to the 20 s (see [`set_request_grace`](Self::set_request_grace)) allowed for the
    /// reply.
    ///
    /// # Panics
    ///
    /// When the peer is gone, hangs, or replies with something other than one JSON line
    /// (the panic shows its stderr).
    pub fn request(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        let own = cmd["timeout"]
            .as_f64()
            .filter(|t| t.is_finite() && *t > 0.0);
        let limit = self.grace + own.map_or(Duration::ZERO, Duration::from_secs_f64);
        let line = format!("{cmd}\n");
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin already closed")),
        };
        if let Err(e) = written {
            self.fail(&format!("cannot write {cmd} to peer.py: {e}"));
        }
        match self.replies.recv_timeout(limit) {
            Ok(reply) => serde_json::from_str(&reply).unwrap_or_else(|e| {
                self.fail(&format!(
                    "peer.py answered {cmd} with non-JSON {reply:?}: {e}"
                ))
            }),
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("peer.py did not answer {cmd} within {limit:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                self.fail(&format!(
                    "peer.py exited (status {status:?}) without answering {cmd}"
                ))
            }
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(50)); // let the stderr reader catch up
        panic!("{what}\n--- peer stderr ---\n{}", self.stderr());
    }

    /// `Ok(reply)` for `{"ok": true, ...}`, else `Err(<error class name>)` (e.g. `"ChannelFull"`,
    /// `"Timeout"`); other errors' details are printed to stderr.
    fn outcome(&self, reply: serde_json::Value) -> Result<serde_json::Value, String> {
        if reply["ok"] == json!(true) {
            return Ok(reply);
        }
        let error = reply["error"].as_str().unwrap_or("UnknownError").to_owned();
        if !matches!(error.as_str(), "ChannelFull" | "Timeout") {
            eprintln!("peer.py error {error}: {}", reply["detail"]);
        }
        Err(error)
    }

    fn expect_ok(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        let reply = self.request(cmd.clone());
        if reply["ok"] != json!(true) {
            panic!(
                "peer.py failed {cmd}: {reply}\n--- peer stderr ---\n{}",
                self.stderr()
            );
        }
        reply
    }

    /// `layer.send(channel, message)`; `Err` holds the exception class (`"ChannelFull"`,
    /// `"TypeError"`, ...).
    pub fn send(&mut self, channel: &str, message: &Message) -> Result<(), String> {
        self.send_json(channel, message_to_json(message))
    }

    /// Like [`send`](Self::send), with the message already in the JSON convention.
    pub fn send_json(&mut self, channel: &str, message: serde_json::Value) -> Result<(), String> {
        let reply = self.request(json!({"op": "send", "channel": channel, "message": message}));
        self.outcome(reply).map(drop)
    }

    /// `layer.receive(channel)` under `asyncio.wait_for(timeout)`: the message in the JSON
    /// convention, or `Err("Timeout")` (or another exception class name).
    pub fn receive(
        &mut self,
        channel: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let reply = self.request(json!({
            "op": "receive",
            "channel": channel,
            "timeout": timeout.as_secs_f64(),
        }));
        self.outcome(reply).map(|mut reply| reply["message"].take())
    }

    /// Like [`receive`](Self::receive), converted with [`json_to_message`].
    pub fn receive_message(&mut self, channel: &str, timeout: Duration) -> Result<Message, String> {
        self.receive(channel, timeout)
            .map(|json| json_to_message(&json))
    }

    /// `layer.new_channel(prefix)` (`"specific"` when `None`).
    pub fn new_channel(&mut self, prefix: Option<&str>) -> String {
        let mut cmd = json!({"op": "new_channel"});
        if let Some(prefix) = prefix {
            cmd["prefix"] = json!(prefix);
        }
        let reply = self.expect_ok(cmd);
        reply["channel"]
            .as_str()
            .unwrap_or_else(|| panic!("new_channel reply without a channel: {reply}"))
            .to_owned()
    }

    /// `layer.group_add(group, channel)`.
    pub fn group_add(&mut self, group: &str, channel: &str) {
        self.expect_ok(json!({"op": "group_add", "group": group, "channel": channel}));
    }

    /// `layer.group_discard(group, channel)`.
    pub fn group_discard(&mut self, group: &str, channel: &str) {
        self.expect_ok(json!({"op": "group_discard", "group": group, "channel": channel}));
    }

    /// `layer.group_send(group, message)`; returns what channels_redis logged meanwhile (e.g.
    /// `"1 of 1 channels over capacity in group g"`).
    pub fn group_send(&mut self, group: &str, message: &Message) -> Vec<String> {
        let reply = self.expect_ok(json!({
            "op": "group_send",
            "group": group,
            "message": message_to_json(message),
        }));
        reply["logs"]
            .as_array()
            .map(|logs| {
                logs.iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `layer.flush()`: deletes every key under the layer's prefix.
    pub fn flush(&mut self) {
        self.expect_ok(json!({"op": "flush"}));
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Some(mut stdin) = self.stdin.take() {
                let _ = stdin.write_all(b"{\"op\": \"exit\"}\n");
                let _ = stdin.flush();
                // Dropping stdin closes it: the peer exits even if it missed the command.
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl fmt::Debug for PythonPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PythonPeer")
            .field("pid", &self.child.id())
            .field("client_prefix", &self.client_prefix)
            .finish()
    }
}
