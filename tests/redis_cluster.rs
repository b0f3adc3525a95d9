//! Redis Cluster against six real nodes (three masters with a replica each): the slot of every
//! key the layer writes agrees with the servers'.

mod support;

use channel_layer::redis::{CLUSTER_SLOTS, key_slot};
use support::redis_cluster::Cluster;

#[test]
fn six_nodes_make_three_masters_serving_every_slot_and_key_slot_agrees_with_them() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let nodes = cluster.topology();
    let masters: Vec<_> = nodes.iter().filter(|n| n.master).collect();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    assert_eq!(masters.len(), 3, "{nodes:?}");
    let served: u32 = masters
        .iter()
        .flat_map(|m| &m.slots)
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
            None => 1,
        })
        .sum();
    assert_eq!(served, u32::from(CLUSTER_SLOTS));

    // The layer's keys, as channels_redis names them, and some with hash tags.
    let mut keys: Vec<String> = vec![
        "asgi:group:chat".into(),
        "asgichat.lobby".into(),
        "asgispecific.0a1b2c3d!".into(),
        "asgi__wake__:x".into(),
        "{tag}a".into(),
        "a{tag}".into(),
        "{}x".into(),
        "{unclosed".into(),
        "é-ünïcode".into(),
    ];
    keys.extend((0..200).map(|i| format!("asgimember.{i}!")));
    let node = &cluster.nodes[0];
    for key in &keys {
        let reply = node.command(&["CLUSTER", "KEYSLOT", key]);
        let theirs: u16 = reply
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}: {reply:?}"));
        assert_eq!(key_slot(key.as_bytes()), theirs, "{key}");
    }
}
