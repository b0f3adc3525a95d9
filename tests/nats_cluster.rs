//! The NATS backend on a three-node JetStream cluster (three `nats-server` processes joined by
//! routes), its streams and group bucket with three replicas: the whole conformance suite,
//! blocking and async, each layer connected to all three nodes.

mod support;

use std::sync::OnceLock;

use channel_layer::nats::NatsConfig;
use channel_layer::{AnyLayer, LayerConfig};
use support::nats_server::{NatsCluster, layer_when_ready};

fn shared() -> &'static NatsCluster {
    started().as_ref().expect("checked by unavailable()")
}

fn started() -> &'static Option<NatsCluster> {
    static CLUSTER: OnceLock<Option<NatsCluster>> = OnceLock::new();
    CLUSTER.get_or_init(NatsCluster::start)
}

/// Why the cases on the shared cluster cannot run here, if they cannot (each then skips itself).
fn unavailable() -> Option<&'static str> {
    started()
        .is_none()
        .then_some("no cluster of servers could be started")
}

fn served(config: LayerConfig) -> AnyLayer {
    let mut nats = NatsConfig::from_url(&shared().url()).expect("a NATS URL");
    nats.layer = config;
    nats.replicas = 3;
    nats.prefix = support::fresh_prefix("c");
    AnyLayer::new(layer_when_ready(&nats))
}

mod blocking {
    channel_layer::conformance_tests!(super::served, unavailable = super::unavailable);
}

mod on_executor {
    channel_layer::async_conformance_tests!(
        super::served,
        futures::executor::block_on,
        unavailable = super::unavailable
    );
}
