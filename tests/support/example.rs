//! Builds an example binary once per test binary, with the features the tests were built with
//! (so the library is not rebuilt with others), and returns its path.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The features this test binary was built with, as `cargo build --features` takes them.
fn features() -> Vec<&'static str> {
    let all = [
        ("testing", cfg!(feature = "testing")),
        ("redis", cfg!(feature = "redis")),
        ("redis-encryption", cfg!(feature = "redis-encryption")),
        ("redis-tls", cfg!(feature = "redis-tls")),
        ("nats", cfg!(feature = "nats")),
        ("metrics", cfg!(feature = "metrics")),
        ("tracing", cfg!(feature = "tracing")),
    ];
    all.into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name)
        .collect()
}

/// The path of `examples/<name>.rs` built, building it on first use.
///
/// # Panics
///
/// When the build fails (with cargo's output).
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--example", name, "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"));
    let features = features();
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    let output = build.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build --example {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A relative CARGO_TARGET_DIR is relative to where cargo runs: the manifest directory.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest_dir.join("target"), |dir| manifest_dir.join(dir));
    let binary = target_dir
        .join("debug")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "no example binary at {}",
        binary.display()
    );
    built.insert(name.to_owned(), binary.clone());
    binary
}
