-- plan_run: one run of a wallet's top-up plan, decided and applied in one atomic step.
-- KEYS[1] wallet, KEYS[2] credit log, KEYS[3] events, KEYS[4] operation record,
-- KEYS[5] plan, KEYS[6] outbox
-- ARGV[1] uid, ARGV[2] which ('scheduled' or 'threshold'), ARGV[3] plan version,
-- ARGV[4] operation id, ARGV[5] now (ms), ARGV[6] log retention (ms),
-- ARGV[7] events retention (ms), ARGV[8] operation record ttl (ms),
-- ARGV[9] period id (scheduled: the occurrence, e.g. s20261118; threshold: the day, d20261118),
-- ARGV[10] scheduled: the occurrence time (ms); threshold: the run's number in the day,
-- ARGV[11] month id (the monthly cap's bucket, e.g. m202611)
-- The plan's own fields (mode, amount, cap, below, max_per_day) are read here, under the
-- version the caller decided on, so an edited or removed plan never runs on stale values.
-- returns {status, amount added, balance}; status 0 applied, 1 already done (this period
-- ran, or a later one did), 2 nothing to add (reset target reached, or above threshold),
-- 3 monthly cap reached, 4 threshold runs of the day used up, 8 no wallet,
-- 50 the plan changed or was removed (decide again).
-- The reason written to the credit log and the plan event is for operators: amounts in it
-- are credits (money()); the amount fields stay integers of units.
local uid, which, now = ARGV[1], ARGV[2], ARGV[5]
local plan = KEYS[5]
if redis.call('HGET', plan, 'version') ~= ARGV[3] then
  return {50, 0, 0}
end
local done = redis.call('GET', KEYS[4])
if not done and redis.call('EXISTS', KEYS[1]) == 0 then
  return {8, 0, 0}
end
local sink = {events = KEYS[3], outbox = KEYS[6], retention = ARGV[7], uid = uid}
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved')
local balance, available = int(w[1]), int(w[1]) - int(w[2])
local amount, reason = 0, ''

local function skipped(status, why, fields)
  local event = {'ts', now, 'type', 'plan_skipped', 'plan', which, 'period', ARGV[9],
    'why', why}
  for i = 1, #fields do
    event[#event + 1] = fields[i]
  end
  emit(sink, event)
  return {status, 0, balance}
end

if which == 'scheduled' then
  local p = redis.call('HMGET', plan, 's_mode', 's_amount', 's_cap', 'last_due',
    'cap_month', 'cap_used')
  local due = int(ARGV[10])
  if due <= int(p[4]) then
    return {1, 0, balance}
  end
  -- The period is decided: whatever happens below, it never runs again. An operation
  -- record without this bookkeeping (a run applied by an earlier, interrupted attempt)
  -- only completes the bookkeeping.
  redis.call('HSET', plan, 'last_due', ARGV[10], 'last_period', ARGV[9])
  if done then
    return {1, 0, balance}
  end
  redis.call('SET', KEYS[4], s(balance), 'PX', ARGV[8])
  local target = int(p[2])
  if p[1] == 'reset' then
    amount = math.max(0, target - balance)
    reason = 'scheduled: reset to ' .. money(target)
  else
    amount = target
    reason = 'scheduled: add ' .. money(target)
  end
  if amount == 0 then
    return skipped(2, 'at_target', {'target', s(target), 'balance', s(balance)})
  end
  if p[3] and p[3] ~= '' then
    local used = 0
    if p[5] == ARGV[11] then
      used = int(p[6])
    end
    local room = int(p[3]) - used
    if room <= 0 then
      return skipped(3, 'monthly_cap', {'cap', p[3], 'used', s(used)})
    end
    if amount > room then
      amount = room
      reason = reason .. ' (capped at the monthly cap)'
    end
    redis.call('HSET', plan, 'cap_month', ARGV[11], 'cap_used', s(used + amount))
  end
else
  local p = redis.call('HMGET', plan, 't_below', 't_amount', 't_max_per_day', 'thr_day',
    'thr_count', 'thr_full')
  local below, count = int(p[1]), 0
  if p[4] == ARGV[9] then
    count = int(p[5])
  end
  local seq = int(ARGV[10])
  if count >= seq then
    return {1, 0, balance}
  end
  if done then
    redis.call('HSET', plan, 'thr_day', ARGV[9], 'thr_count', s(seq))
    return {1, 0, balance}
  end
  if available >= below then
    return {2, 0, balance}
  end
  if count >= int(p[3]) then
    if p[6] ~= ARGV[9] then
      redis.call('HSET', plan, 'thr_full', ARGV[9])
      return skipped(4, 'daily_max', {'max_per_day', p[3], 'available', s(available)})
    end
    return {4, 0, balance}
  end
  redis.call('HSET', plan, 'thr_day', ARGV[9], 'thr_count', s(count + 1))
  amount = int(p[2])
  reason = 'threshold: available ' .. money(available) .. ' below ' .. money(below)
end

balance = redis.call('HINCRBY', KEYS[1], 'balance', s(amount))
xadd(KEYS[2], ARGV[6], {'ts', now, 'type', 'plan', 'amount', s(amount),
  'balance', s(balance), 'ref', ARGV[4], 'msgid', '', 'country', '', 'dest', '',
  'parts', '0', 'actor', 'plan:' .. which, 'reason', reason})
emit(sink, {'ts', now, 'type', 'plan', 'plan', which, 'period', ARGV[9],
  'amount', s(amount), 'balance', s(balance), 'reason', reason})
redis.call('SET', KEYS[4], s(balance), 'PX', ARGV[8])
redis.call('HSET', plan, 'last_run', now)
check_low(KEYS[1], sink, now)
return {0, amount, balance}
