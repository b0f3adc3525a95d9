//! End-to-end tests of the `cli` example (`examples/cli.rs`), run as a subprocess.
//!
//! The example is built once per test binary with `cargo build --example cli` (with the
//! features this test was built with). Every test uses `memory://`: each run of the tool is
//! its own process with its own in-memory layer, so these tests cover the command line, the
//! JSON input checks and the errors, not a message travelling between two runs.

mod support;

use std::path::PathBuf;
use std::process::Command;

/// The built example, built on first use.
fn cli_binary() -> PathBuf {
    support::example::example_binary("cli")
}

/// What one run of the tool did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the tool with `args`, `CHANNEL_LAYER_URL` unset.
fn cli(args: &[&str]) -> Run {
    cli_with_env(args, None)
}

/// Runs the tool with `args` and `CHANNEL_LAYER_URL` set to `url_env` (or unset).
fn cli_with_env(args: &[&str], url_env: Option<&str>) -> Run {
    let mut command = Command::new(cli_binary());
    command.args(args).env_remove("CHANNEL_LAYER_URL");
    if let Some(url) = url_env {
        command.env("CHANNEL_LAYER_URL", url);
    }
    let output = command.output().expect("the cli runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts that the run succeeded quietly on stderr.
fn assert_ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stderr, "", "{run:#?}");
}

/// Asserts that the run failed with exactly one line on stderr, `error: ...`, and returns it.
fn assert_error(run: &Run) -> &str {
    assert!(matches!(run.code, Some(code) if code != 0), "{run:#?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line on stderr: {run:#?}");
    assert!(lines[0].starts_with("error: "), "{run:#?}");
    lines[0]
}

const MEMORY: [&str; 2] = ["--url", "memory://"];

fn memory(args: &[&str]) -> Run {
    cli(&[&MEMORY[..], args].concat())
}

#[test]
fn help_exits_zero_and_lists_every_command() {
    for flag in ["--help", "-h"] {
        let run = cli(&[flag]);
        assert_ok(&run);
        for command in [
            "send",
            "receive",
            "listen",
            "group-add",
            "group-discard",
            "group-send",
            "flush",
        ] {
            assert!(run.stdout.contains(command), "{command} missing: {run:#?}");
        }
        for topic in [
            "--url",
            "CHANNEL_LAYER_URL",
            "$bytes",
            "$float",
            "memory://",
        ] {
            assert!(run.stdout.contains(topic), "{topic} missing: {run:#?}");
        }
    }
    // Help wins wherever it is.
    assert_ok(&memory(&["receive", "chat", "--help"]));
}

#[test]
fn send_of_a_valid_message_succeeds() {
    assert_ok(&memory(&[
        "send",
        "chat.lobby",
        r#"{"type":"chat.message","text":"hi","n":-0,"x":1.5,"big":1e300,"l":[null,true]}"#,
    ]));
    assert_ok(&memory(&[
        "send",
        "blobs",
        r#"{"type":"blob","data":{"$bytes":"AAH/"},"f":{"$float":"nan"},"g":{"$float":"-inf"}}"#,
    ]));
    assert_ok(&memory(&["send", "empty", "{}"]));
    // `--name=value` works as well as `--name value`.
    assert_ok(&cli(&["--url=memory://", "send", "chat", "{}"]));
    // Without --url, the default is memory://.
    assert_ok(&cli(&["send", "chat", "{}"]));
}

#[test]
fn bad_json_is_a_one_line_error() {
    for json in [r#"{"type":"x""#, "{type: 1}", "", r#"{"a":1} trailing"#] {
        let line = assert_error(&memory(&["send", "chat", json])).to_owned();
        assert!(line.contains("bad message"), "{json}: {line}");
    }
}

#[test]
fn top_level_must_be_an_object() {
    for json in ["[1, 2]", r#""text""#, "3", "null", r#"{"$bytes":"AAH/"}"#] {
        let line = assert_error(&memory(&["send", "chat", json])).to_owned();
        assert!(line.contains("JSON object"), "{json}: {line}");
    }
}

#[test]
fn integers_must_fit_i64() {
    assert_ok(&memory(&["send", "c", r#"{"n":9223372036854775807}"#]));
    assert_ok(&memory(&["send", "c", r#"{"n":-9223372036854775808}"#]));
    assert_ok(&memory(&[
        "send",
        "c",
        r#"{"s":"99999999999999999999999"}"#,
    ]));
    for big in [
        "9223372036854775808",
        "-9223372036854775809",
        "1000000000000000000000",
    ] {
        let json = format!(r#"{{"type":"x","n":[{big}]}}"#);
        let line = assert_error(&memory(&["send", "c", &json])).to_owned();
        assert!(line.contains(big), "{json}: {line}");
    }
}

#[test]
fn bad_tagged_values_are_errors() {
    for json in [
        r#"{"b":{"$bytes":"not base64!"}}"#,
        r#"{"b":{"$bytes":"AAH"}}"#,
        r#"{"f":{"$float":"1.5"}}"#,
    ] {
        let line = assert_error(&memory(&["send", "c", json])).to_owned();
        assert!(line.contains('$'), "{json}: {line}");
    }
}

#[test]
fn reserved_key_is_an_error() {
    let run = memory(&["send", "c", r#"{"__asgi_channel__":"x"}"#]);
    assert!(assert_error(&run).contains("__asgi_channel__"));
}

#[test]
fn bad_channel_name_is_an_error_naming_it() {
    let run = memory(&["send", "=+135!", "{}"]);
    assert!(assert_error(&run).contains("=+135!"), "{run:#?}");
    let run = memory(&["receive", "=+135!", "--timeout", "0.2"]);
    assert!(assert_error(&run).contains("=+135!"), "{run:#?}");
    let run = memory(&["group-add", "bad!group", "chat"]);
    assert!(assert_error(&run).contains("bad!group"), "{run:#?}");
}

#[test]
fn receive_on_memory_times_out() {
    let run = memory(&["receive", "chat.lobby", "--timeout", "0.2"]);
    assert!(assert_error(&run).contains("timed out"), "{run:#?}");
    assert_eq!(run.stdout, "");
    let run = memory(&["receive", "chat.lobby", "--timeout=0.2", "--count", "0"]);
    assert!(assert_error(&run).contains("timed out"), "{run:#?}");
}

#[test]
fn listen_prints_a_process_specific_name_then_times_out() {
    let run = memory(&["listen", "--timeout", "0.2"]);
    assert!(assert_error(&run).contains("timed out"), "{run:#?}");
    let name = run.stdout.lines().next().expect("a first line");
    assert!(
        name.starts_with("specific.") && name.contains('!'),
        "{run:#?}"
    );
    assert_eq!(run.stdout.lines().count(), 1, "{run:#?}");

    let run = memory(&["listen", "--prefix", "reply", "--timeout", "0.2"]);
    assert!(assert_error(&run).contains("timed out"), "{run:#?}");
    assert!(run.stdout.starts_with("reply.") && run.stdout.contains('!'));

    let run = memory(&["listen", "--prefix", "bad!prefix"]);
    assert!(assert_error(&run).contains("bad!prefix"), "{run:#?}");
}

#[test]
fn group_commands_on_an_empty_layer() {
    let run = memory(&["group-send", "room", r#"{"type":"chat.message"}"#]);
    assert_ok(&run);
    assert_eq!(run.stdout, "delivered 0, skipped 0 (full)\n");
    assert_ok(&memory(&["group-add", "room", "specific.ab!cd"]));
    assert_ok(&memory(&["group-discard", "room", "specific.ab!cd"]));
    assert_ok(&memory(&["flush"]));
}

#[test]
fn command_line_mistakes_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unknown command"),
        (&[], "missing command"),
        (&["--bogus", "x", "flush"], "unknown option --bogus"),
        (
            &["receive", "chat", "--bogus", "1"],
            "unknown option --bogus",
        ),
        (
            &["send", "chat", "{}", "--count", "1"],
            "unknown option --count",
        ),
        (&["receive", "chat", "--count"], "--count"),
        (&["receive", "chat", "--count", "many"], "--count"),
        (&["receive", "chat", "--timeout", "-1"], "--timeout"),
        (&["receive", "chat", "--timeout", "soon"], "--timeout"),
        (&["send", "chat"], "CHANNEL JSON"),
        (&["flush", "now"], "no arguments"),
    ];
    for &(args, expected) in cases {
        let run = memory(args);
        let line = assert_error(&run);
        assert!(line.contains(expected), "{args:?}: {line}");
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
    }
}

#[test]
fn unknown_scheme_is_an_error() {
    let run = cli(&["--url", "bogus://x", "flush"]);
    assert!(assert_error(&run).contains("bogus"), "{run:#?}");
    assert_error(&cli(&["--url", "not a url", "flush"]));
    assert_error(&cli(&["--url", "memory://?capacity=zero", "flush"]));
    // CHANNEL_LAYER_URL is the default, and --url overrides it.
    let run = cli_with_env(&["flush"], Some("bogus://y"));
    assert!(assert_error(&run).contains("bogus"), "{run:#?}");
    assert_ok(&cli_with_env(
        &["--url", "memory://", "flush"],
        Some("bogus://y"),
    ));
}

#[test]
fn unreachable_redis_is_a_one_line_error() {
    // With the redis feature off, the error says the feature is needed; with it on, the
    // connection is refused. Either way: non-zero, one line.
    for args in [
        &["send", "chat", "{}"][..],
        &["receive", "chat", "--timeout", "0.2"],
        &["flush"],
    ] {
        let run = cli(&[&["--url", "redis://127.0.0.1:1/0"][..], args].concat());
        assert_error(&run);
        if !cfg!(feature = "redis") {
            assert!(run.stderr.contains("feature"), "{run:#?}");
        }
    }
}
