-- An agent's current credential (its jti and the SHA-256 the fleet
-- recorded) beside its record: a fleet lists them at start
-- (ListAgentCredentials) without a JSON extraction per record, which was
-- about 200 ms at 19,000 agents while they reconnected.
ALTER TABLE agents ADD COLUMN credential_id TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN credential_hash TEXT;
UPDATE agents SET credential_id = COALESCE(json_extract(doc, '$.credentialId'), ''),
  credential_hash = NULLIF(json_extract(doc, '$.credentialHash'), '');
