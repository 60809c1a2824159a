-- sidecar.lua: writes <output stem>.json next to every output of a completed job, with what
-- the job cost and the parameters that made it.
--
--   codeformer-ledger run --out-dir out --hook examples/hooks/sidecar.lua
--   out/b1/12.png  ->  out/b1/12.json

function on_complete(job)
  for _, output in ipairs(job.outputs or {}) do
    -- Output paths may be absolute or relative to the output directory; fs.* wants relative.
    local path = fs.relative(output.path)
    local stem = path:gsub("%.[^./]*$", "")
    local sidecar = {
      job = job.id,
      key = job.key,
      batch = job.batch,
      attempt = job.attempt,
      image_url = job.image_url,
      params = job.params,
      input = job.input,
      output = job.output,
      file = path,
      sha256 = output.sha256,
      bytes = output.bytes,
      estimated_cost = job.estimated_cost,
      actual_cost = job.actual_cost,
      finished_at = job.finished_at,
    }
    fs.write(stem .. ".json", json.encode(sidecar, { pretty = true }))
    log.info("sidecar: wrote " .. stem .. ".json")
  end
end
