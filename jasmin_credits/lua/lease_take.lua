-- lease_take: carve credits (and room under the message limits) out of a wallet for one
-- gateway, which then holds single messages against them in memory, with no Redis call per
-- message (jasmin_credits.leasing). A lease is held credit: it is in 'reserved' (and in
-- 'leased', which says how much of 'reserved' leases hold) until settlement turns each of
-- its messages into a reservation (lease_hold) and the gateway's end marker, or the
-- sweeper at its deadline, gives the rest back (lease_end).
-- KEYS[1] wallet, KEYS[2] lease, KEYS[3] (optional) the set of the gateway's leases (LEASES:
-- the global set of open leases by deadline)
-- ARGV[1] uid, ARGV[2] lease id, ARGV[3] credits wanted, ARGV[4] messages wanted,
-- ARGV[5] least credits worth a lease, ARGV[6] now (ms), ARGV[7..9] day/week/month ids,
-- ARGV[10] deadline (ms)
-- returns {status, credits, messages, epoch}: 0 granted (a repeat answers the first grant),
-- 1 not enough room (the gateway holds message by message), 8 no wallet. epoch: the wallet's
-- lease_epoch when granted; an operator's cut or change of settings raises it (topup.lua,
-- configure.lua), and the gateway, checking every second, ends the lease (lease_epochs.lua).
if redis.call('EXISTS', KEYS[2]) == 1 then
  local l = redis.call('HMGET', KEYS[2], 'credits', 'msgs', 'epoch')
  return {0, int(l[1]), int(l[2]), int(l[3])}
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'overdraft',
  'lim:credits:day', 'lim:credits:week', 'lim:credits:month',
  'lim:msgs:day', 'lim:msgs:week', 'lim:msgs:month', 'low_balance', 'use',
  'leased', 'leased_msgs', 'lease_epoch')
if not w[1] then
  return {8, 0, 0, 0}
end
local balance, reserved = int(w[1]), int(w[2])
local leased, leased_msgs = int(w[12]), int(w[13])
-- The room: what is available down to the low-balance threshold (the message that crosses
-- it is held on its own, reserve.lua, which raises the alert at the right moment), and what
-- every limit leaves. A lease takes at most half of it, so other gateways and messages
-- held one by one (concatenated parts) still find credit while it lasts.
local room = balance - reserved + int(w[3]) - math.max(int(w[10]), 0)
local msg_room = 2 * int(ARGV[4])
local usage = usage_of(w[11], {ARGV[7], ARGV[8], ARGV[9]})
for i = 1, 3 do
  if not usage[10 + i] then
    if w[3 + i] then
      room = math.min(room, int(w[3 + i]) - usage[3 * i - 1] - leased)
    end
    if w[6 + i] then
      msg_room = math.min(msg_room, int(w[6 + i]) - usage[3 * i] - leased_msgs)
    end
  end
end
local credits = math.min(int(ARGV[3]), math.floor(room / 2))
local msgs = math.min(int(ARGV[4]), math.floor(msg_room / 2))
if credits < int(ARGV[5]) or credits < 0 or msgs < 1 then
  return {1, 0, 0, 0}
end
redis.call('HSET', KEYS[1], 'reserved', s(reserved + credits), 'leased', s(leased + credits),
  'leased_msgs', s(leased_msgs + msgs))
redis.call('HSET', KEYS[2], 'uid', ARGV[1], 'credits', s(credits), 'msgs', s(msgs),
  'left', s(credits), 'msgs_left', s(msgs), 'taken', ARGV[6], 'epoch', s(int(w[14])))
redis.call('ZADD', LEASES, ARGV[10], ARGV[1] .. ' ' .. ARGV[2])
if KEYS[3] then
  -- The gateway's restarted successor ends its leases at start (jasmin_credits.leasing);
  -- the lease names the set, so that its end takes it out (lease_end.lua).
  redis.call('SADD', KEYS[3], ARGV[1] .. ' ' .. ARGV[2])
  redis.call('HSET', KEYS[2], 'gateway', KEYS[3])
end
return {0, credits, msgs, int(w[14])}
