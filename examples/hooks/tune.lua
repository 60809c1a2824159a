-- tune.lua: adjusts jobs before they are sent. Small inputs get more fidelity (CodeFormer's w:
-- closer to the original face); inputs over a size are not sent at all.
--
--   codeformer-ledger batch photos.csv --hook examples/hooks/tune.lua

local SMALL = 500 * 500            -- pixels; below this, raise fidelity
local RAISE = 0.2                  -- by this much, up to 1
local MAX_PIXELS = 4000 * 4000     -- above this, skip the job

function on_submit(job)
  local input = job.input
  if not (input and input.width and input.height) then
    return nil -- size unknown: send as it is
  end
  local pixels = input.width * input.height
  if pixels > MAX_PIXELS then
    return false, "too large"
  end
  if pixels < SMALL then
    -- Parameters arrive as the ledger keeps them: fidelity is an exact decimal string.
    local fidelity = tonumber(job.params.fidelity) or 0.5
    local raised = math.min(1, fidelity + RAISE)
    log.info(("tune: %dx%d is small, fidelity %s -> %g"):format(input.width, input.height, job.params.fidelity, raised))
    return { fidelity = raised }
  end
end
