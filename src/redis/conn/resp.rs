//! Reading the server's replies (RESP2, the protocol the layer speaks: it never asks for
//! RESP3).
//!
//! Kept here rather than left to the `redis` crate's parser for speed: with many messages in
//! flight, that parser cost about 4,000 instructions per popped message (`valgrind
//! --tool=callgrind` on the pipelined benchmark), more than encoding and decoding the message
//! itself. This reader scans its buffer once per reply. It still builds the `redis` crate's
//! [`Value`], and error replies (rare) go through that crate's parser, which classifies them.
//!
//! The input is the server's, and so not trusted blindly: nesting is limited to
//! [`MAX_DEPTH`], a bulk string to [`MAX_BULK`] bytes, and nothing is reserved ahead for more
//! than [`MAX_PREALLOC`] array elements, so memory grows only with the bytes actually
//! received.

use std::io::{self, Read};

use ::redis::Value;

/// The deepest nesting of arrays accepted (the layer's replies nest two levels at most).
pub(crate) const MAX_DEPTH: usize = 16;

/// The longest bulk string accepted: Redis's own `proto-max-bulk-len` default, 512 MiB.
pub(crate) const MAX_BULK: usize = 512 << 20;

/// How many array elements are reserved ahead at most; a longer array grows as it arrives.
const MAX_PREALLOC: usize = 1024;

/// How much is read from the socket at a time at least.
const READ_CHUNK: usize = 16 << 10;

/// Why a reply could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed or timed out.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// The bytes are not a RESP2 reply.
    Protocol(String),
}

/// A buffered reader of replies. A reply is taken from the buffer only once it is complete, so
/// a read that times out half way keeps what it got, and the next read goes on from there.
#[derive(Default)]
pub(crate) struct Reader {
    /// `buf[start..filled]` holds bytes received and not yet parsed; `buf[filled..]` is room.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl Reader {
    /// The next reply, reading from `stream` as needed.
    pub(crate) fn read_value<R: Read>(&mut self, stream: &mut R) -> Result<Value, ReadError> {
        loop {
            if self.start < self.filled {
                if let Some((value, used)) = parse(&self.buf[self.start..self.filled])? {
                    self.start += used;
                    if self.start == self.filled {
                        self.start = 0;
                        self.filled = 0;
                    }
                    return Ok(value);
                }
            }
            self.make_room();
            match stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Moves unparsed bytes to the front, and grows the buffer (doubling, so an incomplete
    /// reply is parsed again only a logarithmic number of times) when little room is left.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let room = self.buf.len() - self.filled;
        if room < READ_CHUNK || room < self.filled {
            let grown = (self.buf.len() * 2).max(self.filled + READ_CHUNK);
            self.buf.resize(grown, 0);
        }
    }
}

fn protocol(what: impl Into<String>) -> ReadError {
    ReadError::Protocol(what.into())
}

/// The position of the `\r\n` that ends the line starting at `from`, if it is all here.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let at = from + buf.get(from..)?.iter().position(|&b| b == b'\r')?;
    match buf.get(at + 1) {
        Some(b'\n') => Some(at),
        Some(_) => Some(usize::MAX), // a stray '\r': reported by the caller
        None => None,
    }
}

fn int(line: &[u8]) -> Result<i64, ReadError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("bad integer {:?}", line.escape_ascii().to_string())))
}

/// One complete reply at the start of `buf` and the bytes it takes, or `None` if more bytes
/// are needed.
fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ReadError> {
    // Arrays being filled: their elements so far, and how many are still to come.
    let mut open: Vec<(Vec<Value>, usize)> = Vec::new();
    let mut at = 0;
    loop {
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        let Some(end) = line_end(buf, at + 1) else {
            return Ok(None);
        };
        if end == usize::MAX {
            return Err(protocol("a line holds a lone carriage return"));
        }
        let line = &buf[at + 1..end];
        let next = end + 2;
        let mut value = match kind {
            b'+' => {
                at = next;
                // As the `redis` crate reads it: `+OK` is `Okay`.
                if line == b"OK" {
                    Value::Okay
                } else {
                    Value::SimpleString(String::from_utf8_lossy(line).into_owned())
                }
            }
            b'-' => {
                // The `redis` crate knows the error codes; it parses this one line.
                let value = ::redis::parse_redis_value(&buf[at..next])
                    .map_err(|e| protocol(format!("bad error reply: {e}")))?;
                at = next;
                value
            }
            b':' => {
                at = next;
                Value::Int(int(line)?)
            }
            b'$' => match int(line)? {
                -1 => {
                    at = next;
                    Value::Nil
                }
                n if n < 0 || n as u64 > MAX_BULK as u64 => {
                    return Err(protocol(format!("bulk string of length {n}")));
                }
                n => {
                    let n = n as usize;
                    if buf.len() < next + n + 2 {
                        return Ok(None);
                    }
                    if &buf[next + n..next + n + 2] != b"\r\n" {
                        return Err(protocol("a bulk string is not followed by CRLF"));
                    }
                    at = next + n + 2;
                    Value::BulkString(buf[next..next + n].to_vec())
                }
            },
            b'*' => match int(line)? {
                -1 => {
                    at = next;
                    Value::Nil
                }
                0 => {
                    at = next;
                    Value::Array(Vec::new())
                }
                n if n < 0 => return Err(protocol(format!("array of length {n}"))),
                n => {
                    if open.len() >= MAX_DEPTH {
                        return Err(protocol(format!("arrays nested deeper than {MAX_DEPTH}")));
                    }
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    open.push((Vec::with_capacity(n.min(MAX_PREALLOC)), n));
                    at = next;
                    continue;
                }
            },
            other => {
                return Err(protocol(format!(
                    "unknown reply type {:?}",
                    char::from(other)
                )));
            }
        };
        // Place the value in the array it belongs to; a filled array is itself a value.
        loop {
            let Some((items, left)) = open.last_mut() else {
                return Ok(Some((value, at)));
            };
            items.push(value);
            *left -= 1;
            if *left > 0 {
                break;
            }
            let (items, _) = open.pop().expect("an open array");
            value = Value::Array(items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<Value> {
        let mut reader = Reader::default();
        let mut input = bytes;
        let mut out = Vec::new();
        while !input.is_empty() || reader.start < reader.filled {
            match reader.read_value(&mut input) {
                Ok(v) => out.push(v),
                Err(ReadError::Closed) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        out
    }

    /// A reader that hands out `step` bytes at a time.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    const SAMPLE: &[u8] = b"+OK\r\n:42\r\n:-7\r\n$5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n\
*2\r\n*2\r\n$1\r\na\r\n$4\r\n1.25\r\n:3\r\n-WRONGTYPE Operation against a key\r\n";

    fn expected() -> Vec<Value> {
        vec![
            Value::Okay,
            Value::Int(42),
            Value::Int(-7),
            Value::BulkString(b"he\r\no".to_vec()),
            Value::BulkString(Vec::new()),
            Value::Nil,
            Value::Nil,
            Value::Array(Vec::new()),
            Value::Array(vec![
                Value::Array(vec![
                    Value::BulkString(b"a".to_vec()),
                    Value::BulkString(b"1.25".to_vec()),
                ]),
                Value::Int(3),
            ]),
            ::redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n").unwrap(),
        ]
    }

    fn same(a: &[Value], b: &[Value]) {
        assert_eq!(a, b);
    }

    #[test]
    fn reads_every_reply_type_as_the_redis_crate_does() {
        same(&all(SAMPLE), &expected());
        // The redis crate's own parser reads the same values from the same bytes.
        let mut theirs = Vec::new();
        let mut parser = ::redis::Parser::new();
        let mut input = SAMPLE;
        for _ in 0..expected().len() {
            theirs.push(parser.parse_value(&mut input).unwrap());
        }
        same(&all(SAMPLE), &theirs);
    }

    #[test]
    fn replies_split_anywhere_are_put_together() {
        for step in [1, 2, 3, 7, 64] {
            let mut reader = Reader::default();
            let mut input = Trickle {
                bytes: SAMPLE,
                step,
            };
            let got: Vec<Value> = (0..expected().len())
                .map(|_| reader.read_value(&mut input).unwrap())
                .collect();
            same(&got, &expected());
        }
    }

    #[test]
    fn a_large_pipelined_reply_is_read_whole() {
        let mut bytes = b"*2000\r\n".to_vec();
        for i in 0..1000 {
            let member = format!("member-{i}-{}", "x".repeat(100));
            bytes.extend_from_slice(
                format!("${}\r\n{member}\r\n$3\r\n1.5\r\n", member.len()).as_bytes(),
            );
        }
        let mut reader = Reader::default();
        let mut input = Trickle {
            bytes: &bytes,
            step: 5000,
        };
        let Value::Array(items) = reader.read_value(&mut input).unwrap() else {
            panic!("not an array");
        };
        assert_eq!(items.len(), 2000);
        assert_eq!(
            items[1998],
            Value::BulkString(format!("member-999-{}", "x".repeat(100)).into_bytes())
        );
    }

    #[test]
    fn malformed_and_hostile_input_is_an_error_not_a_crash() {
        for bad in [
            &b"?what\r\n"[..],
            b":12x\r\n",
            b"$-2\r\n",
            b"$99999999999\r\n",
            b"$3\r\nabcXY",
            b"*-5\r\n",
            b"+a\rb\r\n",
        ] {
            let mut reader = Reader::default();
            let mut input = bad;
            assert!(
                matches!(reader.read_value(&mut input), Err(ReadError::Protocol(_))),
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
        // Deep nesting stops at the limit.
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        let mut reader = Reader::default();
        let mut input = &deep[..];
        assert!(matches!(
            reader.read_value(&mut input),
            Err(ReadError::Protocol(_))
        ));
        // A huge declared array reserves nothing ahead: it just waits for its elements.
        let mut reader = Reader::default();
        let mut input = &b"*4000000000\r\n:1\r\n"[..];
        assert!(matches!(
            reader.read_value(&mut input),
            Err(ReadError::Closed)
        ));
    }
}
