-- settle: move the parts of one reservation between held, queued, committed and refunded.
-- KEYS[1] wallet, KEYS[2] reservation, KEYS[3] credit log, KEYS[4] events,
-- KEYS[5] user's open set, KEYS[6] message link (only read by 'link'); the open-users set
-- and the outbox are the constants OPEN_USERS and OUTBOX
-- ARGV[1] uid, ARGV[2] ref, ARGV[3] action, ARGV[4] Jasmin message id or '' (all),
-- ARGV[5] parts (link), ARGV[6] reason, ARGV[7] actor, ARGV[8] now (ms),
-- ARGV[9..11] day/week/month period ids of the reservation's creation
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
local sink = {events = KEYS[4], outbox = OUTBOX, retention = EVENTS_RETENTION, uid = uid}
local periods = {ARGV[9], ARGV[10], ARGV[11]}
local r = redis.call('HMGET', KEYS[2], 'unit', 'unlinked', 'queued', 'committed', 'refunded',
  'msgs', 'parts', 'quote')
if not r[1] then
  return {30, 0, 0, 0, 0}
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'low_balance', 'low_armed', 'use')
if not w[1] then
  return {31, 0, 0, 0, 0}
end
-- The wallet as this call leaves it (written once, at the end).
local balance, reserved = int(w[1]), int(w[2])
local use = w[5]  -- period usage (see lua/_lib.lua), rewritten at the end if changed
local unit = int(r[1])
local counts = {unlinked = int(r[2]), queued = int(r[3]), committed = int(r[4]),
  refunded = int(r[5])}
local total_parts = int(r[7])
local changed = 0
local country, dest = string.match(r[8] or '', '^([^|]*)|([^|]*)')

local function ledger(kind, amount, id, parts, reason)
  xadd(KEYS[3], LOG_RETENTION, {'ts', now, 'type', kind, 'amount', s(amount),
    'balance', s(balance), 'ref', ref, 'msgid', id, 'country', country or '',
    'dest', dest or '', 'parts', s(parts),
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
  reserved = reserved - amount
  balance = balance - amount
  changed = changed - amount
  ledger('charge', -amount, id, parts, '')
end

-- held or committed parts -> refunded: credits and period usage come back.
local function give_back(from, parts, id, reason)
  local amount = parts * unit
  counts[from] = counts[from] - parts
  counts.refunded = counts.refunded + parts
  if from == 'committed' then
    balance = balance + amount
    changed = changed + amount
    ledger('refund', amount, id, parts, reason)
  else
    reserved = reserved - amount
  end
  use = shifted_use(use, periods, -amount, counts.refunded >= total_parts and -int(r[6]) or 0)
    or use
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
  if counts.queued + counts.committed + counts.refunded == 0 then
    return  -- nothing was linked: no m:<id> field to visit
  end
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
    reserved = reserved + late * unit
    use = shifted_use(use, periods, late * unit, 0) or use
    total_parts = total_parts + late
    redis.call('HSET', KEYS[2], 'parts', s(total_parts))
    redis.call('ZADD', KEYS[5], now, ref)
    redis.call('SADD', OPEN_USERS, uid)
    event('late_hold', -late * unit, msgid, late, 'queued after release')
  end
  counts.unlinked = counts.unlinked - (parts - late)
  counts.queued = counts.queued + parts
  redis.call('HSET', KEYS[2], 'm:' .. msgid, s(parts) .. ' q')
  local pending = redis.call('GET', KEYS[6])
  -- The link names the reservation and its periods: outcome.lua settles from it alone.
  redis.call('SET', KEYS[6], uid .. ' ' .. ref .. ' ' .. s(parts) .. ' ' .. ARGV[9] .. ' '
    .. ARGV[10] .. ' ' .. ARGV[11], 'PX', LINK_TTL)
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

if use ~= w[5] then
  redis.call('HSET', KEYS[1], 'balance', s(balance), 'reserved', s(reserved), 'use', use)
elseif balance ~= int(w[1]) or reserved ~= int(w[2]) then
  redis.call('HSET', KEYS[1], 'balance', s(balance), 'reserved', s(reserved))
end
local record = {'HSET', KEYS[2]}
for i, name in ipairs({'unlinked', 'queued', 'committed', 'refunded'}) do
  if counts[name] ~= int(r[i + 1]) then  -- write only what moved
    record[#record + 1] = name
    record[#record + 1] = s(counts[name])
  end
end
if #record > 2 then
  redis.call(unpack(record))
end
if counts.unlinked + counts.queued == 0 then
  if redis.call('ZREM', KEYS[5], ref) == 1 and redis.call('ZCARD', KEYS[5]) == 0 then
    redis.call('SREM', OPEN_USERS, uid)
  end
end
low_after(KEYS[1], sink, now, balance, reserved, w[3], w[4])
return {0, changed, balance, reserved, counts.unlinked + counts.queued}
