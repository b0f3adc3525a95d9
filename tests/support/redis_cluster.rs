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
                // Replicas copy their master at once (by default a diskless copy waits 5 s).
                "--repl-diskless-sync-delay",
                "0",
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
        // And every replica holds its master's data (only such a replica can take over).
        let deadline = Instant::now() + SETTLE;
        for node in &cluster.nodes {
            loop {
                let info = node.command(&["INFO", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync:\n{info}");
                thread::sleep(Duration::from_millis(50));
            }
        }
        Some(cluster)
    }

    /// Until every running node says `cluster_state:ok` and sees three masters serving slots
    /// and a replica for each.
    pub fn wait_until_ok(&self) {
        self.wait_until(3);
    }

    /// Until every running node says `cluster_state:ok` and sees three masters serving slots
    /// and `replicas` replicas that have not failed.
    pub fn wait_until(&self, replicas: usize) {
        let expected = replicas;
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
                    && replicas == expected
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

    /// The master serving `slot` now.
    pub fn master_of(&self, slot: u16) -> Node {
        self.topology()
            .into_iter()
            .filter(|n| n.master)
            .find(|n| {
                n.slots.iter().any(|r| {
                    let (a, b) = match r.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap_or(u16::MAX), b.parse().unwrap_or(0)),
                        None => (r.parse().unwrap_or(u16::MAX), r.parse().unwrap_or(0)),
                    };
                    (a..=b).contains(&slot)
                })
            })
            .expect("a master serves every slot")
    }

    /// Moves `slots` slots from the master `from` to the master `to` with `redis-cli --cluster
    /// reshard`, keys and all.
    pub fn reshard(&self, from: &Node, to: &Node, slots: usize) -> String {
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", to.port)])
            .args(["--cluster-from", &from.id, "--cluster-to", &to.id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "reshard failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The running node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("a node on that port")
    }
}
