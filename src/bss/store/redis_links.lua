#!lua name=bss_links_v1
--[[
The identity graph's links on Redis (Redis Functions, Redis >= 7.0), beside the membership
library and in the same buckets: a link is kept under both of its ends, each end in the
bucket of that user (bss.store.redis_store.bucket_of), so an ID's links live in the hash
slot of its memberships. Every function works on ONE bucket, atomically:

  bss:l{b}:<scope>   hash   <kind>:<key> -> the user's links in that scope, one record each
  bss:ls{b}          set    the scopes with links in the bucket (for purge)

A record: <n, 2 bytes><the other end's <kind>:<key>, n bytes><seq, 8 bytes><asserted_at,
8 bytes><expires_at, 8 bytes><removed, 1 byte>, the integers big-endian.
]]

local TAIL = 25 -- seq, asserted_at, expires_at, removed

-- Seqs as 8-byte big-endian strings, compared as two 32-bit halves (no locale involved).
local function seq_less(x, y)
  local xh, xl = struct.unpack(">I4I4", x)
  local yh, yl = struct.unpack(">I4I4", y)
  return xh < yh or (xh == yh and xl < yl)
end

-- Calls fn(other, seq, record, tail position) for each record of a user's links.
local function each_link(blob, fn)
  local pos = 1
  while pos <= #blob do
    local n = string.byte(blob, pos) * 256 + string.byte(blob, pos + 1)
    local tail = pos + 2 + n
    fn(string.sub(blob, pos + 2, tail - 1), string.sub(blob, tail, tail + 7),
      string.sub(blob, pos, tail + TAIL - 1), tail)
    pos = tail + TAIL
  end
end

local function links_key(tag, scope)
  return "bss:l{" .. tag .. "}:" .. scope
end

-- ARGV: tag, G, then G groups: scope, <kind>:<key>, N, N records. The seq rule per other
-- end: a record replaces the stored one only with a higher seq.
local function apply_links(_, args)
  local tag, groups = args[1], tonumber(args[2])
  local scopes = "bss:ls{" .. tag .. "}"
  local i = 3
  for _ = 1, groups do
    local scope, kk, n = args[i], args[i + 1], tonumber(args[i + 2])
    i = i + 3
    local key = links_key(tag, scope)
    local recs, order = {}, {}
    each_link(redis.call("HGET", key, kk) or "", function(other, seq, rec)
      recs[other] = { seq, rec }
      order[#order + 1] = other
    end)
    for j = i, i + n - 1 do
      local rec = args[j]
      local len = string.byte(rec, 1) * 256 + string.byte(rec, 2)
      local other, seq = string.sub(rec, 3, 2 + len), string.sub(rec, 3 + len, 10 + len)
      local old = recs[other]
      if old == nil then
        order[#order + 1] = other
        recs[other] = { seq, rec }
      elseif seq_less(old[1], seq) then
        recs[other] = { seq, rec }
      end
    end
    i = i + n
    local parts = {}
    for _, other in ipairs(order) do
      parts[#parts + 1] = recs[other][2]
    end
    redis.call("HSET", key, kk, table.concat(parts))
    redis.call("SADD", scopes, scope)
  end
  return groups
end

-- ARGV: tag, S, S scopes, then users (<kind>:<key>). Per user, per scope: its records ("" if none).
local function read_links(_, args)
  local tag, s = args[1], tonumber(args[2])
  local out = {}
  for u = 3 + s, #args do
    for j = 3, 2 + s do
      out[#out + 1] = redis.call("HGET", links_key(tag, args[j]), args[u]) or ""
    end
  end
  return out
end

-- ARGV: tag, scope. Drops every link of the scope in the bucket.
local function delete_scope(_, args)
  local tag, scope = args[1], args[2]
  redis.call("DEL", links_key(tag, scope))
  redis.call("SREM", "bss:ls{" .. tag .. "}", scope)
  return 1
end

-- ARGV: tag, now. Drops lapsed links and tombstones; returns how many records went.
local function purge_links(_, args)
  local tag, now = args[1], tonumber(args[2])
  local scopes = "bss:ls{" .. tag .. "}"
  local dropped = 0
  for _, scope in ipairs(redis.call("SMEMBERS", scopes)) do
    local key = links_key(tag, scope)
    local flat = redis.call("HGETALL", key)
    for f = 1, #flat, 2 do
      local kept = {}
      each_link(flat[f + 1], function(_, _, rec, tail)
        local expires = struct.unpack(">i8", flat[f + 1], tail + 16)
        if expires > now then
          kept[#kept + 1] = rec
        else
          dropped = dropped + 1
        end
      end)
      if #kept == 0 then
        redis.call("HDEL", key, flat[f])
      else
        redis.call("HSET", key, flat[f], table.concat(kept))
      end
    end
    if redis.call("EXISTS", key) == 0 then
      redis.call("SREM", scopes, scope)
    end
  end
  return dropped
end

redis.register_function("bss_apply_links", apply_links)
redis.register_function("bss_read_links", read_links)
redis.register_function("bss_delete_scope_links", delete_scope)
redis.register_function("bss_purge_links", purge_links)
