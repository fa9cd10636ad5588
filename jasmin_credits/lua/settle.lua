-- settle: move the parts of one reservation between held, queued, committed and refunded.
-- KEYS[1] wallet, KEYS[2] reservation, KEYS[3..5] usage day/week/month (of the
-- reservation's creation), KEYS[6] credit log, KEYS[7] events, KEYS[8] user's open set,
-- KEYS[9] open-users set, KEYS[10] message link (only read by 'link'), KEYS[11] outbox
-- ARGV[1] uid, ARGV[2] ref, ARGV[3] action, ARGV[4] Jasmin message id or '' (all),
-- ARGV[5] parts (link), ARGV[6] reason, ARGV[7] actor, ARGV[8] now (ms),
-- ARGV[9] log retention (ms), ARGV[10] events retention (ms), ARGV[11] message link ttl (ms)
-- Actions:
--   link     parts were queued by Jasmin under a message id (submit.sm event); applies an
--            outcome that arrived before the link (see outcome.lua)
--   commit   queued parts (of one message id, or all parts) left: charge them
--   refund   parts of one message id, or all parts, are given back (also after commit)
--   release  parts never queued are given back (sweeper)
--   expire   like release, and queued parts never answered are settled by ARGV[6]
--            ('commit' or 'refund') (sweeper)
-- Every repeat changes nothing: each message id settles once (field m:<id> = "parts state",
-- state q queued, c committed, r refunded).
-- returns {status, changed amount (negative = charged), balance, reserved, open parts};
-- status 0 ok, 30 unknown reservation, 31 the wallet was removed.
local uid, ref, action, msgid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[8]
local sink = {events = KEYS[7], outbox = KEYS[11], retention = ARGV[10], uid = uid}
local r = redis.call('HMGET', KEYS[2], 'unit', 'unlinked', 'queued', 'committed', 'refunded',
  'msgs', 'parts', 'country', 'dest')
if not r[1] then
  return {30, 0, 0, 0, 0}
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'low_balance', 'low_armed')
if not w[1] then
  return {31, 0, 0, 0, 0}
end
-- The wallet as this call leaves it; every HINCRBY below returns the new value.
local balance, reserved = int(w[1]), int(w[2])
local unit = int(r[1])
local counts = {unlinked = int(r[2]), queued = int(r[3]), committed = int(r[4]),
  refunded = int(r[5])}
local total_parts = int(r[7])
local changed = 0

local function ledger(kind, amount, id, parts, reason)
  xadd(KEYS[6], ARGV[9], {'ts', now, 'type', kind, 'amount', s(amount), 'balance', s(balance),
    'ref', ref, 'msgid', id, 'country', r[8] or '', 'dest', r[9] or '', 'parts', s(parts),
    'actor', ARGV[7], 'reason', reason})
end

local function event(kind, amount, id, parts, reason)
  emit(sink, {'ts', now, 'type', kind, 'amount', s(amount), 'ref', ref,
    'msgid', id, 'parts', s(parts), 'reason', reason})
end

-- held parts (unlinked or queued) -> committed: the message left, charge it.
local function charge(from, parts, id)
  local amount = parts * unit
  counts[from] = counts[from] - parts
  counts.committed = counts.committed + parts
  reserved = redis.call('HINCRBY', KEYS[1], 'reserved', s(-amount))
  balance = redis.call('HINCRBY', KEYS[1], 'balance', s(-amount))
  changed = changed - amount
  ledger('charge', -amount, id, parts, '')
end

-- held or committed parts -> refunded: credits and period usage come back.
local function give_back(from, parts, id, reason)
  local amount = parts * unit
  counts[from] = counts[from] - parts
  counts.refunded = counts.refunded + parts
  if from == 'committed' then
    balance = redis.call('HINCRBY', KEYS[1], 'balance', s(amount))
    changed = changed + amount
    ledger('refund', amount, id, parts, reason)
  else
    reserved = redis.call('HINCRBY', KEYS[1], 'reserved', s(-amount))
  end
  for i = 3, 5 do
    unuse(KEYS[i], 'credits', -amount)
    if counts.refunded >= total_parts then
      unuse(KEYS[i], 'msgs', -int(r[6]))
    end
  end
  event(from == 'committed' and 'refund' or 'released', amount, id, parts, reason)
end

local state_of = {q = 'queued', c = 'committed', r = 'refunded'}

-- Settle one message id: outcome 'c' commit or 'r' refund.
local function settle_msg(id, outcome, reason)
  local field = 'm:' .. id
  local v = redis.call('HGET', KEYS[2], field)
  if not v then
    return
  end
  local parts, st = string.match(v, '^(%d+) (%a)$')
  parts = int(parts)
  local from = state_of[st]
  if outcome == 'c' and from == 'queued' then
    charge('queued', parts, id)
  elseif outcome == 'r' and from ~= 'refunded' then
    give_back(from, parts, id, reason)
  else
    return
  end
  redis.call('HSET', KEYS[2], field, s(parts) .. ' ' .. outcome)
end

local function each_message(fn)
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'm:' then
      fn(string.sub(all[i], 3))
    end
  end
end

if action == 'link' then
  if redis.call('HEXISTS', KEYS[2], 'm:' .. msgid) == 1 then
    return {0, 0, balance, reserved, counts.unlinked + counts.queued}
  end
  local parts = int(ARGV[5])
  local late = parts - math.min(parts, counts.unlinked)
  if late > 0 then
    -- Queued after its hold was released (queueing slower than the release timeout, or
    -- more parts than the client announced): hold again, so what left is still charged.
    reserved = redis.call('HINCRBY', KEYS[1], 'reserved', s(late * unit))
    for i = 3, 5 do
      unuse(KEYS[i], 'credits', late * unit)
    end
    total_parts = total_parts + late
    redis.call('HSET', KEYS[2], 'parts', s(total_parts))
    redis.call('ZADD', KEYS[8], now, ref)
    redis.call('SADD', KEYS[9], uid)
    event('late_hold', -late * unit, msgid, late, 'queued after release')
  end
  counts.unlinked = counts.unlinked - (parts - late)
  counts.queued = counts.queued + parts
  redis.call('HSET', KEYS[2], 'm:' .. msgid, s(parts) .. ' q')
  local pending = redis.call('GET', KEYS[10])
  redis.call('SET', KEYS[10], uid .. ' ' .. ref .. ' ' .. s(parts), 'PX', ARGV[11])
  if pending and string.sub(pending, 1, 1) == '!' then
    settle_msg(msgid, string.sub(pending, 2, 2), string.sub(pending, 4))
  end
elseif action == 'commit' then
  if msgid ~= '' then
    settle_msg(msgid, 'c', '')
  else
    each_message(function(id) settle_msg(id, 'c', '') end)
    if counts.unlinked > 0 then
      charge('unlinked', counts.unlinked, '')
    end
  end
elseif action == 'refund' then
  if msgid ~= '' then
    settle_msg(msgid, 'r', ARGV[6])
  else
    each_message(function(id) settle_msg(id, 'r', ARGV[6]) end)
    if counts.unlinked > 0 then
      give_back('unlinked', counts.unlinked, '', ARGV[6])
    end
    if counts.committed > 0 then
      -- committed without a message id (commit of unlinked parts)
      give_back('committed', counts.committed, '', ARGV[6])
    end
  end
elseif action == 'release' or action == 'expire' then
  if counts.unlinked > 0 then
    give_back('unlinked', counts.unlinked, '', 'never queued')
  end
  if action == 'expire' then
    local outcome = ARGV[6] == 'commit' and 'c' or 'r'
    each_message(function(id) settle_msg(id, outcome, 'no answer from the SMSC') end)
  end
else
  return redis.error_reply('unknown settle action ' .. action)
end

redis.call('HSET', KEYS[2], 'unlinked', s(counts.unlinked), 'queued', s(counts.queued),
  'committed', s(counts.committed), 'refunded', s(counts.refunded))
if counts.unlinked + counts.queued == 0 then
  if redis.call('ZREM', KEYS[8], ref) == 1 and redis.call('ZCARD', KEYS[8]) == 0 then
    redis.call('SREM', KEYS[9], uid)
  end
end
low_after(KEYS[1], sink, now, balance, reserved, w[3], w[4])
return {0, changed, balance, reserved, counts.unlinked + counts.queued}
