-- _lib: helpers prepended to every jasmin-credits script (not a script of its own).
-- Money is integers of the minor unit; Lua numbers are doubles, exact to 2^53.
local function int(v)
  return tonumber(v) or 0
end

local function s(n)
  return string.format('%d', n)
end

-- units as credits text for operators, like jasmin_credits.money.format_amount with
-- MONEY_DECIMALS and MONEY_SHOWN (constants from the store's settings): 982900 -> '98.29'.
-- Done on the digits, not by dividing doubles, so it is exact for any integer amount.
local function money(units)
  local digits = s(math.abs(units))
  local sign = units < 0 and '-' or ''
  if MONEY_DECIMALS == 0 then
    return sign .. digits
  end
  digits = string.rep('0', MONEY_DECIMALS + 1 - #digits) .. digits
  local whole = string.sub(digits, 1, #digits - MONEY_DECIMALS)
  local frac = string.sub(digits, -MONEY_DECIMALS)
  local significant = string.gsub(frac, '0+$', '')
  frac = string.sub(frac, 1, math.max(MONEY_SHOWN, #significant))
  if frac == '' then
    return sign .. whole
  end
  return sign .. whole .. '.' .. frac
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
-- The trimming point is computed once per retention and script call.
local minids = {}
local function xadd(key, retention_ms, fields)
  local minid = minids[retention_ms]
  if not minid then
    minid = s(math.max(0, redis_now_ms() - int(retention_ms)))
    minids[retention_ms] = minid
  end
  return redis.call('XADD', key, 'MINID', '~', minid, '*', unpack(fields))
end

-- An event goes to the user's events log and to the outbox stream, which the event
-- publisher reads (AMQP exchange, webhooks). sink = {events = key, outbox = key,
-- retention = ms, uid = uid}; every operation passes the outbox as its last key.
local function emit(sink, fields)
  xadd(sink.events, sink.retention, fields)
  redis.call('XADD', sink.outbox, 'MAXLEN', '~', '1000000', '*', 'uid', sink.uid,
    unpack(fields))
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

-- The 'use' value parsed for the periods ids = {day, week, month}, once per call (a reserve
-- is the hot path): u = {day id, credits, msgs, week id, credits, msgs, month id, credits,
-- msgs} with numbers; zeros for a period the value does not count yet; and u[10 + i] true
-- for a period i the value already counts a later one of (a gateway whose clock is behind):
-- that period is neither checked nor counted, and keeps what the value had.
local function usage_of(value, ids)
  local u = {string.match(value or '', USE_PATTERN)}
  for i = 1, 3 do
    local j = 3 * i - 2
    local stored = u[j]
    if stored == ids[i] then
      u[j + 1], u[j + 2] = tonumber(u[j + 1]), tonumber(u[j + 2])
    elseif stored and stored > ids[i] then
      u[j + 1], u[j + 2], u[10 + i] = tonumber(u[j + 1]), tonumber(u[j + 2]), true
    else
      u[j], u[j + 1], u[j + 2] = ids[i], 0, 0
    end
  end
  return u
end

-- The 'use' value after adding credits and msgs to the periods usage_of counted.
local function use_value(u, credits, msgs)
  local day, week, month = u[11] and 0 or 1, u[12] and 0 or 1, u[13] and 0 or 1
  return string.format('%s %d %d %s %d %d %s %d %d',
    u[1], u[2] + day * credits, u[3] + day * msgs,
    u[4], u[5] + week * credits, u[6] + week * msgs,
    u[7], u[8] + month * credits, u[9] + month * msgs)
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

-- An operator's cut (a subtraction, new limits or settings, a refused removal) ends the
-- wallet's credit leases: what gateways carved out must not outlive it. Each gateway checks
-- lease_epoch every second (lease_epochs.lua); the announcement on the reload channel
-- (RELOAD_CHANNEL) lets those listening end theirs at once.
local function cut_leases(wallet, uid)
  redis.call('HINCRBY', wallet, 'lease_epoch', 1)
  redis.call('PUBLISH', RELOAD_CHANNEL, 'cut ' .. uid)
end
