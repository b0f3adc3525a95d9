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
