-- lease_shrink: cut a lease down to what its gateway held on it, at the moment an operator's
-- cut ended it (jasmin_credits.leasing, LeaseBook.end_wallet and check_epochs). The unused
-- credit and messages go back to the wallet at once, so the next message is judged on real
-- usage, not on a lease nobody holds on any more (its end marker follows a second later).
-- KEYS[1] wallet, KEYS[2] lease, KEYS[3] events (OUTBOX is a constant)
-- ARGV[1] uid, ARGV[2] lease id, ARGV[3] credits the gateway held on the lease (int),
-- ARGV[4] messages it held on it, ARGV[5] now (ms)
-- returns {status, credits given back, messages given back}: 0 shrunk (a repeat, or a lease
-- already that small, gives back nothing), 30 no such lease (its end came first: it gave
-- everything back), 31 no wallet (removed; the end marker drops the lease).
-- What the lease keeps is exactly what settlement will still write from it (lease_hold
-- takes each held message from 'left', whether it ran before or after this call), so no
-- message is charged twice and none falls to the wallet. Never more than 'left' goes back:
-- a hold the gateway did not count (a forged tag) found the lease short and is held from
-- the wallet (late_hold), charged once all the same.
local l = redis.call('HMGET', KEYS[2], 'credits', 'msgs', 'left', 'msgs_left')
if not l[1] then
  return {30, 0, 0}
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'leased', 'leased_msgs',
  'low_balance', 'low_armed')
if not w[1] then
  return {31, 0, 0}
end
local credits, msgs, left, msgs_left = int(l[1]), int(l[2]), int(l[3]), int(l[4])
local give = math.max(0, math.min(credits - int(ARGV[3]), left))
local give_msgs = math.max(0, math.min(msgs - int(ARGV[4]), msgs_left))
if give == 0 and give_msgs == 0 then
  return {0, 0, 0}
end
-- 'credits' and 'msgs' shrink with it: credits - left stays what settlement held from the
-- lease, and a repeat (same figures) finds nothing more to give back.
redis.call('HSET', KEYS[2], 'credits', s(credits - give), 'msgs', s(msgs - give_msgs),
  'left', s(left - give), 'msgs_left', s(msgs_left - give_msgs))
local reserved = int(w[2]) - give
redis.call('HSET', KEYS[1], 'reserved', s(reserved), 'leased', s(int(w[3]) - give),
  'leased_msgs', s(int(w[4]) - give_msgs))
local sink = {events = KEYS[3], outbox = OUTBOX, retention = EVENTS_RETENTION, uid = ARGV[1]}
low_after(KEYS[1], sink, ARGV[5], int(w[1]), reserved, w[5], w[6])
return {0, give, give_msgs}
