//! Hello, channels: send a message to a named channel and receive it.
//!
//! Run with `cargo run --example hello`.

use channel_layer::prelude::*;

fn main() -> Result<(), channel_layer::Error> {
    // The in-memory layer needs no server; `AnyLayer::from_url` picks a backend at run time.
    let layer = AnyLayer::from_env("CHANNEL_LAYER_URL")?;

    layer.send(
        "greetings",
        Message::new("greeting.hello").with("name", "world"),
    )?;
    let msg = layer.receive("greetings")?;
    println!(
        "received {} for {}",
        msg.message_type().unwrap_or("?"),
        msg.get("name").and_then(Value::as_str).unwrap_or("?")
    );

    // A process-specific channel: only this process receives on it.
    let inbox = layer.new_default_channel();
    layer.send(&inbox, Message::new("note").with("text", "just for me"))?;
    println!("{inbox} got {:?}", layer.receive(&inbox)?);
    Ok(())
}
