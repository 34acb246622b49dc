-- queuelock's Redis schema, as one script: every step that touches more than one key runs
-- here, atomically. ARGV[1] names the step, ARGV[2] is the key prefix P; the rest depend
-- on the step. KEYS[1] (when given) is the queue's base key, so that a cluster client
-- routes the call to the queue's slot.
--
-- Keys (Q = a queue name, validated: no ':', '{' or '}'):
--   P::token          fencing-token counter, INCR only, never deleted (the only key left)
--   P:{Q}:z           ZSET  node id -> score = the node's token (the queue's order)
--   P:{Q}:n           HASH  node id -> "token sid kind"
--   P:{Q}:p           HASH  node id -> payload
--   P:{Q}:v           last change of the queue (a token value); all five go when it empties
--   P:{Q}:r           HASH  node id -> token: a revocation was requested for that node
--                     (these five expire 1 s after the last member session would: see
--                     `outlive`)
--   P:Q               the plain `SET Q token NX PX ttl` lock of other tools; while our
--                     queue is not empty it holds our marker (so their SET NX fails)
--   P:s:SID           a session: PX = its TTL, renewed by `renew`, which refuses once gone
--   P:s:SID:n         SET of "Q\nid" the session owns (same TTL)
--   P:s:SID:x         ZSET attempt id -> the session's request number of its release
--                     (NEVER for an abandon), same TTL: a create of that attempt sent
--                     before it (late, on an old connection) is refused; last 1000 kept
-- Channels: P:{Q}:d:ID (node ID deleted), P:{Q}:c (the queue changed),
--   P:{Q}:r:ID (a revocation of node ID was requested).
-- Expiry is the server's: a session is alive while its key exists, by the server's clock.

local op, P = ARGV[1], ARGV[2]
local MARK = 'queuelock:' .. P

local function qk(q, s) return P .. ':{' .. q .. '}:' .. s end
local function sk(sid) return P .. ':s:' .. sid end
local function plain(q) return P .. ':' .. q end

local function parse(rec)
  local t, sid, kind = string.match(rec, '^(%d+) (%S+) (%S+)$')
  return tonumber(t), sid, kind
end

local function changed(q)
  local r = redis.call('INCR', P .. '::token')
  redis.call('SET', qk(q, 'v'), r, 'KEEPTTL')
  redis.call('PUBLISH', qk(q, 'c'), r)
end

-- Removes node `id` of queue `q` (owned by `sid`) and tells its watchers.
local function remove(q, id, sid)
  redis.call('ZREM', qk(q, 'z'), id)
  redis.call('HDEL', qk(q, 'n'), id)
  redis.call('HDEL', qk(q, 'p'), id)
  redis.call('HDEL', qk(q, 'r'), id)
  redis.call('SREM', sk(sid) .. ':n', q .. '\n' .. id)
  redis.call('PUBLISH', qk(q, 'd:' .. id), '1')
  if redis.call('ZCARD', qk(q, 'z')) == 0 then
    redis.call('DEL', qk(q, 'z'), qk(q, 'n'), qk(q, 'p'), qk(q, 'v'), qk(q, 'r'))
    if redis.call('GET', plain(q)) == MARK then
      redis.call('DEL', plain(q))
    end
    redis.call('PUBLISH', qk(q, 'c'), '0')
  else
    changed(q)
  end
end

local function alive(sid) return redis.call('EXISTS', sk(sid)) == 1 end

-- A queue's keys live at least `ms` (a member session's PTTL) + 1 s more: set when a node
-- is created, extended by every renewal of a member. When every member session ends
-- without closing (a crashed client), the queue goes with them instead of waiting for a
-- reader to purge its dead nodes: lock names used once must not stay in the store.
local QUEUE_KEYS = { 'z', 'n', 'p', 'v', 'r' }
local function outlive(q, ms)
  ms = ms + 1000
  for _, s in ipairs(QUEUE_KEYS) do
    local k = qk(q, s)
    local t = redis.call('PTTL', k)
    if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', k, ms) end
  end
end

-- Refuses creates of attempt `id` sent before request number `n` of session `sid`.
local NEVER = 9007199254740992
local function retire(sid, id, n)
  local x = sk(sid) .. ':x'
  redis.call('ZADD', x, n, id)
  redis.call('ZREMRANGEBYRANK', x, 0, -1001)
  redis.call('PEXPIRE', x, math.max(redis.call('PTTL', sk(sid)), 1))
end

-- The plain lock key while our queue is not empty: ours (refreshed) -> nil; someone
-- else's -> its value and PTTL; absent -> taken with our marker, nil.
local function claim(q, ttl)
  local v = redis.call('GET', plain(q))
  if v == false then
    redis.call('SET', plain(q), MARK, 'PX', ttl)
    return nil
  elseif v == MARK then
    redis.call('PEXPIRE', plain(q), ttl, 'GT')
    return nil
  end
  return { v, redis.call('PTTL', plain(q)) }
end

-- The queue, dead sessions' nodes purged: { revision, foreign, id1, token1, kind1, ... }
-- where foreign is {} or {value, pttl} of a plain lock that is not ours.
local function read(q, ttl)
  local ids = redis.call('ZRANGE', qk(q, 'z'), 0, -1)
  local out = { 0, {} }
  local live = {}
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', qk(q, 'n'), id)
    if rec then
      local t, sid, kind = parse(rec)
      if alive(sid) then
        live[#live + 1] = { id, t, kind }
      else
        remove(q, id, sid)
      end
    else
      redis.call('ZREM', qk(q, 'z'), id)
    end
  end
  local foreign
  if #live > 0 then
    foreign = claim(q, ttl)
  else
    local v = redis.call('GET', plain(q))
    if v and v ~= MARK then foreign = { v, redis.call('PTTL', plain(q)) } end
  end
  out[1] = tonumber(redis.call('GET', qk(q, 'v')) or '0')
  out[2] = foreign or {}
  for _, n in ipairs(live) do
    out[#out + 1] = n[1]
    out[#out + 1] = n[2]
    out[#out + 1] = n[3]
  end
  return out
end

-- The waiter's read for node `id` of `q`: the nearest earlier live node that `ahead`
-- selects ('p' any, 'r' any but readers, 'n' none), dead sessions' nodes on the way
-- purged; a plain lock of someone else when nothing of ours is ahead. Answers
-- { revision, rank, foreign, blocker id, token, kind } (blocker fields absent when none),
-- or an error when `id` (with `token`, when given) is gone, or its session is.
local function turn(q, id, ahead, ttl, token)
  local mine = redis.call('ZSCORE', qk(q, 'z'), id)
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if not mine or not rec then return redis.error_reply('QLLOST node is gone') end
  local t0, owner = parse(rec)
  -- The attempt's node deleted and created again is another node.
  if token and t0 ~= token then return redis.error_reply('QLLOST node is gone') end
  if not alive(owner) then
    remove(q, id, owner)
    return redis.error_reply('QLLOST node is gone')
  end
  local blocker
  if ahead ~= 'n' then
    local offset = 0
    while not blocker do
      local page = redis.call('ZREVRANGEBYSCORE', qk(q, 'z'), '(' .. mine, '-inf', 'LIMIT', offset, 16)
      if #page == 0 then break end
      local purged = 0
      for _, other in ipairs(page) do
        local r = redis.call('HGET', qk(q, 'n'), other)
        if r then
          local t, sid, kind = parse(r)
          if not alive(sid) then
            remove(q, other, sid)
            purged = purged + 1
          elseif ahead == 'p' or kind ~= 'read' then
            blocker = { other, t, kind }
            break
          end
        else
          redis.call('ZREM', qk(q, 'z'), other)
          purged = purged + 1
        end
      end
      offset = offset + #page - purged
    end
  end
  local foreign = claim(q, ttl)
  local out = { tonumber(redis.call('GET', qk(q, 'v')) or '0'), redis.call('ZRANK', qk(q, 'z'), id) or 0, foreign or {} }
  if not blocker and foreign and ahead ~= 'n' then
    blocker = { '', 0, '' }
  end
  if blocker then
    out[4], out[5], out[6] = blocker[1], blocker[2], blocker[3]
  end
  return out
end

if op == 'open' then
  -- ARGV: sid, ttl
  return redis.call('SET', sk(ARGV[3]), '1', 'PX', ARGV[4], 'NX') and 1 or 0

elseif op == 'renew' then
  -- ARGV: sid, ttl. Refuses (0) once the session key has expired.
  local sid, ttl = ARGV[3], ARGV[4]
  if not alive(sid) then return 0 end
  redis.call('PEXPIRE', sk(sid), ttl)
  redis.call('PEXPIRE', sk(sid) .. ':n', ttl)
  redis.call('PEXPIRE', sk(sid) .. ':x', ttl)
  for _, m in ipairs(redis.call('SMEMBERS', sk(sid) .. ':n')) do
    local q = string.match(m, '^(.*)\n')
    outlive(q, tonumber(ttl))
    if redis.call('GET', plain(q)) == MARK then
      redis.call('PEXPIRE', plain(q), ttl, 'GT')
    end
  end
  return 1

elseif op == 'alive' then
  return alive(ARGV[3]) and 1 or 0

elseif op == 'close' then
  -- ARGV: sid
  local sid = ARGV[3]
  for _, m in ipairs(redis.call('SMEMBERS', sk(sid) .. ':n')) do
    local q, id = string.match(m, '^(.*)\n(.*)$')
    local rec = redis.call('HGET', qk(q, 'n'), id)
    if rec then
      local _, owner = parse(rec)
      if owner == sid then remove(q, id, sid) end
    end
  end
  redis.call('DEL', sk(sid), sk(sid) .. ':n', sk(sid) .. ':x')
  return 1

elseif op == 'create' then
  -- ARGV: sid, ttl, q, id, kind, payload, ahead -> { token, turn... } | error
  local sid, ttl, q, id, kind, payload = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  if not alive(sid) then return redis.error_reply('QLEXPIRED session is gone') end
  local done = redis.call('ZSCORE', sk(sid) .. ':x', id)
  if done and tonumber(ARGV[10]) <= tonumber(done) then
    return redis.error_reply('QLABANDONED attempt was abandoned or released')
  end
  local rec = redis.call('HGET', qk(q, 'n'), id)
  local token
  if rec then
    local t, owner = parse(rec)
    if owner ~= sid then return redis.error_reply('QLCONFLICT attempt id owned by another session') end
    token = t
  else
    token = redis.call('INCR', P .. '::token')
    redis.call('ZADD', qk(q, 'z'), token, id)
    redis.call('HSET', qk(q, 'n'), id, token .. ' ' .. sid .. ' ' .. kind)
    redis.call('HSET', qk(q, 'p'), id, payload)
    redis.call('SADD', sk(sid) .. ':n', q .. '\n' .. id)
    redis.call('PEXPIRE', sk(sid) .. ':n', redis.call('PTTL', sk(sid)))
    redis.call('SET', qk(q, 'v'), token, 'KEEPTTL')
    outlive(q, redis.call('PTTL', sk(sid)))
    redis.call('PUBLISH', qk(q, 'c'), token)
  end
  local out = turn(q, id, ARGV[9], ttl)
  if type(out) == 'table' and out.err then return out end
  table.insert(out, 1, token)
  return out

elseif op == 'turn' then
  -- ARGV: ttl, q, id, ahead, token
  return turn(ARGV[4], ARGV[5], ARGV[6], ARGV[3], tonumber(ARGV[7]))

elseif op == 'abandon' then
  -- ARGV: sid, q, id
  local sid, q, id = ARGV[3], ARGV[4], ARGV[5]
  if alive(sid) then
    retire(sid, id, NEVER)
  end
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if rec then
    local _, owner = parse(rec)
    if owner == sid then remove(q, id, sid) end
  end
  return 1

elseif op == 'list' then
  -- ARGV: ttl, q
  return read(ARGV[4], ARGV[3])

elseif op == 'delete' then
  -- ARGV: q, id, token, caller sid, its request number: deletes only that very node;
  -- its owner's delete also refuses the attempt's creates sent before it.
  local q, id, token, caller, n = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if rec then
    local t, owner = parse(rec)
    if t == token then
      remove(q, id, owner)
      if owner == caller and alive(caller) then retire(caller, id, n) end
    end
  end
  return 1

elseif op == 'node' then
  -- ARGV: q, id -> { payload, token } | {} ; a node of a dead session is purged.
  local q, id = ARGV[3], ARGV[4]
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if not rec then return {} end
  local t, owner = parse(rec)
  if not alive(owner) then
    remove(q, id, owner)
    return {}
  end
  return { redis.call('HGET', qk(q, 'p'), id) or '', t }

elseif op == 'state' then
  -- ARGV: q, id -> -2 gone, else the PTTL of its owner's session (ms).
  local q, id = ARGV[3], ARGV[4]
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if not rec then return -2 end
  local _, owner = parse(rec)
  local pttl = redis.call('PTTL', sk(owner))
  if pttl == -2 then
    remove(q, id, owner)
    return -2
  end
  return pttl

elseif op == 'plain' then
  -- ARGV: q -> -2 when no foreign plain lock holds the name, else its PTTL (-1: none).
  local v = redis.call('GET', plain(ARGV[3]))
  if v == false or v == MARK then return -2 end
  return redis.call('PTTL', plain(ARGV[3]))

elseif op == 'guarded' then
  -- ARGV: q, id, token, then triples (op, a, b): ('own', payload, '') puts the guard's
  -- payload; ('put', key, value) / ('del', key, '') write plain values.
  local q, id, token = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if not rec then return redis.error_reply('QLLOST guard node is gone') end
  local t, owner = parse(rec)
  if t ~= token then return redis.error_reply('QLLOST guard node is gone') end
  if not alive(owner) then
    remove(q, id, owner)
    return redis.error_reply('QLLOST guard node is gone')
  end
  local i = 6
  while i + 2 <= #ARGV + 1 and ARGV[i] do
    local w, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if w == 'own' then
      redis.call('HSET', qk(q, 'p'), id, a)
      changed(q)
    elseif w == 'put' then
      redis.call('SET', a, b)
    elseif w == 'del' then
      redis.call('DEL', a)
    end
    i = i + 3
  end
  return 1

elseif op == 'revoke' then
  -- ARGV: q, id, token -> 1 (request left for that very live node) | 0 (it is gone)
  local q, id, token = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if not rec then return 0 end
  local t, owner = parse(rec)
  if t ~= token then return 0 end
  if not alive(owner) then
    remove(q, id, owner)
    return 0
  end
  redis.call('HSET', qk(q, 'r'), id, t)
  outlive(q, redis.call('PTTL', sk(owner)))
  redis.call('PUBLISH', qk(q, 'r:' .. id), '1')
  return 1

elseif op == 'revoked' then
  -- ARGV: q, id, token -> 1 requested | 0 not (yet) | -2 the node is gone
  local q, id, token = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local rec = redis.call('HGET', qk(q, 'n'), id)
  if not rec then return -2 end
  local t = parse(rec)
  if t ~= token then return -2 end
  return tonumber(redis.call('HGET', qk(q, 'r'), id) or '-1') == t and 1 or 0

elseif op == 'version' then
  -- ARGV: q -> the queue's last change (0 when empty)
  return tonumber(redis.call('GET', qk(ARGV[3], 'v')) or '0')
end
return redis.error_reply('QLBADOP unknown step ' .. tostring(op))
