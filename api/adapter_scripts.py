"""The registry's Lua scripts (`api.adapters`): each keeps an org's keys, which share the hash
tag `{org}`, consistent in one step, caps included, so concurrent uploads never pass a cap
together."""

# KEYS: record, revisions, org index, org bytes. ARGV: name, org, model, hash, revision JSON,
# bytes, max adapters, max bytes, now. The caps and the writes in one step; the revision gets
# its place in the order of uploads (`seq`).
ADD_REVISION_LUA = """
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
  redis.call('HSET', KEYS[1], 'latest', ARGV[4], 'updated_at', ARGV[9])
  return 'exists'
end
local model = redis.call('HGET', KEYS[1], 'model')
if model and model ~= ARGV[3] then return 'model:' .. model end
local new = redis.call('EXISTS', KEYS[1]) == 0
if new and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return 'count' end
local used = tonumber(redis.call('GET', KEYS[4]) or '0')
if used + tonumber(ARGV[6]) > tonumber(ARGV[8]) then return 'bytes' end
if new then
  redis.call('HSET', KEYS[1], 'name', ARGV[1], 'owner', ARGV[2], 'model', ARGV[3],
    'created_at', ARGV[9], 'pinned', '0', 'shared', '', 'jobs', '0', 'loads', '0', 'bytes', '0')
  redis.call('ZADD', KEYS[3], ARGV[9], ARGV[1])
end
local revision = cjson.decode(ARGV[5])
revision['seq'] = redis.call('HINCRBY', KEYS[1], 'revision_seq', 1)
redis.call('HSET', KEYS[2], ARGV[4], cjson.encode(revision))
redis.call('HSET', KEYS[1], 'latest', ARGV[4], 'updated_at', ARGV[9])
redis.call('HINCRBY', KEYS[1], 'bytes', ARGV[6])
redis.call('INCRBY', KEYS[4], ARGV[6])
return 'added'
"""

# KEYS: record, revisions, org index, org bytes, org pinned. ARGV: name. Returns the shared
# tenants, then the revisions; nothing if there was no record.
DELETE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local shared = redis.call('HGET', KEYS[1], 'shared') or ''
local nbytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local revisions = redis.call('HKEYS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('DECRBY', KEYS[4], nbytes)
table.insert(revisions, 1, shared)
return revisions
"""

# KEYS: record, org pinned. ARGV: name, cap. -1: no record; 0: at the cap; 1: pinned.
PIN_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
  redis.call('SADD', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], 'pinned', '1')
return 1
"""
