//! The Lua scripts the Redis backend runs, each doing in one round trip what channels_redis
//! does in several ([contract §3.3](crate::contract) and §3.7).

use std::sync::OnceLock;

/// A script and its SHA-1, for `EVALSHA`.
pub(crate) struct Script {
    pub(crate) source: &'static str,
    pub(crate) sha: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        Script {
            source,
            sha: ::redis::Script::new(source).get_hash().to_owned(),
        }
    }
}

/// Send one message: drop expired members, refuse at capacity, add, refresh the key's TTL.
///
/// channels_redis sends `ZREMRANGEBYSCORE`, `ZCOUNT`, `ZADD` and `EXPIRE` one after another
/// ([contract §3.3](crate::contract)), which also lets concurrent senders overshoot the capacity; here they run as
/// one atomic step.
///
/// KEYS[1] channel key. ARGV: 1 member, 2 score (send time, seconds), 3 prune cutoff
/// (seconds), 4 capacity, 5 TTL in milliseconds. Returns `{added, expired}`: 1 if added, 0 if
/// full, and how many expired messages were dropped (so they are counted).
const SEND: &str = r"
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {0, expired}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, expired}
";

/// Send several messages to one key in one call: the command thread bundles the sends queued
/// together for the same channel (async senders with many messages in flight).
///
/// KEYS[1] channel key. ARGV: 1 prune cutoff, 2 capacity, 3 TTL in milliseconds, then a score
/// and a member per message. Returns `{expired, added_1, ..., added_n}`, where added is 1 or 0
/// (full); messages are added in order until the key is full.
const SEND_MANY: &str = r"
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
local room = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local out = {expired}
local pairs = {}
for i = 4, #ARGV, 2 do
  if room > 0 then
    pairs[#pairs + 1] = ARGV[i]
    pairs[#pairs + 1] = ARGV[i + 1]
    room = room - 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #pairs > 0 then
  redis.call('ZADD', KEYS[1], unpack(pairs))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return out
";

/// Deliver one `group_send` to the channel keys of one shard, each with its own bundled copy
/// of the message ([contract §3.7](crate::contract), whose Lua this mirrors, with the prune folded in).
///
/// KEYS: the channel keys. ARGV: 1 score, 2 prune cutoff, 3 TTL in milliseconds, then for each
/// key i a member (ARGV[2 + 2i]) and a capacity (ARGV[3 + 2i]). Returns how many expired
/// messages were dropped, then the 1-based indices of the keys that were full, and the
/// negated indices of keys holding another type of data: such a key is skipped, and the
/// others still get the message (channels_redis's script aborts half way there).
const GROUP_DELIVER: &str = r"
local out = {0}
for i = 1, #KEYS do
  local pruned = redis.pcall('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[2])
  if type(pruned) == 'table' and pruned.err then
    out[#out + 1] = -i
  else
    out[1] = out[1] + pruned
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[3 + 2 * i]) then
      redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2 + 2 * i])
      redis.call('PEXPIRE', KEYS[i], ARGV[3])
    else
      out[#out + 1] = i
    end
  end
end
return out
";

/// A whole `group_send` on a layer of one server, in one round trip: drop lapsed
/// memberships, read the members, and deliver one copy per channel key, as §3.7 of
/// [the contract](crate::contract) describes in two steps (this script does both).
///
/// Used only where the script can know everything the client would: one server (so every key
/// is on it), no encryption (each copy's `__asgi_channel__` is spliced into the msgpack here,
/// which an encrypted body would not allow) and one capacity for every channel (no
/// per-channel rules, whose patterns only the client can match).
///
/// KEYS[1] group key. ARGV: 1 membership cutoff, 2 score (now), 3 message expiry cutoff, 4 TTL
/// in milliseconds, 5 channel key prefix, 6 capacity, 7 random member prefix, 8 the message's
/// entry count, 9 the msgpack of its entries (without the map header), 10 the longest channel
/// name accepted. Returns `{expired, delivered, skipped_full, skipped_failed, failed keys...}`,
/// counting members; a member whose name is not a valid channel name counts as failed.
const GROUP_SEND: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local function len_header(n, fix, fix_max, b16, b32)
  if n <= fix_max then
    return string.char(fix + n)
  elseif n < 65536 then
    return string.char(b16, math.floor(n / 256), n % 256)
  end
  return string.char(b32, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end
local function mp_str(s)
  local n = #s
  if n < 32 then
    return string.char(0xa0 + n) .. s
  elseif n < 256 then
    return string.char(0xd9, n) .. s
  end
  return string.char(0xda, math.floor(n / 256), n % 256) .. s
end
local max_len = tonumber(ARGV[10])
local out = {0, 0, 0, 0}
local order = {}
local buckets = {}
for _, name in ipairs(members) do
  -- A channel name: name characters, then at most one '!' and more of them. One match
  -- checks a process-specific name and gives its non-local part (up to the '!').
  local non_local = nil
  if #name < max_len then
    non_local = string.match(name, '^([%w%._%-]+!)[%w%._%-]*$')
    if not non_local and string.find(name, '^[%w%._%-]+$') then
      non_local = name
    end
  end
  if non_local then
    local names = buckets[non_local]
    if not names then
      names = {}
      buckets[non_local] = names
      order[#order + 1] = non_local
    end
    names[#names + 1] = mp_str(name)
  else
    out[4] = out[4] + 1
  end
end
local head = len_header(tonumber(ARGV[8]) + 1, 0x80, 15, 0xde, 0xdf) .. ARGV[9] .. mp_str('__asgi_channel__')
local capacity = tonumber(ARGV[6])
for _, non_local in ipairs(order) do
  local names = buckets[non_local]
  local key = ARGV[5] .. non_local
  local pruned = redis.pcall('ZREMRANGEBYSCORE', key, 0, ARGV[3])
  if type(pruned) == 'table' and pruned.err then
    out[4] = out[4] + #names
    out[#out + 1] = key
  else
    out[1] = out[1] + pruned
    if redis.call('ZCARD', key) < capacity then
      local member = ARGV[7] .. head .. len_header(#names, 0x90, 15, 0xdc, 0xdd)
        .. table.concat(names)
      redis.call('ZADD', key, ARGV[2], member)
      redis.call('PEXPIRE', key, ARGV[4])
      out[2] = out[2] + #names
    else
      out[3] = out[3] + #names
    end
  end
end
return out
";

/// Flush: count the messages in the channel keys among KEYS (not group keys, which hold
/// memberships, nor wake keys), then delete every key. KEYS: keys found by `SCAN`. ARGV: 1 the
/// group key prefix, 2 the text that marks wake keys. Returns how many messages were dropped.
const FLUSH: &str = r"
local dropped = 0
for i = 1, #KEYS do
  if string.sub(KEYS[i], 1, #ARGV[1]) ~= ARGV[1]
    and not string.find(KEYS[i], ARGV[2], 1, true)
    and redis.call('TYPE', KEYS[i]).ok == 'zset' then
    dropped = dropped + redis.call('ZCARD', KEYS[i])
  end
  redis.call('UNLINK', KEYS[i])
end
return dropped
";

/// Read a group's live members: drop lapsed memberships, then list the rest.
///
/// KEYS[1] group key. ARGV[1] membership cutoff (seconds). Returns the member channel names.
const GROUP_MEMBERS: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

pub(crate) struct Scripts {
    pub(crate) send: Script,
    pub(crate) send_many: Script,
    pub(crate) group_deliver: Script,
    pub(crate) group_members: Script,
    pub(crate) group_send: Script,
    pub(crate) flush: Script,
}

impl Scripts {
    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.send,
            &self.send_many,
            &self.group_deliver,
            &self.group_members,
            &self.group_send,
            &self.flush,
        ]
    }
}

pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        send: Script::new(SEND),
        send_many: Script::new(SEND_MANY),
        group_deliver: Script::new(GROUP_DELIVER),
        group_members: Script::new(GROUP_MEMBERS),
        group_send: Script::new(GROUP_SEND),
        flush: Script::new(FLUSH),
    })
}

#[cfg(test)]
mod tests {
    /// Every script is loaded with the others (a missing one would fail with NOSCRIPT).
    #[test]
    fn all_lists_every_script() {
        let s = super::scripts();
        let all: Vec<&str> = s.all().iter().map(|x| x.sha.as_str()).collect();
        for script in [
            &s.send,
            &s.send_many,
            &s.group_deliver,
            &s.group_members,
            &s.group_send,
            &s.flush,
        ] {
            assert!(all.contains(&script.sha.as_str()));
        }
    }
}
