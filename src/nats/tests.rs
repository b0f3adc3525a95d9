//! Tests of what the layer keeps for itself, against a private `nats-server` (the binary
//! named by `NATS_SERVER_BIN`, else `nats-server` on `PATH`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{NatsConfig, NatsLayer};
use crate::{ChannelLayer, ChannelLayerExt, Message};

struct Server {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A JetStream server on a free port; `None` (or a panic where services are required) when
/// there is no `nats-server` to run.
fn server() -> Option<Server> {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let dir = std::env::temp_dir().join(format!("channel-layer-unit-nats-{port}"));
    let spawned = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("CHANNEL_LAYER_REQUIRE_SERVICES").is_none(),
                "cannot run {bin}: {e}"
            );
            eprintln!("skipped: cannot run {bin}: {e}");
            return None;
        }
    };
    let server = Server { child, port, dir };
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

#[test]
fn reply_channels_leave_nothing_behind() {
    let Some(server) = server() else {
        return;
    };
    let url = format!("nats://127.0.0.1:{}", server.port);
    let layer = NatsLayer::new(NatsConfig::from_url(&url).unwrap()).unwrap();
    for i in 0..300 {
        let reply = layer.new_channel("reply").unwrap();
        layer
            .send(&reply, Message::new("answer").with("i", i))
            .unwrap();
        let got = layer
            .receive_timeout(&reply, Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.get("i").and_then(|v| v.as_i64()), Some(i));
        // A receive that times out on a fresh channel leaves nothing either.
        let nobody = layer.new_channel("reply").unwrap();
        assert!(
            layer
                .receive_timeout(&nobody, Duration::from_millis(1))
                .unwrap_err()
                .is_timeout()
        );
    }
    // Watches end a moment after their last receiver.
    let until = Instant::now() + Duration::from_secs(5);
    while layer.tracked() != (0, 0) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(layer.tracked(), (0, 0));
    let local = layer.inner.local.inspect(usize::MAX).unwrap();
    assert!(local.channels.is_empty(), "{:?}", local.channels);
}
