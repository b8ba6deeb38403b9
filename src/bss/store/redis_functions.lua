#!lua name=bss_store_v2
--[[
The membership store's server side (Redis Functions, Redis >= 7.0). Loaded by
bss.store.redis_store into every master; see that module for the data layout.

Every function works on ONE bucket: all of its keys share the hash tag {<bucket>}, so each
call touches one hash slot and runs atomically there. A bucket keeps:

  bss:u{b}<kind>:<key>   hash   segment id -> entry (below)
  bss:c{b}               hash   segment id -> live members in the bucket; `_t` the bucket
                                clock (counts are exact as of it); `_d` entries of deleted
                                segments dropped since the last purge
  bss:x{b}               zset   <kind>:<key> -> the user's next event (an entry starts or
                                expires): the expiry index the sweep walks
  bss:p{b}               zset   <kind>:<key> of users with expired entries, for `purge`
  bss:i{b}:<segment>     string the segment's member index: <kind>:<key> of users with an
                                entry (tombstones too), each as a 3-byte big-endian length
                                (its top bit set: dropped, skipped by readers) then the bytes;
                                appended to, marked in place, compacted by purge and deletion
  bss:g{b}               hash   segment id -> generation of its index (raised by a compaction,
                                which moves offsets: a cursor of an older one starts over)
  bss:d{b}               hash   segment id -> seq below which the segment is deleted
  bss:s{b}:<segment>     set    the index of layout v1 (bss_store_v1): still read, drained by
                                deletion and purge, never added to

An entry is <seq as 19 decimal digits><removed 0|1><timestamp>:<expires_at>:<value>. Seqs are
compared as fixed-width decimal strings: Lua numbers are doubles, exact only below 2**53.
]]

-- An entry's removed flag, timestamp and expiry.
local function times(v)
  local c1 = string.find(v, ":", 22, true)
  local c2 = string.find(v, ":", c1 + 2, true)
  return string.byte(v, 20) == 49, tonumber(string.sub(v, 21, c1 - 1)), tonumber(string.sub(v, c1 + 1, c2 - 1))
end

local function live(removed, ts, exp, t)
  return (not removed) and ts <= t and exp > t
end

local function user_key(tag, kk)
  return "bss:u{" .. tag .. "}" .. kk
end

local function index_key(tag, seg)
  return "bss:i{" .. tag .. "}:" .. seg
end

local function old_index_key(tag, seg) -- layout v1
  return "bss:s{" .. tag .. "}:" .. seg
end

local function gen_key(tag)
  return "bss:g{" .. tag .. "}"
end

-- An index entry's 3-byte length, by length (cached: most keys have a few lengths).
local heads = {}
local function head_of(size)
  local h = heads[size]
  if h == nil then
    h = string.char(math.floor(size / 65536), math.floor(size / 256) % 256, size % 256)
    heads[size] = h
  end
  return h
end

-- Calls fn(offset, removed, member) for the index entries of `s` from byte `first` (1-based),
-- at most `limit` of them and only whole ones; returns the position after the last.
local function each_entry(s, first, limit, fn)
  local pos, n, len = first, 0, #s
  while n < limit and pos + 2 <= len do
    local a, b, c = string.byte(s, pos, pos + 2)
    local removed = a >= 128
    if removed then
      a = a - 128
    end
    local size = a * 65536 + b * 256 + c
    if pos + 2 + size > len then
      break
    end
    fn(pos, removed, string.sub(s, pos + 3, pos + 2 + size))
    pos = pos + 3 + size
    n = n + 1
  end
  return pos
end

-- Rewrites a segment's index without its dropped entries and those of `drop` (a set of
-- members, may be nil); raises its generation if anything went.
local function compact(tag, seg, drop)
  local ki = index_key(tag, seg)
  local s = redis.call("GET", ki)
  if not s then
    return
  end
  local kept, n, changed = {}, 0, false
  each_entry(s, 1, math.huge, function(_, removed, kk)
    if removed or (drop and drop[kk]) then
      changed = true
    else
      kept[n + 1] = head_of(#kk)
      kept[n + 2] = kk
      n = n + 2
    end
  end)
  if not changed then
    return
  end
  if n == 0 then
    redis.call("DEL", ki)
  else
    redis.call("SET", ki, table.concat(kept))
  end
  redis.call("HINCRBY", gen_key(tag), seg, 1)
end

local function generation(tag, seg)
  return redis.call("HGET", gen_key(tag), seg) or "0"
end

-- redis.call with a long argument list, in slices (Lua's stack holds ~8000 values); `step`
-- even for lists of pairs. `option` (may be nil) goes before the list, as ZADD's "LT".
local function call_sliced(cmd, key, list, step, option)
  if #list <= step then
    if option then
      return redis.call(cmd, key, option, unpack(list))
    end
    return redis.call(cmd, key, unpack(list))
  end
  local out = {}
  for first = 1, #list, step do
    local last = math.min(first + step - 1, #list)
    local reply
    if option then
      reply = redis.call(cmd, key, option, unpack(list, first, last))
    else
      reply = redis.call(cmd, key, unpack(list, first, last))
    end
    if type(reply) == "table" then
      for _, v in ipairs(reply) do
        out[#out + 1] = v
      end
    end
  end
  return out
end

-- Add {segment -> delta} to the counts hash in three calls whatever the number of segments;
-- a count that reaches 0 is dropped.
local function add_counts(kc, delta)
  local segs = {}
  for seg, d in pairs(delta) do
    if d ~= 0 then
      segs[#segs + 1] = seg
    end
  end
  if #segs == 0 then
    return
  end
  local olds = call_sliced("HMGET", kc, segs, 4000)
  local set, drop = {}, {}
  for i, seg in ipairs(segs) do
    local n = tonumber(olds[i] or "0") + delta[seg]
    if n == 0 then
      drop[#drop + 1] = seg
    else
      set[#set + 1] = seg
      set[#set + 1] = n
    end
  end
  if #set > 0 then
    call_sliced("HSET", kc, set, 4000)
  end
  if #drop > 0 then
    call_sliced("HDEL", kc, drop, 4000)
  end
end

-- Bring the bucket's counts from its clock forward to `now`: entries that started or
-- expired in between are counted in or out, and users with expired entries (or lapsed
-- tombstones) are noted for `purge`. Returns the clock after the sweep (never moves back).
local function sweep(tag, kc, kx, now)
  local clock = tonumber(redis.call("HGET", kc, "_t") or "0")
  if now < clock then
    return clock
  end
  local due = redis.call("ZRANGEBYSCORE", kx, "-inf", now)
  local delta = {}
  local kp = "bss:p{" .. tag .. "}"
  for _, kk in ipairs(due) do
    local all = redis.call("HGETALL", user_key(tag, kk))
    local next_event, expired = nil, false
    for i = 1, #all, 2 do
      local seg = all[i]
      local removed, ts, exp = times(all[i + 1])
      local before, after = live(removed, ts, exp, clock), live(removed, ts, exp, now)
      if before ~= after then
        delta[seg] = (delta[seg] or 0) + (after and 1 or -1)
      end
      if exp <= now then
        expired = true
      else
        local event = exp
        if ts > now and ts < event then
          event = ts
        end
        if next_event == nil or event < next_event then
          next_event = event
        end
      end
    end
    if next_event == nil then
      redis.call("ZREM", kx, kk)
    else
      redis.call("ZADD", kx, next_event, kk)
    end
    if expired then
      redis.call("ZADD", kp, "NX", now, kk)
    end
  end
  add_counts(kc, delta)
  redis.call("HSET", kc, "_t", now)
  return now
end

local function marker_cache(kd)
  local cache = {}
  return function(seg)
    local m = cache[seg]
    if m == nil then
      m = redis.call("HGET", kd, seg) or false
      cache[seg] = m
    end
    return m
  end
end

-- KEYS: counts, expiry index, deletion markers. ARGV: bucket tag, now, then per user:
-- <kind>:<key>, n, the user's next event (an entry starts or expires) as of `now`, n flags
-- ("1": the entry is live at `now`) in one string, then n pairs segment, entry. The client
-- sends each (user, segment) once, grouped by user; it computed event and flags at `now`
-- so that this loop parses nothing while the bucket clock is `now` (the usual case).
-- The seq rule: an entry only replaces one with a lower seq, and never lands below the
-- segment's deletion marker. Each user costs one HMGET and one HSET; the segment indexes
-- and the expiry index get one APPEND per segment and one ZADD per call. An event earlier
-- than the user's real next one (a rejected row's) only costs the sweep a visit.
-- Returns how many entries changed.
local function apply(keys, args)
  local kc, kx, kd = keys[1], keys[2], keys[3]
  local tag, now = args[1], tonumber(args[2])
  local clock = sweep(tag, kc, kx, now)
  local exact = clock == now
  local marker = nil
  if redis.call("EXISTS", kd) == 1 then
    marker = marker_cache(kd)
  end
  -- Where each user's arguments start, and its hash key. When none of the users exists
  -- yet (a first load) and no segment is deleted, every entry is taken as sent.
  local starts, ukeys, nusers = {}, {}, 0
  local p, nargs = 3, #args
  while p <= nargs do
    nusers = nusers + 1
    starts[nusers] = p
    ukeys[nusers] = user_key(tag, args[p])
    p = p + 4 + 2 * tonumber(args[p + 1])
  end
  local existing = 0
  for first = 1, nusers, 4000 do
    existing = existing + redis.call("EXISTS", unpack(ukeys, first, math.min(first + 3999, nusers)))
  end
  local fresh = existing == 0 and not marker
  local delta, index, events, nevents, written = {}, {}, {}, 0, 0
  local none = {}
  for u = 1, nusers do
    p = starts[u]
    local kk, n, event, flags = args[p], tonumber(args[p + 1]), args[p + 2], args[p + 3]
    local first = p + 4
    local ukey = ukeys[u]
    local olds = none
    if existing > 0 then
      local segs = {}
      for j = 1, n do
        segs[j] = args[first + 2 * j - 2]
      end
      olds = call_sliced("HMGET", ukey, segs, 4000)
    end
    local fields, nfields = {}, 0
    for j = 1, n do
      local seg, new, old = args[first + 2 * j - 2], args[first + 2 * j - 1], olds[j]
      local take = true
      local m = marker and marker(seg)
      if old or m then
        local seq = string.sub(new, 1, 19)
        take = not (m and seq < m) and not (old and string.sub(old, 1, 19) >= seq)
      end
      if take then
        local after
        if exact then
          after = string.byte(flags, j) == 49
        else
          local removed, ts, exp = times(new)
          after = live(removed, ts, exp, clock)
        end
        local before = false
        if old then
          local old_removed, old_ts, old_exp = times(old)
          before = live(old_removed, old_ts, old_exp, clock)
        else
          local members = index[seg]
          if members == nil then
            members = {}
            index[seg] = members
          end
          members[#members + 1] = head_of(#kk)
          members[#members + 1] = kk
        end
        if before ~= after then
          delta[seg] = (delta[seg] or 0) + (after and 1 or -1)
        end
        if not fresh then
          fields[nfields + 1] = seg
          fields[nfields + 2] = new
          nfields = nfields + 2
        end
      end
    end
    if fresh then
      nfields = 2 * n
      for last = first + nfields - 1, first, -4000 do -- the pairs as sent, in slices
        redis.call("HSET", ukey, unpack(args, math.max(first, last - 3999), last))
      end
    elseif nfields > 0 then
      call_sliced("HSET", ukey, fields, 4000)
    end
    if nfields > 0 then
      events[nevents + 1] = event
      events[nevents + 2] = kk
      nevents = nevents + 2
      written = written + nfields / 2
    end
  end
  for seg, members in pairs(index) do
    redis.call("APPEND", index_key(tag, seg), table.concat(members))
  end
  if nevents > 0 then
    call_sliced("ZADD", kx, events, 4000, "LT")
  end
  add_counts(kc, delta)
  return written
end

-- What the bucket's counts become between its clock and a later `now`, without writing:
-- {segment -> delta} over the users with an event in between.
local function ahead(tag, kx, clock, now)
  local delta = {}
  for _, kk in ipairs(redis.call("ZRANGEBYSCORE", kx, "-inf", now)) do
    local all = redis.call("HGETALL", user_key(tag, kk))
    for i = 1, #all, 2 do
      local removed, ts, exp = times(all[i + 1])
      local before, after = live(removed, ts, exp, clock), live(removed, ts, exp, now)
      if before ~= after then
        delta[all[i]] = (delta[all[i]] or 0) + (after and 1 or -1)
      end
    end
  end
  return delta
end

-- KEYS: counts, expiry index. ARGV: bucket tag, now, the present (the caller's clock).
-- The bucket's live counts at `now` as a flat list segment, count, ... The bucket's clock
-- is swept forward to now or the present, whichever is earlier; a `now` in the future is
-- answered from the entries due by then without moving the clock, so that later reads at
-- any time from the present on stay exact.
local function counts(keys, args)
  local tag, kc, kx = args[1], keys[1], keys[2]
  local now, present = tonumber(args[2]), tonumber(args[3])
  local clock = sweep(tag, kc, kx, math.min(now, present))
  local delta = {}
  if now > clock then
    delta = ahead(tag, kx, clock, now)
  end
  local all = redis.call("HGETALL", kc)
  local out = {}
  for i = 1, #all, 2 do
    local seg = all[i]
    if string.byte(seg, 1) ~= 95 then -- "_": the clock and the purge tally
      local n = tonumber(all[i + 1]) + (delta[seg] or 0)
      delta[seg] = nil
      if n ~= 0 then
        out[#out + 1] = seg
        out[#out + 1] = n
      end
    end
  end
  for seg, d in pairs(delta) do
    if d ~= 0 then
      out[#out + 1] = seg
      out[#out + 1] = d
    end
  end
  return out
end

-- KEYS: counts, expiry index. ARGV: bucket tag, now. Sweeps, drops expired entries and
-- lapsed tombstones (and their index entries: each touched index is compacted), and returns
-- how many entries the bucket dropped (with those of deleted segments, dropped by
-- delete_segment since the last purge).
local function purge(keys, args)
  local kc, tag, now = keys[1], args[1], tonumber(args[2])
  local clock = sweep(tag, kc, keys[2], now)
  local kp = "bss:p{" .. tag .. "}"
  local dropped = tonumber(redis.call("HGET", kc, "_d") or "0")
  local gone = {} -- segment -> {member -> true}
  for _, kk in ipairs(redis.call("ZRANGE", kp, 0, -1)) do
    local ukey = user_key(tag, kk)
    local all = redis.call("HGETALL", ukey)
    local pending = false -- expired as of the clock, not yet as of `now` (a clock ahead)
    for i = 1, #all, 2 do
      local _, _, exp = times(all[i + 1])
      if exp <= now then
        local seg = all[i]
        redis.call("HDEL", ukey, seg)
        local members = gone[seg]
        if members == nil then
          members = {}
          gone[seg] = members
        end
        members[kk] = true
        dropped = dropped + 1
      elseif exp <= clock then
        pending = true
      end
    end
    if not pending then
      redis.call("ZREM", kp, kk)
    end
  end
  for seg, members in pairs(gone) do
    compact(tag, seg, members)
    local ko = old_index_key(tag, seg)
    if redis.call("EXISTS", ko) == 1 then
      for kk in pairs(members) do
        redis.call("SREM", ko, kk)
      end
    end
  end
  redis.call("HDEL", kc, "_d")
  return dropped
end

-- KEYS: deletion markers. ARGV: bucket tag, then <kind>:<key> of each user. Per user, a
-- flat list segment, entry, ... without entries hidden by a segment deletion.
local function read_users(keys, args)
  local marker = marker_cache(keys[1])
  local out = {}
  for i = 2, #args do
    local all = redis.call("HGETALL", user_key(args[1], args[i]))
    local kept = {}
    for j = 1, #all, 2 do
      local m = marker(all[j])
      if not (m and string.sub(all[j + 1], 1, 19) < m) then
        kept[#kept + 1] = all[j]
        kept[#kept + 1] = all[j + 1]
      end
    end
    out[#out + 1] = kept
  end
  return out
end

-- Index cursors: "0" to start (and when done); "s<SSCAN cursor>" while the v1 set of the
-- segment is read (it comes first); "<generation>:<offset>" in the index string. A cursor
-- of an older generation (the index was compacted since) starts the string over.

-- One step of a walk over the segment's index: calls fn(member, mark) for up to 1000 members
-- (`mark` drops the member's index entry, or nil in the v1 set) and returns the next cursor.
local function index_step(tag, seg, cursor, fn, writes)
  local ko = old_index_key(tag, seg)
  if cursor == "0" and redis.call("EXISTS", ko) == 1 then
    cursor = "s0"
  end
  if string.byte(cursor, 1) == 115 then -- "s": the v1 set
    local step = redis.call("SSCAN", ko, string.sub(cursor, 2), "COUNT", 1000)
    for _, kk in ipairs(step[2]) do
      fn(kk, nil)
    end
    if step[1] ~= "0" then
      return "s" .. step[1]
    end
    cursor = "0"
  end
  local gen = generation(tag, seg)
  local offset = 0
  local colon = string.find(cursor, ":", 1, true)
  if colon and string.sub(cursor, 1, colon - 1) == gen then
    offset = tonumber(string.sub(cursor, colon + 1))
  end
  local ki = index_key(tag, seg)
  local chunk = redis.call("GETRANGE", ki, offset, offset + 65535)
  if #chunk == 0 then
    return "0"
  end
  local marked = false
  local stop = each_entry(chunk, 1, 1000, function(pos, removed, kk)
    if not removed then
      fn(kk, function()
        local a = string.byte(chunk, pos)
        redis.call("SETRANGE", ki, offset + pos - 1, string.char(a + 128))
        marked = true
      end)
    end
  end)
  if stop == 1 then -- one member longer than the chunk
    local s = redis.call("GETRANGE", ki, offset, -1)
    stop = each_entry(s, 1, 1, function(pos, removed, kk)
      if not removed then
        fn(kk, function()
          redis.call("SETRANGE", ki, offset + pos - 1, string.char(string.byte(s, pos) + 128))
          marked = true
        end)
      end
    end)
  end
  local next_offset = offset + stop - 1
  if next_offset >= redis.call("STRLEN", ki) then
    if writes then
      compact(tag, seg, nil) -- drops the marked entries
    end
    return "0"
  end
  return gen .. ":" .. next_offset
end

-- KEYS: deletion markers. ARGV: bucket tag, segment, cursor. One step over the segment's
-- index: {next cursor, {<kind>:<key>, entry, ...}}.
local function segment_members(keys, args)
  local tag, seg = args[1], args[2]
  local m = redis.call("HGET", keys[1], seg)
  local out = {}
  local cursor = index_step(tag, seg, args[3], function(kk)
    local v = redis.call("HGET", user_key(tag, kk), seg)
    if v and not (m and string.sub(v, 1, 19) < m) then
      out[#out + 1] = kk
      out[#out + 1] = v
    end
  end, false)
  return { cursor, out }
end

-- KEYS: counts, deletion markers. ARGV: bucket tag, segment, seq (19 digits), cursor. Raises the
-- segment's deletion marker to `seq` (hiding older entries at once) and drops one step of
-- the hidden entries from the counts and the index. Returns the next cursor.
local function delete_segment(keys, args)
  local kc, kd = keys[1], keys[2]
  local tag, seg, seq = args[1], args[2], args[3]
  local m = redis.call("HGET", kd, seg)
  if not m or m < seq then
    redis.call("HSET", kd, seg, seq)
  end
  local clock = tonumber(redis.call("HGET", kc, "_t") or "0")
  local ko = old_index_key(tag, seg)
  local counted, dropped = 0, 0
  local cursor = index_step(tag, seg, args[4], function(kk, mark)
    local ukey = user_key(tag, kk)
    local v = redis.call("HGET", ukey, seg)
    if v and string.sub(v, 1, 19) < seq then
      local removed, ts, exp = times(v)
      if live(removed, ts, exp, clock) then
        counted = counted + 1
      end
      redis.call("HDEL", ukey, seg)
      dropped = dropped + 1
      v = nil
    end
    if not v then
      if mark then
        mark()
      else
        redis.call("SREM", ko, kk)
      end
    end
  end, true)
  if counted > 0 then
    add_counts(kc, { [seg] = -counted })
  end
  if dropped > 0 then
    redis.call("HINCRBY", kc, "_d", dropped)
  end
  return cursor
end

redis.register_function("bss_apply_users", apply)
redis.register_function("bss_counts", counts)
redis.register_function("bss_purge", purge)
redis.register_function({ function_name = "bss_read_users", callback = read_users, flags = { "no-writes" } })
redis.register_function({ function_name = "bss_segment_members", callback = segment_members, flags = { "no-writes" } })
redis.register_function("bss_delete_segment", delete_segment)
