-- Free a request's concurrency slot and replace its token reservation by the tokens used.
-- KEYS: 1 in-flight zset, 2 tokens in the window of admission, 3 tokens in the period of admission
-- ARGV: 1 request id, 2 delta (used - reserved)
redis.call('ZREM', KEYS[1], ARGV[1])
local delta = tonumber(ARGV[2])
if delta ~= 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], delta) end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('INCRBY', KEYS[3], delta) end
end
return 'ok'
