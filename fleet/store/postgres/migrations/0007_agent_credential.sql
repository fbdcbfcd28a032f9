-- An agent's current credential (its jti and the SHA-256 the fleet
-- recorded) beside its record: a replica lists them at start
-- (ListAgentCredentials) without reading every record's JSON.
ALTER TABLE agents ADD COLUMN credential_id TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN credential_hash TEXT;
UPDATE agents SET credential_id = COALESCE(doc->>'credentialId', ''),
  credential_hash = NULLIF(doc->>'credentialHash', '');
