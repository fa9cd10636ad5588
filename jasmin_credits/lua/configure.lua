-- configure: change a wallet's overdraft, limits or low-balance threshold.
-- KEYS[1] wallet, KEYS[2] events, KEYS[3] wallets set, KEYS[4] outbox
-- ARGV[1] uid, ARGV[2] now (ms), ARGV[3] events retention (ms), ARGV[4] '1' to create a missing
-- wallet, ARGV[5..] field, value pairs (value '' clears the field)
-- returns {status}; status 0 ok, 8 no wallet.
-- Any change ends the wallet's credit leases (lease_epoch, see topup.lua): they were carved
-- under the old limits.
local sink = {events = KEYS[2], outbox = KEYS[4], retention = ARGV[3], uid = ARGV[1]}
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[4] ~= '1' then
    return {8}
  end
  redis.call('HSET', KEYS[1], 'balance', '0', 'reserved', '0', 'overdraft', '0',
    'low_armed', '1', 'created', ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[1])
end
local changes = {'ts', ARGV[2], 'type', 'settings'}
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  changes[#changes + 1] = ARGV[i]
  changes[#changes + 1] = ARGV[i + 1] == '' and 'none' or ARGV[i + 1]
end
cut_leases(KEYS[1], ARGV[1])
emit(sink, changes)
check_low(KEYS[1], sink, ARGV[2])
return {0}
