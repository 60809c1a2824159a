-- sort_by_tag.lua: moves every output of a completed job into a folder named after one of the
-- job's tags, renaming it by a pattern.
--
--   codeformer-ledger batch photos.csv --tag client=acme --hook examples/hooks/sort_by_tag.lua
--   out/b1/12.png  ->  out/acme/b1-12-1.png
--
-- fs.rename of a downloaded output is recorded in the ledger (an `output_moved` event, and
-- the output's path follows the file), so `verify --files` still finds every output.

local TAG = "client"                        -- the tag whose value names the folder
local PATTERN = "{batch}-{id}-{n}{ext}"     -- fields: {id} {key} {batch} {n} {stem} {ext}

-- Tag values come from users: keep folder and file names to plain characters.
local function plain(text)
  return (tostring(text):gsub("[^%w%-_.]", "_"))
end

function on_complete(job)
  local folder = plain((job.tags or {})[TAG] or "untagged")
  fs.mkdir(folder)
  for n, output in ipairs(job.outputs or {}) do
    local from = fs.relative(output.path)
    local stem, ext = from:match("([^/]-)(%.[^./]*)$")
    if not stem then
      stem, ext = from:match("([^/]*)$"), ""
    end
    local fields = { id = job.id, key = job.key, batch = job.batch or "nobatch", n = n, stem = stem, ext = ext }
    local name = PATTERN:gsub("{(%w+)}", function(field)
      return fields[field] ~= nil and tostring(fields[field]) or ""
    end)
    local to = folder .. "/" .. plain(name)
    fs.rename(from, to)
    ledger.note("moved " .. from .. " to " .. to)
  end
  ledger.tag("folder", folder)
end
