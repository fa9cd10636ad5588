-- lease_link: write the reservation of one message a gateway held against its lease
-- (lease_hold) and link it to its Jasmin message id (settle 'link'), in one call. As two
-- calls they could run in either order: settlement's batches travel on several connections
-- of the pool, and a link that ran before its hold found nothing to link (the message was
-- then sent and never charged).
-- KEYS[1] wallet, KEYS[2] reservation, KEYS[3] lease, KEYS[4] user's open set,
-- KEYS[5] events, KEYS[6] credit log, KEYS[7] message link
-- ARGV[1..10] as lease_hold.lua (uid, ref, unit price, parts, messages, now, day/week/month
-- ids of the ref's creation, quote), ARGV[11] Jasmin message id
-- returns settle.lua's answer {status, changed, balance, reserved, open parts}; status 31:
-- no wallet (removed: nothing to hold or link). A repeat holds and links nothing more.
local held = ops['lease_hold'](KEYS, ARGV)
if held[1] ~= 0 then
  return {held[1], 0, 0, 0, 0}
end
return ops['settle']({KEYS[1], KEYS[2], KEYS[6], KEYS[5], KEYS[4], KEYS[7]},
  {ARGV[1], ARGV[2], 'link', ARGV[11], ARGV[4], '', '', ARGV[6], ARGV[7], ARGV[8], ARGV[9]})
