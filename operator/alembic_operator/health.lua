-- Argo CD health check for migrations.alembic-operator.io/DatabaseMigration.
--
-- Install it in argocd-cm under the key
--   resource.customizations.health.migrations.alembic-operator.io_DatabaseMigration
-- (docs/gitops.md shows the argocd-cm patch and the argo-cd Helm chart values). Without it Argo CD has no health
-- for the kind, and sync waves do not wait for the migration before rolling out the app.
--
-- Lua 5.1 as Argo CD's gopher-lua runs it: `obj` is the live object, the script returns {status, message}.
-- The rules follow the operator's kstatus conditions (Ready / Reconciling / Stalled, moved together):
--   spec.suspend                                  -> Suspended   (a human paused it; sync waves wait)
--   status.observedGeneration ~= generation       -> Progressing (the operator has not seen this spec yet;
--                                                                 the CRD defaults it to -1 on creation)
--   Stalled=True                                  -> Degraded    ("awaiting approval: ..." for a destructive plan)
--   Ready=True for this generation                -> Healthy
--   anything else (Reconciling=True, a phase from Pending to RollingBack) -> Progressing
-- AwaitingApproval is Degraded, not Suspended: a Degraded resource ends the sync operation as failed (and fires
-- Argo CD's on-health-degraded notifications), so the app's later waves never roll out on the old schema and an
-- approval committed to Git (the approve annotation) is applied by the next sync. A Suspended one would keep the
-- sync operation running, blocking that next sync until someone terminates it.

local hs = {}

local function find(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "suspended: spec.suspend is true, no plan, backup or migration starts until it is false"
  return hs
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "being deleted: waiting for running Jobs (and any rollback) to finish"
  return hs
end

local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local phase = status.phase or "Pending"

local stalled = find(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  if phase == "AwaitingApproval" or stalled.reason == "DestructiveChangesNotApproved" then
    hs.message = "awaiting approval: " .. message_of(stalled, "the plan destroys data")
  else
    hs.message = (stalled.reason or "Stalled") .. ": " .. message_of(stalled, "needs a human to continue")
  end
  return hs
end

local ready = find(conditions, "Ready")
if ready ~= nil and ready.status == "True"
    and (ready.observedGeneration == nil or ready.observedGeneration == generation) then
  hs.status = "Healthy"
  if status.currentRevision ~= nil and status.currentRevision ~= "" then
    hs.message = "at revision " .. status.currentRevision
  else
    hs.message = message_of(ready, "ready")
  end
  return hs
end

if phase == "Failed" then
  -- Not written by the operator without Stalled=True; read defensively.
  hs.status = "Degraded"
  hs.message = "Failed: " .. message_of(ready, status.message or "the run failed")
  return hs
end

local reconciling = find(conditions, "Reconciling")
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = phase .. ": " .. message_of(reconciling, "in progress")
else
  hs.message = phase .. ": " .. message_of(ready, status.message or "waiting for the operator")
end
return hs
