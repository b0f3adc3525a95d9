//! A message as deep as any layer accepts (`MAX_MESSAGE_DEPTH`) can be cloned, changed,
//! compared, formatted, converted through serde and dropped on a 2 MiB thread (the default
//! size of a spawned thread) without overflowing its stack, in the build the tests run in.

use channel_layer::{MAX_MESSAGE_DEPTH, Map, Message, Value};

/// A message nested `depth` levels (the message map being level 1), lists and maps in turn.
fn nested(depth: usize) -> Message {
    let v = (1..depth).fold(Value::Int(7), |v, level| {
        if level % 2 == 0 {
            let mut map = Map::new();
            map.insert("down", v);
            Value::Map(map)
        } else {
            Value::List(vec![v])
        }
    });
    Message::new("deep").with("v", v)
}

fn on_a_small_stack(what: &'static str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(what.into())
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|_| panic!("{what} failed"));
}

#[test]
fn every_operation_on_the_deepest_accepted_message_fits_a_2_mib_stack() {
    let depth = MAX_MESSAGE_DEPTH;
    assert!(nested(depth).check_limits(depth, usize::MAX).is_ok());
    on_a_small_stack("clone and change", move || {
        let m = nested(depth);
        let mut copy = m.clone();
        copy.insert("extra", 1);
        assert!(copy != m);
    });
    on_a_small_stack("compare", move || assert!(nested(depth) == nested(depth)));
    on_a_small_stack("format", move || {
        let text = format!("{:?}", nested(depth));
        assert!(text.len() > depth);
    });
    on_a_small_stack("serde round trip", move || {
        let m = nested(depth);
        let json: serde_json::Value = m.decode().unwrap();
        let back = Message::encode(&json).unwrap();
        assert!(back == m);
    });
    on_a_small_stack("drop", move || drop(nested(depth)));
}

/// Converting a value nested far deeper than any message may be, into or out of a message,
/// is an error, not a stack overflow: serde conversions stop at `MAX_MESSAGE_DEPTH`.
#[test]
fn serde_conversions_of_very_deep_values_are_errors_not_overflows() {
    on_a_small_stack("encode and decode", || {
        // 100,000 levels of JSON, built and torn down without recursion.
        let mut json = serde_json::Value::Null;
        for _ in 0..100_000 {
            json = serde_json::Value::Array(vec![json]);
        }
        let holder = serde_json::json!({ "type": "deep" });
        let mut holder = holder;
        holder["v"] = json;
        let err = Message::encode(&holder).unwrap_err();
        assert!(err.to_string().contains("deeper than"), "{err}");
        // Tear the JSON down level by level.
        let mut rest = holder["v"].take();
        while let serde_json::Value::Array(mut items) = rest {
            rest = items.pop().unwrap_or(serde_json::Value::Null);
        }

        // A message built by hand deeper than the limit (never sendable): decoding it is an
        // error.
        let deep = nested(MAX_MESSAGE_DEPTH + 10);
        let err = deep.decode::<serde_json::Value>().unwrap_err();
        assert!(err.to_string().contains("deeper than"), "{err}");
    });
}
