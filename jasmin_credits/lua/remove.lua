-- remove: delete a wallet (its credit log and events stay, for billing).
-- KEYS[1] wallet, KEYS[2] events, KEYS[3] wallets set, KEYS[4] user's open set,
-- KEYS[5] plan, KEYS[6] outbox
-- ARGV[1] uid, ARGV[2] now (ms), ARGV[3] events retention (ms), ARGV[4] actor
-- returns {status, balance}; status 0 ok, 8 no wallet, 40 reservations still open (credit
-- leases among them are ended: lease_epoch, see topup.lua; a retry seconds later succeeds).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {8, 0}
end
if redis.call('ZCARD', KEYS[4]) > 0 or int(redis.call('HGET', KEYS[1], 'reserved')) ~= 0 then
  if int(redis.call('HGET', KEYS[1], 'leased')) > 0 then
    cut_leases(KEYS[1], ARGV[1])
  end
  return {40, 0}
end
local balance = int(redis.call('HGET', KEYS[1], 'balance'))
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('SREM', KEYS[3], ARGV[1])
emit({events = KEYS[2], outbox = KEYS[6], retention = ARGV[3], uid = ARGV[1]},
  {'ts', ARGV[2], 'type', 'wallet_removed', 'balance', s(balance),
  'actor', ARGV[4]})
return {0, balance}
