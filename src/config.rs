//! Layer configuration shared by every backend: expiry, group expiry and capacities, their
//! bounds, and the reading of URL query parameters that every backend shares.

use std::fmt;
use std::num::IntErrorKind;
use std::time::Duration;

use regex::Regex;

use crate::error::BuildError;

/// Default message expiry: 60 seconds ([contract §1.6](crate::contract)).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);
/// Default group membership expiry: 86,400 seconds, one day ([contract §1.2](crate::contract)).
pub const DEFAULT_GROUP_EXPIRY: Duration = Duration::from_secs(86_400);
/// Default channel capacity: 100 messages ([contract §1.6](crate::contract)).
pub const DEFAULT_CAPACITY: usize = 100;

/// Seconds in a day, to write the bounds below.
const DAY_SECS: u64 = 24 * 60 * 60;

/// The longest [`LayerConfig::expiry`] allowed: 365 days.
///
/// A message nobody receives for a year is lost anyway; the bound keeps every deadline a
/// backend computes from the expiry (the in-memory queues' deadlines, twice the expiry as the
/// TTL of Redis keys) far from overflowing.
pub const MAX_EXPIRY: Duration = Duration::from_secs(365 * DAY_SECS);

/// The longest [`LayerConfig::group_expiry`] allowed: 365 days.
///
/// In whole seconds it fits the argument of Redis's `EXPIRE` with room to spare.
pub const MAX_GROUP_EXPIRY: Duration = Duration::from_secs(365 * DAY_SECS);

/// The largest capacity allowed, for [`LayerConfig::capacity`] and every [`CapacityRule`]: one
/// billion messages.
///
/// Neither backend sets anything aside for a channel's capacity (the in-memory queues grow as
/// messages arrive, Redis keeps a sorted set), so the bound costs nothing; it is far beyond what
/// a channel can hold in practice, well inside the integers that Redis's Lua scripts count
/// exactly, and it turns a typo with a few digits too many into an error.
pub const MAX_CAPACITY: usize = 1_000_000_000;

/// Default [`LayerConfig::max_message_depth`]: 128 levels of nesting, the message map itself
/// being level 1.
///
/// Real messages nest a handful of levels; msgpack-python (and so a channels_redis peer) reads
/// up to about a thousand. 128 admits every message a peer plausibly sends while keeping each
/// operation on a message (encoding, decoding, cloning, comparing, formatting, dropping) well
/// inside a 2 MiB thread stack, in debug builds too.
pub const DEFAULT_MAX_MESSAGE_DEPTH: usize = 128;

/// The largest [`LayerConfig::max_message_depth`] allowed: 256 levels, half the depth at which
/// decoding into a `serde_json::Value` was seen to exhaust a 2 MiB stack in a debug build.
pub const MAX_MESSAGE_DEPTH: usize = 256;

/// Default [`LayerConfig::max_message_bytes`]: 100 MiB of msgpack, the most msgpack-python
/// (and so a channels_redis peer) reads by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 100 * 1024 * 1024;

/// The largest [`LayerConfig::max_message_bytes`] allowed: 512 MiB, the largest string Redis
/// stores.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// How a [`CapacityRule`] matches channel names.
#[derive(Clone)]
enum Pattern {
    /// A shell-style glob, matched against the whole name.
    Glob(String, Regex),
    /// A regular expression, matched at the start of the name.
    Regex(Regex),
}

/// A capacity for the channels whose full name matches a pattern.
///
/// Rules are tried in the order they were added and the first match wins; a name no rule
/// matches gets [`LayerConfig::capacity`]. As in Django Channels ([contract §1.6](crate::contract)):
/// - a **glob** matches the whole name; `*` matches any run of characters (including `.` and
///   `!`), `?` one character, `[abc]` / `[!abc]` a set or its complement;
/// - a **regex** (the `regex` crate's syntax) matches at the start of the name, like Python's
///   `re.match`; add `$` to anchor the end.
///
/// For a process-specific channel (`prefix!local`) the rule is matched against the full name,
/// and the capacity it gives bounds that channel alone ([contract §1.3](crate::contract)).
#[derive(Clone)]
pub struct CapacityRule {
    pattern: Pattern,
    capacity: usize,
}

impl CapacityRule {
    /// A rule for names matching a shell-style glob.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] when the capacity is zero or above [`MAX_CAPACITY`].
    pub fn glob(pattern: &str, capacity: usize) -> Result<Self, BuildError> {
        let regex = Regex::new(&glob_to_regex(pattern)).map_err(|e| {
            BuildError::invalid_option("channel_capacity glob", pattern, e.to_string())
        })?;
        Self::checked(Pattern::Glob(pattern.to_owned(), regex), capacity, pattern)
    }

    /// A rule for names matching a regular expression at their start.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] when the regex does not compile, or the capacity is zero or
    /// above [`MAX_CAPACITY`].
    pub fn regex(pattern: &str, capacity: usize) -> Result<Self, BuildError> {
        let regex = Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
            BuildError::invalid_option("channel_capacity regex", pattern, e.to_string())
        })?;
        Self::checked(Pattern::Regex(regex), capacity, pattern)
    }

    fn checked(pattern: Pattern, capacity: usize, text: &str) -> Result<Self, BuildError> {
        check_count(
            &format!("channel_capacity[{text:?}]"),
            capacity,
            1,
            MAX_CAPACITY,
        )?;
        Ok(CapacityRule { pattern, capacity })
    }

    /// The pattern as it was given.
    fn pattern_text(&self) -> &str {
        match &self.pattern {
            Pattern::Glob(glob, _) => glob,
            // Written `^(?:<pattern>)` by `regex`.
            Pattern::Regex(re) => re
                .as_str()
                .strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or(re.as_str()),
        }
    }

    /// Whether the rule applies to `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        match &self.pattern {
            Pattern::Glob(_, re) | Pattern::Regex(re) => re.is_match(channel),
        }
    }

    /// The capacity this rule gives.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl fmt::Debug for CapacityRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Pattern::Glob(g, _) => write!(f, "glob({g:?}) => {}", self.capacity),
            Pattern::Regex(r) => write!(f, "regex({:?}) => {}", r.as_str(), self.capacity),
        }
    }
}

/// Translates a shell glob into an anchored regex, as Python's `fnmatch.translate` does.
fn glob_to_regex(glob: &str) -> String {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::from("^(?s:");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                // Consecutive stars mean the same as one.
                while i < chars.len() && chars[i] == '*' {
                    i += 1;
                }
                out.push_str(".*");
            }
            '?' => out.push('.'),
            '[' => {
                // Find the closing bracket; a `]` right after `[` or `[!` is literal.
                let mut j = i;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str("\\[");
                } else {
                    let mut set = String::from("[");
                    let mut k = i;
                    if chars[k] == '!' {
                        set.push('^');
                        k += 1;
                    }
                    for &ch in &chars[k..j] {
                        if ch == '\\' || ch == '[' || ch == '&' || ch == '~' || ch == '^' {
                            set.push('\\');
                        }
                        set.push(ch);
                    }
                    set.push(']');
                    out.push_str(&set);
                    i = j + 1;
                }
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push_str(")$");
    out
}

/// The settings every backend honours.
///
/// Build one with [`LayerConfig::builder`], or take [`LayerConfig::default`]:
/// expiry 60 s, group expiry 86,400 s, capacity 100, no per-channel rules.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use channel_layer::LayerConfig;
///
/// let config = LayerConfig::builder()
///     .capacity(500)
///     .expiry(Duration::from_secs(30))
///     .channel_capacity("http.response!*", 10)
///     .channel_capacity_regex(r"websocket\.send!.+", 20)
///     .build()?;
/// assert_eq!(config.capacity_for("http.response!abc"), 10);
/// assert_eq!(config.capacity_for("websocket.send!x"), 20);
/// assert_eq!(config.capacity_for("chat"), 500);
/// # Ok::<(), channel_layer::BuildError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LayerConfig {
    /// How long a message waits to be received before it is dropped (and counted as expired).
    pub expiry: Duration,
    /// How long a group membership lasts after the latest `group_add` of that channel.
    pub group_expiry: Duration,
    /// How many messages a channel holds when no rule in `channel_capacity` matches it.
    pub capacity: usize,
    /// Capacity rules, tried in order against the full channel name; the first match wins.
    pub channel_capacity: Vec<CapacityRule>,
    /// How deeply a message may nest lists and maps, the message map itself being level 1
    /// ([`DEFAULT_MAX_MESSAGE_DEPTH`]). Sends of deeper messages fail with
    /// [`MessageError::TooDeep`](crate::MessageError::TooDeep); a network backend drops (and
    /// counts as undecodable) deeper messages it reads.
    pub max_message_depth: usize,
    /// How large a message may be, as msgpack ([`DEFAULT_MAX_MESSAGE_BYTES`]). Sends of larger
    /// messages fail with [`MessageError::TooLarge`](crate::MessageError::TooLarge).
    pub max_message_bytes: usize,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            expiry: DEFAULT_EXPIRY,
            group_expiry: DEFAULT_GROUP_EXPIRY,
            capacity: DEFAULT_CAPACITY,
            channel_capacity: Vec::new(),
            max_message_depth: DEFAULT_MAX_MESSAGE_DEPTH,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl LayerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> LayerConfigBuilder {
        LayerConfigBuilder {
            config: LayerConfig::default(),
            error: None,
        }
    }

    /// The capacity that applies to `channel` (its full name): the first matching rule's, else
    /// [`LayerConfig::capacity`].
    pub fn capacity_for(&self, channel: &str) -> usize {
        self.channel_capacity
            .iter()
            .find(|rule| rule.matches(channel))
            .map_or(self.capacity, CapacityRule::capacity)
    }

    /// Checks a message before it is sent: no reserved key, and within
    /// [`LayerConfig::max_message_depth`] and [`LayerConfig::max_message_bytes`].
    pub(crate) fn check_message(
        &self,
        message: &crate::Message,
    ) -> Result<(), crate::MessageError> {
        message.check_reserved()?;
        message.check_limits(self.max_message_depth, self.max_message_bytes)
    }

    /// Checks the settings against their bounds: [`LayerConfig::capacity`] and the capacity of
    /// every rule from 1 to [`MAX_CAPACITY`], [`LayerConfig::expiry`] longer than zero and at
    /// most [`MAX_EXPIRY`], [`LayerConfig::group_expiry`] longer than zero and at most
    /// [`MAX_GROUP_EXPIRY`].
    ///
    /// A configuration that passes can be used by every backend without anything overflowing
    /// later.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] naming the first setting that is out of range, with its
    /// value and the range allowed.
    pub fn validate(&self) -> Result<(), BuildError> {
        check_count("capacity", self.capacity, 1, MAX_CAPACITY)?;
        check_count(
            "max_message_depth",
            self.max_message_depth,
            1,
            MAX_MESSAGE_DEPTH,
        )?;
        check_count(
            "max_message_bytes",
            self.max_message_bytes,
            1,
            MAX_MESSAGE_BYTES,
        )?;
        check_duration("expiry", self.expiry, MAX_EXPIRY)?;
        check_duration("group_expiry", self.group_expiry, MAX_GROUP_EXPIRY)?;
        for rule in &self.channel_capacity {
            check_count(
                &format!("channel_capacity[{:?}]", rule.pattern_text()),
                rule.capacity,
                1,
                MAX_CAPACITY,
            )?;
        }
        Ok(())
    }

    /// Applies one setting given as text, as URL query parameters carry them: `capacity` (a
    /// whole number), `expiry` and `group_expiry` (seconds, fractions allowed),
    /// `max_message_depth` and `max_message_bytes` (whole numbers). Returns
    /// `Ok(false)` when `name` is not one of these, so a backend can handle its own parameters.
    ///
    /// The value is checked against the same bounds as [`LayerConfig::validate`] checks.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] when the value does not parse or is out of range.
    pub fn set_param(&mut self, name: &str, value: &str) -> Result<bool, BuildError> {
        match name {
            "capacity" => self.capacity = parse_count(name, value, 1, MAX_CAPACITY)?,
            "max_message_depth" => {
                self.max_message_depth = parse_count(name, value, 1, MAX_MESSAGE_DEPTH)?;
            }
            "max_message_bytes" => {
                self.max_message_bytes = parse_count(name, value, 1, MAX_MESSAGE_BYTES)?;
            }
            "expiry" => self.expiry = parse_seconds(name, value, MAX_EXPIRY)?,
            "group_expiry" => self.group_expiry = parse_seconds(name, value, MAX_GROUP_EXPIRY)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

// ===== Bounds =====

/// What a duration option must be: longer than zero and at most `max`.
fn duration_range(max: Duration) -> String {
    let secs = max.as_secs();
    let unit = if secs % DAY_SECS == 0 && secs >= DAY_SECS {
        Some((secs / DAY_SECS, "day"))
    } else if secs % 3600 == 0 && secs >= 3600 {
        Some((secs / 3600, "hour"))
    } else {
        None
    };
    match unit {
        Some((1, unit)) => format!("must be longer than 0 s and at most {secs} s (1 {unit})"),
        Some((n, unit)) => format!("must be longer than 0 s and at most {secs} s ({n} {unit}s)"),
        None => format!("must be longer than 0 s and at most {:?}", max),
    }
}

/// Checks that a duration option is longer than zero and at most `max`.
pub(crate) fn check_duration(name: &str, value: Duration, max: Duration) -> Result<(), BuildError> {
    if value.is_zero() || value > max {
        return Err(BuildError::invalid_option(
            name,
            format!("{value:?}"),
            duration_range(max),
        ));
    }
    Ok(())
}

/// Checks that a count option is within `min..=max`.
pub(crate) fn check_count(
    name: &str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), BuildError> {
    if value < min || value > max {
        return Err(BuildError::invalid_option(
            name,
            value,
            format!("must be from {min} to {max}"),
        ));
    }
    Ok(())
}

/// Parses a number of seconds (fractions and exponents allowed, as in `0.5` or `1e3`) as a
/// duration longer than zero and at most `max`.
///
/// Not-a-number, infinities, negative numbers and numbers too small to be a nanosecond are
/// errors, never a panic or a silent zero.
pub(crate) fn parse_seconds(
    name: &str,
    value: &str,
    max: Duration,
) -> Result<Duration, BuildError> {
    let secs: f64 = value
        .parse()
        .map_err(|_| BuildError::invalid_option(name, value, "expected a number of seconds"))?;
    if !secs.is_finite() {
        return Err(BuildError::invalid_option(
            name,
            value,
            "expected a finite number of seconds",
        ));
    }
    // Compared as floats first: a huge value must not reach the conversion to `Duration`.
    if secs <= 0.0 || secs > max.as_secs_f64() {
        return Err(BuildError::invalid_option(name, value, duration_range(max)));
    }
    let duration = Duration::from_secs_f64(secs);
    if duration.is_zero() || duration > max {
        return Err(BuildError::invalid_option(name, value, duration_range(max)));
    }
    Ok(duration)
}

/// Parses a whole number within `min..=max`.
pub(crate) fn parse_count(
    name: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<usize, BuildError> {
    let count = match value.parse::<usize>() {
        Ok(count) => count,
        // All digits, just too many of them: say what the range is.
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => max.saturating_add(1),
        Err(_) => {
            return Err(BuildError::invalid_option(
                name,
                value,
                "expected a whole number",
            ));
        }
    };
    if count < min || count > max {
        return Err(BuildError::invalid_option(
            name,
            value,
            format!("must be from {min} to {max}"),
        ));
    }
    Ok(count)
}

// ===== URL parameters =====

/// The query parameters every backend takes.
const COMMON_PARAMS: [&str; 5] = [
    "capacity",
    "expiry",
    "group_expiry",
    "max_message_depth",
    "max_message_bytes",
];

/// Remembers which single-valued parameters a URL has given, so that giving one twice is an
/// error rather than the last one silently winning.
#[derive(Debug, Default)]
pub(crate) struct GivenOnce(Vec<String>);

impl GivenOnce {
    /// Notes that `name` was given; an error if it was given before.
    pub(crate) fn note(&mut self, name: &str, value: &str) -> Result<(), BuildError> {
        if self.0.iter().any(|seen| seen == name) {
            return Err(BuildError::invalid_option(
                name,
                value,
                "given more than once; this parameter takes one value",
            ));
        }
        self.0.push(name.to_owned());
        Ok(())
    }
}

/// The scheme of a URL, lower-cased: the letters before its first `:`.
///
/// Only the scheme is looked at, so that a backend whose URLs the `url` crate cannot parse
/// (several hosts in one URL, say) still gets its URL.
///
/// # Errors
///
/// [`BuildError::InvalidUrl`] when the text does not start with a scheme.
pub(crate) fn url_scheme(url: &str) -> Result<String, BuildError> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    match scheme {
        Some(scheme) => Ok(scheme.to_ascii_lowercase()),
        None => Err(BuildError::InvalidUrl {
            url: redacted_url(url),
            reason: "it does not start with a scheme, such as memory:// or redis://".into(),
        }),
    }
}

/// The query of a URL (after the first `?`, before any `#`), or `""` when it has none.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn url_query(url: &str) -> &str {
    let before_fragment = url.split_once('#').map_or(url, |(before, _)| before);
    before_fragment
        .split_once('?')
        .map_or("", |(_, query)| query)
}

/// The names of URL parameters whose values are secrets, shown as `***` in errors.
const SECRET_PARAMS: [&str; 3] = ["symmetric_encryption_keys", "sentinel_password", "token"];

/// The URL with its password (in `user:password@`) and secret parameters' values replaced by
/// `***`, for error messages.
pub(crate) fn redacted_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let (address, query_and_fragment) = match url.find(['?', '#']) {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    // The password: between the first `:` of the userinfo and the authority's last `@`.
    match address.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        // A NATS URL's bare userinfo is a token, a secret.
                        None if matches!(scheme.to_ascii_lowercase().as_str(), "nats" | "tls") => {
                            out.push_str("***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push('@');
                    out.push_str(hosts);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(address),
    }
    let (query, fragment) = match query_and_fragment.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query_and_fragment, None),
    };
    if let Some(query) = query.strip_prefix('?') {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(name, _)| name.into_owned())
                .unwrap_or_default();
            if SECRET_PARAMS.contains(&decoded.as_str()) {
                out.push_str(name);
                out.push_str("=***");
            } else {
                out.push_str(pair);
            }
        }
    } else {
        // A fragment right after the address.
        out.push_str(query);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Reads a URL query (`name=value&...`, percent-encoded): the common parameters (`capacity`,
/// `expiry`, `group_expiry`) go into a [`LayerConfig`], checked against their bounds; those
/// named in `extra` are returned as `(name, value)` pairs, in the order given, for the backend
/// to read. Any other parameter is an error, and so is a common one given twice.
///
/// This is the one reader of the shared parameters behind every backend's URL.
pub(crate) fn parse_query(
    scheme: &str,
    query: &str,
    extra: &[&str],
) -> Result<(LayerConfig, Vec<(String, String)>), BuildError> {
    let mut config = LayerConfig::default();
    let mut given = GivenOnce::default();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(raw_name).ok_or_else(|| BuildError::UnknownParameter {
            scheme: scheme.to_owned(),
            name: String::from_utf8_lossy(raw_name.as_bytes()).into_owned(),
        })?;
        if COMMON_PARAMS.contains(&name.as_str()) {
            let value = decode_value(&name, raw_value)?;
            given.note(&name, &value)?;
            config.set_param(&name, &value)?;
        } else if extra.contains(&name.as_str()) {
            let value = decode_value(&name, raw_value)?;
            rest.push((name, value));
        } else {
            return Err(BuildError::UnknownParameter {
                scheme: scheme.to_owned(),
                name,
            });
        }
    }
    config.validate()?;
    Ok((config, rest))
}

/// Decodes a parameter's value, which must be UTF-8 once decoded.
fn decode_value(name: &str, raw: &str) -> Result<String, BuildError> {
    decode_component(raw).ok_or_else(|| {
        BuildError::invalid_option(
            name,
            "<not UTF-8>",
            "the value is not UTF-8 text once percent-decoded",
        )
    })
}

/// Decodes one name or value of a query as HTML forms encode them (`+` for a space, `%XX`
/// for a byte; a `%` not followed by two hex digits stays as it is). `None` when the bytes are
/// not UTF-8: such a value is refused rather than silently changed, since it may be a key.
pub(crate) fn decode_component(raw: &str) -> Option<String> {
    let raw = raw.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |at: usize| raw.get(at).and_then(|&c| char::from(c).to_digit(16));
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(high), Some(low)) => {
                    // Two hex digits make a byte: high * 16 + low is at most 255.
                    bytes.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                    i += 2;
                }
                _ => bytes.push(b'%'),
            },
            other => bytes.push(other),
        }
        i += 1;
    }
    String::from_utf8(bytes).ok()
}

/// Reads a URL's query parameters: the common ones (`capacity`, `expiry`, `group_expiry`,
/// `max_message_depth`, `max_message_bytes`) go
/// into a [`LayerConfig`]; those named in `extra` are returned as `(name, value)` pairs, in the
/// order given, for the backend; any other is an error. Every value is checked against the
/// bounds of [`LayerConfig::validate`], and a common parameter given twice is an error.
///
/// Every backend of this crate reads its URL with the same rules; a third-party backend's
/// factory (see [`crate::register_backend`]) can use this to take the same parameters.
///
/// # Errors
///
/// [`BuildError::InvalidUrl`], [`BuildError::UnknownParameter`], [`BuildError::InvalidOption`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let (config, rest) =
///     channel_layer::parse_url_params("mine://host?capacity=5&colour=red", &["colour"])?;
/// assert_eq!(config.capacity, 5);
/// assert_eq!(config.expiry, Duration::from_secs(60));
/// assert_eq!(rest, [("colour".to_owned(), "red".to_owned())]);
/// assert!(channel_layer::parse_url_params("mine://host?expiry=1e19", &[]).is_err());
/// # Ok::<(), channel_layer::BuildError>(())
/// ```
pub fn parse_url_params(
    url: &str,
    extra: &[&str],
) -> Result<(LayerConfig, Vec<(String, String)>), BuildError> {
    let parsed = url::Url::parse(url).map_err(|e| BuildError::InvalidUrl {
        url: redacted_url(url),
        reason: e.to_string(),
    })?;
    parse_query(parsed.scheme(), parsed.query().unwrap_or(""), extra)
}

/// Builds a [`LayerConfig`]; see there for an example.
#[derive(Debug)]
#[must_use]
pub struct LayerConfigBuilder {
    config: LayerConfig,
    error: Option<BuildError>,
}

impl LayerConfigBuilder {
    /// Sets [`LayerConfig::expiry`].
    pub fn expiry(mut self, expiry: Duration) -> Self {
        self.config.expiry = expiry;
        self
    }

    /// Sets [`LayerConfig::group_expiry`].
    pub fn group_expiry(mut self, group_expiry: Duration) -> Self {
        self.config.group_expiry = group_expiry;
        self
    }

    /// Sets [`LayerConfig::capacity`].
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// Sets [`LayerConfig::max_message_depth`].
    pub fn max_message_depth(mut self, depth: usize) -> Self {
        self.config.max_message_depth = depth;
        self
    }

    /// Sets [`LayerConfig::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.config.max_message_bytes = bytes;
        self
    }

    /// Adds a capacity rule for channels matching a shell glob (see [`CapacityRule::glob`]).
    pub fn channel_capacity(self, glob: &str, capacity: usize) -> Self {
        self.rule(CapacityRule::glob(glob, capacity))
    }

    /// Adds a capacity rule for channels matching a regex at their start
    /// (see [`CapacityRule::regex`]).
    pub fn channel_capacity_regex(self, regex: &str, capacity: usize) -> Self {
        self.rule(CapacityRule::regex(regex, capacity))
    }

    fn rule(mut self, rule: Result<CapacityRule, BuildError>) -> Self {
        match rule {
            Ok(rule) => self.config.channel_capacity.push(rule),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// The configuration.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] for the first invalid setting or pattern.
    pub fn build(self) -> Result<LayerConfig, BuildError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names_like_fnmatch() {
        let g = |p: &str, n: &str| CapacityRule::glob(p, 1).unwrap().matches(n);
        assert!(g("http.response!*", "http.response!abc"));
        assert!(!g("http.response!*", "xhttp.response!abc"));
        assert!(g("tiny", "tiny"));
        assert!(!g("tiny", "tiny2"));
        assert!(g("a?c", "abc"));
        assert!(g("a[bc]d", "acd"));
        assert!(!g("a[!bc]d", "acd"));
        assert!(g("a[!bc]d", "aed"));
        assert!(g("a.b", "a.b"));
        assert!(!g("a.b", "axb"));
        assert!(g("[", "["));
        assert!(g("*", "anything!at.all"));
    }

    #[test]
    fn regexes_match_at_start() {
        let r = CapacityRule::regex("chat", 1).unwrap();
        assert!(r.matches("chat.lobby"));
        assert!(!r.matches("mychat"));
        assert!(CapacityRule::regex("(", 1).is_err());
    }

    #[test]
    fn first_rule_wins() {
        let c = LayerConfig::builder()
            .channel_capacity("a*", 1)
            .channel_capacity("ab*", 2)
            .build()
            .unwrap();
        assert_eq!(c.capacity_for("abc"), 1);
        assert_eq!(c.capacity_for("zzz"), DEFAULT_CAPACITY);
    }

    #[test]
    fn rejects_zero() {
        assert!(LayerConfig::builder().capacity(0).build().is_err());
        assert!(
            LayerConfig::builder()
                .expiry(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(
            LayerConfig::builder()
                .channel_capacity("x", 0)
                .build()
                .is_err()
        );
    }

    #[test]
    fn params() {
        let mut c = LayerConfig::default();
        assert!(c.set_param("expiry", "0.5").unwrap());
        assert_eq!(c.expiry, Duration::from_millis(500));
        assert!(!c.set_param("nope", "1").unwrap());
        assert!(c.set_param("capacity", "x").is_err());
        assert!(c.set_param("expiry", "-1").is_err());
    }

    #[test]
    fn message_limits_are_options_with_bounds() {
        let (config, _) =
            parse_url_params("memory://?max_message_depth=10&max_message_bytes=4096", &[]).unwrap();
        assert_eq!(
            (config.max_message_depth, config.max_message_bytes),
            (10, 4096)
        );
        for bad in [
            "memory://?max_message_depth=0",
            "memory://?max_message_depth=257",
            "memory://?max_message_bytes=0",
            "memory://?max_message_bytes=999999999999",
        ] {
            let name = invalid(parse_url_params(bad, &[])).0;
            assert!(name.starts_with("max_message_"), "{bad}: {name}");
        }
        let c = LayerConfig {
            max_message_depth: MAX_MESSAGE_DEPTH + 1,
            ..LayerConfig::default()
        };
        assert_eq!(invalid(c.validate()).0, "max_message_depth");
    }

    /// The option an error names, its value as shown and the reason.
    pub(crate) fn invalid(result: Result<impl fmt::Debug, BuildError>) -> (String, String, String) {
        match result {
            Err(BuildError::InvalidOption {
                name,
                value,
                reason,
            }) => (name, value, reason),
            other => panic!("expected InvalidOption, got {other:?}"),
        }
    }

    #[test]
    fn durations_beyond_the_bounds_are_refused_by_name_value_and_range() {
        let mut c = LayerConfig::default();
        for name in ["expiry", "group_expiry"] {
            // 1e19 s fits a Duration but overflows any deadline computed from it.
            for value in ["1e19", "31536001", "1e300", "18446744073709551615"] {
                let (n, v, reason) = invalid(c.set_param(name, value));
                assert_eq!((n.as_str(), v.as_str()), (name, value));
                assert!(reason.contains("at most 31536000 s (365 days)"), "{reason}");
            }
            for value in ["0", "-0", "-1", "-1e-3", "1e-12"] {
                let (n, v, reason) = invalid(c.set_param(name, value));
                assert_eq!((n.as_str(), v.as_str()), (name, value));
                assert!(reason.contains("longer than 0 s"), "{value}: {reason}");
            }
            for value in ["NaN", "nan", "inf", "-inf", "infinity"] {
                let (_, v, reason) = invalid(c.set_param(name, value));
                assert_eq!(v, value);
                assert!(reason.contains("finite"), "{value}: {reason}");
            }
            for value in ["", "soon", "1s", " 1", "0x10"] {
                let (_, _, reason) = invalid(c.set_param(name, value));
                assert!(reason.contains("number of seconds"), "{value:?}: {reason}");
            }
            assert!(c.set_param(name, "31536000").unwrap());
            assert!(c.set_param(name, "1e-9").unwrap());
            assert!(c.set_param(name, "2.5e1").unwrap());
        }
        assert_eq!(c.expiry, Duration::from_secs(25));
        assert_eq!(c.group_expiry, Duration::from_secs(25));
    }

    #[test]
    fn capacities_beyond_the_bounds_are_refused() {
        let mut c = LayerConfig::default();
        for value in ["0", "1000000001", "99999999999999999999999"] {
            let (name, v, reason) = invalid(c.set_param("capacity", value));
            assert_eq!((name.as_str(), v.as_str()), ("capacity", value));
            assert_eq!(reason, "must be from 1 to 1000000000");
        }
        for value in ["-1", "1.5", "1e3", "", "ten"] {
            let (_, _, reason) = invalid(c.set_param("capacity", value));
            assert_eq!(reason, "expected a whole number", "{value:?}");
        }
        assert!(c.set_param("capacity", "1000000000").unwrap());
        assert_eq!(c.capacity, MAX_CAPACITY);
    }

    #[test]
    fn validate_checks_every_bound() {
        let ok = LayerConfig::builder()
            .capacity(MAX_CAPACITY)
            .expiry(MAX_EXPIRY)
            .group_expiry(MAX_GROUP_EXPIRY)
            .channel_capacity("a*", MAX_CAPACITY)
            .build();
        assert!(ok.is_ok(), "{ok:?}");

        let c = LayerConfig {
            capacity: MAX_CAPACITY + 1,
            ..LayerConfig::default()
        };
        assert_eq!(invalid(c.validate()).0, "capacity");
        let c = LayerConfig {
            expiry: Duration::MAX,
            ..LayerConfig::default()
        };
        let (name, value, reason) = invalid(c.validate());
        assert_eq!(name, "expiry");
        assert!(value.starts_with("18446744073709551615"), "{value}");
        assert!(reason.contains("365 days"), "{reason}");
        let c = LayerConfig {
            group_expiry: MAX_GROUP_EXPIRY + Duration::from_nanos(1),
            ..LayerConfig::default()
        };
        assert_eq!(invalid(c.validate()).0, "group_expiry");
        let c = LayerConfig {
            group_expiry: Duration::ZERO,
            ..LayerConfig::default()
        };
        assert_eq!(invalid(c.validate()).0, "group_expiry");

        let (name, _, reason) = invalid(CapacityRule::glob("big.*", MAX_CAPACITY + 1));
        assert_eq!(name, r#"channel_capacity["big.*"]"#);
        assert_eq!(reason, "must be from 1 to 1000000000");
        let (name, _, _) = invalid(CapacityRule::regex("big", usize::MAX));
        assert_eq!(name, r#"channel_capacity["big"]"#);
        assert!(
            LayerConfig::builder()
                .channel_capacity_regex("x", MAX_CAPACITY + 1)
                .build()
                .is_err()
        );
    }

    #[test]
    fn the_shared_url_parser_reads_common_params_and_hands_back_the_rest() {
        let (config, rest) = parse_query(
            "x",
            "capacity=5&b=2&expiry=0.25&a=1&b=3&group_expiry=7",
            &["a", "b"],
        )
        .unwrap();
        assert_eq!(config.capacity, 5);
        assert_eq!(config.expiry, Duration::from_millis(250));
        assert_eq!(config.group_expiry, Duration::from_secs(7));
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(rest, pairs(&[("b", "2"), ("a", "1"), ("b", "3")]));
        // Empty pairs are skipped; a name without `=` has an empty value.
        let (_, rest) = parse_query("x", "&a&&", &["a"]).unwrap();
        assert_eq!(rest, pairs(&[("a", "")]));
        assert!(matches!(
            parse_query("x", "colour=red", &["a"]),
            Err(BuildError::UnknownParameter { scheme, name }) if scheme == "x" && name == "colour"
        ));
        // A common parameter given twice is an error, not the last one winning.
        let (name, value, reason) = invalid(parse_query("x", "capacity=5&capacity=6", &[]));
        assert_eq!((name.as_str(), value.as_str()), ("capacity", "6"));
        assert!(reason.contains("more than once"), "{reason}");
        // Range errors come through the parser.
        assert_eq!(invalid(parse_query("x", "expiry=1e19", &[])).0, "expiry");
    }

    #[test]
    fn url_values_are_percent_decoded_as_forms_and_must_be_utf8() {
        let (_, rest) = parse_query("x", "k=a%2Bb+c%25%26%3D%C3%A9&k=%zz%4", &["k"]).unwrap();
        assert_eq!(rest[0].1, "a+b c%&=\u{e9}");
        assert_eq!(rest[1].1, "%zz%4");
        let (_, rest) = parse_query("x", "%6B=v", &["k"]).unwrap();
        assert_eq!(rest[0], ("k".to_owned(), "v".to_owned()));
        let (name, value, reason) = invalid(parse_query("x", "k=%FF%FE", &["k"]));
        assert_eq!((name.as_str(), value.as_str()), ("k", "<not UTF-8>"));
        assert!(reason.contains("UTF-8"), "{reason}");
    }

    #[test]
    fn parse_url_params_stays_public_and_uses_the_shared_parser() {
        let (config, rest) =
            crate::parse_url_params("thing://host/path?capacity=9&flavour=x", &["flavour"])
                .unwrap();
        assert_eq!(config.capacity, 9);
        assert_eq!(rest, [("flavour".to_owned(), "x".to_owned())]);
        assert!(crate::parse_url_params("thing://host?expiry=nan", &[]).is_err());
        assert!(matches!(
            crate::parse_url_params("no scheme here", &[]),
            Err(BuildError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn schemes_are_read_without_parsing_the_rest() {
        assert_eq!(url_scheme("memory://").unwrap(), "memory");
        assert_eq!(url_scheme("REDIS://h1:1,h2:2/0").unwrap(), "redis");
        assert_eq!(url_scheme("redis+unix:///s").unwrap(), "redis+unix");
        assert_eq!(url_scheme("memory:").unwrap(), "memory");
        for bad in ["", "not a url", "://x", "1redis://x", "re dis://x", ":"] {
            assert!(
                matches!(url_scheme(bad), Err(BuildError::InvalidUrl { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(url_query("redis://h/0?a=1&b=2#frag"), "a=1&b=2");
        assert_eq!(url_query("redis://h/0#frag?a=1"), "");
        assert_eq!(url_query("redis://h/0"), "");
    }

    #[test]
    fn redacted_urls_hide_passwords_and_keys() {
        let cases = [
            ("redis://h:1/0", "redis://h:1/0"),
            ("redis://user@h:1/0", "redis://user@h:1/0"),
            ("redis://user:pw@h:1/0", "redis://user:***@h:1/0"),
            ("redis://:p@ss@h1:1,h2:2/0", "redis://:***@h1:1,h2:2/0"),
            (
                "redis://h/0?prefix=a&symmetric_encryption_keys=k1&symmetric_encryption_keys=k2#x",
                "redis://h/0?prefix=a&symmetric_encryption_keys=***&symmetric_encryption_keys=***#x",
            ),
            (
                "redis://h/0?symmetric%5Fencryption%5Fkeys=k1",
                "redis://h/0?symmetric%5Fencryption%5Fkeys=***",
            ),
            ("rediss://u:p@h/0#insecure", "rediss://u:***@h/0#insecure"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }
}
