CREATE TABLE config_versions (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  hash TEXT NOT NULL,
  yaml TEXT NOT NULL,
  created_by TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  UNIQUE (project_id, version),
  UNIQUE (project_id, hash)
);
CREATE TABLE config_assignments (
  agent_id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  config_id TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  rollout_id TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL
);
CREATE INDEX config_assignments_project ON config_assignments(project_id);
CREATE TABLE rollouts (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  config_id TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  selector TEXT NOT NULL,
  specificity INTEGER NOT NULL,
  canary INTEGER NOT NULL,
  wave_percent INTEGER NOT NULL,
  wave_count INTEGER NOT NULL,
  wave_pause_ms BIGINT NOT NULL,
  max_failure_percent INTEGER NOT NULL,
  stages INTEGER NOT NULL,
  stage INTEGER NOT NULL,
  stage_started_at BIGINT,
  next_stage_at BIGINT,
  status TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  created_by TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  row_version BIGINT NOT NULL
);
CREATE INDEX rollouts_project ON rollouts(project_id, created_at);
CREATE INDEX rollouts_status ON rollouts(status);
CREATE TABLE rollout_agents (
  rollout_id TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  stage INTEGER NOT NULL,
  previous_config_id TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  error TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (rollout_id, agent_id)
);
