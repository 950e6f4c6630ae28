-- Argo CD health of a tuneforge.io FineTuningJob.
-- ValidatingFiles, Queued, Running: Progressing; Succeeded: Healthy; Failed: Degraded;
-- Paused (spec.suspend) and Cancelled (spec.cancel): Suspended, stopped on purpose.
-- Runs after common.lua (hs, status).
local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded"
  if status.fineTunedModel ~= nil then
    hs.message = "Succeeded: " .. status.fineTunedModel
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed"
  if status.error ~= nil and status.error.message ~= nil then
    hs.message = "Failed (" .. tostring(status.error.code) .. "): " .. status.error.message
  end
elseif phase == "Paused" or phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = phase
elseif phase == "Running" and status.progress ~= nil and status.progress.totalSteps ~= nil and status.progress.totalSteps > 0 then
  hs.status = "Progressing"
  hs.message = "Running: step " .. tostring(status.progress.step) .. " of " .. tostring(status.progress.totalSteps)
else
  hs.status = "Progressing"
  hs.message = phase
end
return hs
