//! Test support shared by the integration tests: a private `redis-server` per test, a Python
//! peer driving the real channels_redis, and the rule for services that may be missing.
//!
//! Include it with `mod support;` from a test file.

#![allow(dead_code, unreachable_pub)]

pub mod certs;
pub mod chat;
pub mod example;
pub mod nats_server;
pub mod python;
pub mod redis_cluster;
pub mod redis_server;
pub mod traffic;

/// A key prefix no other call in this test binary returns, nor one that starts it or that it
/// starts: each is `stem` and a number of one width. A flush takes every key (or stream) under
/// its prefix, so cases that share a server and run in parallel need prefixes that stay apart.
pub fn fresh_prefix(stem: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{stem}{:06}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The environment variable that turns a missing service into a failure (CI sets it to `1`).
pub const REQUIRE_SERVICES_ENV: &str = "CHANNEL_LAYER_REQUIRE_SERVICES";

/// Whether missing services must fail the test run (`CHANNEL_LAYER_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// Reports that a service a test needs (`what`) is unavailable, and why.
///
/// With `CHANNEL_LAYER_REQUIRE_SERVICES=1` this panics, since in CI a skip is a failure.
/// Otherwise it prints `SKIPPED: <what>: <why>` to stderr and returns, so the caller can return
/// early.
///
/// # Panics
///
/// When services are required.
pub fn service_missing(what: &str, why: &str) {
    if services_required() {
        panic!(
            "{what} is required ({REQUIRE_SERVICES_ENV}=1) but unavailable: {why}\n\
             (unset {REQUIRE_SERVICES_ENV} to skip tests that need it)"
        );
    }
    skipped(&format!("{what}: {why}"));
}

/// Says a test is skipped, and why, on stderr past the test harness's capture, so it shows in
/// `cargo test`'s output.
pub fn skipped(why: &str) {
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Where tests keep scratch files: `CARGO_TARGET_TMPDIR` (set by Cargo for integration tests),
/// else `<manifest>/target/tmp`.
pub fn scratch_root() -> std::path::PathBuf {
    match option_env!("CARGO_TARGET_TMPDIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp"),
    }
}
