-- Rollout progress (CountRolloutAgents: counts by stage and state) reads
-- this index alone, in order, instead of every row of a rollout.
CREATE INDEX rollout_agents_progress ON rollout_agents(rollout_id, stage, state);
