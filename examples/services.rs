//! Services in one binary, talking only over the channel layer.
//!
//! Two services, `inventory` and `pricing`, each own their data and listen on a request
//! channel. A client sends each request with a fresh reply channel (`new_channel`) and a
//! correlation ID, and waits for the answer there. Nothing but the layer connects them, so
//! either service could move to its own process by switching the layer's URL.
//!
//! Run with `cargo run --example services`
//! (or `CHANNEL_LAYER_URL=memory://?capacity=500 cargo run --example services`).

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use channel_layer::prelude::*;

/// Serves requests on `channel` with `handle`, replying to each request's `reply_to` channel.
fn serve(
    layer: AnyLayer,
    channel: &'static str,
    mut handle: impl FnMut(&Message) -> Message + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while let Ok(request) = layer.receive(channel) {
            if request.message_type() == Some("service.stop") {
                break;
            }
            let reply_to = request
                .get("reply_to")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let mut reply = handle(&request);
            if let Some(id) = request.get("correlation_id") {
                reply.insert("correlation_id", id.clone());
            }
            if let Some(reply_to) = reply_to {
                // A full reply channel means the caller gave up; the layer counts it.
                let _ = layer.send(&reply_to, reply);
            }
        }
    })
}

/// Sends `request` to `channel` and waits for the reply on a fresh process-specific channel.
fn call(
    layer: &AnyLayer,
    channel: &str,
    request: Message,
    id: &str,
) -> Result<Message, channel_layer::Error> {
    let reply_to = layer.new_channel("reply")?;
    let request = request
        .with("reply_to", reply_to.as_str())
        .with("correlation_id", id);
    layer.send(channel, request)?;
    Ok(layer.receive_timeout(&reply_to, Duration::from_secs(2))?)
}

fn main() -> Result<(), channel_layer::Error> {
    let layer = AnyLayer::from_env("CHANNEL_LAYER_URL")?;

    // The inventory service owns the stock levels.
    let mut stock: HashMap<String, i64> = HashMap::from([("tea".into(), 3), ("cake".into(), 1)]);
    let inventory = serve(layer.clone(), "inventory.request", move |req| {
        let sku = req.get("sku").and_then(Value::as_str).unwrap_or_default();
        let left = stock.entry(sku.to_owned()).or_insert(0);
        let ok = *left > 0;
        if ok {
            *left -= 1;
        }
        Message::new("inventory.reserved")
            .with("ok", ok)
            .with("left", *left)
    });

    // The pricing service owns the price list.
    let prices: HashMap<&str, i64> = HashMap::from([("tea", 250), ("cake", 400)]);
    let pricing = serve(layer.clone(), "pricing.request", move |req| {
        let sku = req.get("sku").and_then(Value::as_str).unwrap_or_default();
        Message::new("pricing.quote").with("cents", prices.get(sku).copied().unwrap_or(0))
    });

    for (n, sku) in ["tea", "cake", "cake", "tea"].into_iter().enumerate() {
        let id = format!("order-{n}");
        let reserved = call(
            &layer,
            "inventory.request",
            Message::new("inventory.reserve").with("sku", sku),
            &id,
        )?;
        let ok = reserved.get("ok").and_then(Value::as_bool) == Some(true);
        if !ok {
            println!("{id}: {sku:<4} out of stock");
            continue;
        }
        let quote = call(
            &layer,
            "pricing.request",
            Message::new("pricing.quote").with("sku", sku),
            &id,
        )?;
        println!(
            "{id}: {sku:<4} reserved ({} left), price {} cents [correlation {}]",
            reserved.get("left").and_then(Value::as_i64).unwrap_or(0),
            quote.get("cents").and_then(Value::as_i64).unwrap_or(0),
            quote
                .get("correlation_id")
                .and_then(Value::as_str)
                .unwrap_or("?"),
        );
    }

    layer.send("inventory.request", Message::new("service.stop"))?;
    layer.send("pricing.request", Message::new("service.stop"))?;
    inventory.join().expect("inventory service panicked");
    pricing.join().expect("pricing service panicked");

    let m = layer.metrics();
    println!(
        "metrics: sent {}, received {}, full {}, expired {}",
        m.sent, m.received, m.rejected_full, m.expired
    );
    Ok(())
}
