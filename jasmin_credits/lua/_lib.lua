-- _lib: helpers prepended to every jasmin-credits script (not a script of its own).
-- Money is integers of the minor unit; Lua numbers are doubles, exact to 2^53.
local function int(v)
  return tonumber(v) or 0
end

local function s(n)
  return string.format('%d', n)
end

-- Append one entry to a stream, trimming entries older than retention_ms. Stream ids come
-- from Redis's clock, so the trimming point does too (entries carry our clock as 'ts').
local function xadd(key, retention_ms, fields)
  local t = redis.call('TIME')
  local minid = math.max(0, int(t[1]) * 1000 + math.floor(int(t[2]) / 1000) - int(retention_ms))
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

-- Add delta to a usage field if the period's key still exists: a late refund must not
-- recreate an expired period key without its TTL.
local function unuse(key, field, delta)
  if delta ~= 0 and redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, field, s(delta))
  end
end
