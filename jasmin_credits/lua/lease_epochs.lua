-- lease_epochs: the lease_epoch of each wallet a gateway holds credit leases of, checked
-- every second (jasmin_credits.leasing): a lease granted under another epoch was cut by the
-- operator (topup.lua, configure.lua, remove.lua) and ends at once.
-- KEYS the wallets; returns {0, their epochs}, -1 for a wallet that is gone.
local epochs = {0}
for i, key in ipairs(KEYS) do
  local epoch = redis.call('HGET', key, 'lease_epoch')
  if epoch then
    epochs[i + 1] = int(epoch)
  elseif redis.call('EXISTS', key) == 1 then
    epochs[i + 1] = 0
  else
    epochs[i + 1] = -1
  end
end
return epochs
