-- Leader leases of fleet replicas: one row per lease name.
CREATE TABLE leases (
  name TEXT PRIMARY KEY,
  holder TEXT NOT NULL,
  expires_at TIMESTAMPTZ NOT NULL
);
-- The fleet's signing keys, shared by every replica. The private key is
-- stored as PEM in plain text: protect the database like the keys dir.
CREATE TABLE signing_keys (
  id TEXT PRIMARY KEY,
  pem TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE signing_key_state (
  singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  state TEXT NOT NULL
);
