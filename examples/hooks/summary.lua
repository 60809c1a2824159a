-- summary.lua: when a batch has no unfinished job left, writes summary.json in the output
-- directory with the batch's counts and what it was charged.
--
--   codeformer-ledger batch photos.csv --hook examples/hooks/summary.lua

function on_batch_done(summary)
  local jobs = summary.jobs or 0
  local report = {
    batch = summary.batch,
    jobs = jobs,
    completed = summary.completed,
    failed = summary.failed,
    charged = summary.charged, -- an exact decimal string: keep it a string
    success_rate = jobs > 0 and (summary.completed or 0) / jobs or json.null,
    written_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    details = summary,
  }
  fs.write("summary.json", json.encode(report, { pretty = true }))
  log.info(("summary: batch %s, %d of %d completed, charged $%s"):format(
    tostring(summary.batch), summary.completed or 0, jobs, tostring(summary.charged)))
end
