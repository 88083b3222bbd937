-- Argo CD health of a Lepton object (LeptonDataset, TrainingJob, InferenceService),
-- read from its kstatus conditions; the same script serves all three kinds.
--   status not yet observed for this generation -> Progressing
--   phase Suspended                             -> Suspended
--   Stalled=True, or phase Failed               -> Degraded (the condition's message says why)
--   Ready=True, or phase Succeeded              -> Healthy
--   anything else                               -> Progressing
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function say(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  return say("Progressing", "Waiting for the Lepton operator to observe the latest spec")
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local phase = status.phase or "Unknown"
local why = (ready ~= nil and ready.message) or ("phase " .. phase)

if phase == "Suspended" then
  return say("Suspended", why)
end
if stalled ~= nil and stalled.status == "True" then
  return say("Degraded", stalled.message or why)
end
if phase == "Failed" then
  return say("Degraded", why)
end
if (ready ~= nil and ready.status == "True") or phase == "Succeeded" then
  return say("Healthy", why)
end
return say("Progressing", why)
