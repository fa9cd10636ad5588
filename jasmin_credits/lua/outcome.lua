-- outcome: what Jasmin said about a message id, before we know whose it is.
-- KEYS[1] message link; ARGV[1] outcome 'c' (sent) or 'r' (failed), ARGV[2] reason
-- returns {1, "uid ref parts"} when the message is linked (settle it with settle.lua), or
-- {0, ''} after keeping the outcome for the link to apply (the submit_sm_resp event
-- overtook the submit.sm event).
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) ~= '!' then
  return {1, v}
end
if not v then
  redis.call('SET', KEYS[1], '!' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', PENDING_OUTCOME_TTL)
end
return {0, ''}
