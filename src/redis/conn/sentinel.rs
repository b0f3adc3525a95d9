//! A master found through Redis Sentinel: the sentinels to ask, the master's name, and the
//! logins.
//!
//! The `redis` crate has a Sentinel client, but it hands out its own connection types; the
//! layer's connections are its own sockets (see [`super::socket`]), so the few steps that
//! Sentinel takes are done here: ask a sentinel `SENTINEL get-master-addr-by-name`, connect to
//! the address it gives, and check with `ROLE` that the server is a master (a failover may be
//! under way, and the old master may have come back as a replica). Every new connection asks
//! again, so a layer follows a failover as soon as its connections to the old master break or
//! are refused as read-only.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::config::DEFAULT_SENTINEL_PORT;

/// The sentinels of one master and how to log in to them and to it.
#[derive(Debug)]
pub(crate) struct SentinelSet {
    /// `(host, port)` of each sentinel, in the order given.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// The name the sentinels know the master by.
    pub(crate) master: String,
    /// The master's login and database.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: i64,
    /// The sentinels' own login, if they need one.
    pub(crate) sentinel_username: Option<String>,
    pub(crate) sentinel_password: Option<String>,
    /// `Some(insecure)` for `rediss+sentinel://`.
    pub(crate) tls: Option<bool>,
    /// The sentinel that answered last: asked first next time.
    last_good: AtomicUsize,
}

/// The user name and password of a URL's userinfo, decoded as the `redis` crate decodes those
/// of a `redis://` URL (so both forms of address read a password alike).
fn login(userinfo: &str) -> Result<(Option<String>, Option<String>), String> {
    let client = ::redis::Client::open(format!("redis://{userinfo}@localhost"))
        .map_err(|e| format!("the user and password: {e}"))?;
    let info = client.get_connection_info();
    let settings = info.redis_settings();
    Ok((
        settings.username().map(str::to_owned),
        settings.password().map(str::to_owned),
    ))
}

impl SentinelSet {
    /// Reads `redis+sentinel://[user:password@]s1[:port],s2[:port]/MASTER[/db][?sentinel_username=..&sentinel_password=..][#insecure]`
    /// (or `rediss+sentinel://`), one master.
    pub(crate) fn parse(url: &str) -> Result<SentinelSet, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "not a URL".to_owned())?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "redis+sentinel" => None,
            "rediss+sentinel" => Some(url.ends_with("#insecure")),
            other => return Err(format!("{other}: is not a sentinel URL")),
        };
        let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, sentinel_list) = match authority.rsplit_once('@') {
            Some((u, s)) => (Some(u), s),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => login(u)?,
        };
        let mut sentinels = Vec::new();
        for address in sentinel_list.split(',') {
            if address.is_empty() {
                return Err("a sentinel address is empty".into());
            }
            let parsed = url::Url::parse(&format!("redis://{address}"))
                .map_err(|e| format!("sentinel {address:?}: {e}"))?;
            let host = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("sentinel {address:?} has no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            sentinels.push((host, parsed.port().unwrap_or(DEFAULT_SENTINEL_PORT)));
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or_default().to_owned();
        if master.is_empty()
            || !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!("{master:?} is not a master name"));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<u16>()
                .map_err(|_| format!("{db:?} is not a database number"))?
                .into(),
        };
        let (mut sentinel_username, mut sentinel_password) = (None, None);
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "sentinel_username" => sentinel_username = Some(value.into_owned()),
                "sentinel_password" => sentinel_password = Some(value.into_owned()),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(SentinelSet {
            sentinels,
            master,
            username,
            password,
            db,
            sentinel_username,
            sentinel_password,
            tls,
            last_good: AtomicUsize::new(0),
        })
    }

    /// The index of the sentinel to ask first.
    pub(crate) fn first(&self) -> usize {
        self.last_good.load(Ordering::Relaxed) % self.sentinels.len()
    }

    /// Remembers the sentinel that answered.
    pub(crate) fn answered(&self, i: usize) {
        self.last_good.store(i, Ordering::Relaxed);
    }

    /// `master M via sentinels h1:p1,h2:p2`, for messages.
    pub(crate) fn describe(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        format!("master {:?} via sentinels {}", self.master, list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_part_of_a_sentinel_url() {
        let s = SentinelSet::parse(
            "redis+sentinel://app:p%40ss@s1:26380,[::1],s3/mymaster/2?sentinel_password=x%26y",
        )
        .unwrap();
        assert_eq!(
            s.sentinels,
            [
                ("s1".to_owned(), 26380),
                ("::1".to_owned(), 26379),
                ("s3".to_owned(), 26379)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db, 2);
        assert_eq!(s.username.as_deref(), Some("app"));
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert_eq!(s.sentinel_password.as_deref(), Some("x&y"));
        assert_eq!(s.tls, None);
        let t = SentinelSet::parse("rediss+sentinel://s1/m#insecure").unwrap();
        assert_eq!((t.tls, t.db, t.password), (Some(true), 0, None));
        for bad in [
            "redis+sentinel:///m",
            "redis+sentinel://s1,,s2/m",
            "redis+sentinel://s1/",
            "redis+sentinel://s1/m,n",
            "redis+sentinel://s1/m/x",
            "redis+sentinel://s1/m?colour=red",
        ] {
            assert!(SentinelSet::parse(bad).is_err(), "{bad}");
        }
    }
}
