//! One connection to a Redis server, on a socket of this crate's own.
//!
//! The `redis` crate parses the server's URL and encodes the commands; replies are read by
//! [`super::resp`] (for speed, see there). The socket is kept here because the layer needs two things the `redis` crate's blocking
//! connection does not offer, and both are about losing nothing:
//!
//! - **A late reply is still read.** A reply to a pop carries messages already removed from
//!   Redis. The threads that pop read it whenever it comes, for as long as the socket lives
//!   (after a timed-out read, the `redis` crate's connection skips the late reply instead).
//! - **An idle socket can be looked at without a round trip.** A pooled connection that the
//!   server (or a proxy) closed while it sat idle is found by peeking at the socket before a
//!   command is written to it; and a command none of whose bytes could be written provably
//!   never reached the server, so it can be retried without being applied twice.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
#[cfg(unix)]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{ConnectionAddr, Value};

use super::SentinelSet;
use super::resp::{ReadError, Reader};

use crate::error::{BackendError, BackendErrorKind, BuildError};

/// How long a TCP connection may be silent before the kernel probes the peer, how often it
/// probes, and how many unanswered probes end the connection: a server that vanished without
/// closing its sockets (a crashed machine, a partition) is noticed within about 30 seconds, even
/// by a thread blocked waiting for a reply.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Where a server is and how to log in: what a connection needs to be made.
#[derive(Clone)]
pub(crate) struct Endpoint {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    /// `host:port` or the socket path, for messages.
    name: String,
    #[cfg(feature = "redis-tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Clone)]
enum Addr {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(PathBuf),
    /// The master the sentinels name, asked on every new connection.
    Sentinel(Arc<SentinelSet>),
    /// The current address of one master of a cluster.
    Cluster(Arc<crate::redis::cluster::Topology>, usize),
}

impl Endpoint {
    /// Reads a server URL (`redis://`, `rediss://`, `unix://`); `tls_ca` is a PEM bundle to
    /// trust for `rediss://` instead of the system's roots.
    pub(crate) fn new(url: &str, tls_ca: Option<&[u8]>) -> Result<Self, BuildError> {
        let invalid = |reason: String| BuildError::InvalidUrl {
            url: crate::config::redacted_url(url),
            reason,
        };
        if url.contains("+sentinel://") {
            let set = SentinelSet::parse(url).map_err(invalid)?;
            #[cfg(not(feature = "redis-tls"))]
            if set.tls.is_some() {
                let _ = tls_ca;
                return Err(BuildError::FeatureDisabled {
                    scheme: "rediss+sentinel".into(),
                    feature: "redis-tls",
                });
            }
            return Ok(Endpoint {
                username: set.username.clone(),
                password: set.password.clone(),
                db: set.db,
                name: set.describe(),
                #[cfg(feature = "redis-tls")]
                tls: match set.tls {
                    Some(insecure) => {
                        Some(super::tls::client_config(insecure, tls_ca).map_err(invalid)?)
                    }
                    None => None,
                },
                addr: Addr::Sentinel(Arc::new(set)),
            });
        }
        let client = ::redis::Client::open(url).map_err(|e| invalid(e.to_string()))?;
        let info = client.get_connection_info();
        let settings = info.redis_settings();
        let (addr, name, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (
                Addr::Tcp(host.clone(), *port),
                format!("{host}:{port}"),
                None,
            ),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => (
                Addr::Tcp(host.clone(), *port),
                format!("{host}:{port}"),
                Some(*insecure),
            ),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                (Addr::Unix(path.clone()), path.display().to_string(), None)
            }
            #[allow(unreachable_patterns)]
            _ => return Err(invalid("this kind of address is not supported here".into())),
        };
        #[cfg(not(feature = "redis-tls"))]
        if tls.is_some() {
            let _ = tls_ca;
            return Err(BuildError::FeatureDisabled {
                scheme: "rediss".into(),
                feature: "redis-tls",
            });
        }
        Ok(Endpoint {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
            name,
            #[cfg(feature = "redis-tls")]
            tls: match tls {
                Some(insecure) => {
                    Some(super::tls::client_config(insecure, tls_ca).map_err(invalid)?)
                }
                None => None,
            },
        })
    }

    /// A connection to master `index` of a cluster, wherever `topology` says it is now, with
    /// the login of `seed` (a `redis://` or `rediss://` URL of one node).
    pub(crate) fn cluster_node(
        seed: &str,
        tls_ca: Option<&[u8]>,
        topology: Arc<crate::redis::cluster::Topology>,
        index: usize,
    ) -> Result<Self, BuildError> {
        let mut endpoint = Endpoint::new(seed, tls_ca)?;
        endpoint.name = format!("cluster master {index}");
        endpoint.db = 0;
        endpoint.addr = Addr::Cluster(topology, index);
        Ok(endpoint)
    }

    /// The same login, to the server at `host:port`.
    pub(crate) fn at(mut self, host: &str, port: u16) -> Self {
        self.name = format!("{host}:{port}");
        self.addr = Addr::Tcp(host.to_owned(), port);
        self.db = 0;
        self
    }

    /// The server, as `host:port` or a socket path.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Connects, logs in and selects the database, all before `deadline`. Through Sentinel,
    /// first asks the sentinels where the master is, and then checks that it is one.
    pub(crate) fn connect(&self, deadline: Instant) -> Result<Connection, BackendError> {
        let (stream, name) = match &self.addr {
            Addr::Tcp(host, port) => (self.tcp(host, *port, deadline, &self.name)?, None),
            #[cfg(unix)]
            Addr::Unix(path) => (
                Stream::Unix(
                    UnixStream::connect(path)
                        .map_err(|e| connect_error(&self.name, "connecting", &e))?,
                ),
                None,
            ),
            Addr::Sentinel(set) => {
                let (host, port) = self.ask_sentinels(set, deadline)?;
                let name = format!("{host}:{port} ({})", self.name);
                (self.tcp(&host, port, deadline, &name)?, Some(name))
            }
            Addr::Cluster(topology, index) => {
                let addr = |topology: &crate::redis::cluster::Topology| {
                    topology.addr(*index).ok_or_else(|| {
                        BackendError::new(
                            BackendErrorKind::Unavailable,
                            format!("redis {}: not in the cluster's slot map", self.name),
                        )
                        .unsent()
                    })
                };
                let (host, port) = addr(topology)?;
                let name = format!("{host}:{port} ({})", self.name);
                match self.tcp(&host, port, deadline, &name) {
                    Ok(stream) => (stream, Some(name)),
                    Err(e) => {
                        // The master may have failed over: read the map again, and try the
                        // address it gives if that changed.
                        topology.refresh();
                        let (host2, port2) = addr(topology)?;
                        if (host2.as_str(), port2) == (host.as_str(), port) {
                            return Err(e);
                        }
                        let name = format!("{host2}:{port2} ({})", self.name);
                        (self.tcp(&host2, port2, deadline, &name)?, Some(name))
                    }
                }
            }
        };
        let name = name.as_deref().unwrap_or(&self.name);
        let mut conn = Connection::over(stream);
        let mut setup = Vec::new();
        if let Some(password) = &self.password {
            setup.push(auth(self.username.as_deref(), password));
        }
        if self.db != 0 {
            let mut select = ::redis::cmd("SELECT");
            select.arg(self.db);
            setup.push(select);
        }
        let sentinel = matches!(self.addr, Addr::Sentinel(_));
        if sentinel {
            setup.push(::redis::cmd("ROLE"));
        }
        if !setup.is_empty() {
            let packed: Vec<u8> = setup.iter().flat_map(|c| c.get_packed_command()).collect();
            let mut replies = conn
                .exchange(&packed, setup.len(), Some(deadline))
                .map_err(|e| e.context_prefix(&format!("connecting to redis at {name}")))?;
            let role = if sentinel { replies.pop() } else { None };
            for reply in replies {
                if let Value::ServerError(e) = reply {
                    // One line, whatever the server said: an authentication failure is
                    // reported once, with the server's own words.
                    return Err(BackendError::new(
                        BackendErrorKind::Refused,
                        format!(
                            "connecting to redis at {name}: the server refused the login or database: {} {}",
                            e.code(),
                            e.details().unwrap_or_default()
                        ),
                    )
                    .unsent());
                }
            }
            if let Some(role) = role {
                check_master(&role, name)?;
            }
        }
        Ok(conn)
    }

    /// A TCP connection to `host:port` (TLS if configured), with keepalive, before `deadline`.
    fn tcp(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
        name: &str,
    ) -> Result<Stream, BackendError> {
        let failed = |what: &str, e: io::Error| connect_error(name, what, &e);
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| failed("resolving the host", e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut connected = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, remaining(deadline)) {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = connected.ok_or_else(|| failed("connecting", last))?;
        tcp.set_nodelay(true)
            .map_err(|e| failed("configuring", e))?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
        let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&keepalive)
            .map_err(|e| failed("configuring", e))?;
        self.wrap_tcp(tcp, host)
            .map_err(|e| failed("starting TLS", e))
    }

    /// Where the sentinels say the master is: each sentinel is asked in turn (the one that
    /// answered last first), with a share of the time left, until one names it.
    fn ask_sentinels(
        &self,
        set: &SentinelSet,
        deadline: Instant,
    ) -> Result<(String, u16), BackendError> {
        let n = set.sentinels.len();
        let first = set.first();
        let mut problems = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let (host, port) = &set.sentinels[i];
            let left = deadline.saturating_duration_since(Instant::now());
            let share = (left / u32::try_from(n - k).unwrap_or(1)).max(Duration::from_millis(100));
            let by = deadline.min(Instant::now() + share);
            match self.ask_sentinel(set, host, *port, by) {
                Ok(found) => {
                    set.answered(i);
                    return Ok(found);
                }
                Err(why) => problems.push(format!("{host}:{port}: {why}")),
            }
        }
        Err(BackendError::new(
            BackendErrorKind::Unavailable,
            format!(
                "asking the sentinels for redis {}: none named it ({})",
                self.name,
                problems.join("; ")
            ),
        )
        .unsent())
    }

    fn ask_sentinel(
        &self,
        set: &SentinelSet,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<(String, u16), String> {
        let stream = self
            .tcp(host, port, deadline, &format!("sentinel {host}:{port}"))
            .map_err(|e| e.to_string())?;
        let mut conn = Connection::over(stream);
        let mut cmds = Vec::new();
        if let Some(password) = &set.sentinel_password {
            cmds.push(auth(set.sentinel_username.as_deref(), password));
        }
        let mut ask = ::redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(&set.master);
        cmds.push(ask);
        let packed: Vec<u8> = cmds.iter().flat_map(|c| c.get_packed_command()).collect();
        let replies = conn
            .exchange(&packed, cmds.len(), Some(deadline))
            .map_err(|e| e.to_string())?;
        for reply in &replies {
            if let Value::ServerError(e) = reply {
                return Err(format!("{} {}", e.code(), e.details().unwrap_or_default()));
            }
        }
        match replies.last() {
            Some(Value::Array(parts)) if parts.len() == 2 => {
                let text = |v: &Value| match v {
                    Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                    Value::SimpleString(s) => Some(s.clone()),
                    _ => None,
                };
                let host = text(&parts[0]).ok_or("a master host that is not text")?;
                let port = text(&parts[1])
                    .and_then(|p| p.parse().ok())
                    .ok_or("a master port that is not a port")?;
                Ok((host, port))
            }
            Some(Value::Nil) => Err(format!("it does not know a master named {:?}", set.master)),
            other => Err(format!("an unexpected answer {other:?}")),
        }
    }

    #[cfg(feature = "redis-tls")]
    fn wrap_tcp(&self, tcp: TcpStream, host: &str) -> io::Result<Stream> {
        let Some(config) = &self.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let server = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = rustls::ClientConnection::new(config.clone(), server)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))))
    }

    #[cfg(not(feature = "redis-tls"))]
    #[allow(clippy::unused_self, clippy::unnecessary_wraps)]
    fn wrap_tcp(&self, tcp: TcpStream, _host: &str) -> io::Result<Stream> {
        Ok(Stream::Tcp(tcp))
    }
}

/// `AUTH [user] password`.
fn auth(user: Option<&str>, password: &str) -> ::redis::Cmd {
    let mut auth = ::redis::cmd("AUTH");
    if let Some(user) = user {
        auth.arg(user);
    }
    auth.arg(password);
    auth
}

/// The error of a connection that could not be made (nothing was sent on it).
fn connect_error(name: &str, what: &str, e: &io::Error) -> BackendError {
    BackendError::new(
        io_kind(e),
        format!("connecting to redis at {name}: {what}: {e}"),
    )
    .unsent()
}

/// Fails unless `role` (the reply to `ROLE`) says the server is a master: a server the
/// sentinels named may have been demoted since, and writes to a replica are refused.
fn check_master(role: &Value, name: &str) -> Result<(), BackendError> {
    let first = match role {
        Value::Array(parts) => parts.first(),
        _ => None,
    };
    let is_master = matches!(first, Some(Value::BulkString(b)) if b == b"master")
        || matches!(first, Some(Value::SimpleString(s)) if s == "master");
    if is_master {
        return Ok(());
    }
    Err(BackendError::new(
        BackendErrorKind::Unavailable,
        format!(
            "connecting to redis at {name}: the server is not a master (a failover may be under way): {role:?}"
        ),
    )
    .unsent())
}

/// The time left until `deadline`, at least a millisecond (a zero socket timeout means none).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn io_kind(e: &io::Error) -> BackendErrorKind {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => BackendErrorKind::Timeout,
        _ => BackendErrorKind::Connection,
    }
}

enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    #[cfg(feature = "redis-tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn socket(&self) -> socket2::SockRef<'_> {
        match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            #[cfg(unix)]
            Stream::Unix(s) => socket2::SockRef::from(s),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(s) => socket2::SockRef::from(&s.sock),
        }
    }

    fn is_tls(&self) -> bool {
        #[cfg(feature = "redis-tls")]
        if let Stream::Tls(_) = self {
            return true;
        }
        false
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Stream::Unix(s) => s.flush(),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A connection to one server. Any failure leaves it in an unknown state: drop it.
pub(crate) struct Connection {
    stream: Stream,
    reader: Reader,
    /// The socket's read timeout as last set, so a pipeline's many replies (mostly already
    /// buffered) do not each cost a system call.
    read_timeout: Option<Duration>,
}

/// How far the socket's read timeout may lag behind the time left before it is set again: a
/// read may end this much after its deadline.
const TIMEOUT_LAG: Duration = Duration::from_millis(1);

impl Connection {
    fn over(stream: Stream) -> Connection {
        Connection {
            stream,
            reader: Reader::default(),
            read_timeout: None,
        }
    }

    /// Whether the server still holds the connection open, seen without a round trip: an idle
    /// connection has nothing to read, so a socket that is readable was closed (or reset) by
    /// the other side, or carries bytes nobody asked for.
    pub(crate) fn is_alive(&self) -> bool {
        let socket = self.stream.socket();
        if socket.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let peeked = socket.peek(&mut byte);
        let restored = socket.set_nonblocking(false).is_ok();
        restored
            && match peeked {
                // A TLS server may send session tickets after the handshake; they are read with
                // the next reply.
                Ok(n) => n > 0 && self.stream.is_tls(),
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            }
    }

    /// Writes a pipeline of `count` commands (already packed) and reads `count` replies, each
    /// by `deadline` (`None`: for as long as the connection lives; the kernel's keepalive
    /// probes end a connection to a vanished server). A failure to write any byte is
    /// [`BackendError::unsent`].
    pub(crate) fn exchange(
        &mut self,
        packed: &[u8],
        count: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<Value>, BackendError> {
        self.write_all(packed, deadline)?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(self.read(deadline)?);
        }
        Ok(values)
    }

    fn write_all(
        &mut self,
        mut bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), BackendError> {
        let mut written = 0usize;
        let failed = |e: io::Error, written: usize| {
            let error = BackendError::new(io_kind(&e), format!("writing to redis: {e}"));
            if written == 0 { error.unsent() } else { error }
        };
        let timeout = deadline.map(remaining);
        self.stream
            .socket()
            .set_write_timeout(timeout)
            .map_err(|e| failed(e, 0))?;
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => {
                    return Err(failed(io::ErrorKind::WriteZero.into(), written));
                }
                Ok(n) => {
                    written += n;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e, written)),
            }
        }
        self.stream.flush().map_err(|e| failed(e, written))
    }

    fn read(&mut self, deadline: Option<Instant>) -> Result<Value, BackendError> {
        let wanted = deadline.map(remaining);
        let stale = match (self.read_timeout, wanted) {
            (Some(set), Some(wanted)) => set > wanted + TIMEOUT_LAG || set < wanted,
            (set, wanted) => set != wanted,
        };
        if stale {
            self.stream
                .socket()
                .set_read_timeout(wanted)
                .map_err(|e| BackendError::new(io_kind(&e), format!("reading from redis: {e}")))?;
            self.read_timeout = wanted;
        }
        self.reader
            .read_value(&mut self.stream)
            .map_err(|e| match e {
                ReadError::Io(e) => {
                    BackendError::new(io_kind(&e), format!("reading from redis: {e}"))
                }
                ReadError::Closed => BackendError::new(
                    BackendErrorKind::Connection,
                    "reading from redis: the server closed the connection",
                ),
                ReadError::Protocol(what) => BackendError::new(
                    BackendErrorKind::Protocol,
                    format!("reading from redis: {what}"),
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Endpoint::new(&format!("redis://127.0.0.1:{port}"), None).unwrap();
        let conn = endpoint
            .connect(Instant::now() + Duration::from_secs(2))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        (conn, server)
    }

    #[test]
    fn an_idle_open_connection_is_alive_and_a_closed_one_is_not() {
        let (conn, server) = pair();
        assert!(conn.is_alive());
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!conn.is_alive());
    }

    #[test]
    fn unsolicited_bytes_mean_the_connection_is_not_usable() {
        let (conn, mut server) = pair();
        server.write_all(b"+OK\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!conn.is_alive());
    }

    #[test]
    fn a_reply_is_read_after_a_pause_longer_than_any_timeout_when_no_deadline_is_set() {
        let (mut conn, mut server) = pair();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let _ = server.read(&mut buf).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            server.write_all(b":7\r\n").unwrap();
            server
        });
        let ping = ::redis::cmd("PING").get_packed_command();
        let values = conn.exchange(&ping, 1, None).unwrap();
        assert_eq!(values, vec![Value::Int(7)]);
        drop(t.join());
    }

    #[test]
    fn a_reply_past_the_deadline_is_a_timeout() {
        let (mut conn, _server) = pair();
        let ping = ::redis::cmd("PING").get_packed_command();
        let t = Instant::now();
        let err = conn
            .exchange(&ping, 1, Some(Instant::now() + Duration::from_millis(100)))
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Timeout);
        assert!(err.may_have_applied());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_refused_connection_is_unsent() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = Endpoint::new(&format!("redis://127.0.0.1:{port}"), None).unwrap();
        let Err(err) = endpoint.connect(Instant::now() + Duration::from_secs(1)) else {
            panic!("connected to a closed port");
        };
        assert_eq!(err.kind(), BackendErrorKind::Connection);
        assert!(!err.may_have_applied());
    }
}
