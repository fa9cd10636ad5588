-- lease_hold: the reservation of one message a gateway held against its lease, written by
-- settlement from the message's tag (the submit.sm.* event), before the link.
-- KEYS[1] wallet, KEYS[2] reservation, KEYS[3] lease, KEYS[4] user's open set,
-- KEYS[5] events (the open-users set and the outbox are the constants)
-- ARGV[1] uid, ARGV[2] ref, ARGV[3] unit price, ARGV[4] parts, ARGV[5] messages,
-- ARGV[6] now (ms), ARGV[7..9] day/week/month ids of the ref's creation, ARGV[10] quote
-- returns {status, 1 if taken from the lease}: 0 ok (a repeat changes nothing), 31 no
-- wallet (removed: nothing to charge).
-- A lease that is gone or short (its end overtook this message: a requeued event) does not
-- make an accepted message free: it is held from the wallet, even below zero, and the
-- events log says so ('late_hold').
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, 0}
end
local uid, ref, now = ARGV[1], ARGV[2], ARGV[6]
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'leased', 'leased_msgs', 'use',
  'low_balance', 'low_armed')
if not w[1] then
  return {31, 0}
end
local unit, parts, msgs = int(ARGV[3]), int(ARGV[4]), int(ARGV[5])
local amount = unit * parts
local reserved = int(w[2])
local l = redis.call('HMGET', KEYS[3], 'left', 'msgs_left')
local from_lease = l[1] and int(l[1]) >= amount and int(l[2]) >= msgs
local usage = use_value(usage_of(w[5], {ARGV[7], ARGV[8], ARGV[9]}), amount, msgs)
if from_lease then
  redis.call('HSET', KEYS[3], 'left', s(int(l[1]) - amount), 'msgs_left', s(int(l[2]) - msgs))
  redis.call('HSET', KEYS[1], 'leased', s(int(w[3]) - amount),
    'leased_msgs', s(int(w[4]) - msgs), 'use', usage)
else
  reserved = reserved + amount
  redis.call('HSET', KEYS[1], 'reserved', s(reserved), 'use', usage)
end
redis.call('HSET', KEYS[2], 'unit', s(unit), 'parts', s(parts), 'msgs', s(msgs),
  'unlinked', s(parts), 'quote', ARGV[10])
redis.call('PEXPIRE', KEYS[2], RESERVATION_TTL)
redis.call('ZADD', KEYS[4], now, ref)
redis.call('SADD', OPEN_USERS, uid)
if not from_lease then
  local sink = {events = KEYS[5], outbox = OUTBOX, retention = EVENTS_RETENTION, uid = uid}
  emit(sink, {'ts', now, 'type', 'late_hold', 'amount', s(-amount), 'ref', ref,
    'msgid', '', 'parts', s(parts), 'reason', 'lease ended before its message'})
  low_after(KEYS[1], sink, now, int(w[1]), reserved, w[6], w[7])
end
return {0, from_lease and 1 or 0}
