-- _lib: helpers prepended to every jasmin-credits script (not a script of its own).
-- Money is integers of the minor unit; Lua numbers are doubles, exact to 2^53.
local function int(v)
  return tonumber(v) or 0
end

local function s(n)
  return string.format('%d', n)
end

-- Redis's clock in ms, read once per script call: a batch of operations asks once.
local redis_ms
local function redis_now_ms()
  if not redis_ms then
    local t = redis.call('TIME')
    redis_ms = int(t[1]) * 1000 + math.floor(int(t[2]) / 1000)
  end
  return redis_ms
end

-- Append one entry to a stream, trimming entries older than retention_ms. Stream ids come
-- from Redis's clock, so the trimming point does too (entries carry our clock as 'ts').
local function xadd(key, retention_ms, fields)
  local minid = math.max(0, redis_now_ms() - int(retention_ms))
  local args = {'XADD', key, 'MINID', '~', s(minid), '*'}
  for i = 1, #fields do
    args[#args + 1] = fields[i]
  end
  return redis.call(unpack(args))
end

-- An event goes to the user's events log and to the outbox stream, which the event
-- publisher reads (AMQP exchange, webhooks). sink = {events = key, outbox = key,
-- retention = ms, uid = uid}; every operation passes the outbox as its last key.
local function emit(sink, fields)
  xadd(sink.events, sink.retention, fields)
  local out = {'XADD', sink.outbox, 'MAXLEN', '~', '1000000', '*', 'uid', sink.uid}
  for i = 1, #fields do
    out[#out + 1] = fields[i]
  end
  redis.call(unpack(out))
end

-- Low-balance alert: one event per downward crossing of the threshold; any change that
-- brings the available credit back to the threshold or above re-arms it. The caller
-- passes what it already read or computed, so this costs no read.
local function low_after(wallet, sink, now, balance, reserved, threshold, armed)
  if not threshold or threshold == '' then
    return
  end
  local available = balance - reserved
  if available < int(threshold) then
    if armed ~= '0' then
      redis.call('HSET', wallet, 'low_armed', '0')
      emit(sink, {'ts', now, 'type', 'low_balance', 'balance', s(balance),
        'available', s(available), 'threshold', threshold})
    end
  elseif armed == '0' then
    redis.call('HSET', wallet, 'low_armed', '1')
  end
end

-- The same, reading the wallet first (for operations that did not read it).
local function check_low(wallet, sink, now)
  local w = redis.call('HMGET', wallet, 'balance', 'reserved', 'low_balance', 'low_armed')
  low_after(wallet, sink, now, int(w[1]), int(w[2]), w[3], w[4])
end

-- Period usage lives in the wallet hash, in one field 'use' (one field: a reserve writes
-- it with 'reserved' in one short HSET, which costs Redis far less than nine fields):
-- "<day id> <credits> <msgs> <week id> <credits> <msgs> <month id> <credits> <msgs>",
-- the periods last used and what was used in them. A new period simply replaces an older
-- one: usage resets at the boundary with no cron job and no time to live, and a late
-- refund cannot touch the period after its own.

local USE_PATTERN = '^(%S+) (-?%d+) (-?%d+) (%S+) (-?%d+) (-?%d+) (%S+) (-?%d+) (-?%d+)$'

-- Per period of ids = {day, week, month}: {id, credits, msgs} as counted in the 'use'
-- value, zeros for a period the value does not count yet, or false when it already counts
-- a later period (a gateway whose clock is behind): that period is neither checked nor
-- counted.
local function usage_of(value, ids)
  local u = {string.match(value or '', USE_PATTERN)}
  local usage = {}
  for i = 1, 3 do
    local stored = u[3 * i - 2]
    if stored == ids[i] then
      usage[i] = {ids[i], tonumber(u[3 * i - 1]), tonumber(u[3 * i])}
    elseif stored and stored > ids[i] then
      usage[i] = false
    else
      usage[i] = {ids[i], 0, 0}
    end
  end
  return usage
end

-- The 'use' value after adding credits and msgs to the periods counted in usage (a period
-- answered false keeps what the old value had).
local function use_value(value, usage, credits, msgs)
  local old = {string.match(value or '', USE_PATTERN)}
  local out = {}
  for i = 1, 3 do
    local u = usage[i]
    if u then
      out[i] = u[1] .. ' ' .. s(u[2] + credits) .. ' ' .. s(u[3] + msgs)
    else
      out[i] = old[3 * i - 2] .. ' ' .. old[3 * i - 1] .. ' ' .. old[3 * i]
    end
  end
  return table.concat(out, ' ')
end

-- The 'use' value after adding deltas only to the periods ids it still counts (a refund or
-- a late hold of a reservation made in an earlier period changes nothing); nil if unchanged.
local function shifted_use(value, ids, credits, msgs)
  local u = {string.match(value or '', USE_PATTERN)}
  if #u == 0 then
    return nil
  end
  local changed = false
  for i = 1, 3 do
    if u[3 * i - 2] == ids[i] then
      u[3 * i - 1] = s(tonumber(u[3 * i - 1]) + credits)
      u[3 * i] = s(tonumber(u[3 * i]) + msgs)
      changed = true
    end
  end
  return changed and table.concat(u, ' ') or nil
end
