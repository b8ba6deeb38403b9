#!lua name=bss_store_v2
--[[
The membership store's server side (Redis Functions, Redis >= 7.0). Loaded by
bss.store.redis_store into every master; see that module for the data layout.

Every function works on ONE bucket: all of its keys share the hash tag {<bucket>}, so each
call touches one hash slot and runs atomically there. A bucket keeps (layout v2):

  bss:h{b}               hash   <kind>:<key> -> the user's entries, one record each (below)
  bss:c{b}               hash   segment id -> live members in the bucket; `_t` the bucket
                                clock (counts are exact as of it); `_d` entries of deleted
                                segments dropped since the last purge; `_v` the layout ("2")
  bss:x{b}               zset   <kind>:<key> -> the user's next event (an entry starts or
                                expires): the expiry index the sweep walks
  bss:p{b}               zset   <kind>:<key> of users with expired entries, for `purge`
  bss:i{b}:<segment>     string the segment's member index: <kind>:<key> of users with an
                                entry (tombstones too), each as a 3-byte big-endian length
                                (top bit set: dropped, skipped by readers) then the bytes;
                                appended to, marked in place, compacted by purge and deletion
  bss:g{b}               hash   segment id -> generation of its index (raised by a compaction,
                                which moves offsets: a cursor of an older one starts over)
  bss:d{b}               hash   segment id -> seq (8 bytes) below which the segment is deleted

A record: <n, 1 byte><segment id, n decimal digits><seq, 8 bytes big-endian><flags, 1 byte:
1 removed, 2 has a value><timestamp, 8 bytes><expires_at, 8 bytes>[<value, 8 bytes>], the
integers big-endian (seqs unsigned: compared as byte strings, Lua numbers being doubles).

Layout v1 (bss_store_v1: a hash bss:u{b}<kind>:<key> per user of segment -> text entry, a set
bss:s{b}:<segment> per segment index, 19-digit decimal markers) is converted a bucket at a
time by the first call of this library that touches the bucket (`migrate`).
]]

local FIXED = 25 -- seq, flags, timestamp, expires_at

-- The record at `pos` of `v`: segment, seq, removed, timestamp, expires_at, next position.
local function record(v, pos)
  local n = string.byte(v, pos)
  local p = pos + 1 + n
  local flags = string.byte(v, p + 8)
  local ts, exp = struct.unpack(">i8i8", v, p + 9)
  local next_pos = p + FIXED
  if flags >= 2 then
    next_pos = next_pos + 8
  end
  return string.sub(v, pos + 1, p - 1), string.sub(v, p, p + 7), flags % 2 == 1, ts, exp, next_pos
end

local function live(removed, ts, exp, t)
  return (not removed) and ts <= t and exp > t
end

local function keys_of(tag)
  local b = "{" .. tag .. "}"
  return "bss:h" .. b, "bss:c" .. b, "bss:x" .. b, "bss:p" .. b, "bss:d" .. b, "bss:g" .. b
end

local function index_key(tag, seg)
  return "bss:i{" .. tag .. "}:" .. seg
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

-- --- layout v1 -> v2 ----------------------------------------------------------------------

-- A decimal string of an unsigned 64-bit integer as 8 bytes big-endian, exactly.
local function dec_to_be8(s)
  local limbs = { 0, 0, 0, 0 } -- 16 bits each, most significant first
  for i = 1, #s do
    local carry = string.byte(s, i) - 48
    for j = 4, 1, -1 do
      local x = limbs[j] * 10 + carry
      limbs[j] = x % 65536
      carry = math.floor(x / 65536)
    end
  end
  local out = {}
  for j = 1, 4 do
    out[#out + 1] = string.char(math.floor(limbs[j] / 256), limbs[j] % 256)
  end
  return table.concat(out)
end

local function v1_record(seg, v)
  local ts, exp, val = string.match(v, "^(%-?%d+):(%-?%d+):(.*)$", 21)
  local flags = string.byte(v, 20) == 49 and 1 or 0
  local tail = ""
  if val ~= "" then
    flags = flags + 2
    tail = struct.pack(">i8", tonumber(val))
  end
  return string.char(#seg) .. seg .. dec_to_be8(string.sub(v, 1, 19)) .. string.char(flags)
    .. struct.pack(">i8i8", tonumber(ts), tonumber(exp)) .. tail
end

-- Converts the bucket from layout v1 once: every user's hash (each user with an entry is in
-- the expiry index or the purge list) into a value of bss:h, every segment's set into its
-- index string, the deletion markers to 8 bytes. One atomic call per bucket.
local function migrate(tag)
  local kh, kc, kx, kp, kd = keys_of(tag)
  if redis.call("HGET", kc, "_v") == "2" then
    return
  end
  local users = {}
  for _, k in ipairs({ kx, kp }) do
    for _, kk in ipairs(redis.call("ZRANGE", k, 0, -1)) do
      users[kk] = true
    end
  end
  local segs = {}
  for kk in pairs(users) do
    local ukey = "bss:u{" .. tag .. "}" .. kk
    local all = redis.call("HGETALL", ukey)
    if #all > 0 then
      local recs = {}
      for i = 1, #all, 2 do
        recs[#recs + 1] = v1_record(all[i], all[i + 1])
        segs[all[i]] = true
      end
      redis.call("HSET", kh, kk, table.concat(recs))
      redis.call("DEL", ukey)
    end
  end
  for seg in pairs(segs) do
    local ko = "bss:s{" .. tag .. "}:" .. seg
    local members = redis.call("SMEMBERS", ko)
    if #members > 0 then
      local parts = {}
      for _, kk in ipairs(members) do
        parts[#parts + 1] = head_of(#kk)
        parts[#parts + 1] = kk
      end
      redis.call("APPEND", index_key(tag, seg), table.concat(parts))
      redis.call("DEL", ko)
    end
  end
  local markers = redis.call("HGETALL", kd)
  for i = 1, #markers, 2 do
    if #markers[i + 1] == 19 then
      redis.call("HSET", kd, markers[i], dec_to_be8(markers[i + 1]))
    end
  end
  redis.call("HSET", kc, "_v", "2")
end

-- --- counts ---------------------------------------------------------------------------------

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
local function sweep(tag, now)
  local kh, kc, kx, kp = keys_of(tag)
  local clock = tonumber(redis.call("HGET", kc, "_t") or "0")
  if now < clock then
    return clock
  end
  local due = redis.call("ZRANGEBYSCORE", kx, "-inf", now)
  local delta = {}
  for _, kk in ipairs(due) do
    local v = redis.call("HGET", kh, kk) or ""
    local next_event, expired = nil, false
    local pos = 1
    while pos <= #v do
      local seg, _, removed, ts, exp, next_pos = record(v, pos)
      pos = next_pos
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
  if now ~= clock then
    redis.call("HSET", kc, "_t", now)
  end
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

-- --- writes ---------------------------------------------------------------------------------

-- Every function takes one key, the bucket's counts (so that a node that does not serve the
-- bucket's slot answers MOVED); all keys derive from the tag. ARGV: bucket tag, now, the number of pairs, S, then
-- S triples (segment, its entries live at `now`, its index entries: every user of the
-- call with the segment, as appended to bss:i), the users' next events at `now` (8 bytes
-- each, an entry starts or expires), then per user <kind>:<key>, its records. The client
-- sends each (user, segment) once. When none of the users exists yet, no segment is
-- deleted and the bucket clock is `now` (a first load), all of it is taken as sent: one
-- HSET, one APPEND per segment, one ZADD, and the counts. Otherwise each user's records
-- are merged with its stored ones under the seq rule: an entry only replaces one with a
-- lower seq, and never lands below the segment's deletion marker. An event earlier than
-- the user's real next one (a rejected row's) only costs the sweep a visit. Returns how
-- many entries changed.
local function apply(_, args)
  local tag, now = args[1], tonumber(args[2])
  migrate(tag)
  local kh, kc, kx, _, kd = keys_of(tag)
  local clock = sweep(tag, now)
  local nsegs = tonumber(args[4])
  local events = args[5 + 3 * nsegs]
  local first = 6 + 3 * nsegs
  local nargs = #args
  local kks, nusers = {}, 0
  for p = first, nargs, 2 do
    nusers = nusers + 1
    kks[nusers] = args[p]
  end
  local olds = call_sliced("HMGET", kh, kks, 4000)
  local existing = false
  for u = 1, nusers do
    if olds[u] then
      existing = true
      break
    end
  end
  local marker = nil
  if redis.call("EXISTS", kd) == 1 then
    marker = marker_cache(kd)
  end
  local zadd = {}
  if clock == now and not existing and not marker then
    for last = nargs, first, -4000 do -- the users as sent, in slices
      redis.call("HSET", kh, unpack(args, math.max(first, last - 3999), last))
    end
    local delta = {}
    for s = 5, 4 + 3 * nsegs, 3 do
      delta[args[s]] = tonumber(args[s + 1])
      redis.call("APPEND", index_key(tag, args[s]), args[s + 2])
    end
    for u = 1, nusers do
      zadd[2 * u - 1] = struct.unpack(">i8", events, 8 * u - 7)
      zadd[2 * u] = kks[u]
    end
    call_sliced("ZADD", kx, zadd, 4000, "LT")
    add_counts(kc, delta)
    return tonumber(args[3])
  end
  local delta, index, hset, written = {}, {}, {}, 0
  for u = 1, nusers do
    local kk, new, old = kks[u], args[first + 2 * u - 1], olds[u]
    -- Where each stored record starts, by segment (false once replaced).
    local stored, nstored = {}, 0
    if old then
      if old == new then -- a replay
        old = nil
        new = ""
      else
        local pos, len = 1, #old
        while pos <= len do
          local n = string.byte(old, pos)
          stored[string.sub(old, pos + 1, pos + n)] = pos
          nstored = nstored + 1
          pos = pos + 1 + n + FIXED
          if string.byte(old, pos - 17) >= 2 then
            pos = pos + 8
          end
        end
      end
    end
    local taken, ntaken, all_taken, nreplaced = {}, 0, true, 0 -- taken: start, stop, ...
    local pos = 1
    while pos <= #new do
      local seg, seq, removed, ts, exp, next_pos = record(new, pos)
      local op = stored[seg]
      local m = marker and marker(seg)
      local take = not (m and seq < m)
      local p = 0
      if take and op then
        p = op + 1 + #seg
        take = string.sub(old, p, p + 7) < seq
      end
      if take then
        local after = live(removed, ts, exp, clock)
        local before = false
        if op then
          local old_ts, old_exp = struct.unpack(">i8i8", old, p + 9)
          before = live(string.byte(old, p + 8) % 2 == 1, old_ts, old_exp, clock)
          stored[seg] = false -- replaced
          nreplaced = nreplaced + 1
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
        taken[ntaken + 1] = pos
        taken[ntaken + 2] = next_pos - 1
        ntaken = ntaken + 2
      else
        all_taken = false
      end
      pos = next_pos
    end
    if ntaken > 0 then
      local value = new
      if not (all_taken and nreplaced == nstored) then
        local parts = {}
        for i = 1, ntaken, 2 do
          parts[#parts + 1] = string.sub(new, taken[i], taken[i + 1])
        end
        for _, start in pairs(stored) do
          if start then
            local _, _, _, _, _, stop = record(old, start)
            parts[#parts + 1] = string.sub(old, start, stop - 1)
          end
        end
        value = table.concat(parts)
      end
      hset[#hset + 1] = kk
      hset[#hset + 1] = value
      zadd[#zadd + 1] = struct.unpack(">i8", events, 8 * u - 7)
      zadd[#zadd + 1] = kk
      written = written + ntaken / 2
    end
  end
  if #hset > 0 then
    call_sliced("HSET", kh, hset, 4000)
    call_sliced("ZADD", kx, zadd, 4000, "LT")
  end
  for seg, members in pairs(index) do
    redis.call("APPEND", index_key(tag, seg), table.concat(members))
  end
  add_counts(kc, delta)
  return written
end

-- What the bucket's counts become between its clock and a later `now`, without writing:
-- {segment -> delta} over the users with an event in between.
local function ahead(tag, clock, now)
  local kh, _, kx = keys_of(tag)
  local delta = {}
  for _, kk in ipairs(redis.call("ZRANGEBYSCORE", kx, "-inf", now)) do
    local v = redis.call("HGET", kh, kk) or ""
    local pos = 1
    while pos <= #v do
      local seg, _, removed, ts, exp, next_pos = record(v, pos)
      pos = next_pos
      local before, after = live(removed, ts, exp, clock), live(removed, ts, exp, now)
      if before ~= after then
        delta[seg] = (delta[seg] or 0) + (after and 1 or -1)
      end
    end
  end
  return delta
end

-- ARGV: bucket tag, now, the present (the caller's clock). The bucket's live counts at
-- `now` as a flat list segment, count, ... The bucket's clock is swept forward to now or
-- the present, whichever is earlier; a `now` in the future is answered from the entries
-- due by then without moving the clock, so that later reads at any time from the present
-- on stay exact.
local function counts(_, args)
  local tag = args[1]
  migrate(tag)
  local _, kc = keys_of(tag)
  local now, present = tonumber(args[2]), tonumber(args[3])
  local clock = sweep(tag, math.min(now, present))
  local delta = {}
  if now > clock then
    delta = ahead(tag, clock, now)
  end
  local all = redis.call("HGETALL", kc)
  local out = {}
  for i = 1, #all, 2 do
    local seg = all[i]
    if string.byte(seg, 1) ~= 95 then -- "_": the clock, the purge tally, the layout
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

-- --- segment indexes ------------------------------------------------------------------------

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
  local _, _, _, _, _, kg = keys_of(tag)
  redis.call("HINCRBY", kg, seg, 1)
end

-- Index cursors: "0" to start (and when done), else "<generation>:<offset>". A cursor of an
-- older generation (the index was compacted since) starts over: a walk may then see a
-- member twice (as SSCAN may), never miss one present throughout.

-- One step of a walk over the segment's index: calls fn(member, mark) for up to 1000 live
-- entries (`mark()` drops the entry) and returns the next cursor. With `writes`, the last
-- step compacts the index if entries were dropped.
local function index_step(tag, seg, cursor, fn, writes)
  local _, _, _, _, _, kg = keys_of(tag)
  local gen = redis.call("HGET", kg, seg) or "0"
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
  local function visit(s)
    return function(pos, removed, kk)
      if not removed then
        fn(kk, function()
          redis.call("SETRANGE", ki, offset + pos - 1, string.char(string.byte(s, pos) + 128))
        end)
      end
    end
  end
  local stop = each_entry(chunk, 1, 1000, visit(chunk))
  if stop == 1 then -- one member longer than the chunk
    local s = redis.call("GETRANGE", ki, offset, -1)
    stop = each_entry(s, 1, 1, visit(s))
  end
  local next_offset = offset + stop - 1
  if next_offset >= redis.call("STRLEN", ki) then
    if writes then
      compact(tag, seg, nil)
    end
    return "0"
  end
  return gen .. ":" .. next_offset
end

-- The record of `seg` in a user's value: record, seq, removed, ts, exp, start, next start.
local function find_record(v, seg)
  local pos = 1
  while pos <= #v do
    local s, seq, removed, ts, exp, next_pos = record(v, pos)
    if s == seg then
      return string.sub(v, pos, next_pos - 1), seq, removed, ts, exp, pos, next_pos
    end
    pos = next_pos
  end
  return nil
end

-- ARGV: bucket tag, then <kind>:<key> of each user. Per user, its records (one string)
-- without those hidden by a segment deletion.
local function read_users(_, args)
  local tag = args[1]
  migrate(tag)
  local kh, _, _, _, kd = keys_of(tag)
  local kks = {}
  for i = 2, #args do
    kks[#kks + 1] = args[i]
  end
  local values = call_sliced("HMGET", kh, kks, 4000)
  if redis.call("EXISTS", kd) == 0 then
    for i = 1, #kks do
      values[i] = values[i] or ""
    end
    return values
  end
  local marker = marker_cache(kd)
  local out = {}
  for i = 1, #kks do
    local v, kept = values[i] or "", {}
    local pos = 1
    while pos <= #v do
      local seg, seq, _, _, _, next_pos = record(v, pos)
      local m = marker(seg)
      if not (m and seq < m) then
        kept[#kept + 1] = string.sub(v, pos, next_pos - 1)
      end
      pos = next_pos
    end
    out[i] = table.concat(kept)
  end
  return out
end

-- ARGV: bucket tag, segment, cursor. One step over the segment's index:
-- {next cursor, {<kind>:<key>, record, ...}}.
local function segment_members(_, args)
  local tag, seg = args[1], args[2]
  migrate(tag)
  local kh, _, _, _, kd = keys_of(tag)
  local m = redis.call("HGET", kd, seg)
  local out = {}
  local cursor = index_step(tag, seg, args[3], function(kk)
    local rec, seq = find_record(redis.call("HGET", kh, kk) or "", seg)
    if rec and not (m and seq < m) then
      out[#out + 1] = kk
      out[#out + 1] = rec
    end
  end, false)
  return { cursor, out }
end

-- ARGV: bucket tag, segment, seq (8 bytes), cursor. Raises the segment's deletion marker to
-- `seq` (hiding older entries at once) and drops one step of the hidden entries from the
-- users, the counts and the index. Returns the next cursor.
local function delete_segment(_, args)
  local tag, seg, seq = args[1], args[2], args[3]
  migrate(tag)
  local kh, kc, _, _, kd = keys_of(tag)
  local m = redis.call("HGET", kd, seg)
  if not m or m < seq then
    redis.call("HSET", kd, seg, seq)
  end
  local clock = tonumber(redis.call("HGET", kc, "_t") or "0")
  local counted, dropped = 0, 0
  local cursor = index_step(tag, seg, args[4], function(kk, mark)
    local v = redis.call("HGET", kh, kk) or ""
    local rec, old_seq, removed, ts, exp, start, stop = find_record(v, seg)
    if rec and old_seq < seq then
      if live(removed, ts, exp, clock) then
        counted = counted + 1
      end
      v = string.sub(v, 1, start - 1) .. string.sub(v, stop)
      if v == "" then
        redis.call("HDEL", kh, kk)
      else
        redis.call("HSET", kh, kk, v)
      end
      dropped = dropped + 1
      rec = nil
    end
    if not rec then
      mark()
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

-- ARGV: bucket tag, now. Sweeps, drops expired entries and lapsed tombstones (and their
-- index entries: each touched index is compacted), and returns how many entries the
-- bucket dropped (with those of deleted segments, dropped by delete_segment since the
-- last purge).
local function purge(_, args)
  local tag, now = args[1], tonumber(args[2])
  migrate(tag)
  local kh, kc, _, kp = keys_of(tag)
  local clock = sweep(tag, now)
  local dropped = tonumber(redis.call("HGET", kc, "_d") or "0")
  local gone = {} -- segment -> {member -> true}
  for _, kk in ipairs(redis.call("ZRANGE", kp, 0, -1)) do
    local v = redis.call("HGET", kh, kk) or ""
    local kept = {}
    local pending = false -- expired as of the clock, not yet as of `now` (a clock ahead)
    local pos = 1
    while pos <= #v do
      local seg, _, _, _, exp, next_pos = record(v, pos)
      if exp <= now then
        local members = gone[seg]
        if members == nil then
          members = {}
          gone[seg] = members
        end
        members[kk] = true
        dropped = dropped + 1
      else
        kept[#kept + 1] = string.sub(v, pos, next_pos - 1)
        if exp <= clock then
          pending = true
        end
      end
      pos = next_pos
    end
    if #kept == 0 then
      redis.call("HDEL", kh, kk)
    else
      local nv = table.concat(kept)
      if nv ~= v then
        redis.call("HSET", kh, kk, nv)
      end
    end
    if not pending then
      redis.call("ZREM", kp, kk)
    end
  end
  for seg, members in pairs(gone) do
    compact(tag, seg, members)
  end
  redis.call("HDEL", kc, "_d")
  return dropped
end

redis.register_function("bss_apply_users", apply)
redis.register_function("bss_counts", counts)
redis.register_function("bss_purge", purge)
redis.register_function("bss_read_users", read_users)
redis.register_function("bss_segment_members", segment_members)
redis.register_function("bss_delete_segment", delete_segment)
