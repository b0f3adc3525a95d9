//! Layer configuration shared by every backend: expiry, group expiry and capacities.

use std::fmt;
use std::time::Duration;

use regex::Regex;

use crate::error::BuildError;

/// Default message expiry: 60 seconds (spec sheet §1.6).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);
/// Default group membership expiry: 86,400 seconds, one day (spec sheet §1.2).
pub const DEFAULT_GROUP_EXPIRY: Duration = Duration::from_secs(86_400);
/// Default channel capacity: 100 messages (spec sheet §1.6).
pub const DEFAULT_CAPACITY: usize = 100;

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
/// matches gets [`LayerConfig::capacity`]. As in Django Channels (spec sheet §1.6):
/// - a **glob** matches the whole name; `*` matches any run of characters (including `.` and
///   `!`), `?` one character, `[abc]` / `[!abc]` a set or its complement;
/// - a **regex** (the `regex` crate's syntax) matches at the start of the name, like Python's
///   `re.match`; add `$` to anchor the end.
///
/// For a process-specific channel (`prefix!local`) the rule is matched against the full name,
/// and the capacity it gives bounds the messages queued for the whole non-local part `prefix!`
/// (spec sheet §1.3).
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
    /// [`BuildError::InvalidOption`] when the capacity is zero.
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
    /// [`BuildError::InvalidOption`] when the regex does not compile or the capacity is zero.
    pub fn regex(pattern: &str, capacity: usize) -> Result<Self, BuildError> {
        let regex = Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
            BuildError::invalid_option("channel_capacity regex", pattern, e.to_string())
        })?;
        Self::checked(Pattern::Regex(regex), capacity, pattern)
    }

    fn checked(pattern: Pattern, capacity: usize, text: &str) -> Result<Self, BuildError> {
        if capacity == 0 {
            return Err(BuildError::invalid_option(
                format!("channel_capacity[{text:?}]"),
                0,
                "a capacity must be at least 1",
            ));
        }
        Ok(CapacityRule { pattern, capacity })
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
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            expiry: DEFAULT_EXPIRY,
            group_expiry: DEFAULT_GROUP_EXPIRY,
            capacity: DEFAULT_CAPACITY,
            channel_capacity: Vec::new(),
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

    /// Checks the settings: capacities and expiries must be non-zero.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] naming the first setting that is out of range.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.capacity == 0 {
            return Err(BuildError::invalid_option(
                "capacity",
                0,
                "must be at least 1",
            ));
        }
        if self.expiry.is_zero() {
            return Err(BuildError::invalid_option(
                "expiry",
                "0s",
                "must be longer than zero",
            ));
        }
        if self.group_expiry.is_zero() {
            return Err(BuildError::invalid_option(
                "group_expiry",
                "0s",
                "must be longer than zero",
            ));
        }
        Ok(())
    }

    /// Applies one setting given as text, as URL query parameters carry them: `capacity`,
    /// `expiry` and `group_expiry` (seconds, fractions allowed). Returns `Ok(false)` when `name`
    /// is not one of these, so a backend can handle its own parameters.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] when the value does not parse or is out of range.
    pub fn set_param(&mut self, name: &str, value: &str) -> Result<bool, BuildError> {
        match name {
            "capacity" => {
                self.capacity = value.parse().map_err(|_| {
                    BuildError::invalid_option(name, value, "expected a whole number")
                })?;
            }
            "expiry" => self.expiry = parse_seconds(name, value)?,
            "group_expiry" => self.group_expiry = parse_seconds(name, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses a number of seconds (fractions allowed) as a duration.
pub(crate) fn parse_seconds(name: &str, value: &str) -> Result<Duration, BuildError> {
    let secs: f64 = value
        .parse()
        .map_err(|_| BuildError::invalid_option(name, value, "expected a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| BuildError::invalid_option(name, value, "out of range"))
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
mod tests {
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
}
