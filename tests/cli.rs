//! End-to-end tests of the `cli` example (`examples/cli.rs`), run as a subprocess.
//!
//! The example is built once per test binary with `cargo build --example cli` (with the
//! features this test was built with). Most tests use `memory://`: each run of the tool is its
//! own process with its own in-memory layer, so they cover the command line, the JSON input
//! checks and the errors, not a message travelling between two runs. With the `redis`
//! feature, messages do travel between runs, over private `redis-server` processes reached by
//! a URL naming several servers, or with encryption keys in the URL or a key file.

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

impl From<std::process::Output> for Run {
    fn from(output: std::process::Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
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
    Run::from(command.output().expect("the cli runs"))
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

#[test]
fn malformed_json_says_what_is_wrong_and_where() {
    // Each: the JSON, what the error must say. Columns count characters from 1.
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"a": -}"#,
            &["invalid number \"-\" at column 7", "digit after '-'"],
        ),
        (r#"{"a": 1.}"#, &["at column 7", "after the decimal point"]),
        (r#"{"a": 01}"#, &["at column 7", "cannot start with 0"]),
        (r#"{"a": 2e+}"#, &["at column 7", "exponent"]),
        (r#"{"a": 1-2}"#, &["\"1-2\" at column 7", "unexpected '-'"]),
        (r#"{"a" 1}"#, &["expected `:` at column 6"]),
        (r#"{"a": tru}"#, &["expected true, false or null"]),
        ("{'a': 1}", &["expected a key in double quotes at column 2"]),
        (r#"{"a": "open}"#, &["string is closed", "column 12"]),
        (r#"{"a": [1, 2"#, &["list is closed", "column 11"]),
        (r#"{"a": 1"#, &["object is closed"]),
        (r#"{"a": 1,}"#, &["comma must be followed", "column 9"]),
        (r#"{"a": [1, 2}"#, &["expected `,` or `]` at column 12"]),
        (
            r#"{"a": 1}}"#,
            &["after the end of the JSON object at column 9"],
        ),
        (r#"{"a": +1}"#, &["expected a JSON value", "column 7"]),
        (r#"{"a": NaN}"#, &["column 7", "$float"]),
        (r#"{"a": "\q"}"#, &["invalid escape"]),
        (r#"{"a": 1e999}"#, &["too large for a 64-bit float"]),
        // Positions in characters, not bytes; and lines when the JSON has several.
        (r#"{"é": x}"#, &["expected a JSON value", "at column 7"]),
        (
            "{\"a\": 1,\n \"b\": -}",
            &["at line 2, column 7", "digit after '-'"],
        ),
        ("", &["empty"]),
        ("  \t ", &["empty"]),
    ];
    for &(json, expected) in cases {
        let run = memory(&["send", "chat", json]);
        let line = assert_error(&run).to_owned();
        assert_eq!(run.code, Some(1), "{json:?}: {run:#?}");
        assert!(line.starts_with("error: bad message: "), "{json:?}: {line}");
        for part in expected {
            assert!(
                line.contains(part),
                "{json:?}: {part:?} missing from {line}"
            );
        }
    }
    // The same checks apply to group-send.
    let run = memory(&["group-send", "room", r#"{"a": -}"#]);
    assert!(assert_error(&run).contains("column 7"), "{run:#?}");
}

#[test]
fn a_key_given_twice_is_an_error() {
    for json in [r#"{"a":1,"a":2}"#, r#"{"m":{"k":null,"k":true}}"#] {
        let run = memory(&["send", "chat", json]);
        assert!(assert_error(&run).contains("duplicate key"), "{run:#?}");
        assert_eq!(run.code, Some(1));
    }
    // The same key in different objects is fine.
    assert_ok(&memory(&[
        "send",
        "chat",
        r#"{"a":{"a":1},"b":[{"a":2},{"a":3}]}"#,
    ]));
}

#[cfg(unix)]
#[test]
fn an_argument_that_is_not_utf8_is_a_usage_error_naming_it() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    let bad = || OsString::from_vec(b"chat\xff".to_vec());
    let cases: [Vec<OsString>; 3] = [
        vec![
            "--url".into(),
            "memory://".into(),
            "send".into(),
            bad(),
            "{}".into(),
        ],
        vec!["--url".into(), bad(), "flush".into()],
        vec!["receive".into(), "chat".into(), "--timeout".into(), bad()],
    ];
    for args in cases {
        let output = Command::new(cli_binary())
            .args(&args)
            .env_remove("CHANNEL_LAYER_URL")
            .output()
            .expect("the cli runs");
        let run = Run::from(output);
        let line = assert_error(&run).to_owned();
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        let at = args.iter().position(|a| a.to_str().is_none()).unwrap() + 1;
        assert!(
            line.contains(&format!("argument {at} is not valid UTF-8")),
            "{line}"
        );
        assert!(line.contains("chat\u{fffd}"), "{line}");
    }
}

#[cfg(unix)]
#[test]
fn a_channel_layer_url_that_is_not_utf8_is_an_error_not_memory() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    let output = Command::new(cli_binary())
        .arg("flush")
        .env(
            "CHANNEL_LAYER_URL",
            OsString::from_vec(b"redis://h\xff/0".to_vec()),
        )
        .output()
        .expect("the cli runs");
    let run = Run::from(output);
    let line = assert_error(&run);
    assert!(
        line.contains("CHANNEL_LAYER_URL is not valid UTF-8"),
        "{run:#?}"
    );
    assert_eq!(run.code, Some(1));
}

#[test]
fn an_unknown_scheme_lists_the_known_ones() {
    let run = cli(&["--url", "bogus://x", "flush"]);
    let line = assert_error(&run);
    let mut known = vec!["memory"];
    if cfg!(feature = "redis") {
        known.extend([
            "redis",
            "redis+cluster",
            "redis+sentinel",
            "redis+unix",
            "rediss",
            "rediss+cluster",
            "rediss+sentinel",
            "unix",
        ]);
    }
    if cfg!(feature = "nats") {
        known.extend(["nats", "tls"]);
    }
    known.sort_unstable();
    let expected = format!("(known: {})", known.join(", "));
    assert!(line.contains(&expected), "{line}\nexpected {expected}");
}

#[test]
fn out_of_range_options_in_the_url_are_errors_naming_them() {
    for (url, option) in [
        ("memory://?expiry=1e19", "expiry"),
        ("memory://?capacity=18446744073709551616", "capacity"),
        ("memory://?group_expiry=nan", "group_expiry"),
    ] {
        let run = cli(&["--url", url, "flush"]);
        let line = assert_error(&run);
        assert!(line.contains(option), "{line}");
        assert_eq!(run.code, Some(1));
    }
}

/// One run listens on a process-specific channel of the layer at `url` and prints its name;
/// another run sends to that name; the listener prints the message and exits.
#[test]
fn inspect_and_stats_on_an_empty_memory_layer() {
    // Each run has its own in-memory layer, so what it holds is known: nothing.
    let run = memory(&["inspect", "--json"]);
    assert_ok(&run);
    let seen: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(seen["channels"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["groups"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["complete"], true, "{seen}");
    assert_eq!(seen["metrics"]["sent"], 0, "{seen}");
    let run = memory(&["inspect"]);
    assert_ok(&run);
    assert!(
        run.stdout.contains("process channels (0)") && run.stdout.contains("groups (0)"),
        "{}",
        run.stdout
    );
    let run = memory(&["stats", "--json"]);
    assert_ok(&run);
    let stats: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(stats["received"], 0, "{stats}");
}

#[cfg(any(feature = "redis", feature = "nats"))]
fn listen_then_send(url: &str) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut listen = Command::new(cli_binary())
        .args(["--url", url, "listen", "--timeout", "10"])
        .env_remove("CHANNEL_LAYER_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cli runs");
    let mut lines = BufReader::new(listen.stdout.take().expect("piped"));
    let mut name = String::new();
    lines.read_line(&mut name).expect("the channel name");
    let name = name.trim_end();
    assert!(
        name.starts_with("specific.") && name.contains('!'),
        "{name}"
    );
    assert_ok(&cli(&[
        "--url",
        url,
        "send",
        name,
        r#"{"type":"direct","n":1}"#,
    ]));
    let mut rest = String::new();
    lines.read_line(&mut rest).expect("the message");
    assert_eq!(rest, "{\"type\":\"direct\",\"n\":1}\n");
    assert!(listen.wait().expect("listen exits").success());
}

/// Redis deployments by URL: several servers in one URL, and encryption keys.
#[cfg(feature = "redis")]
mod redis {
    use super::*;

    use support::redis_server::RedisServer;

    fn zcard(server: &RedisServer, key: &str) -> i64 {
        server
            .query(&[b"ZCARD", key.as_bytes()])
            .as_int()
            .unwrap_or_else(|| panic!("ZCARD {key} is not an integer"))
    }

    fn on(url: &str, args: &[&str]) -> Run {
        cli(&[&["--url", url][..], args].concat())
    }

    #[test]
    fn watch_prints_again_every_second_and_shows_what_changed() {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        use std::sync::mpsc;
        use std::time::{Duration, Instant};

        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = server.url();
        let mut watch = Command::new(cli_binary())
            .args(["--url", url.as_str(), "inspect", "--json", "--watch"])
            .env_remove("CHANNEL_LAYER_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the cli runs");
        let stdout = watch.stdout.take().expect("piped");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send((Instant::now(), line));
            }
        });
        let next = || {
            let (at, line) = lines
                .recv_timeout(Duration::from_secs(10))
                .expect("another snapshot within 10 s");
            let seen: serde_json::Value = serde_json::from_str(&line).expect("one JSON per line");
            (at, seen)
        };
        let queued = |seen: &serde_json::Value| {
            seen["channels"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "jobs.watched"))
                .map_or(0, |c| c["queued"].as_u64().unwrap_or(0))
        };
        let (first_at, first) = next();
        assert_eq!(queued(&first), 0, "{first}");
        assert_ok(&on(&url, &["send", "jobs.watched", r#"{"type":"job"}"#]));
        // A later snapshot shows the message, each about a second after the one before.
        let mut last_at = first_at;
        let mut shown = false;
        for _ in 0..5 {
            let (at, seen) = next();
            let gap = at - last_at;
            assert!(
                gap >= Duration::from_millis(800) && gap < Duration::from_secs(5),
                "snapshots {gap:?} apart"
            );
            last_at = at;
            if queued(&seen) == 1 {
                shown = true;
                break;
            }
        }
        let _ = watch.kill();
        let _ = watch.wait();
        assert!(shown, "--watch never showed the message sent meanwhile");
    }

    #[test]
    fn inspect_shows_channels_process_channels_and_groups() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = server.url();
        for _ in 0..2 {
            assert_ok(&on(&url, &["send", "jobs.new", r#"{"type":"job"}"#]));
        }
        for channel in ["specific.proc1!a", "specific.proc1!b", "specific.proc1!a"] {
            assert_ok(&on(&url, &["send", channel, r#"{"type":"reply"}"#]));
        }
        for member in ["specific.proc1!a", "jobs.new"] {
            assert_ok(&on(&url, &["group-add", "room", member]));
        }
        let run = on(&url, &["inspect", "--json"]);
        assert_ok(&run);
        let seen: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        let channels = seen["channels"].as_array().expect("channels");
        let jobs = channels
            .iter()
            .find(|c| c["name"] == "jobs.new")
            .unwrap_or_else(|| panic!("jobs.new listed: {seen}"));
        assert_eq!(jobs["queued"], 2, "{seen}");
        assert!(jobs["oldest_age_secs"].as_f64().is_some(), "{seen}");
        // A process's channels share one Redis key, listed under the process.
        let process = channels
            .iter()
            .find(|c| c["process"] == "specific.proc1!")
            .unwrap_or_else(|| panic!("the process's channels listed: {seen}"));
        assert_eq!(process["queued"], 3, "{seen}");
        let room = &seen["groups"][0];
        assert_eq!(room["name"], "room", "{seen}");
        let mut members: Vec<&str> = room["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["channel"].as_str().unwrap())
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["jobs.new", "specific.proc1!a"], "{seen}");
        assert!(room["members"][0]["age_secs"].as_f64().is_some(), "{seen}");

        let run = on(&url, &["inspect"]);
        assert_ok(&run);
        for shown in ["jobs.new", "specific.proc1!", "room (2 members)"] {
            assert!(run.stdout.contains(shown), "{shown}: {}", run.stdout);
        }
    }

    #[test]
    fn inspect_prints_hostile_names_escaped() {
        // Names written under the prefix by another program: a group whose name retitles the
        // terminal, a member that clears it, a channel key that rings and recolours it.
        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = server.url();
        let now = format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        server.query(&[
            b"ZADD",
            b"asgi:group:room\x1b]0;owned\x07",
            now.as_bytes(),
            b"evil\x1b[2J\x1b[H",
        ]);
        server.query(&[b"ZADD", b"asgi:jobs\x07\x1b[31mred", now.as_bytes(), b"x"]);
        let run = on(&url, &["inspect"]);
        assert_ok(&run);
        assert!(
            !run.stdout.contains(['\x1b', '\x07']),
            "control characters printed raw: {:?}",
            run.stdout
        );
        for shown in [
            "room\\x1b]0;owned\\x07",
            "evil\\x1b[2J\\x1b[H",
            "jobs\\x07\\x1b[31mred",
        ] {
            assert!(run.stdout.contains(shown), "{shown}: {}", run.stdout);
        }
        // JSON escapes them by itself and keeps the names whole.
        let run = on(&url, &["inspect", "--json"]);
        assert_ok(&run);
        assert!(!run.stdout.contains(['\x1b', '\x07']), "{:?}", run.stdout);
        let seen: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        assert_eq!(seen["groups"][0]["name"], "room\x1b]0;owned\x07", "{seen}");
    }

    #[test]
    fn inspect_lists_at_most_the_limit_of_members_and_counts_them_all() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = server.url();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let mut zadd: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), b"asgi:group:crowd".to_vec()];
        for n in 0..5000 {
            zadd.push(now.clone().into_bytes());
            zadd.push(format!("member.{n:05}").into_bytes());
        }
        let args: Vec<&[u8]> = zadd.iter().map(Vec::as_slice).collect();
        server.query(&args);
        let run = on(&url, &["inspect", "--json", "--limit", "3"]);
        assert_ok(&run);
        let seen: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        let crowd = &seen["groups"][0];
        assert_eq!(crowd["name"], "crowd", "{seen}");
        assert_eq!(crowd["member_count"], 5000, "{seen}");
        assert_eq!(crowd["members"].as_array().map(Vec::len), Some(3), "{seen}");
        assert_eq!(seen["complete"], false, "{seen}");
        let run = on(&url, &["inspect", "--limit", "3"]);
        assert_ok(&run);
        assert!(
            run.stdout.contains("crowd (5000 members)"),
            "{}",
            run.stdout
        );
    }

    #[test]
    fn a_url_with_several_servers_shards_over_them() {
        let (Some(s1), Some(s2)) = (RedisServer::start(), RedisServer::start()) else {
            return;
        };
        let url = format!(
            "redis://127.0.0.1:{},127.0.0.1:{}/0?prefix=cli",
            s1.port(),
            s2.port()
        );
        // Group members are stored on the server their name hashes to; channels_redis's own
        // test vectors put "key_one" on the second of two servers and "key_two" on the first.
        for member in ["key_one", "key_two"] {
            assert_ok(&on(&url, &["group-add", "room", member]));
        }
        let run = on(&url, &["group-send", "room", r#"{"type":"hello"}"#]);
        assert_ok(&run);
        assert_eq!(run.stdout, "delivered 2, skipped 0 (full)\n");
        assert_eq!((zcard(&s1, "clikey_one"), zcard(&s2, "clikey_one")), (0, 1));
        assert_eq!((zcard(&s1, "clikey_two"), zcard(&s2, "clikey_two")), (1, 0));
        for member in ["key_one", "key_two"] {
            let run = on(&url, &["receive", member, "--timeout", "5"]);
            assert_ok(&run);
            assert_eq!(run.stdout, "{\"type\":\"hello\"}\n");
        }

        // A process-specific channel: one run listens, another sends to it.
        listen_then_send(&url);

        // An empty host in the list is a one-line error.
        let run = on(
            &format!("redis://127.0.0.1:{},,127.0.0.1:{}/0", s1.port(), s2.port()),
            &["flush"],
        );
        assert!(assert_error(&run).contains("empty"), "{run:#?}");
    }

    #[cfg(feature = "redis-encryption")]
    #[test]
    fn encryption_keys_by_url_or_file() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let base = format!("redis://127.0.0.1:{}/0?prefix=clienc", server.port());
        let k1 = format!("{base}&symmetric_encryption_keys=k1");
        let message = r#"{"type":"secret","text":"plain words"}"#;
        assert_ok(&on(&k1, &["send", "vault", message]));
        let stored = server
            .query(&[b"ZRANGE", b"cliencvault", b"0", b"-1"])
            .bulks();
        assert_eq!(stored.len(), 1);
        assert!(stored[0][12..].starts_with(b"gAAAAA"), "not a Fernet token");
        assert!(!stored[0].windows(11).any(|w| w == b"plain words"));
        let run = on(&k1, &["receive", "vault", "--timeout", "5"]);
        assert_ok(&run);
        assert_eq!(run.stdout.trim_end(), message);

        // Rotated keys from a file: k2 encrypts, k1 still decrypts.
        let dir = support::scratch_root().join("cli-keys");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}-keys", std::process::id()));
        std::fs::write(&file, "k2\n\nk1\n").unwrap();
        let rotated = format!("{base}&symmetric_encryption_keys_file={}", file.display());
        assert_ok(&on(&k1, &["send", "vault", r#"{"type":"old"}"#]));
        let run = on(&rotated, &["receive", "vault", "--timeout", "5"]);
        assert_ok(&run);
        assert_eq!(run.stdout, "{\"type\":\"old\"}\n");
        assert_ok(&on(&rotated, &["send", "vault", r#"{"type":"new"}"#]));
        // Only k2 reads what the rotated layer wrote: a k1-only layer drops it.
        let run = on(&k1, &["receive", "vault", "--timeout", "0.5"]);
        assert!(assert_error(&run).contains("timed out"), "{run:#?}");
        let _ = std::fs::remove_file(&file);

        // A missing key file is a one-line error naming it.
        let missing = format!("{base}&symmetric_encryption_keys_file=/nonexistent/keys");
        let run = on(&missing, &["flush"]);
        assert!(assert_error(&run).contains("/nonexistent/keys"), "{run:#?}");
    }

    #[cfg(not(feature = "redis-encryption"))]
    #[test]
    fn encryption_keys_without_the_feature_say_which_feature_is_needed() {
        let run = on(
            "redis://127.0.0.1:1/0?symmetric_encryption_keys=k1",
            &["flush"],
        );
        let line = assert_error(&run);
        assert!(line.contains("redis-encryption"), "{line}");
        assert!(!line.contains("k1"), "the key is shown: {line}");
    }
}

/// The tool over NATS: messages travel between runs through a private `nats-server`.
#[cfg(feature = "nats")]
mod nats {
    use super::*;

    use support::nats_server::NatsServer;

    #[test]
    fn messages_groups_and_process_channels_travel_between_runs() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let url = format!("{}?prefix=cli", server.url());
        let on = |args: &[&str]| cli(&[&["--url", url.as_str()][..], args].concat());
        assert_ok(&on(&["send", "jobs.new", r#"{"type":"job","n":1}"#]));
        let run = on(&["receive", "jobs.new", "--timeout", "5"]);
        assert_ok(&run);
        assert_eq!(run.stdout, "{\"type\":\"job\",\"n\":1}\n");

        for member in ["a.one", "a.two"] {
            assert_ok(&on(&["group-add", "room", member]));
        }
        let run = on(&["group-send", "room", r#"{"type":"hello"}"#]);
        assert_ok(&run);
        assert_eq!(run.stdout, "delivered 2, skipped 0 (full)\n");
        for member in ["a.one", "a.two"] {
            let run = on(&["receive", member, "--timeout", "5"]);
            assert_ok(&run);
            assert_eq!(run.stdout, "{\"type\":\"hello\"}\n");
        }

        listen_then_send(&url);

        // What the layer holds, by `inspect` and `stats`, as JSON and as a table.
        assert_ok(&on(&["flush"]));
        for _ in 0..2 {
            assert_ok(&on(&["send", "jobs.new", r#"{"type":"job"}"#]));
        }
        assert_ok(&on(&["group-add", "room", "a.one"]));
        let run = on(&["inspect", "--json"]);
        assert_ok(&run);
        let seen: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        assert_eq!(seen["channels"][0]["name"], "jobs.new", "{seen}");
        assert_eq!(seen["channels"][0]["queued"], 2, "{seen}");
        assert!(
            seen["channels"][0]["oldest_age_secs"].as_f64().is_some(),
            "{seen}"
        );
        assert_eq!(seen["groups"][0]["name"], "room", "{seen}");
        assert_eq!(
            seen["groups"][0]["members"][0]["channel"], "a.one",
            "{seen}"
        );
        assert_eq!(seen["complete"], true, "{seen}");
        let run = on(&["inspect"]);
        assert_ok(&run);
        assert!(
            run.stdout.contains("jobs.new") && run.stdout.contains("room (1 members)"),
            "{}",
            run.stdout
        );
        let run = on(&["stats", "--json"]);
        assert_ok(&run);
        let stats: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        assert!(stats["sent"].is_u64(), "{stats}");

        // A bad NATS URL is a one-line error naming the problem.
        let run = cli(&["--url", "nats://127.0.0.1:0", "flush"]);
        assert!(assert_error(&run).contains("port"), "{run:#?}");
    }
}
