//! The Redis backend over TLS (`rediss://`) against a real `redis-server` with a TLS port, its
//! certificate signed by a throwaway CA made with the `openssl` command for this test.

mod support;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{ChannelLayer, ChannelLayerExt, Message, SendError};
use support::certs::certificates;
use support::{scratch_root, service_missing};

/// A TLS-only `redis-server` on a free loopback port; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory with a fresh CA and server certificate, or `None` (after [`service_missing`])
/// without openssl or redis-server.
fn tls_dir() -> Option<PathBuf> {
    if Command::new("openssl").arg("version").output().is_err() {
        service_missing("openssl", "needed to make test certificates");
        return None;
    }
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        service_missing("redis-server", "not on PATH");
        return None;
    }
    let dir = scratch_root().join(format!(
        "test-redis-tls/{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    certificates(&dir).unwrap_or_else(|e| panic!("making certificates failed: {e}"));
    Some(dir)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Option<TlsServer> {
    let dir = tls_dir()?;
    Some(start_in(dir, &[], None))
}

/// A TLS-only redis-server in `dir` (whose certificates it uses) with `extra` arguments; as a
/// sentinel when `sentinel_config` holds its config file's text (`port` and the TLS lines are
/// added here).
fn start_in(dir: PathBuf, extra: &[&str], sentinel_config: Option<&str>) -> TlsServer {
    let port = free_port();
    let tls = [
        "--tls-port",
        &port.to_string(),
        "--tls-auth-clients",
        "no",
        "--tls-cert-file",
        "server.crt",
        "--tls-key-file",
        "server.key",
        "--tls-ca-cert-file",
        "ca.crt",
    ]
    .map(str::to_owned);
    let mut command = Command::new("redis-server");
    let log = format!("redis-{port}.log");
    if let Some(config) = sentinel_config {
        let file = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(&file, format!("port 0\nbind 127.0.0.1\n{config}")).unwrap();
        command.arg(&file).arg("--sentinel");
    } else {
        command.args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
    }
    let child = command
        .args(&tls)
        .args(extra)
        .args(["--dir", dir.to_str().unwrap(), "--logfile", &log])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning redis-server");
    let server = TlsServer { child, port, dir };
    let start = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "redis-server with TLS did not come up: {}",
            std::fs::read_to_string(server.dir.join(&log)).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
    server
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn exercise(layer: &RedisLayer) {
    layer
        .send("secure", Message::new("hello").with("n", 1))
        .expect("send over TLS");
    let got = layer
        .receive_timeout("secure", Duration::from_secs(5))
        .expect("receive over TLS");
    assert_eq!(got.message_type(), Some("hello"));
    let inbox = layer.new_channel("specific").unwrap();
    layer.group_add("tls-room", &inbox).unwrap();
    assert_eq!(
        layer
            .group_send("tls-room", Message::new("room"))
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(
        layer
            .receive_timeout(&inbox, Duration::from_secs(5))
            .unwrap()
            .message_type(),
        Some("room")
    );
}

#[test]
fn a_private_ca_certificate_given_in_code_or_by_url_verifies_the_server() {
    let Some(server) = start() else { return };
    let mut config = RedisConfig::new(format!("rediss://127.0.0.1:{}/0", server.port));
    config.tls_ca_cert = Some(std::fs::read(server.dir.join("ca.crt")).unwrap());
    exercise(&RedisLayer::new(config).unwrap());

    let url = format!(
        "rediss://127.0.0.1:{}/0?prefix=byurl&tls_ca_file={}",
        server.port,
        server.dir.join("ca.crt").display()
    );
    exercise(&RedisLayer::from_url(&url).unwrap());
}

#[test]
fn an_unverifiable_server_is_a_typed_error_and_insecure_mode_skips_verification() {
    let Some(server) = start() else { return };
    // The system's roots do not know the test CA.
    let strict =
        RedisLayer::from_url(&format!("rediss://127.0.0.1:{}/0?timeout=2", server.port)).unwrap();
    let err = strict.send("secure", Message::new("x")).unwrap_err();
    assert!(matches!(err, SendError::Backend { .. }), "{err:?}");

    let insecure =
        RedisLayer::from_url(&format!("rediss://127.0.0.1:{}/0#insecure", server.port)).unwrap();
    exercise(&insecure);

    assert!(
        RedisLayer::from_url("rediss://127.0.0.1:1/0?tls_ca_file=/nonexistent/ca.pem").is_err()
    );
}

#[test]
fn sentinel_over_tls_finds_the_master_and_verifies_both() {
    let Some(dir) = tls_dir() else { return };
    // Both servers share the directory of certificates (each removes it on drop, after
    // the other is done with it).
    let master = start_in(dir.clone(), &["--tls-replication", "yes"], None);
    let sentinel_config = format!(
        "tls-replication yes\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
         sentinel down-after-milliseconds mymaster 1000\n",
        master.port
    );
    let sentinel = start_in(dir.clone(), &[], Some(&sentinel_config));
    let url = format!(
        "rediss+sentinel://127.0.0.1:{}/mymaster/0?prefix=tlssent&tls_ca_file={}&timeout=2",
        sentinel.port,
        dir.join("ca.crt").display()
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    exercise(&layer);
    // Without the CA, neither the sentinel nor the master can be verified: a typed error.
    let strict = RedisLayer::from_url(&format!(
        "rediss+sentinel://127.0.0.1:{}/mymaster/0?timeout=1&connect_timeout=1",
        sentinel.port
    ))
    .unwrap();
    let err = strict.send("secure", Message::new("x")).unwrap_err();
    assert!(matches!(err, SendError::Backend { .. }), "{err:?}");
    drop(sentinel);
    drop(master);
}

#[test]
fn a_cluster_over_tls_routes_and_verifies_every_node() {
    let Some(dir) = tls_dir() else { return };
    if Command::new("redis-cli").arg("--version").output().is_err() {
        service_missing("redis-cli", "needed to create a cluster");
        return;
    }
    // Six TLS-only nodes, each in a directory of its own (with the same certificates).
    let nodes: Vec<TlsServer> = (0..6)
        .map(|i| {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            for file in ["ca.crt", "server.crt", "server.key"] {
                std::fs::copy(dir.join(file), node_dir.join(file)).unwrap();
            }
            let bus = free_port().to_string();
            start_in(
                node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--repl-diskless-sync-delay",
                    "0",
                ],
                None,
            )
        })
        .collect();
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["--tls", "--cacert", dir.join("ca.crt").to_str().unwrap()])
            .args(args)
            .output()
            .expect("redis-cli runs")
    };
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
    let out = cli(&create);
    assert!(
        out.status.success(),
        "cluster create over TLS failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while !nodes.iter().all(|n| {
        let out = cli(&["-p", &n.port.to_string(), "CLUSTER", "INFO"]);
        String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the TLS cluster did not settle"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let url = format!(
        "rediss+cluster://{}?prefix=tlscl&tls_ca_file={}",
        addresses.join(","),
        dir.join("ca.crt").display()
    );
    exercise(&RedisLayer::from_url(&url).unwrap());
    // Without the CA the nodes cannot be verified: the slot map is not even read.
    assert!(
        RedisLayer::from_url(&format!(
            "rediss+cluster://{}?connect_timeout=1",
            addresses[0]
        ))
        .is_err()
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
