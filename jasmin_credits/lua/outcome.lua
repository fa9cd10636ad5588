-- outcome: what Jasmin said about a message id (submit_sm_resp), settled in this one call.
-- KEYS[1] message link; ARGV[1] outcome 'c' (sent) or 'r' (failed), ARGV[2] reason,
-- ARGV[3] now (ms)
-- returns {2, status, changed, balance, reserved, open parts} after settling the message
-- (settle.lua's answer: the link names the user, the reservation and its periods, so the
-- user's keys are built here from USER_HEAD .. uid .. USER_TAIL and the key suffixes);
-- {1, "uid ref parts"} for a link written without periods (before this version: the
-- caller settles it with settle.lua); {0, ''} after keeping the outcome for the link to
-- apply (the submit_sm_resp event overtook the link).
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], '!' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', PENDING_OUTCOME_TTL)
  return {0, ''}
end
if string.sub(v, 1, 1) == '!' then
  return {0, ''}
end
local uid, ref, day, week, month = string.match(v, '^(%S+) (%S+) %d+ (%S+) (%S+) (%S+)$')
if not uid then
  return {1, v}
end
local user = USER_HEAD .. uid .. USER_TAIL
local msgid = string.sub(KEYS[1], #MESSAGE_HEAD + 1)
local keys = {user .. WALLET_SUFFIX, user .. RESERVATION_SUFFIX .. ref, user .. LOG_SUFFIX,
  user .. EVENTS_SUFFIX, user .. OPEN_SUFFIX, KEYS[1]}
local sent = ARGV[1] == 'c'
local settled = ops['settle'](keys, {uid, ref, sent and 'commit' or 'refund', msgid, 0,
  sent and '' or ARGV[2], sent and '' or 'system', ARGV[3], day, week, month})
if settled.err then
  return settled
end
return {2, unpack(settled)}
