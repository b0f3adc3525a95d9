//! The NATS backend under real faults, with exact accounting: `kill -9` and restart of a
//! single server, and the loss of one node of a three-node JetStream cluster whose streams
//! keep three replicas, each mid-traffic.
//!
//! After each fault (see `support::traffic`): every message is received at most once, in
//! order per sender and channel; every message whose send returned `Ok` is received or counted
//! lost by the layer; no call outlives its deadline by more than a round trip (plus slack for
//! this machine); a receive waiting across the fault gets the message sent after it; and the
//! same layer object goes on working. Run with `--nocapture` for the figures.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use channel_layer::nats::{NatsConfig, NatsLayer};
use channel_layer::{ChannelLayer, Message};
use support::nats_server::{NatsCluster, NatsServer, layer_when_ready};
use support::traffic::{TIMEOUT, Traffic, check_recovered, check_waiting_receive, waiting_receive};

fn config_for(url: &str, replicas: usize) -> NatsConfig {
    let mut config = NatsConfig::from_url(url).expect("a NATS URL");
    config.operation_timeout = TIMEOUT;
    config.connect_timeout = Duration::from_millis(500);
    config.layer.capacity = 100_000;
    config.replicas = replicas;
    config
}

/// A layer for `url`, retrying while the servers settle (a cluster electing leaders).
fn layer(url: &str, replicas: usize) -> NatsLayer {
    layer_when_ready(&config_for(url, replicas))
}

/// Traffic on a fresh layer for `url` across `fault`, then the checks, with other layers (a
/// probe, a late sender) on `others`. Returns what the layer counted lost.
fn across_a_fault(
    url: &str,
    others: &str,
    replicas: usize,
    name: &str,
    fault: impl FnOnce(),
) -> u64 {
    let layer = layer(url, replicas);
    let waiting = waiting_receive(&layer, "faults.after");
    let traffic = Traffic::start(&layer);
    thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    fault();
    // Until a send goes through again: the server back, or the cluster's new stream leaders
    // elected. The traffic runs on meanwhile.
    let probe = self::layer(others, replicas);
    while let Err(e) = probe.send("faults.probe", Message::new("probe")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name}: no send went through for a minute: {e}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{name}: sends went through again {:?} after the fault",
        started.elapsed()
    );
    thread::sleep(Duration::from_millis(1500));
    // Takes settle what a purge without an answer removed, so the count of lost is exact.
    let (_, _, _, lost) = traffic.finish_exact(name, &layer);
    check_waiting_receive(&self::layer(others, replicas), "faults.after", waiting);
    check_recovered(&layer);
    let m = layer.metrics();
    println!(
        "{name}: reconnects {}, backend errors {}, lost {}",
        m.reconnects, m.backend_errors, m.lost
    );
    lost
}

#[test]
fn kill_and_restart_a_single_server() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    across_a_fault(
        &server.url(),
        &server.url(),
        1,
        "kill -9 and restart",
        || {
            server.kill();
            thread::sleep(Duration::from_millis(500));
            server.restart();
        },
    );
}

#[test]
fn a_frozen_server_loses_nothing_uncounted_and_no_call_outlives_its_deadline() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    across_a_fault(&server.url(), &server.url(), 1, "frozen for 3 s", || {
        server.freeze();
        thread::sleep(Duration::from_secs(3));
        server.thaw();
    });
}

#[test]
fn lose_one_node_of_a_three_node_cluster() {
    let Some(cluster) = NatsCluster::start() else {
        return;
    };
    // The layer under test is connected to the node it will lose, so its connection fails over
    // too (to the nodes the cluster told the client about); the others name all three.
    let ports = cluster.ports();
    let first = format!("nats://127.0.0.1:{}", ports[0]);
    across_a_fault(
        &first,
        &cluster.url(),
        3,
        "kill -9 one of three nodes",
        || {
            cluster.kill(0);
        },
    );
}

/// The node leading `stream` (its index), as node 0's monitoring endpoint reports it.
fn stream_leader(cluster: &NatsCluster, stream: &str) -> Option<usize> {
    for i in 0..3 {
        let Some(jsz) = cluster.monitor(i, "/jsz?streams=true") else {
            continue;
        };
        let jsz: serde_json::Value = serde_json::from_str(&jsz).ok()?;
        let accounts = jsz["account_details"].as_array()?;
        for account in accounts {
            for detail in account["stream_detail"].as_array().into_iter().flatten() {
                if detail["name"] == stream {
                    let leader = detail["cluster"]["leader"].as_str()?;
                    return leader.strip_prefix('n')?.parse().ok();
                }
            }
        }
    }
    None
}

#[test]
fn kill_the_stream_leader_mid_traffic_and_deliver_nothing_twice() {
    let Some(cluster) = NatsCluster::start() else {
        return;
    };
    let url = cluster.url();
    // The traffic's channels live in the stream of capacity 100,000 (see `config_for`).
    let stream = "asgi_ch_100000";
    let _made = layer(&url, 3);
    let leader = stream_leader(&cluster, stream).expect("the stream has a leader");
    println!("kill -9 the leader of {stream}: node n{leader}");
    // Takes are purges through the stream's replicated log: a leader change neither repeats
    // nor loses one, so the traffic's checks (every message at most once, in order; every
    // accepted message received or counted lost) hold across it.
    across_a_fault(&url, &url, 3, "kill -9 the stream leader", || {
        cluster.kill(leader);
    });
}
