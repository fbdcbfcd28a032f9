-- An agent's status report settles its own rows (UpsertAgentResult): find
-- them by agent.
CREATE INDEX rollout_agents_agent ON rollout_agents(agent_id, state);
