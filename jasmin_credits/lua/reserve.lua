-- reserve: hold credits for a message before it is queued.
-- KEYS[1] wallet, KEYS[2] reservation, KEYS[3] events, KEYS[4] user's open set,
-- KEYS[5] concat pointer (the open-users set and the outbox are the constants OPEN_USERS
-- and OUTBOX: global keys, the same for every call)
-- ARGV[1] uid, ARGV[2] ref, ARGV[3] unit price (int), ARGV[4] parts, ARGV[5] messages,
-- ARGV[6] now (ms), ARGV[7..9] day/week/month period ids (of the ref's creation),
-- ARGV[10] 'c' for a part of a concatenated message else '', ARGV[11] its part number,
-- ARGV[12] what priced it, 'country|destination|prefix|card' (kept for the credit log)
-- returns {status, ref, amount, balance, reserved, overdraft}; status 0 ok, 1-7 refusal
-- (errors.Refusal), 8 no wallet, 20 another reservation holds this concatenated message
-- (ref = that one: claim it), 21 this part number was already claimed (start a new one).
local uid, ref, now = ARGV[1], ARGV[2], ARGV[6]
local concat = ARGV[10] == 'c'
local sink = {events = KEYS[3], outbox = OUTBOX, retention = EVENTS_RETENTION, uid = uid}

local function reply(status, r)
  local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'overdraft')
  local amount = 0
  if status == 0 then
    local r = redis.call('HMGET', KEYS[2], 'unit', 'parts')
    amount = int(r[1]) * int(r[2])
  end
  return {status, r or ref, amount, int(w[1]), int(w[2]), int(w[3])}
end

if redis.call('EXISTS', KEYS[2]) == 1 then
  -- Repeat of a reservation (idempotent), or a later part claiming its message's one.
  if concat then
    local seq = 's:' .. ARGV[11]
    if redis.call('HSETNX', KEYS[2], seq, now) == 0 then
      return reply(21)
    end
    local claimed = redis.call('HINCRBY', KEYS[2], 'claimed', 1)
    if claimed >= int(redis.call('HGET', KEYS[2], 'parts')) then
      redis.call('DEL', KEYS[5])
    end
  end
  return reply(0)
end

if concat then
  local other = redis.call('GET', KEYS[5])
  if other and other ~= ref then
    return {20, other, 0, 0, 0, 0}
  end
end

local unit, parts, msgs = int(ARGV[3]), int(ARGV[4]), int(ARGV[5])
local amount = unit * parts
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'overdraft',
  'lim:credits:day', 'lim:credits:week', 'lim:credits:month',
  'lim:msgs:day', 'lim:msgs:week', 'lim:msgs:month', 'low_balance', 'low_armed', 'use',
  'leased', 'leased_msgs')
if not w[1] then
  return reply(8)  -- every wallet has a balance field: no wallet
end
local balance, reserved, overdraft = int(w[1]), int(w[2]), int(w[3])
if amount > 0 and balance - reserved + overdraft < amount then
  return reply(1)
end

local ids = {ARGV[7], ARGV[8], ARGV[9]}
local usage = usage_of(w[12], ids)

local function limit_reached(code, period_id, limit)
  -- One event per period and limit: the wallet remembers the period of the last one.
  local flag = 'lim_event:' .. code
  if redis.call('HGET', KEYS[1], flag) ~= period_id then
    redis.call('HSET', KEYS[1], flag, period_id)
    emit(sink, {'ts', now, 'type', 'limit_reached', 'code', s(code), 'limit', limit})
  end
  return reply(code)
end

-- Open leases (lease_take.lua) count against the limits until they hold or give back.
local leased, leased_msgs = int(w[13]), int(w[14])
for i = 1, 3 do
  local credit_limit, msg_limit = w[3 + i], w[6 + i]
  if (credit_limit or msg_limit) and not usage[10 + i] then
    local used_credits, used_msgs = usage[3 * i - 1] + leased, usage[3 * i] + leased_msgs
    if credit_limit and amount > 0 and used_credits + amount > int(credit_limit) then
      return limit_reached(1 + i, ids[i], credit_limit)
    end
    if msg_limit and used_msgs + msgs > int(msg_limit) then
      return limit_reached(4 + i, ids[i], msg_limit)
    end
  end
end

reserved = reserved + amount
redis.call('HSET', KEYS[1], 'reserved', s(reserved),
  'use', use_value(usage, amount, msgs))
local record = {'HSET', KEYS[2], 'unit', s(unit), 'parts', s(parts), 'msgs', s(msgs),
  'unlinked', s(parts), 'quote', ARGV[12]}
if concat then
  record[#record + 1] = 'claimed'
  record[#record + 1] = '1'
  record[#record + 1] = 's:' .. ARGV[11]
  record[#record + 1] = now
  if parts > 1 then
    redis.call('SET', KEYS[5], ref, 'PX', CONCAT_TTL)
  end
end
redis.call(unpack(record))
redis.call('PEXPIRE', KEYS[2], RESERVATION_TTL)
redis.call('ZADD', KEYS[4], now, ref)
redis.call('SADD', OPEN_USERS, uid)
low_after(KEYS[1], sink, now, balance, reserved, w[10], w[11])
return {0, ref, amount, balance, reserved, overdraft}
