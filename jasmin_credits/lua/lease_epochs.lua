-- lease_epochs: the lease_epoch of each wallet a gateway holds credit leases of, checked
-- every second (jasmin_credits.leasing): a lease granted under another epoch was cut by the
-- operator (topup.lua, configure.lua, remove.lua) and ends at once.
-- KEYS the wallets; returns {0, their epochs}, -1 for a wallet that is gone.
local epochs = {0}
for i, key in ipairs(KEYS) do
  local w = redis.call('HMGET', key, 'balance', 'lease_epoch')
  epochs[i + 1] = w[1] and int(w[2]) or -1
end
return epochs
