//! Private `nats-server` processes for tests: one server, or a cluster of three joined by
//! routes, each with JetStream on, its own store folder and free loopback ports. Killed (by
//! pid, the processes started here only) and their folders removed on drop.

#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::redis_server::free_port;
use super::{scratch_root, service_missing};

/// The environment variable naming the `nats-server` binary (default: `nats-server` on `PATH`).
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long a server (or a cluster) may take to report itself healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

fn bin() -> String {
    std::env::var(NATS_SERVER_BIN_ENV).unwrap_or_else(|_| "nats-server".into())
}

/// Whether a `nats-server` binary runs here; if not, the skip rule is applied.
fn available() -> bool {
    match Command::new(bin()).arg("--version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            service_missing(
                "nats-server",
                &format!(
                    "`{} --version` failed: {}",
                    bin(),
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
            false
        }
        Err(e) => {
            service_missing("nats-server", &format!("cannot run `{}`: {e}", bin()));
            false
        }
    }
}

/// One `nats-server` process's settings, kept so it can be restarted as it was.
struct Node {
    name: String,
    port: u16,
    monitor: u16,
    cluster_port: Option<u16>,
    routes: Vec<u16>,
    dir: PathBuf,
    extra: Vec<String>,
    /// The server and its watchdog.
    child: Mutex<Option<(Child, Option<Child>)>>,
}

impl Node {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-n".to_owned(),
            self.name.clone(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-m".into(),
            self.monitor.to_string(),
            "-js".into(),
            "-sd".into(),
            self.dir.join("store").display().to_string(),
            "-l".into(),
            self.dir.join("nats.log").display().to_string(),
            "-c".into(),
            self.dir.join("nats.conf").display().to_string(),
        ];
        if let Some(cluster_port) = self.cluster_port {
            args.push("--cluster_name".into());
            args.push("cl".into());
            args.push("--cluster".into());
            args.push(format!("nats://127.0.0.1:{cluster_port}"));
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            args.push("--routes".into());
            args.push(routes.join(","));
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&self) {
        // Messages of a few MiB, as the layer's own limits allow (the server's default is 1 MiB).
        fs::write(self.dir.join("nats.conf"), "max_payload: 8388608\n").expect("a config file");
        let child = Command::new(bin())
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin()));
        // `sh -c 'read _; kill -9 <pid>'` reading a pipe from this process: if the test
        // process ends without dropping the server (a shared one in a static, a timeout), the
        // pipe closes and the server goes with it.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; kill -9 {} 2>/dev/null", child.id()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        *self.child.lock().unwrap() = Some((child, watchdog));
    }

    /// Kills the process with SIGKILL and waits for it.
    fn kill(&self) {
        if let Some((mut child, watchdog)) = self.child.lock().unwrap().take() {
            if let Some(mut watchdog) = watchdog {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server process.
    fn signal(&self, signal: &str) {
        let guard = self.child.lock().unwrap();
        let (child, _) = guard.as_ref().expect("the server runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// `GET path` on the monitoring port: the body, if the server answered.
    fn monitor(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.monitor)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    }

    fn healthy(&self) -> bool {
        self.monitor("/healthz")
            .is_some_and(|body| body.contains("\"ok\""))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn node(name: &str, cluster_port: Option<u16>, routes: Vec<u16>, extra: &[&str]) -> Node {
    let dir = scratch_root().join(format!(
        "nats-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("a scratch folder");
    Node {
        name: name.to_owned(),
        port: free_port(),
        monitor: free_port(),
        cluster_port,
        routes,
        dir,
        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        child: Mutex::new(None),
    }
}

fn wait_healthy(nodes: &[&Node]) {
    let start = Instant::now();
    while start.elapsed() < STARTUP_TIMEOUT {
        if nodes.iter().all(|n| !n.is_running() || n.healthy()) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let logs: Vec<String> = nodes
        .iter()
        .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
        .collect();
    panic!(
        "nats-server not healthy after {STARTUP_TIMEOUT:?}:\n{}",
        logs.join("\n")
    );
}

/// One `nats-server` with JetStream, on a free port, with its own store folder.
pub struct NatsServer {
    node: Node,
}

impl NatsServer {
    /// Starts a server; `None` (after the skip rule) when `nats-server` is not installed.
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with(&[])
    }

    /// Starts a server with extra arguments (`--user`, `--auth`, ...).
    pub fn start_with(extra: &[&str]) -> Option<NatsServer> {
        if !available() {
            return None;
        }
        let server = NatsServer {
            node: node("n0", None, Vec::new(), extra),
        };
        server.node.spawn();
        wait_healthy(&[&server.node]);
        Some(server)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.node.port)
    }

    /// Kills the server with SIGKILL (it keeps its store folder).
    pub fn kill(&self) {
        self.node.kill();
    }

    /// Starts the server again on the same port and store, and waits until it is healthy.
    pub fn restart(&self) {
        self.node.kill();
        self.node.spawn();
        wait_healthy(&[&self.node]);
    }

    /// A monitoring endpoint's body (`/jsz?streams=1`, ...).
    pub fn monitor(&self, path: &str) -> Option<String> {
        self.node.monitor(path)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.node.signal("STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.node.signal("CONT");
    }
}

/// Three `nats-server`s joined by routes into one JetStream cluster.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts the cluster and waits until every node reports JetStream healthy; `None` (after
    /// the skip rule) when `nats-server` is not installed.
    pub fn start() -> Option<NatsCluster> {
        if !available() {
            return None;
        }
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    Some(cluster_ports[i]),
                    cluster_ports.clone(),
                    &[],
                )
            })
            .collect();
        for n in &nodes {
            n.spawn();
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_healthy();
        Some(cluster)
    }

    fn wait_healthy(&self) {
        wait_healthy(&self.nodes.iter().collect::<Vec<_>>());
        // Healthy nodes may still be electing the JetStream meta leader: wait for one.
        let start = Instant::now();
        let has_leader = |n: &Node| {
            n.monitor("/jsz").is_some_and(|body| {
                body.split_once("\"leader\":").is_some_and(|(_, rest)| {
                    rest.trim_start()
                        .strip_prefix('"')
                        .is_some_and(|name| !name.starts_with('"'))
                })
            })
        };
        while !self.nodes.iter().filter(|n| n.is_running()).all(has_leader) {
            assert!(
                start.elapsed() < STARTUP_TIMEOUT,
                "the NATS cluster elected no JetStream leader in {STARTUP_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nats://` with every node's address.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("nats://{}", hosts.join(","))
    }

    /// The client ports of the nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again and waits until the cluster is healthy.
    pub fn restart(&self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
        self.wait_healthy();
    }

    /// A monitoring endpoint's body from node `i`.
    pub fn monitor(&self, i: usize, path: &str) -> Option<String> {
        self.nodes[i].monitor(path)
    }
}

/// Builds a layer, retrying for up to 30 s while the servers settle (a fresh or changed
/// cluster may refuse to make streams until its JetStream peers are current).
#[cfg(feature = "nats")]
pub fn layer_when_ready(
    config: &channel_layer::nats::NatsConfig,
) -> channel_layer::nats::NatsLayer {
    let start = Instant::now();
    loop {
        match channel_layer::nats::NatsLayer::new(config.clone()) {
            Ok(layer) => return layer,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("layer not ready yet: {e}");
                thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!("no layer for {:?}: {e}", config.servers),
        }
    }
}
