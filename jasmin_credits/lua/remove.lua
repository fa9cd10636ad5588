-- remove: delete a wallet (its credit log and events stay, for billing).
-- KEYS[1] wallet, KEYS[2] events, KEYS[3] wallets set, KEYS[4] user's open set,
-- KEYS[5] plan, KEYS[6] credit log, KEYS[7] outbox
-- ARGV[1] uid, ARGV[2] now (ms), ARGV[3] events retention (ms), ARGV[4] actor,
-- ARGV[5] log retention (ms), ARGV[6] reason
-- returns {status, balance}; status 0 ok, 8 no wallet, 40 reservations still open (credit
-- leases among them are ended: lease_epoch, see topup.lua; a retry seconds later succeeds).
-- The balance the wallet had is written off in a credit log entry of type 'removed'
-- (amount -balance, balance 0): the log sums to 0 without the wallet, so it still sums to
-- the balance once a top-up creates the wallet again.
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
xadd(KEYS[6], ARGV[5], {'ts', ARGV[2], 'type', 'removed', 'amount', s(-balance),
  'balance', '0', 'ref', '', 'msgid', '', 'country', '', 'dest', '',
  'parts', '0', 'actor', ARGV[4], 'reason', ARGV[6]})
emit({events = KEYS[2], outbox = KEYS[7], retention = ARGV[3], uid = ARGV[1]},
  {'ts', ARGV[2], 'type', 'wallet_removed', 'balance', s(balance),
  'actor', ARGV[4]})
return {0, balance}
