//! The order pipeline from "Services, Architecture and Channels": services in one binary that
//! talk only over the channel layer, and split into processes by configuration alone.
//!
//! Four services, each owning its data and listening on its own request channel:
//! - `orders` (`orders.request`) makes the order row, then drives the rest: allocate inventory,
//!   calculate the price, charge the card, finalise inventory, finalise the order; when the
//!   payment fails for good it releases the inventory again (compensation);
//! - `inventory` (`inventory.request`) allocates, finalises and releases stock;
//! - `pricing` (`pricing.request`) prices an order, with a discount when the `discount`
//!   feature flag rides in the headers;
//! - `payments` (`payments.request`) charges cards; the processor fails now and then, once
//!   answers too late, and one card is always declined, so failure handling shows.
//!
//! Every order carries one correlation ID through every service it touches; a trace line per
//! order shows it, the services in order, and the result; the metrics come at the end.
//!
//! ```text
//! cargo run --example order_pipeline                        # everything in one process
//!
//! # Split over Redis, one process per service, and a process that places the orders:
//! export CHANNEL_LAYER_URL=redis://127.0.0.1:6379/0
//! cargo run --features redis --example order_pipeline -- --services inventory --orders 0 &
//! cargo run --features redis --example order_pipeline -- --services pricing --orders 0 &
//! cargo run --features redis --example order_pipeline -- --services payments --orders 0 &
//! cargo run --features redis --example order_pipeline -- --services orders --orders 0 &
//! cargo run --features redis --example order_pipeline -- --services none --orders 6
//! ```
//!
//! Options: `--services LIST` (comma-separated, `all` or `none`; default `all`), `--orders N`
//! (orders to place, default 6; 0 only serves), `--serve-seconds S` (how long a process that
//! places no orders serves, default 60). The layer comes from `CHANNEL_LAYER_URL`, else
//! `memory://`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use channel_layer::prelude::*;
use channel_layer::service::{Client, Context, HandlerError, Worker};

/// How long one service waits for another.
const CALL: Duration = Duration::from_millis(400);

fn text(m: &Message, key: &str) -> String {
    m.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn int(m: &Message, key: &str) -> i64 {
    m.get(key).and_then(Value::as_i64).unwrap_or_default()
}

/// The trace a service adds its name to, carried in replies.
fn trace_of(m: &Message) -> Vec<Value> {
    m.get("trace")
        .and_then(Value::as_list)
        .map(<[Value]>::to_vec)
        .unwrap_or_default()
}

mod inventory {
    use super::*;

    pub(crate) const CHANNEL: &str = "inventory.request";

    /// Stock on hand and allocations per order; only this service touches them.
    #[derive(Default)]
    struct Stock {
        on_hand: HashMap<String, i64>,
        allocated: HashMap<i64, (String, i64)>,
    }

    pub(crate) fn start(layer: &AnyLayer) -> Worker {
        let stock = std::sync::Arc::new(Mutex::new(Stock {
            on_hand: HashMap::from([("tea".into(), 10), ("cake".into(), 2), ("scone".into(), 5)]),
            ..Stock::default()
        }));
        let (a, f, r) = (stock.clone(), stock.clone(), stock);
        Worker::builder(layer.clone())
            .channel(CHANNEL)
            .threads(2)
            .handle("inventory.allocate", move |_ctx: &Context, m| {
                let (order, sku, qty) = (int(&m, "order"), text(&m, "sku"), int(&m, "qty"));
                let mut stock = a.lock().expect("stock lock");
                let left = stock.on_hand.entry(sku.clone()).or_insert(0);
                let ok = *left >= qty;
                if ok {
                    *left -= qty;
                    stock.allocated.insert(order, (sku, qty));
                }
                Ok(Some(Message::new("inventory.allocated").with("ok", ok)))
            })
            .handle("inventory.finalise", move |_ctx: &Context, m| {
                f.lock()
                    .expect("stock lock")
                    .allocated
                    .remove(&int(&m, "order"));
                Ok(Some(Message::new("inventory.finalised")))
            })
            .handle("inventory.release", move |_ctx: &Context, m| {
                let mut stock = r.lock().expect("stock lock");
                if let Some((sku, qty)) = stock.allocated.remove(&int(&m, "order")) {
                    *stock.on_hand.entry(sku).or_insert(0) += qty;
                }
                Ok(Some(Message::new("inventory.released")))
            })
            .start()
            .expect("starting the inventory service")
    }
}

mod pricing {
    use super::*;

    pub(crate) const CHANNEL: &str = "pricing.request";

    pub(crate) fn start(layer: &AnyLayer) -> Worker {
        let prices: HashMap<&str, i64> =
            HashMap::from([("tea", 250), ("cake", 400), ("scone", 300)]);
        Worker::builder(layer.clone())
            .channel(CHANNEL)
            .handle("pricing.calculate", move |ctx: &Context, m| {
                let unit = prices.get(text(&m, "sku").as_str()).copied().unwrap_or(0);
                let mut cents = unit * int(&m, "qty");
                // The flag was decided once, where the order came in, and rode along.
                let discount = ctx.flag_on("discount");
                if discount {
                    cents = cents * 9 / 10;
                }
                Ok(Some(
                    Message::new("pricing.quote")
                        .with("cents", cents)
                        .with("discount", discount),
                ))
            })
            .start()
            .expect("starting the pricing service")
    }
}

mod payments {
    use super::*;

    pub(crate) const CHANNEL: &str = "payments.request";

    pub(crate) fn start(layer: &AnyLayer) -> Worker {
        let charges = AtomicU64::new(0);
        Worker::builder(layer.clone())
            .channel(CHANNEL)
            .handle("payments.charge", move |_ctx: &Context, m| {
                let n = charges.fetch_add(1, Ordering::Relaxed);
                if text(&m, "card") == "4000-0000-0000-0002" {
                    return Ok(Some(
                        Message::new("payments.result")
                            .with("ok", false)
                            .with("reason", "declined"),
                    ));
                }
                match n % 8 {
                    // Now and then the card processor is down: an error reply, worth a retry.
                    2 => Err(HandlerError::new("card processor unavailable")),
                    // Once in a while it answers after the caller has given up.
                    5 => {
                        thread::sleep(CALL + Duration::from_millis(100));
                        Ok(Some(Message::new("payments.result").with("ok", true)))
                    }
                    _ => Ok(Some(Message::new("payments.result").with("ok", true))),
                }
            })
            .start()
            .expect("starting the payments service")
    }
}

mod orders {
    use super::*;

    pub(crate) const CHANNEL: &str = "orders.request";

    /// Charges the card, retrying what may pass on a second try (a timeout, a processor
    /// error); returns whether it was paid and what happened.
    fn charge(ctx: &Context, order: i64, cents: i64, card: &str, trace: &mut Vec<Value>) -> bool {
        for attempt in 1..=3 {
            let request = Message::new("payments.charge")
                .with("order", order)
                .with("cents", cents)
                .with("card", card);
            match ctx.request(payments::CHANNEL, request, CALL) {
                Ok(reply) if reply.get("ok").and_then(Value::as_bool) == Some(true) => {
                    trace.push(Value::from("payments"));
                    return true;
                }
                Ok(reply) => {
                    trace.push(Value::from(format!("payments({})", text(&reply, "reason"))));
                    return false;
                }
                Err(e) if attempt < 3 && (e.is_timeout() || e.is_service()) => {
                    let why = if e.is_timeout() { "timeout" } else { "error" };
                    trace.push(Value::from(format!("payments({why}, retry)")));
                }
                Err(e) => {
                    trace.push(Value::from(format!("payments(failed: {e})")));
                    return false;
                }
            }
        }
        false
    }

    pub(crate) fn start(layer: &AnyLayer) -> Worker {
        let rows = std::sync::Arc::new(Mutex::new(HashMap::<i64, String>::new()));
        let next = AtomicU64::new(1);
        Worker::builder(layer.clone())
            .channel(CHANNEL)
            .threads(4)
            .handle("order.checkout", move |ctx: &Context, m| {
                let order = next.fetch_add(1, Ordering::Relaxed) as i64;
                rows.lock().expect("rows").insert(order, "new".into());
                let mut trace = vec![Value::from("orders")];
                let (sku, qty, card) = (text(&m, "sku"), int(&m, "qty"), text(&m, "card"));
                let line = |what: &str| {
                    Message::new(what)
                        .with("order", order)
                        .with("sku", sku.as_str())
                        .with("qty", qty)
                };

                let allocated =
                    ctx.request(inventory::CHANNEL, line("inventory.allocate"), CALL)?;
                trace.push(Value::from("inventory"));
                if allocated.get("ok").and_then(Value::as_bool) != Some(true) {
                    rows.lock().expect("rows").insert(order, "cancelled".into());
                    return Ok(Some(outcome(order, "out of stock", 0, trace)));
                }
                let quote = ctx.request(pricing::CHANNEL, line("pricing.calculate"), CALL)?;
                let cents = int(&quote, "cents");
                trace.push(Value::from(
                    if quote.get("discount").and_then(Value::as_bool) == Some(true) {
                        "pricing(discount)"
                    } else {
                        "pricing"
                    },
                ));
                if charge(ctx, order, cents, &card, &mut trace) {
                    ctx.request(inventory::CHANNEL, line("inventory.finalise"), CALL)?;
                    trace.push(Value::from("inventory"));
                    rows.lock().expect("rows").insert(order, "paid".into());
                    trace.push(Value::from("orders"));
                    Ok(Some(outcome(order, "paid", cents, trace)))
                } else {
                    // Compensation: give the stock back.
                    ctx.request(inventory::CHANNEL, line("inventory.release"), CALL)?;
                    trace.push(Value::from("inventory(release)"));
                    rows.lock().expect("rows").insert(order, "cancelled".into());
                    trace.push(Value::from("orders"));
                    Ok(Some(outcome(order, "payment failed", 0, trace)))
                }
            })
            .start()
            .expect("starting the orders service")
    }

    fn outcome(order: i64, result: &str, cents: i64, trace: Vec<Value>) -> Message {
        Message::new("order.result")
            .with("order", order)
            .with("result", result)
            .with("cents", cents)
            .with("trace", Value::List(trace))
    }
}

struct Options {
    services: Vec<String>,
    orders: usize,
    serve_seconds: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        services: ["orders", "inventory", "pricing", "payments"]
            .map(String::from)
            .to_vec(),
        orders: 6,
        serve_seconds: 60,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => {
                let list = value()?;
                o.services = match list.as_str() {
                    "all" => o.services,
                    "none" => Vec::new(),
                    _ => list.split(',').map(str::to_owned).collect(),
                };
            }
            "--orders" => o.orders = value()?.parse().map_err(|_| "--orders takes a number")?,
            "--serve-seconds" => {
                o.serve_seconds = value()?
                    .parse()
                    .map_err(|_| "--serve-seconds takes a number")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let layer = match AnyLayer::from_env("CHANNEL_LAYER_URL") {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut workers = Vec::new();
    for service in &options.services {
        let worker = match service.as_str() {
            "orders" => orders::start(&layer),
            "inventory" => inventory::start(&layer),
            "pricing" => pricing::start(&layer),
            "payments" => payments::start(&layer),
            other => {
                eprintln!("error: unknown service {other:?}");
                return ExitCode::from(2);
            }
        };
        println!("serving {service} on {}", worker.channels().join(", "));
        workers.push((service.clone(), worker));
    }

    let mut failures = 0;
    if options.orders == 0 {
        thread::sleep(Duration::from_secs(options.serve_seconds));
    } else {
        let client = Client::new(layer.clone());
        let customers = [
            ("ada", "tea", 2, "4242-4242-4242-4242", true),
            ("bob", "cake", 1, "4242-4242-4242-4242", false),
            ("cy", "scone", 3, "4242-4242-4242-4242", false),
            ("dee", "cake", 2, "4242-4242-4242-4242", true),
            ("eve", "tea", 1, "4000-0000-0000-0002", false),
            ("fay", "scone", 1, "4242-4242-4242-4242", true),
        ];
        for n in 0..options.orders {
            let (who, sku, qty, card, vip) = customers[n % customers.len()];
            // The flag is decided here, once, and rides in the headers to every service.
            let checkout = Message::new("order.checkout")
                .with("customer", who)
                .with("sku", sku)
                .with("qty", qty)
                .with("card", card)
                .with_flag("discount", vip);
            match client.request(orders::CHANNEL, checkout, Duration::from_secs(5)) {
                Ok(reply) => {
                    let trace: Vec<String> = trace_of(&reply)
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    println!(
                        "order {} for {who:<3} [{}] {}: {} ({} cents)",
                        int(&reply, "order"),
                        reply.correlation_id().unwrap_or("?"),
                        trace.join(" -> "),
                        text(&reply, "result"),
                        int(&reply, "cents"),
                    );
                }
                Err(e) => {
                    failures += 1;
                    println!("order for {who:<3}: failed: {e}");
                }
            }
        }
        let m = client.metrics();
        println!(
            "client: {} requests, {} replies, {} timeouts, {} service errors, {} late replies",
            m.requests, m.replies, m.timeouts, m.service_errors, m.late_replies
        );
    }

    for (service, worker) in workers {
        let m = worker.metrics();
        let c = worker.client_metrics();
        println!(
            "{service:>9}: handled {}, errors {}, panics {}; its calls: {} requests, {} timeouts, {} late replies",
            m.handled, m.errors, m.panics, c.requests, c.timeouts, c.late_replies
        );
        worker.shutdown(Duration::from_secs(2));
    }
    let m = layer.metrics();
    println!(
        "layer: sent {}, received {}, full {}, expired {}, group deliveries {}",
        m.sent, m.received, m.rejected_full, m.expired, m.group_deliveries
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
