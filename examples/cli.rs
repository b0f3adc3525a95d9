//! A command-line tool for looking into and driving a channel layer by URL: send a message,
//! watch a channel, mint a process-specific channel and listen on it, manage groups, flush.
//! Useful for debugging a deployment.
//!
//! ```text
//! cargo run --example cli -- --url redis://127.0.0.1:6379/0 send chat.lobby '{"type":"chat.message","text":"hi"}'
//! cargo run --example cli -- --url redis://127.0.0.1:6379/0 receive chat.lobby --timeout 30 --count 0
//! cargo run --example cli -- listen --prefix reply          # uses $CHANNEL_LAYER_URL
//! cargo run --example cli -- group-add room.lobby specific.ab12!cd34
//! cargo run --example cli -- group-send room.lobby '{"type":"chat.message","text":"all"}'
//! cargo run --example cli -- --help
//! ```
//!
//! The layer comes from `--url`, else the environment variable `CHANNEL_LAYER_URL`, else
//! `memory://`. A `memory://` layer lives inside one run of the tool, so it is only good for
//! trying the tool out: a message sent by one run is gone before the next run can receive it.
//!
//! Messages go in and come out as one JSON object per line. JSON integers must fit a signed
//! 64-bit integer (a larger one is an error); numbers with a fraction or an exponent are floats.
//! Byte strings are written `{"$bytes": "<standard base64>"}` and non-finite floats
//! `{"$float": "nan"|"inf"|"-inf"}`, both ways.
//!
//! `receive` and `listen` wait at most `--timeout` seconds (default 10) for each message and
//! stop after `--count` messages (default 1); `--count 0` prints messages as they arrive until
//! `--timeout` passes with nothing more.
//!
//! Errors are one line on stderr, `error: ...`. The exit status is 1 when an operation fails
//! (a full channel, a bad name or message, a timeout with nothing or fewer than `--count`
//! messages received, an unreachable server, a bad URL) and 2 for a usage error.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use channel_layer::prelude::*;
use channel_layer::{DEFAULT_CHANNEL_PREFIX, Map};
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

Options:
  --url URL        the layer (default: $CHANNEL_LAYER_URL, else memory://)
  --timeout SECS   how long to wait for each message (default 10; fractions allowed)
  --count N        how many messages to receive (default 1; timing out before N is an
                   error); 0 = keep receiving until SECS pass with nothing more
  -h, --help       print this help

Messages are JSON objects, one per line. Integers must fit a signed 64-bit integer (a larger
one is an error); numbers with a fraction or an exponent are floats. Byte strings are written
{"$bytes": "<standard base64>"}, non-finite floats {"$float": "nan"|"inf"|"-inf"}.

memory:// lives inside one run of this tool, so it is only useful for trying the tool: a
message sent by one run is gone before another run can receive it. Point --url at a shared
backend (redis://host:6379/0) to look into a deployment.

Exit status: 0 on success; 1 when an operation fails (full channel, bad name, bad message,
timeout with nothing or too little received, unreachable server, bad URL); 2 on a usage
error."#;

/// Each command: its name, its positional arguments and the options it takes.
const COMMANDS: &[(&str, &[&str], &[&str])] = &[
    ("send", &["CHANNEL", "JSON"], &[]),
    ("receive", &["CHANNEL"], &["--timeout", "--count"]),
    ("listen", &[], &["--prefix", "--timeout", "--count"]),
    ("group-add", &["GROUP", "CHANNEL"], &[]),
    ("group-discard", &["GROUP", "CHANNEL"], &[]),
    ("group-send", &["GROUP", "JSON"], &[]),
    ("flush", &[], &[]),
];

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
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|invocation| run(&invocation)) {
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
    };
    i += 1;
    while i < args.len() {
        if !args[i].starts_with('-') {
            invocation.args.push(args[i].clone());
            i += 1;
            continue;
        }
        let (option, value, used) = option_at(args, i, allowed)?;
        match option {
            "--prefix" => invocation.prefix = value,
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
        _ => unreachable!("parse checked the command and its arguments"),
    }
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

fn parse_message(text: &str) -> Result<Message, Failure> {
    let bad = |why: String| Failure::Run(format!("bad message: {why}"));
    let text = integer_literals(text).map_err(bad)?;
    let value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    match untag(value).map_err(bad)? {
        Value::Map(map) => Ok(Message::from_map(map)),
        other => Err(bad(format!(
            "the top level must be a JSON object, found {}",
            other.kind_name()
        ))),
    }
}

/// Checks that the integer literals of a JSON text (outside strings) fit `i64`, and writes
/// `-0` as `0`: serde_json reads the first as floats (when beyond `u64`) and the second as the
/// float `-0.0`, where a message wants an integer or an error.
fn integer_literals(text: &str) -> Result<String, String> {
    let (bytes, mut out, mut copied, mut i) = (text.as_bytes(), String::new(), 0, 0);
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
                let integer = !literal.contains(['.', 'e', 'E']);
                if integer && literal.parse::<i64>().is_err() {
                    return Err(format!(
                        "integer {literal} does not fit in a signed 64-bit integer"
                    ));
                }
                if literal == "-0" {
                    out.push_str(&text[copied..start]);
                    copied = start + 1;
                }
            }
            _ => {}
        }
    }
    out.push_str(&text[copied..]);
    Ok(out)
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
        ] {
            assert!(parse_message(bad).is_err(), "{bad}");
        }
        let ok = parse_message(r#"{"n":-9223372036854775808,"z":-0,"s":"99999999999999999999"}"#);
        let ok = ok.ok().expect("parses");
        assert_eq!(ok.get("n").and_then(Value::as_i64), Some(i64::MIN));
        assert_eq!(ok.get("z").and_then(Value::as_i64), Some(0));
    }
}
