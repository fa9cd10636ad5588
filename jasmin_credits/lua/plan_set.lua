-- plan_set: replace (or with no fields, remove) a wallet's top-up plan.
-- KEYS[1] wallet, KEYS[2] plan, KEYS[3] events, KEYS[4] wallets set, KEYS[5] plans index,
-- KEYS[6] outbox
-- ARGV[1] uid, ARGV[2] now (ms), ARGV[3] events retention (ms), ARGV[4] actor,
-- ARGV[5] '1' to create a missing wallet, ARGV[6..] field, value pairs of the definition
-- (s_* scheduled, t_* threshold fields; see plans.py)
-- The run bookkeeping (last_due, cap_used, thr_count, ...) survives an edit; the version
-- goes up, so a run decided on the old definition does not apply (plan_run answers 50).
-- returns {status, version}; status 0 ok, 8 no wallet.
local sink = {events = KEYS[3], outbox = KEYS[6], retention = ARGV[3], uid = ARGV[1]}
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[5] ~= '1' then
    return {8, 0}
  end
  redis.call('HSET', KEYS[1], 'balance', '0', 'reserved', '0', 'overdraft', '0',
    'low_armed', '1', 'created', ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
local old = redis.call('HKEYS', KEYS[2])
for i = 1, #old do
  local f = old[i]
  if string.sub(f, 1, 2) == 's_' or string.sub(f, 1, 2) == 't_' then
    redis.call('HDEL', KEYS[2], f)
  end
end
local event = {'ts', ARGV[2], 'type', 'plan_set', 'actor', ARGV[4]}
if #ARGV < 6 then
  -- Keep only the version: a run decided on the removed plan can never match again.
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'version', s(version))
  redis.call('SREM', KEYS[5], ARGV[1])
  event[#event + 1] = 'plan'
  event[#event + 1] = 'none'
  emit(sink, event)
  return {0, 0}
end
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  event[#event + 1] = ARGV[i]
  event[#event + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[2], 'created', ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
emit(sink, event)
return {0, version}
