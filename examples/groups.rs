//! Groups: a chat room where every member's channel gets each message.
//!
//! Run with `cargo run --example groups`.

use std::thread;
use std::time::Duration;

use channel_layer::prelude::*;

fn main() -> Result<(), channel_layer::Error> {
    let layer = AnyLayer::from_env("CHANNEL_LAYER_URL")?;

    // Three "websocket connections", each with its own process-specific channel.
    let mut members = Vec::new();
    for user in ["ada", "bob", "cy"] {
        let channel = layer.new_channel("websocket")?;
        layer.group_add("room.lobby", &channel)?;
        let layer = layer.clone();
        members.push(thread::spawn(
            move || -> Result<(), channel_layer::Error> {
                for _ in 0..2 {
                    let msg = layer.receive_timeout(&channel, Duration::from_secs(5))?;
                    println!(
                        "{user:>3} sees: {}",
                        msg.get("text").and_then(Value::as_str).unwrap_or("")
                    );
                }
                Ok(())
            },
        ));
    }

    let report = layer.group_send(
        "room.lobby",
        Message::new("chat.message").with("text", "hello, room"),
    )?;
    println!(
        "delivered to {} members, {} full",
        report.delivered, report.skipped_full
    );
    layer.group_send(
        "room.lobby",
        Message::new("chat.message").with("text", "bye now"),
    )?;

    for m in members {
        m.join().expect("member thread panicked")?;
    }
    let stats = layer.metrics();
    println!(
        "sent {} group messages as {} deliveries; {} received",
        stats.group_sends, stats.group_deliveries, stats.received
    );
    Ok(())
}
