//! A private Redis Cluster: six `redis-server` nodes on free loopback ports (three masters,
//! each with a replica), joined with `redis-cli --cluster create`.

#![allow(dead_code, unreachable_pub)]

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, free_port};
use super::service_missing;

/// How long the cluster may take to agree on its configuration.
const SETTLE: Duration = Duration::from_secs(30);

/// The nodes of a running cluster (killed with it).
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The slot ranges it serves (masters), as `first-last` or `slot`.
    pub slots: Vec<String>,
}

impl Cluster {
    /// Starts six nodes and makes a cluster of them; `None` (after [`service_missing`]) when
    /// redis-server or redis-cli is missing.
    pub fn start() -> Option<Cluster> {
        if Command::new("redis-cli").arg("--version").output().is_err() {
            service_missing("redis-cli", "needed to create a cluster");
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let bus = free_port().to_string();
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus,
            ])?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// Until every running node says `cluster_state:ok` and sees three masters serving slots
    /// and a replica for each.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let nodes = n.command(&["CLUSTER", "NODES"]);
                let alive = nodes.lines().filter(|l| !l.contains("fail"));
                let replicas = alive.clone().filter(|l| l.contains("slave")).count();
                let masters = alive
                    .filter(|l| l.contains("master") && l.split_whitespace().count() > 8)
                    .count();
                n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && masters == 3
                    && replicas == 3
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle:\n{}",
                self.nodes[0].command(&["CLUSTER", "NODES"])
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The addresses of all nodes, `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes as a running node sees them.
    pub fn topology(&self) -> Vec<Node> {
        let running = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        running
            .command(&["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                Some(Node {
                    id: fields.first()?.trim_start_matches(['$', '+']).to_owned(),
                    port,
                    master: fields.get(2)?.contains("master") && !fields[2].contains("fail"),
                    slots: fields.iter().skip(8).map(|s| (*s).to_owned()).collect(),
                })
            })
            .collect()
    }

    /// The running node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("a node on that port")
    }
}
