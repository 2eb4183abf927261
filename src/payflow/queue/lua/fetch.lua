-- Take up to ARGV[1] jobs from the right of KEYS[1] (the queue) into the left of KEYS[2]
-- (this consumer's processing list), in one round trip. Returns them oldest first.
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not job then break end
  out[i] = job
end
return out
