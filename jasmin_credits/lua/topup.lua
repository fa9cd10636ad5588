-- topup: add (or, negative, subtract) credits by hand, by a plan or by an adjustment.
-- KEYS[1] wallet, KEYS[2] credit log, KEYS[3] events, KEYS[4] operation record,
-- KEYS[5] wallets set, KEYS[6] outbox
-- ARGV[1] uid, ARGV[2] signed amount (int), ARGV[3] operation id, ARGV[4] actor,
-- ARGV[5] reason, ARGV[6] now (ms), ARGV[7] type (topup, adjust, plan),
-- ARGV[8] log retention (ms), ARGV[9] events retention (ms), ARGV[10] operation record ttl (ms),
-- ARGV[11] '1' to create a missing wallet
-- returns {status, balance, repeated}; status 0 ok, 8 no wallet.
-- A subtraction ends the wallet's credit leases (lease_epoch: their gateways check it every
-- second, jasmin_credits.leasing): what they carved out must not outlive the operator's cut.
local done = redis.call('GET', KEYS[4])
if done then
  return {0, int(done), 1}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[11] ~= '1' then
    return {8, 0, 0}
  end
  redis.call('HSET', KEYS[1], 'balance', '0', 'reserved', '0', 'overdraft', '0',
    'low_armed', '1', 'created', ARGV[6])
  redis.call('SADD', KEYS[5], ARGV[1])
end
local balance = redis.call('HINCRBY', KEYS[1], 'balance', ARGV[2])
if int(ARGV[2]) < 0 then
  cut_leases(KEYS[1], ARGV[1])
end
xadd(KEYS[2], ARGV[8], {'ts', ARGV[6], 'type', ARGV[7], 'amount', ARGV[2],
  'balance', s(balance), 'ref', ARGV[3], 'msgid', '', 'country', '', 'dest', '',
  'parts', '0', 'actor', ARGV[4], 'reason', ARGV[5]})
local sink = {events = KEYS[3], outbox = KEYS[6], retention = ARGV[9], uid = ARGV[1]}
emit(sink, {'ts', ARGV[6], 'type', ARGV[7], 'amount', ARGV[2],
  'balance', s(balance), 'actor', ARGV[4], 'reason', ARGV[5]})
redis.call('SET', KEYS[4], s(balance), 'PX', ARGV[10])
check_low(KEYS[1], sink, ARGV[6])
return {0, balance, 0}
