//! A command-line tool for looking into and driving a channel layer by URL: send a message,
//! watch a channel, mint a process-specific channel and listen on it, manage groups, flush, and
//! see what a layer holds (`inspect`, `stats`). Useful for debugging a deployment.
//!
//! ```text
//! cargo run --example cli -- --url redis://127.0.0.1:6379/0 send chat.lobby '{"type":"chat.message","text":"hi"}'
//! cargo run --example cli -- --url redis://127.0.0.1:6379/0 receive chat.lobby --timeout 30 --count 0
//! cargo run --example cli -- listen --prefix reply          # uses $CHANNEL_LAYER_URL
//! cargo run --example cli -- group-add room.lobby specific.ab12!cd34
//! cargo run --example cli -- group-send room.lobby '{"type":"chat.message","text":"all"}'
//! cargo run --example cli --features nats -- --url nats://127.0.0.1:4222 inspect --json
//! cargo run --example cli -- --help
//! ```
//!
//! The layer comes from `--url`, else the environment variable `CHANNEL_LAYER_URL`, else
//! `memory://`. A `memory://` layer lives inside one run of the tool, so it is only good for
//! trying the tool out: a message sent by one run is gone before the next run can receive it.
//!
//! Messages go in and come out as one JSON object per line. JSON integers must fit a signed
//! 64-bit integer (a larger one is an error); numbers with a fraction or an exponent are floats.
//! An object may not have the same key twice. Byte strings are written
//! `{"$bytes": "<standard base64>"}` and non-finite floats `{"$float": "nan"|"inf"|"-inf"}`,
//! both ways. Malformed JSON is reported with what is wrong and where (`column 7`, or
//! `line 2, column 3` for JSON over several lines).
//!
//! Any URL `AnyLayer::from_url` takes works, so the tool reaches sharded and encrypted
//! deployments too:
//!
//! ```text
//! cargo run --example cli --features redis -- --url 'redis://10.0.0.1:6379,10.0.0.2:6379/0' flush
//! cargo run --example cli --features redis-encryption -- \
//!     --url 'redis://10.0.0.1:6379/0?symmetric_encryption_keys_file=/run/secrets/keys' receive chat
//! ```
//!
//! `receive` and `listen` wait at most `--timeout` seconds (default 10) for each message and
//! stop after `--count` messages (default 1); `--count 0` prints messages as they arrive until
//! `--timeout` passes with nothing more.
//!
//! Errors are one line on stderr, `error: ...`. The exit status is 1 when an operation fails
//! (a full channel, a bad name or message, malformed JSON, a timeout with nothing or fewer than
//! `--count` messages received, an unreachable server, a bad URL) and 2 for a usage error (an
//! unknown command or option, a missing or extra argument, an argument that is not UTF-8).

use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use channel_layer::prelude::*;
use channel_layer::{DEFAULT_CHANNEL_PREFIX, Map};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

const USAGE: &str = r#"cli: look into and drive a channel layer by URL.

Usage: cli [--url URL] COMMAND [ARGS]

Commands:
  send CHANNEL JSON              send one message to a channel
  receive CHANNEL [--timeout SECS] [--count N]
                                 receive messages, printing each as one line of JSON
  listen [--prefix P] [--timeout SECS] [--count N]
                                 mint a process-specific channel with new_channel(P) (default
                                 prefix "specific"), print its name on the first line, then
                                 receive on it as `receive` does
  group-add GROUP CHANNEL        add a channel to a group (or refresh its membership)
  group-discard GROUP CHANNEL    remove a channel from a group
  group-send GROUP JSON          send to every member; prints "delivered N, skipped M (full)"
  flush                          drop every message and every group membership
  inspect [--json] [--watch] [--limit N]
                                 what the layer holds: channels with their queued counts and
                                 oldest message's age, process channels by process, groups
                                 with their members and membership ages, and the counters
  stats [--json] [--watch]       the layer's counters and gauges

Options:
  --url URL        the layer (default: $CHANNEL_LAYER_URL, else memory://)
  --timeout SECS   how long to wait for each message (default 10; fractions allowed)
  --count N        how many messages to receive (default 1; timing out before N is an
                   error); 0 = keep receiving until SECS pass with nothing more
  --json           print JSON instead of a table
  --watch          print again every second until interrupted
  --limit N        list at most N channels, N groups and N members of each (default 1000)
  -h, --help       print this help

Messages are JSON objects, one per line. Integers must fit a signed 64-bit integer (a larger
one is an error); numbers with a fraction or an exponent are floats; no key may appear twice
in an object. Byte strings are written {"$bytes": "<standard base64>"}, non-finite floats
{"$float": "nan"|"inf"|"-inf"}.

memory:// lives inside one run of this tool, so it is only useful for trying the tool: a
message sent by one run is gone before another run can receive it. Point --url at a shared
backend to look into a deployment: redis://host:6379/0, several servers sharing the channels
as redis://host1:6379,host2:6379/0, encrypted messages with
?symmetric_encryption_keys=KEY (repeatable) or ?symmetric_encryption_keys_file=PATH.

Exit status: 0 on success; 1 when an operation fails (full channel, bad name, bad or malformed
message, timeout with nothing or too little received, unreachable server, bad URL); 2 on a
usage error (unknown command or option, wrong arguments, an argument that is not UTF-8)."#;

/// Each command: its name, its positional arguments and the options it takes.
const COMMANDS: &[(&str, &[&str], &[&str])] = &[
    ("send", &["CHANNEL", "JSON"], &[]),
    ("receive", &["CHANNEL"], &["--timeout", "--count"]),
    ("listen", &[], &["--prefix", "--timeout", "--count"]),
    ("group-add", &["GROUP", "CHANNEL"], &[]),
    ("group-discard", &["GROUP", "CHANNEL"], &[]),
    ("group-send", &["GROUP", "JSON"], &[]),
    ("flush", &[], &[]),
    ("inspect", &[], &["--json", "--watch", "--limit"]),
    ("stats", &[], &["--json", "--watch"]),
];

/// The options that take no value.
const FLAGS: &[&str] = &["--json", "--watch"];

/// Why the tool stops without success.
enum Failure {
    Help,
    Usage(String),
    Run(String),
}

/// A parsed command line.
struct Invocation {
    url: Option<String>,
    command: &'static str,
    args: Vec<String>,
    prefix: String,
    timeout: Duration,
    count: usize,
    json: bool,
    watch: bool,
    limit: usize,
}

fn main() -> ExitCode {
    let outcome = arguments()
        .and_then(|args| parse(&args))
        .and_then(|invocation| run(&invocation));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(why)) => {
            eprintln!("error: {why} (see --help)");
            ExitCode::from(2)
        }
        Err(Failure::Run(why)) => {
            eprintln!("error: {why}");
            ExitCode::from(1)
        }
    }
}

// ===== Command line =====

/// The command-line arguments after the program name. One that is not UTF-8 is a usage error
/// naming it (as best it can be shown), rather than a panic.
fn arguments() -> Result<Vec<String>, Failure> {
    std::env::args_os()
        .skip(1)
        .enumerate()
        .map(|(i, arg)| {
            arg.into_string().map_err(|raw| {
                Failure::Usage(format!(
                    "argument {} is not valid UTF-8: {:?}",
                    i + 1,
                    raw.to_string_lossy()
                ))
            })
        })
        .collect()
}

fn parse(args: &[String]) -> Result<Invocation, Failure> {
    // Names and JSON objects never start with '-', so any such argument is an option.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Err(Failure::Help);
    }
    let (mut url, mut i) = (None, 0);
    while i < args.len() && args[i].starts_with('-') {
        let (_, value, used) = option_at(args, i, &["--url"])?;
        url = Some(value);
        i += used;
    }
    let Some(name) = args.get(i) else {
        return Err(Failure::Usage("missing command".into()));
    };
    let Some(&(command, positional, allowed)) = COMMANDS.iter().find(|c| c.0 == name) else {
        return Err(Failure::Usage(format!("unknown command {name:?}")));
    };
    let mut invocation = Invocation {
        url,
        command,
        args: Vec::new(),
        prefix: DEFAULT_CHANNEL_PREFIX.into(),
        timeout: Duration::from_secs(10),
        count: 1,
        json: false,
        watch: false,
        limit: 1000,
    };
    i += 1;
    while i < args.len() {
        if !args[i].starts_with('-') {
            invocation.args.push(args[i].clone());
            i += 1;
            continue;
        }
        if FLAGS.contains(&args[i].as_str()) && allowed.contains(&args[i].as_str()) {
            match args[i].as_str() {
                "--json" => invocation.json = true,
                _ => invocation.watch = true,
            }
            i += 1;
            continue;
        }
        let (option, value, used) = option_at(args, i, allowed)?;
        match option {
            "--prefix" => invocation.prefix = value,
            "--limit" => {
                invocation.limit = value.parse().map_err(|_| {
                    Failure::Usage(format!("--limit wants a whole number, not {value:?}"))
                })?;
            }
            "--count" => {
                invocation.count = value.parse().map_err(|_| {
                    Failure::Usage(format!("--count wants a whole number, not {value:?}"))
                })?;
            }
            _ => {
                // --timeout
                invocation.timeout = value
                    .parse::<f64>()
                    .ok()
                    .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                    .ok_or_else(|| {
                        Failure::Usage(format!("--timeout wants seconds, not {value:?}"))
                    })?;
            }
        }
        i += used;
    }
    if invocation.args.len() != positional.len() {
        let wanted = match positional {
            [] => "no arguments".to_owned(),
            names => names.join(" "),
        };
        return Err(Failure::Usage(format!("{command} takes {wanted}")));
    }
    Ok(invocation)
}

/// The option at `args[i]`, `--name VALUE` or `--name=VALUE` with a name from `allowed`: its
/// name, its value and how many arguments it spans.
fn option_at<'a>(
    args: &'a [String],
    i: usize,
    allowed: &[&str],
) -> Result<(&'a str, String, usize), Failure> {
    let (name, value, used) = match args[i].split_once('=') {
        Some((name, value)) => (name, Some(value.to_owned()), 1),
        None => (args[i].as_str(), args.get(i + 1).cloned(), 2),
    };
    if !allowed.contains(&name) {
        return Err(Failure::Usage(format!("unknown option {name}")));
    }
    let value = value.ok_or_else(|| Failure::Usage(format!("{name} wants a value")))?;
    Ok((name, value, used))
}

// ===== Running =====

fn run(inv: &Invocation) -> Result<(), Failure> {
    let layer = match &inv.url {
        Some(url) => AnyLayer::from_url(url),
        None => AnyLayer::from_env("CHANNEL_LAYER_URL"),
    }
    .map_err(failed)?;
    match (inv.command, inv.args.as_slice()) {
        ("send", [channel, json]) => layer.send(channel, parse_message(json)?).map_err(failed),
        ("receive", [channel]) => receive(&layer, channel, inv),
        ("listen", []) => {
            let channel = layer.new_channel(&inv.prefix).map_err(failed)?;
            print_line(&channel)?;
            receive(&layer, &channel, inv)
        }
        ("group-add", [group, channel]) => layer.group_add(group, channel).map_err(failed),
        ("group-discard", [group, channel]) => layer.group_discard(group, channel).map_err(failed),
        ("group-send", [group, json]) => {
            let report = layer
                .group_send(group, parse_message(json)?)
                .map_err(failed)?;
            print_line(&format!(
                "delivered {}, skipped {} (full)",
                report.delivered, report.skipped_full
            ))
        }
        ("flush", []) => layer.flush().map_err(failed),
        ("inspect", []) => repeat(inv, || inspect(&layer, inv)),
        ("stats", []) => repeat(inv, || {
            let metrics = layer.metrics();
            print_line(&if inv.json {
                metrics_json(&metrics).to_string()
            } else {
                metrics_table(&metrics)
            })
        }),
        _ => unreachable!("parse checked the command and its arguments"),
    }
}

/// Runs `show` once, or every second for ever with `--watch`.
fn repeat(inv: &Invocation, mut show: impl FnMut() -> Result<(), Failure>) -> Result<(), Failure> {
    loop {
        show()?;
        if !inv.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `inspect`: the layer's contents as a table or as JSON.
fn inspect(layer: &AnyLayer, inv: &Invocation) -> Result<(), Failure> {
    let seen = layer.inspect(inv.limit).map_err(failed)?;
    let secs = |age: Option<Duration>| age.map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0);
    if inv.json {
        let channels: Vec<serde_json::Value> = seen
            .channels
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "process": c.process(),
                    "queued": c.queued,
                    "oldest_age_secs": secs(c.oldest_age),
                })
            })
            .collect();
        let groups: Vec<serde_json::Value> = seen
            .groups
            .iter()
            .map(|g| {
                let members: Vec<serde_json::Value> = g
                    .members
                    .iter()
                    .map(|m| serde_json::json!({"channel": m.channel, "age_secs": secs(m.age)}))
                    .collect();
                serde_json::json!({
                    "name": g.name,
                    "member_count": g.member_count,
                    "members": members,
                })
            })
            .collect();
        let all = serde_json::json!({
            "channels": channels,
            "groups": groups,
            "metrics": metrics_json(&seen.metrics),
            "complete": seen.complete,
        });
        return print_line(&all.to_string());
    }
    let age =
        |a: Option<Duration>| a.map_or("-".to_owned(), |a| format!("{:.1}s", a.as_secs_f64()));
    let mut out = String::new();
    let (normal, process): (Vec<_>, Vec<_>) =
        seen.channels.iter().partition(|c| c.process().is_none());
    out.push_str(&format!("channels ({})\n", normal.len()));
    out.push_str(&format!(
        "  {:<48} {:>8} {:>10}\n",
        "NAME", "QUEUED", "OLDEST"
    ));
    for c in &normal {
        out.push_str(&format!(
            "  {:<48} {:>8} {:>10}\n",
            printable(&c.name),
            c.queued,
            age(c.oldest_age)
        ));
    }
    out.push_str(&format!("process channels ({})\n", process.len()));
    let mut last_process = None;
    for c in &process {
        if last_process != c.process() {
            last_process = c.process();
            out.push_str(&format!(
                "  {}\n",
                printable(last_process.unwrap_or_default())
            ));
        }
        out.push_str(&format!(
            "    {:<46} {:>8} {:>10}\n",
            printable(&c.name),
            c.queued,
            age(c.oldest_age)
        ));
    }
    out.push_str(&format!("groups ({})\n", seen.groups.len()));
    for g in &seen.groups {
        out.push_str(&format!(
            "  {} ({} members)\n",
            printable(&g.name),
            g.member_count
        ));
        for m in &g.members {
            out.push_str(&format!(
                "    {:<46} {:>10}\n",
                printable(&m.channel),
                age(m.age)
            ));
        }
    }
    if !seen.complete {
        out.push_str(&format!(
            "(only the first {} of each are listed)\n",
            inv.limit
        ));
    }
    out.push_str(&metrics_table(&seen.metrics));
    print_line(out.trim_end())
}

/// `name` as it is safe to print on a terminal: control characters (ESC, BEL, DEL, the C1
/// range) and the marks that reorder text (bidirectional overrides and isolates) are written
/// as escapes (`\x1b`, `\u{202e}`), and backslashes doubled so an escape cannot be faked. A
/// name written by another program under the prefix could otherwise retitle, clear or recolour
/// the operator's terminal.
fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !name.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The counters and gauges as JSON, by the names of `MetricsSnapshot`'s fields.
fn metrics_json(m: &channel_layer::MetricsSnapshot) -> serde_json::Value {
    serde_json::json!({
        "sent": m.sent,
        "received": m.received,
        "rejected_full": m.rejected_full,
        "expired": m.expired,
        "flushed": m.flushed,
        "group_sends": m.group_sends,
        "group_deliveries": m.group_deliveries,
        "group_skipped_full": m.group_skipped_full,
        "group_skipped_failed": m.group_skipped_failed,
        "undecodable": m.undecodable,
        "overflowed": m.overflowed,
        "lost": m.lost,
        "backend_errors": m.backend_errors,
        "reconnects": m.reconnects,
        "unreplicated": m.unreplicated,
        "queued_messages": m.queued_messages,
        "channels": m.channels,
        "groups": m.groups,
    })
}

/// The counters and gauges, one `name value` per line.
fn metrics_table(m: &channel_layer::MetricsSnapshot) -> String {
    let mut out = String::from("counters\n");
    if let serde_json::Value::Object(fields) = metrics_json(m) {
        for (name, value) in fields {
            out.push_str(&format!("  {name:<22} {value}\n"));
        }
    }
    out.trim_end().to_owned()
}

/// Receives `inv.count` messages (0: until `inv.timeout` passes with nothing more), printing
/// each as it arrives. Running out of time before the count is reached is an error.
fn receive(layer: &AnyLayer, channel: &str, inv: &Invocation) -> Result<(), Failure> {
    let mut received = 0;
    while inv.count == 0 || received < inv.count {
        match layer.receive_timeout(channel, inv.timeout) {
            Ok(message) => {
                print_line(&message_to_json(&message))?;
                received += 1;
            }
            Err(e) if e.is_timeout() && inv.count == 0 && received > 0 => break,
            Err(e) if e.is_timeout() => {
                let (waited, wanted) = (inv.timeout, inv.count);
                return Err(Failure::Run(match received {
                    0 => format!("timed out after {waited:?} on {channel:?}, nothing received"),
                    n => format!(
                        "timed out after {waited:?} on {channel:?}, {n} of {wanted} received"
                    ),
                }));
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(())
}

fn print_line(line: &str) -> Result<(), Failure> {
    writeln!(std::io::stdout(), "{line}")
        .map_err(|e| Failure::Run(format!("writing to stdout: {e}")))
}

/// An error and its causes, on one line.
fn failed(error: impl std::error::Error) -> Failure {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    Failure::Run(text.replace('\n', " "))
}

// ===== JSON <-> Message =====

/// Reads one message from its JSON text. Every error says what is wrong and, for malformed
/// JSON, where.
fn parse_message(text: &str) -> Result<Message, Failure> {
    let bad = |why: String| Failure::Run(format!("bad message: {why}"));
    if text.trim().is_empty() {
        return Err(bad(
            "the JSON text is empty; a message is a JSON object".into()
        ));
    }
    let text = check_numbers(text).map_err(bad)?;
    let Strict(value) =
        serde_json::from_str(&text).map_err(|e| bad(describe_json_error(&text, &e)))?;
    match untag(value).map_err(bad)? {
        Value::Map(map) => Ok(Message::from_map(map)),
        other => Err(bad(format!(
            "the top level must be a JSON object, found {}",
            other.kind_name()
        ))),
    }
}

/// Where byte `at` of `text` is, for people: `column C` (in characters, from 1) for text on one
/// line, else `line L, column C`.
fn position(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    if text.trim_end().contains('\n') {
        let line = before.matches('\n').count() + 1;
        format!("line {line}, column {column}")
    } else {
        format!("column {column}")
    }
}

/// Checks the number literals of a JSON text (outside strings) before serde_json reads it, so
/// that their errors can be exact: each must follow JSON's grammar, and each integer must fit
/// `i64` (serde_json would read a larger one as a float). A `-0` is written as ` 0`: serde_json
/// reads it as the float `-0.0` where a message wants the integer 0. Positions in the text
/// are kept, so serde_json's error positions stay right.
fn check_numbers(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        let start = i;
        i += 1;
        match bytes[start] {
            b'"' => {
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let literal = &text[start..i];
                if let Some(problem) = number_problem(literal) {
                    return Err(format!(
                        "invalid number {literal:?} at {}: {problem}",
                        position(text, start)
                    ));
                }
                let integer = !literal.contains(['.', 'e', 'E']);
                if integer && literal.parse::<i64>().is_err() {
                    return Err(format!(
                        "integer {literal} at {} does not fit in a signed 64-bit integer",
                        position(text, start)
                    ));
                }
                if literal == "-0" {
                    out.push_str(&text[copied..start]);
                    out.push(' ');
                    copied = start + 1;
                }
            }
            _ => {}
        }
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

/// What is wrong with a number literal by JSON's grammar
/// (`-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`), if anything.
fn number_problem(literal: &str) -> Option<String> {
    let bytes = literal.as_bytes();
    let digits_from = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = usize::from(bytes.first() == Some(&b'-'));
    match bytes.get(i) {
        Some(b'0') if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
            return Some("a number cannot start with 0 followed by more digits".into());
        }
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_from(i),
        _ => return Some("expected a digit after '-'".into()),
    }
    if bytes.get(i) == Some(&b'.') {
        if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return Some("expected a digit after the decimal point".into());
        }
        i = digits_from(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !bytes.get(i).is_some_and(u8::is_ascii_digit) {
            return Some("expected a digit in the exponent".into());
        }
        i = digits_from(i);
    }
    let after = literal[i..].chars().next();
    after.map(|c| format!("unexpected {c:?} after the number {:?}", &literal[..i]))
}

/// serde_json's error in plain words, at a position in characters.
fn describe_json_error(text: &str, error: &serde_json::Error) -> String {
    // serde_json counts lines from 1 and columns in bytes from 1 (0 before the first byte).
    let line_start: usize = text
        .split_inclusive('\n')
        .take(error.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let at = line_start + error.column().saturating_sub(1);
    let full = error.to_string();
    let message = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(message, _)| message);
    let plain = match message {
        "expected ident" => "expected true, false or null",
        "expected value" => {
            "expected a JSON value (an object, list, string, number, true, false or null)"
        }
        "key must be a string" => "expected a key in double quotes",
        "trailing characters" => "unexpected text after the end of the JSON object",
        "trailing comma" => "a comma must be followed by another item",
        "EOF while parsing an object" => "the text ends before the object is closed with '}'",
        "EOF while parsing a list" => "the text ends before the list is closed with ']'",
        "EOF while parsing a string" => "the text ends before the string is closed with '\"'",
        "EOF while parsing a value" => "the text ends where a value should be",
        "number out of range" => "the number is too large for a 64-bit float",
        "recursion limit exceeded" => "nested too deeply (at most 128 levels)",
        other => other,
    };
    let mut described = format!("{plain} at {}", position(text, at));
    let rest = text.get(at..).unwrap_or("");
    if ["NaN", "Infinity", "-Infinity", "inf", "nan"]
        .iter()
        .any(|word| rest.starts_with(word))
    {
        described.push_str(r#" (write non-finite floats as {"$float": "nan"|"inf"|"-inf"})"#);
    }
    described
}

/// A JSON value read strictly: integers must fit `i64` and no object may have a key twice
/// (serde_json would keep the last one silently).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v).map(Value::Int).map_err(|_| {
            E::custom(format!(
                "integer {v} does not fit in a signed 64-bit integer"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Map(map))
    }
}

/// Turns `{"$bytes": "<base64>"}` into bytes and `{"$float": "nan"|"inf"|"-inf"}` into a
/// float, at any depth.
fn untag(value: Value) -> Result<Value, String> {
    match value {
        Value::List(items) => items
            .into_iter()
            .map(untag)
            .collect::<Result<_, _>>()
            .map(Value::List),
        Value::Map(map) => {
            let only = if map.len() == 1 {
                map.iter().next()
            } else {
                None
            };
            match only {
                Some(("$bytes", Value::Str(b64))) => base64_decode(b64)
                    .map(Value::Bytes)
                    .ok_or_else(|| format!("$bytes is not standard base64: {b64:?}")),
                Some(("$float", Value::Str(word))) => match word.as_str() {
                    "nan" => Ok(Value::Float(f64::NAN)),
                    "inf" => Ok(Value::Float(f64::INFINITY)),
                    "-inf" => Ok(Value::Float(f64::NEG_INFINITY)),
                    _ => Err(format!(
                        "$float is \"nan\", \"inf\" or \"-inf\", not {word:?}"
                    )),
                },
                _ => map
                    .into_iter()
                    .map(|(k, v)| Ok((k, untag(v)?)))
                    .collect::<Result<Map, String>>()
                    .map(Value::Map),
            }
        }
        other => Ok(other),
    }
}

fn message_to_json(message: &Message) -> String {
    let value = Value::Map(message.as_map().clone());
    serde_json::to_string(&Json(&value)).expect("JSON output cannot fail")
}

/// Writes a [`Value`] as JSON, bytes and non-finite floats tagged, map order kept.
struct Json<'a>(&'a Value);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(n) => s.serialize_i64(*n),
            Value::Float(x) if x.is_finite() => s.serialize_f64(*x),
            Value::Float(x) if x.is_nan() => s.collect_map([("$float", "nan")]),
            Value::Float(x) => s.collect_map([("$float", if *x > 0.0 { "inf" } else { "-inf" })]),
            Value::Str(text) => s.serialize_str(text),
            Value::Bytes(bytes) => s.collect_map([("$bytes", base64_encode(bytes))]),
            Value::List(items) => s.collect_seq(items.iter().map(Json)),
            Value::Map(map) => s.collect_map(map.iter().map(|(k, v)| (k, Json(v)))),
            other => s.serialize_str(&format!("{other:?}")), // a kind added after this tool
        }
    }
}

// ===== Standard base64 (RFC 4648, padded) =====

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| chunk.get(i).copied().unwrap_or(0);
        let n = u32::from_be_bytes([0, byte(0), byte(1), byte(2)]);
        for i in 0..=chunk.len() {
            out.push(char::from(B64[(n >> (18 - 6 * i)) as usize & 63]));
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (q, quad) in text.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && (q + 1) * 4 != text.len()) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | B64.iter().position(|&d| d == c)? as u32;
        }
        n <<= 6 * pad;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    //! Run with `cargo test --example cli`.
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)), Some(all));
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "Z=9v"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(position("abc", 0), "column 1");
        assert_eq!(position("\u{e9}\u{e9}x", 4), "column 3");
        assert_eq!(position("ab\ncd", 4), "line 2, column 2");
        // A final newline does not make a one-line text multi-line.
        assert_eq!(position("abc\n", 2), "column 3");
        assert_eq!(position("abc", 99), "column 4");
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for good in [
            "0", "-0", "7", "-12", "0.5", "1e5", "1E+5", "-1.25e-3", "10",
        ] {
            assert_eq!(number_problem(good), None, "{good}");
        }
        for bad in [
            "-", "--1", "01", "-01", "1.", "1.e5", "1e", "1e+", "1-2", "1.2.3", "-.5",
        ] {
            assert!(number_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn json_round_trips_through_messages() {
        let text = r#"{"type":"t","i":-3,"f":1.0,"e":1e+300,"s":"x\"y","n":null,"b":{"$bytes":"AAH/"},"l":[true,{"$float":"-inf"}],"m":{"z":1,"a":{"$float":"nan"}}}"#;
        let message = parse_message(text).ok().expect("parses");
        assert_eq!(
            message.get("b").and_then(Value::as_bytes),
            Some(&[0, 1, 255][..])
        );
        assert_eq!(message.get("f").and_then(Value::as_f64), Some(1.0));
        assert_eq!(message_to_json(&message), text);
        for bad in [
            "[]",
            "3",
            r#"{"n":9223372036854775808}"#,
            r#"{"n":1"#,
            r#"{"b":{"$bytes":"!"}}"#,
            r#"{"f":{"$float":"1.5"}}"#,
            r#"{"n":18446744073709551616}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a": -}"#,
            "",
        ] {
            assert!(parse_message(bad).is_err(), "{bad}");
        }
        let ok = parse_message(r#"{"n":-9223372036854775808,"z":-0,"s":"99999999999999999999"}"#);
        let ok = ok.ok().expect("parses");
        assert_eq!(ok.get("n").and_then(Value::as_i64), Some(i64::MIN));
        assert_eq!(ok.get("z").and_then(Value::as_i64), Some(0));
    }
}
