-- wrk script for bench/request-path.ts: rotates pre-signed user tokens (balance) or, for POST
-- /credits/usage, the user ids a server reports usage for, with the service role key from
-- SUPABASE_SERVICE_ROLE_KEY (a user token is refused there) and a fresh Idempotency-Key with
-- every request (a replay would skip the debit and flatter the figures). Prints one JSON line
-- when the run ends. Other modes, each with user tokens: chat, chat-stream, responses, messages
-- (an AI call of 20 words from the provider stand-in, whole or streamed) and hold (POST
-- /credits/holds for 1 credit); batch: POST /credits/usage/batch of 10 events, each event_id fresh,
-- with the service role key and user ids.
--   wrk -t2 -c16 -d10s -s bench/request-path.lua URL -- <mode> <tokens or user ids file|-> <run id>
-- The file holds one token or user id per line; one line is the one-account case.

local mode, tokens_file, run_id = "plain", nil, "run"
local tokens = {}
local threads = {}
local next_thread = 0

local usage_fields = '"model":"gpt-4o-mini","input_tokens":100,"output_tokens":10'
local server_key = os.getenv("SUPABASE_SERVICE_ROLE_KEY")
local prompt = '"bench #standin words=20"'
-- The AI modes: the body each API takes (the stand-in answers 20 words; the cap is not reached).
local ai_bodies = {
  chat = '{"model":"gpt-4o-mini","max_tokens":60,"messages":[{"role":"user","content":' .. prompt .. '}]}',
  ["chat-stream"] = '{"model":"gpt-4o-mini","max_tokens":60,"stream":true,"stream_options":{"include_usage":true},' ..
    '"messages":[{"role":"user","content":' .. prompt .. '}]}',
  responses = '{"model":"gpt-4o-mini","max_output_tokens":60,"input":' .. prompt .. '}',
  messages = '{"model":"claude-haiku-4-5","max_tokens":60,"messages":[{"role":"user","content":' .. prompt .. '}]}',
}
local batch_size = 10
local occurred_at = os.date("!%Y-%m-%dT%H:%M:%SZ")

local function read_tokens(path)
  local list = {}
  for line in io.lines(path) do
    if #line > 0 then list[#list + 1] = line end
  end
  return list
end

-- Runs in the main Lua state once per thread, before the threads start.
function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_id", next_thread)
  threads[#threads + 1] = thread
end

local counter = 0
local thread_id = 0
local requests_made = 0

function init(args)
  mode = args[1] or "plain"
  tokens_file = args[2]
  run_id = args[3] or "run"
  thread_id = wrk.thread:get("thread_id") or 0
  if tokens_file and tokens_file ~= "-" then tokens = read_tokens(tokens_file) end
  if (mode == "usage" or mode == "batch") and not server_key then error("usage needs SUPABASE_SERVICE_ROLE_KEY") end
  -- Threads start on different tokens so two threads do not walk the list in step.
  counter = (thread_id - 1) * 7919
end

function request()
  counter = counter + 1
  requests_made = requests_made + 1
  if mode == "plain" then return wrk.format("GET") end
  local token = tokens[(counter % #tokens) + 1]
  if mode == "balance" then
    return wrk.format("GET", nil, { ["authorization"] = "Bearer " .. token })
  end
  local key = run_id .. "-" .. thread_id .. "-" .. requests_made
  if ai_bodies[mode] then
    return wrk.format("POST", nil, {
      ["authorization"] = "Bearer " .. token,
      ["content-type"] = "application/json",
      ["anthropic-version"] = "2023-06-01",
    }, ai_bodies[mode])
  end
  if mode == "hold" then
    return wrk.format("POST", nil, {
      ["authorization"] = "Bearer " .. token,
      ["content-type"] = "application/json",
      ["idempotency-key"] = key,
    }, '{"amount":"1","ttl_seconds":600}')
  end
  if mode == "batch" then
    local events = {}
    for k = 1, batch_size do
      local user = tokens[((counter + k) % #tokens) + 1]
      events[k] = '{"event_id":"' .. key .. "-" .. k .. '","user_id":"' .. user .. '",' .. usage_fields ..
        ',"occurred_at":"' .. occurred_at .. '"}'
    end
    return wrk.format("POST", nil, {
      ["authorization"] = "Bearer " .. server_key,
      ["content-type"] = "application/json",
    }, '{"events":[' .. table.concat(events, ",") .. ']}')
  end
  -- usage: `token` is the user id the server reports for
  return wrk.format("POST", nil, {
    ["authorization"] = "Bearer " .. server_key,
    ["content-type"] = "application/json",
    ["idempotency-key"] = key,
  }, '{"user_id":"' .. token .. '",' .. usage_fields .. '}')
end

-- Runs in the main Lua state after the run: latency percentiles are in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,' ..
      '"non2xx":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
