-- gateway_name: one running gateway per credit-lease name (charging.lease.gateway), so that
-- a gateway started again ends only the leases its own dead run left (jasmin_credits.leasing).
-- KEYS[1] the name's claim; ARGV[1] this process's instance id, ARGV[2] time to live (ms),
-- 0 to give the name up.
-- returns {0, instance} held by this process (claimed, kept, or given up), {1, holder} held
-- by another running process.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {1, holder}
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return {0, ARGV[1]}
