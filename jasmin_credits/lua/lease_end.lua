-- lease_end: give back what a lease did not hold (the gateway's end marker, read by
-- settlement after every message of the lease; or the sweeper, past the lease's deadline).
-- KEYS[1] wallet, KEYS[2] lease, KEYS[3] events (LEASES and OUTBOX are constants)
-- ARGV[1] uid, ARGV[2] lease id, ARGV[3] now (ms)
-- returns {status, credits given back}: 0 ended, 30 no such lease (ended already: a
-- repeat), 31 no wallet (removed; the lease is dropped).
local uid = ARGV[1]
redis.call('ZREM', LEASES, uid .. ' ' .. ARGV[2])
local l = redis.call('HMGET', KEYS[2], 'left', 'msgs_left', 'gateway')
if not l[1] then
  return {30, 0}
end
redis.call('DEL', KEYS[2])
if l[3] then
  redis.call('SREM', l[3], uid .. ' ' .. ARGV[2])
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'leased', 'leased_msgs',
  'low_balance', 'low_armed')
if not w[1] then
  return {31, 0}
end
local left = int(l[1])
local reserved = int(w[2]) - left
redis.call('HSET', KEYS[1], 'reserved', s(reserved), 'leased', s(int(w[3]) - left),
  'leased_msgs', s(int(w[4]) - int(l[2])))
local sink = {events = KEYS[3], outbox = OUTBOX, retention = EVENTS_RETENTION, uid = uid}
low_after(KEYS[1], sink, ARGV[3], int(w[1]), reserved, w[5], w[6])
return {0, left}
