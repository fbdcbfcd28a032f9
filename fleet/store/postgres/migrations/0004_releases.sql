CREATE TABLE releases (
  version TEXT PRIMARY KEY,
  created_at BIGINT NOT NULL,
  doc TEXT NOT NULL
);
CREATE TABLE release_rollouts (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  row_version BIGINT NOT NULL,
  doc TEXT NOT NULL
);
CREATE INDEX release_rollouts_project ON release_rollouts(project_id, created_at);
CREATE INDEX release_rollouts_status ON release_rollouts(status);
CREATE TABLE release_rollout_agents (
  rollout_id TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  stage INTEGER NOT NULL,
  doc TEXT NOT NULL,
  PRIMARY KEY (rollout_id, agent_id)
);
CREATE TABLE release_assignments (
  agent_id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  version TEXT NOT NULL,
  doc TEXT NOT NULL
);
CREATE INDEX release_assignments_project ON release_assignments(project_id);
