//! The in-memory layer's internals: memory given back after a peak.

use super::groups::MAP_FLOOR;
use super::store::{CHANNELS_FLOOR, QUEUE_FLOOR};
use super::*;

/// The slots held by all shards: their tables of channels, and their channels' queues.
fn shard_capacities(layer: &InMemoryLayer) -> (usize, usize) {
    layer.inner.shards.iter().fold((0, 0), |(t, q), shard| {
        let (table, queues) = shard.lock.lock().capacities();
        (t + table, q + queues)
    })
}

#[test]
fn tables_give_memory_back_after_a_peak() {
    const N: usize = 200_000;
    let layer = InMemoryLayer::default();
    let names: Vec<String> = (0..N)
        .map(|_| layer.new_channel("reply").unwrap())
        .collect();
    for (i, name) in names.iter().enumerate() {
        layer
            .send(name, Message::new("reply").with("n", i as i64))
            .unwrap();
        layer.group_add("everyone", name).unwrap();
        layer.group_add(&format!("own.{i}"), name).unwrap();
    }
    let (peak_table, _) = shard_capacities(&layer);
    let (peak_groups, peak_members) = layer.inner.groups.capacities();
    assert!(peak_table >= N, "{peak_table}");
    assert!(
        peak_groups >= N && peak_members >= 2 * N,
        "{peak_groups} {peak_members}"
    );

    for (i, name) in names.iter().enumerate() {
        assert!(layer.try_receive(name).is_ok());
        layer.group_discard(&format!("own.{i}"), name).unwrap();
        if i > 0 {
            layer.group_discard("everyone", name).unwrap();
        }
    }
    // The sweep forgets the drained channels (as the timer's would) and shrinks the tables.
    layer.inner.sweep();

    let (table, queues) = shard_capacities(&layer);
    assert!(
        table <= SHARDS * CHANNELS_FLOOR,
        "channel tables keep {table} slots"
    );
    assert_eq!(queues, 0);
    let (groups, members) = layer.inner.groups.capacities();
    assert!(
        groups <= MAP_FLOOR,
        "the map of groups keeps {groups} slots"
    );
    assert!(members <= MAP_FLOOR, "one member keeps {members} slots");
    assert_eq!(layer.metrics().channels, 0);
}

#[test]
fn queues_and_flushed_tables_give_memory_back() {
    const N: usize = 10_000;
    let config = LayerConfig::builder().capacity(N).build().unwrap();
    let layer = InMemoryLayer::new(config);
    for i in 0..N {
        layer
            .send("busy", Message::new("m").with("n", i as i64))
            .unwrap();
    }
    assert!(shard_capacities(&layer).1 >= N);
    for _ in 1..N {
        assert!(layer.try_receive("busy").is_ok());
    }
    layer.inner.sweep();
    // The channel stays (one message left) with a small queue.
    let (_, queues) = shard_capacities(&layer);
    assert!(queues <= 3 * QUEUE_FLOOR, "the queues keep {queues} slots");
    assert_eq!(layer.queued_len("busy"), 1);

    // A flush empties every table: a table above the floor is freed.
    for i in 0..N {
        layer.send(&format!("c.{i}"), Message::new("m")).unwrap();
    }
    assert!(shard_capacities(&layer).0 >= N);
    layer.flush().unwrap();
    assert_eq!(shard_capacities(&layer), (0, 0));
}
