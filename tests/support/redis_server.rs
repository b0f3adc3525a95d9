//! A private `redis-server` per test, after redis-rs's `RedisServer`: a free loopback port, a
//! fresh directory, no persistence, a log file shown when start-up fails, kill-and-wait on drop.

#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use super::{scratch_root, service_missing};

/// The environment variable naming the `redis-server` binary to run (default: `redis-server`
/// on `PATH`).
pub const REDIS_SERVER_BIN_ENV: &str = "REDIS_SERVER_BIN";

/// How long a server may take to answer `PING` after it is spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How many fresh ports `start` tries when the chosen one was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// How long `restart` keeps retrying while the old port is still unavailable.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// Read/write timeout of [`RedisServer::command`] connections.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` process owned by one test, listening on `127.0.0.1:<port>`.
///
/// Dropping it kills the process, waits for it, and removes its directory.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    bin: String,
    process: Mutex<Option<Process>>,
    /// Extra `redis-server` arguments, and the password they set (`--requirepass`), if any.
    options: Mutex<Options>,
}

#[derive(Clone, Default)]
struct Options {
    args: Vec<String>,
    password: Option<String>,
}

impl Options {
    fn new(args: &[&str]) -> Options {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let password = args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| args.get(i + 1).cloned());
        Options { args, password }
    }

    /// Gives `--cluster-port`, if there is one, another free port.
    fn new_cluster_port(&mut self) {
        if let Some(i) = self.args.iter().position(|a| a == "--cluster-port") {
            if let Some(value) = self.args.get_mut(i + 1) {
                *value = free_port().to_string();
            }
        }
    }
}

/// One RESP2 reply, as [`RedisServer::query`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG`, ...
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bulk string; `None` for the nil bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` for the nil array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The bulk strings of an array reply (nil elements skipped); empty for anything else.
    pub fn bulks(&self) -> Vec<Vec<u8>> {
        match self {
            Reply::Array(Some(items)) => items
                .iter()
                .filter_map(|item| match item {
                    Reply::Bulk(Some(b)) => Some(b.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A running `redis-server` and its watchdog.
///
/// The watchdog is `sh -c 'read _; kill -9 <redis pid>'` with its stdin piped from this test
/// process: if the test process dies without dropping the [`RedisServer`] (killed by a timeout,
/// `std::process::exit`, a server leaked into a thread still running at exit), the pipe closes,
/// `read` returns, and the server goes with it. Normally the watchdog is stopped first.
struct Process {
    redis: Child,
    watchdog: Option<Child>,
}

impl Process {
    fn start(redis: Child) -> Process {
        let watchdog = if cfg!(unix) {
            Command::new("sh")
                .arg("-c")
                .arg(format!("read _; kill -9 {} 2>/dev/null", redis.id()))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        } else {
            None
        };
        Process { redis, watchdog }
    }

    /// Kills and reaps the watchdog, then the server.
    fn stop(mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

/// How one attempt to bring a server up ended.
enum Startup {
    Ready(Process),
    /// The port was taken (`Address already in use`): worth retrying.
    PortTaken(String),
}

impl RedisServer {
    /// Starts a server on a free loopback port in a fresh directory and waits until it answers
    /// `PING`.
    ///
    /// Returns `None` (after [`service_missing`]) only when the binary cannot be run at all.
    ///
    /// # Panics
    ///
    /// When the server starts but never answers (the panic shows its log), or when
    /// `CHANNEL_LAYER_REQUIRE_SERVICES=1` and the binary is missing.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Why no server can be started here, if none can (the binary cannot be run), after
    /// [`service_missing`]: for a fixture's `unavailable` check.
    ///
    /// # Panics
    ///
    /// When `CHANNEL_LAYER_REQUIRE_SERVICES=1` and the binary is missing.
    pub fn unavailable() -> Option<String> {
        let bin = std::env::var(REDIS_SERVER_BIN_ENV).unwrap_or_else(|_| "redis-server".into());
        let why = check_binary(&bin).err()?;
        service_missing("redis-server", &why);
        Some(format!("redis-server cannot run: {why}"))
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments (`--appendonly yes`,
    /// `--requirepass secret`, ...). A password set so is used by [`command`](Self::command)
    /// and [`query`](Self::query).
    pub fn start_with(args: &[&str]) -> Option<RedisServer> {
        let mut options = Options::new(args);
        let bin = std::env::var(REDIS_SERVER_BIN_ENV).unwrap_or_else(|_| "redis-server".into());
        if let Err(why) = check_binary(&bin) {
            service_missing("redis-server", &why);
            return None;
        }
        let dir = fresh_dir();
        let mut last = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            if attempt > 0 {
                // The port taken may have been the cluster bus port: pick that afresh too.
                options.new_cluster_port();
            }
            let port = free_port();
            match spawn_and_wait(&bin, port, &dir, &options) {
                Startup::Ready(process) => {
                    return Some(RedisServer {
                        port,
                        dir,
                        bin,
                        process: Mutex::new(Some(process)),
                        options: Mutex::new(options),
                    });
                }
                Startup::PortTaken(log) => last = log,
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "redis-server could not get a free port in {PORT_ATTEMPTS} attempts; last log:\n{last}"
        );
    }

    /// The TCP port the server listens on (kept across [`kill`](Self::kill) and
    /// [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's directory (log file and any dump), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        read_logs(&self.dir)
    }

    /// Kills the server abruptly (like SIGKILL) and waits for it to exit. The port stays this
    /// server's: [`restart`](Self::restart) brings it back there. Does nothing if it is down.
    pub fn kill(&self) {
        let process = self.process().take();
        if let Some(process) = process {
            process.stop();
        }
    }

    /// Starts the server again on the same port and directory (empty: nothing is persisted)
    /// and waits until it answers `PING`. Kills the running one first, if any.
    ///
    /// # Panics
    ///
    /// When the server does not come back (the panic shows its log).
    pub fn restart(&self) {
        let options = self.options().clone();
        self.restart_as(options);
    }

    /// Restarts the server (as [`restart`](Self::restart)) with other extra arguments, which
    /// then stay.
    pub fn restart_with(&self, args: &[&str]) {
        self.restart_as(Options::new(args));
    }

    fn restart_as(&self, options: Options) {
        self.kill();
        *self.options.lock().unwrap_or_else(|p| p.into_inner()) = options.clone();
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match spawn_and_wait(&self.bin, self.port, &self.dir, &options) {
                Startup::Ready(process) => {
                    *self.process() = Some(process);
                    return;
                }
                Startup::PortTaken(log) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "redis-server could not listen on port {} again within {:?}; log:\n{log}",
                            self.port, RESTART_PORT_WAIT
                        );
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The server's process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process().as_ref().map(|p| p.redis.id())
    }

    /// Stops the server's process (SIGSTOP): it keeps its sockets and memory, and answers
    /// nothing until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.pid().expect("the server is running");
        let status = Command::new("kill")
            .arg(which)
            .arg(pid.to_string())
            .status()
            .expect("kill can be run");
        assert!(status.success(), "kill {which} {pid} failed");
    }

    fn options(&self) -> MutexGuard<'_, Options> {
        self.options.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the process is alive (it may still be starting up).
    pub fn is_running(&self) -> bool {
        match self.process().as_mut() {
            Some(process) => matches!(process.redis.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends one command over a fresh connection and returns the raw RESP reply as text
    /// (lossy UTF-8), e.g. `"+PONG\r\n"`, `":3\r\n"`, `"*1\r\n$3\r\nkey\r\n"`.
    ///
    /// Meant for inspecting and resetting *this* server (`ZCARD`, `KEYS *`, `FLUSHALL`).
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the reply is malformed.
    pub fn command(&self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (_, raw) = self.exchange(&args);
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Sends one command (binary-safe arguments) over a fresh connection and returns the
    /// parsed reply.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the reply is malformed.
    pub fn query(&self, args: &[&[u8]]) -> Reply {
        self.exchange(args).0
    }

    fn exchange(&self, args: &[&[u8]]) -> (Reply, Vec<u8>) {
        let password = self.options().password.clone();
        resp_exchange_as(self.port, args, COMMAND_TIMEOUT, password.as_deref()).unwrap_or_else(
            |e| {
                panic!(
                    "redis command {:?} on port {} failed: {e}\nserver log:\n{}",
                    args.iter()
                        .map(|a| String::from_utf8_lossy(a))
                        .collect::<Vec<_>>(),
                    self.port,
                    self.log()
                )
            },
        )
    }

    fn process(&self) -> MutexGuard<'_, Option<Process>> {
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("running", &self.is_running())
            .finish()
    }
}

// ===== Start-up =====

fn check_binary(bin: &str) -> Result<(), String> {
    match Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{bin} --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "cannot run `{bin}` ({e}); install Redis ≥ 5 or set {REDIS_SERVER_BIN_ENV}"
        )),
    }
}

/// A fresh, empty `<scratch>/test-redis/<pid>-<n>` directory.
fn fresh_dir() -> PathBuf {
    let root = scratch_root().join("test-redis");
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| sweep_dead(&root));
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir); // left over by an earlier run with the same pid
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create redis test dir {}: {e}", dir.display()));
    dir
}

/// Removes the directories of test processes that died without dropping their servers
/// (where `/proc` tells which processes are alive).
fn sweep_dead(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.split('-').next());
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A port the OS just handed out on 127.0.0.1 (free now; someone may take it before we do).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

fn read_logs(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let stderr = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let stdout = fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
    let mut all = format!("--- {}/redis.log ---\n{log}", dir.display());
    if !stderr.trim().is_empty() {
        all.push_str(&format!("--- stderr ---\n{stderr}"));
    }
    if !stdout.trim().is_empty() {
        all.push_str(&format!("--- stdout ---\n{stdout}"));
    }
    all
}

fn port_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("Could not create server TCP")
}

/// Spawns `redis-server` on `port` and waits for `+PONG`.
fn spawn_and_wait(bin: &str, port: u16, dir: &Path, options: &Options) -> Startup {
    let output = |name: &str| {
        fs::File::create(dir.join(name))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.join(name).display()))
    };
    // Only log lines written by this attempt decide whether the port was taken.
    let log_start = fs::metadata(dir.join("redis.log")).map_or(0, |m| m.len() as usize);
    let taken = || {
        let log = fs::read(dir.join("redis.log")).unwrap_or_default();
        let stderr = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        port_taken(&String::from_utf8_lossy(
            log.get(log_start..).unwrap_or_default(),
        )) || port_taken(&stderr)
    };
    let redis = Command::new(bin)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(&options.args)
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(output("stdout.log"))
        .stderr(output("stderr.log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));

    let mut process = Process::start(redis);

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = process.redis.try_wait() {
            process.stop();
            let log = read_logs(dir);
            if taken() {
                return Startup::PortTaken(log);
            }
            panic!("redis-server on port {port} exited during start-up ({status}); log:\n{log}");
        }
        if answers_as(port, process.redis.id(), options.password.as_deref()) {
            return Startup::Ready(process);
        }
        if Instant::now() >= deadline {
            process.stop();
            let log = read_logs(dir);
            if taken() {
                return Startup::PortTaken(log);
            }
            panic!(
                "redis-server on port {port} did not answer PING within {STARTUP_TIMEOUT:?}; log:\n{log}"
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server on `port` answers `PING` and is process `pid` (not another test's
/// server that grabbed the port first).
fn answers_as(port: u16, pid: u32, password: Option<&str>) -> bool {
    let timeout = Duration::from_millis(500);
    if !matches!(
        resp_exchange_as(port, &[b"PING"], timeout, password),
        Ok((Reply::Simple(s), _)) if s == "PONG"
    ) {
        return false;
    }
    match resp_exchange_as(port, &[b"INFO", b"server"], timeout, password) {
        Ok((Reply::Bulk(Some(info)), _)) => String::from_utf8_lossy(&info)
            .lines()
            .any(|line| line.trim() == format!("process_id:{pid}")),
        _ => false,
    }
}

// ===== A tiny RESP2 client =====

/// Connects, sends one command, reads one complete reply: `(parsed, raw bytes)`.
fn resp_exchange(port: u16, args: &[&[u8]], timeout: Duration) -> io::Result<(Reply, Vec<u8>)> {
    resp_exchange_as(port, args, timeout, None)
}

/// As [`resp_exchange`], logging in with `password` first.
fn resp_exchange_as(
    port: u16,
    args: &[&[u8]],
    timeout: Duration,
    password: Option<&str>,
) -> io::Result<(Reply, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    if let Some(password) = password {
        stream.write_all(&encode_command(&[b"AUTH", password.as_bytes()]))?;
    }
    stream.write_all(&encode_command(args))?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    if password.is_some() {
        read_reply(&mut reader, &mut raw)?;
        raw.clear();
    }
    let reply = read_reply(&mut reader, &mut raw)?;
    Ok((reply, raw))
}

fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn malformed(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read_line(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    raw.extend_from_slice(&line);
    if !line.ends_with(b"\r\n") {
        return Err(malformed(format!(
            "truncated reply line {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| malformed("non-UTF-8 reply header"))
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse()
        .map_err(|_| malformed(format!("bad length {s:?}")))
}

fn read_reply(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Reply> {
    let line = read_line(reader, raw)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => parse_len(rest).map(Reply::Int),
        "$" => {
            let Ok(len) = usize::try_from(parse_len(rest)?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            raw.extend_from_slice(&body);
            if !body.ends_with(b"\r\n") {
                return Err(malformed("bulk string without CRLF"));
            }
            body.truncate(len);
            Ok(Reply::Bulk(Some(body)))
        }
        "*" => {
            let Ok(n) = usize::try_from(parse_len(rest)?) else {
                return Ok(Reply::Array(None));
            };
            let items = (0..n)
                .map(|_| read_reply(reader, raw))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(malformed(format!("unknown reply {line:?}"))),
    }
}

// ===== Sentinel =====

/// A `redis-server --sentinel` watching one master, on a free loopback port in a fresh
/// directory (its config file, which a sentinel rewrites, and its log live there).
pub struct Sentinel {
    port: u16,
    dir: PathBuf,
    process: Mutex<Option<Process>>,
    password: Option<String>,
}

impl Sentinel {
    /// Starts a sentinel that monitors `master` (named `name`) with `quorum`, declaring it
    /// down after one second without an answer. `None` (after [`service_missing`]) when
    /// redis-server cannot run.
    pub fn start(name: &str, master: &RedisServer, quorum: usize) -> Option<Sentinel> {
        Sentinel::start_with(name, master, quorum, None, None)
    }

    /// As [`start`](Self::start), logging in to the master (and replicas) with
    /// `master_password`, and asking clients (other sentinels too) for `password`.
    pub fn start_with(
        name: &str,
        master: &RedisServer,
        quorum: usize,
        master_password: Option<&str>,
        password: Option<&str>,
    ) -> Option<Sentinel> {
        let bin = std::env::var(REDIS_SERVER_BIN_ENV).unwrap_or_else(|_| "redis-server".into());
        if let Err(why) = check_binary(&bin) {
            service_missing("redis-server", &why);
            return None;
        }
        let dir = fresh_dir();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = dir.join("sentinel.conf");
            fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
                     sentinel monitor {name} 127.0.0.1 {mport} {quorum}\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 4000\n\
                     sentinel parallel-syncs {name} 1\n{auth}",
                    dir = dir.display(),
                    log = dir.join("redis.log").display(),
                    mport = master.port(),
                    auth = master_password
                        .map(|p| format!("sentinel auth-pass {name} {p}\n"))
                        .unwrap_or_default()
                        + &password
                            .map(|p| format!("requirepass {p}\nsentinel sentinel-pass {p}\n"))
                            .unwrap_or_default(),
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new(&bin)
                .arg(&config)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("stderr.log")).expect("stderr.log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {bin} --sentinel: {e}"));
            let mut process = Process::start(child);
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            loop {
                if let Ok(Some(_)) = process.redis.try_wait() {
                    process.stop();
                    break; // the port was probably taken: try another
                }
                if matches!(
                    resp_exchange_as(port, &[b"PING"], Duration::from_millis(300), password),
                    Ok((Reply::Simple(s), _)) if s == "PONG"
                ) {
                    return Some(Sentinel {
                        port,
                        dir,
                        process: Mutex::new(Some(process)),
                        password: password.map(str::to_owned),
                    });
                }
                if Instant::now() >= deadline {
                    process.stop();
                    panic!(
                        "sentinel on port {port} did not answer PING; log:\n{}",
                        read_logs(&dir)
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "a sentinel could not get a free port; log:\n{}",
            read_logs(&dir)
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns the raw reply as text.
    pub fn command(&self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (_, raw) =
            resp_exchange_as(self.port, &args, COMMAND_TIMEOUT, self.password.as_deref())
                .unwrap_or_else(|e| {
                    panic!("sentinel command failed: {e}\n{}", read_logs(&self.dir))
                });
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// The master's port as this sentinel sees it now.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        match resp_exchange_as(
            self.port,
            &[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()],
            COMMAND_TIMEOUT,
            self.password.as_deref(),
        ) {
            Ok((Reply::Array(Some(parts)), _)) => match parts.get(1) {
                Some(Reply::Bulk(Some(p))) => String::from_utf8_lossy(p).parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_logs(&self.dir)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let process = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(process) = process {
            process.stop();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
