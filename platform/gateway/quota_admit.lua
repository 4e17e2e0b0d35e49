-- Atomic check-and-charge of one request against a tenant's quotas (see quota.py for semantics).
-- KEYS: 1 in-flight zset (member request id, score lease expiry), 2 requests in window,
--       3 tokens in window, 4 tokens in billing period
-- ARGV: 1 now, 2 request id, 3 lease expiry, 4 reservation, 5 max_concurrent,
--       6 requests_per_minute, 7 tokens_per_minute, 8 budget_tokens (0 = unlimited),
--       9 window key TTL s, 10 period key TTL s, 11 in-flight key TTL s
-- Returns "ok" or the name of the limit that refused.
local reserve = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local max_concurrent = tonumber(ARGV[5])
if max_concurrent > 0 and redis.call('ZCARD', KEYS[1]) >= max_concurrent then
  return 'max_concurrent'
end
local rpm = tonumber(ARGV[6])
if rpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + 1 > rpm then
  return 'requests_per_minute'
end
local tpm = tonumber(ARGV[7])
if tpm > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') + reserve > tpm then
  return 'tokens_per_minute'
end
local budget = tonumber(ARGV[8])
if budget > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') + reserve > budget then
  return 'budget_tokens'
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[11])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('INCRBY', KEYS[3], reserve)
redis.call('EXPIRE', KEYS[3], ARGV[9])
redis.call('INCRBY', KEYS[4], reserve)
redis.call('EXPIRE', KEYS[4], ARGV[10])
return 'ok'
