-- reserve: hold credits for a message before it is queued.
-- KEYS[1] wallet, KEYS[2] reservation, KEYS[3..5] usage day/week/month, KEYS[6] events,
-- KEYS[7] user's open set, KEYS[8] open-users set, KEYS[9] concat pointer, KEYS[10] outbox
-- ARGV[1] uid, ARGV[2] ref, ARGV[3] unit price (int), ARGV[4] parts, ARGV[5] messages,
-- ARGV[6] now (ms), ARGV[7..9] day/week/month usage time to live (ms, relative: Redis's
-- clock may differ from ours),
-- ARGV[10] reservation ttl (ms), ARGV[11] events retention (ms), ARGV[12] 'c' for a part of a
-- concatenated message else '', ARGV[13] its part number, ARGV[14] concat pointer ttl (ms),
-- ARGV[15] country, ARGV[16] destination, ARGV[17] matched prefix, ARGV[18] card
-- returns {status, ref, amount, balance, reserved, overdraft}; status 0 ok, 1-7 refusal
-- (errors.Refusal), 8 no wallet, 20 another reservation holds this concatenated message
-- (ref = that one: claim it), 21 this part number was already claimed (start a new one).
local uid, ref, now = ARGV[1], ARGV[2], ARGV[6]
local concat = ARGV[12] == 'c'
local sink = {events = KEYS[6], outbox = KEYS[10], retention = ARGV[11], uid = uid}

local function reply(status, r)
  local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'overdraft')
  local amount = 0
  if status == 0 then
    amount = int(redis.call('HGET', KEYS[2], 'amount'))
  end
  return {status, r or ref, amount, int(w[1]), int(w[2]), int(w[3])}
end

if redis.call('EXISTS', KEYS[2]) == 1 then
  -- Repeat of a reservation (idempotent), or a later part claiming its message's one.
  if concat then
    local seq = 's:' .. ARGV[13]
    if redis.call('HSETNX', KEYS[2], seq, now) == 0 then
      return reply(21)
    end
    local claimed = redis.call('HINCRBY', KEYS[2], 'claimed', 1)
    if claimed >= int(redis.call('HGET', KEYS[2], 'parts')) then
      redis.call('DEL', KEYS[9])
    end
  end
  return reply(0)
end

if concat then
  local other = redis.call('GET', KEYS[9])
  if other and other ~= ref then
    return {20, other, 0, 0, 0, 0}
  end
end

local unit, parts, msgs = int(ARGV[3]), int(ARGV[4]), int(ARGV[5])
local amount = unit * parts
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'overdraft',
  'lim:credits:day', 'lim:credits:week', 'lim:credits:month',
  'lim:msgs:day', 'lim:msgs:week', 'lim:msgs:month', 'low_balance', 'low_armed')
if not w[1] then
  return reply(8)  -- every wallet has a balance field: no wallet
end
local balance, reserved, overdraft = int(w[1]), int(w[2]), int(w[3])
if amount > 0 and balance - reserved + overdraft < amount then
  return reply(1)
end

local function limit_reached(code, period_key, ttl, limit)
  -- One event per period and limit: the flag lives in the period's usage key.
  if redis.call('HSETNX', period_key, 'ev:' .. code, now) == 1 then
    redis.call('PEXPIRE', period_key, ttl)
    emit(sink, {'ts', now, 'type', 'limit_reached', 'code', s(code), 'limit', limit})
  end
  return reply(code)
end

for i = 1, 3 do
  local credit_limit, msg_limit = w[3 + i], w[6 + i]
  if credit_limit or msg_limit then
    local used = redis.call('HMGET', KEYS[2 + i], 'credits', 'msgs')
    if credit_limit and amount > 0 and int(used[1]) + amount > int(credit_limit) then
      return limit_reached(1 + i, KEYS[2 + i], ARGV[6 + i], credit_limit)
    end
    if msg_limit and int(used[2]) + msgs > int(msg_limit) then
      return limit_reached(4 + i, KEYS[2 + i], ARGV[6 + i], msg_limit)
    end
  end
end

reserved = redis.call('HINCRBY', KEYS[1], 'reserved', s(amount))
for i = 1, 3 do
  redis.call('HINCRBY', KEYS[2 + i], 'credits', s(amount))
  -- The first message of a period creates its key: give it its time to live then.
  if redis.call('HINCRBY', KEYS[2 + i], 'msgs', s(msgs)) == msgs then
    redis.call('PEXPIRE', KEYS[2 + i], ARGV[6 + i])
  end
end
redis.call('HSET', KEYS[2], 'uid', uid, 'unit', s(unit), 'parts', s(parts),
  'amount', s(amount), 'msgs', s(msgs), 'unlinked', s(parts), 'queued', '0',
  'committed', '0', 'refunded', '0', 'claimed', '1', 'created', now,
  'country', ARGV[15], 'dest', ARGV[16], 'prefix', ARGV[17], 'card', ARGV[18])
if concat then
  redis.call('HSET', KEYS[2], 's:' .. ARGV[13], now)
  if parts > 1 then
    redis.call('SET', KEYS[9], ref, 'PX', ARGV[14])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[10])
redis.call('ZADD', KEYS[7], now, ref)
redis.call('SADD', KEYS[8], uid)
low_after(KEYS[1], sink, now, balance, reserved, w[10], w[11])
return {0, ref, amount, balance, reserved, overdraft}
