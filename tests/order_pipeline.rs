//! The main example, `examples/order_pipeline.rs`: all-in-one on the in-memory default, and
//! split over a spawned `redis-server`, one process per service plus one placing the orders,
//! with nothing but `CHANNEL_LAYER_URL` and `--services` changed.

mod support;

use std::process::{Command, Output};

use support::example::example_binary;

/// What every run of six orders must print: one line per order, with its correlation ID and
/// the services it went through, and the right outcome for each customer.
fn check_orders(stdout: &str) {
    let orders: Vec<&str> = stdout.lines().filter(|l| l.starts_with("order ")).collect();
    assert_eq!(orders.len(), 6, "six orders in:\n{stdout}");
    for line in &orders {
        let id = line
            .split('[')
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or("");
        assert_eq!(id.len(), 32, "a correlation ID on {line:?}");
        assert!(line.contains("orders -> inventory"), "{line}");
    }
    let find = |who: &str| {
        orders
            .iter()
            .find(|l| l.contains(&format!(" for {who}")))
            .unwrap_or_else(|| panic!("{who} in {stdout}"))
    };
    assert!(
        find("ada").contains("pricing(discount)") && find("ada").ends_with("paid (450 cents)"),
        "{stdout}"
    );
    assert!(find("bob").contains("paid"), "{stdout}");
    assert!(
        find("eve").contains("payments(declined) -> inventory(release)"),
        "{stdout}"
    );
    assert!(find("eve").contains("payment failed"), "{stdout}");
    assert!(
        stdout.contains("payments(error, retry)"),
        "a failed charge is retried:\n{stdout}"
    );
    assert!(stdout.contains("client: 6 requests, 6 replies"), "{stdout}");
}

fn output_text(output: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn runs_all_in_one_on_the_in_memory_default() {
    let output = Command::new(example_binary("order_pipeline"))
        .env_remove("CHANNEL_LAYER_URL")
        .output()
        .expect("the example runs");
    assert!(output.status.success(), "{}", output_text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    check_orders(&stdout);
    assert!(
        stdout.contains("payments(timeout, retry)"),
        "a slow charge times out and is retried:\n{stdout}"
    );
    assert!(
        stdout.contains("1 late replies"),
        "the late reply is counted:\n{stdout}"
    );
}

#[cfg(feature = "redis")]
#[test]
fn runs_split_one_process_per_service_over_redis() {
    let Some(server) = support::redis_server::RedisServer::start() else {
        return;
    };
    runs_split_over(&server.url());
}

#[cfg(feature = "nats")]
#[test]
fn runs_split_one_process_per_service_over_nats() {
    let Some(server) = support::nats_server::NatsServer::start() else {
        return;
    };
    runs_split_over(&server.url());
}

/// One process per service plus one placing the orders, all on the layer at `url`.
#[cfg(any(feature = "redis", feature = "nats"))]
fn runs_split_over(url: &str) {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    /// A service process; killed on drop.
    struct Service(Child);

    impl Drop for Service {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let binary = example_binary("order_pipeline");
    let mut services = Vec::new();
    for name in ["inventory", "pricing", "payments", "orders"] {
        let mut child = Command::new(&binary)
            .args(["--services", name, "--orders", "0", "--serve-seconds", "60"])
            .env("CHANNEL_LAYER_URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("a service process starts");
        // Wait until it says it is serving.
        let stdout = child.stdout.take().expect("piped");
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).expect("reads");
        assert!(first.starts_with(&format!("serving {name}")), "{first:?}");
        services.push(Service(child));
    }
    let start = Instant::now();
    let output = Command::new(&binary)
        .args(["--services", "none", "--orders", "6"])
        .env("CHANNEL_LAYER_URL", url)
        .output()
        .expect("the ordering process runs");
    assert!(output.status.success(), "{}", output_text(&output));
    check_orders(&String::from_utf8_lossy(&output.stdout));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    drop(services);
}
