package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// keysLock is the advisory lock key held while replicas share keys.
const keysLock int64 = 0x666c656574_02

// ShareKeyDir makes the key directory dir (as token.OpenKeySet reads it:
// one <kid>.pem per key plus state.json) hold the fleet's shared signing
// keys. Under a database lock it writes into dir the keys and the key
// state stored in the database, calls open (which loads the key set from
// dir, creating a first key when there is none), and then stores the
// keys of dir that the database lacks (and the state, when it has none).
// So replicas starting at once agree on one active key.
//
// The private keys are stored as PEM in plain text in signing_keys:
// protect the database as you would the keys directory. Rotating or
// retiring a key on one replica reaches the others at their next start.
func (s *Store) ShareKeyDir(ctx context.Context, dir string, open func() error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("share signing keys: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, keysLock); err != nil {
		return fmt.Errorf("lock signing keys: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, keysLock)

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key dir: %w", err)
	}
	rows, err := conn.QueryContext(ctx, `SELECT id, pem, created_at FROM signing_keys`)
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	stored := map[string]bool{}
	for rows.Next() {
		var id, pem string
		var created int64
		if err := rows.Scan(&id, &pem, &created); err != nil {
			rows.Close()
			return fmt.Errorf("load signing keys: %w", err)
		}
		stored[id] = true
		if strings.ContainsAny(id, `/\`) || id == "" {
			rows.Close()
			return fmt.Errorf("load signing keys: bad key id %q", id)
		}
		p := filepath.Join(dir, id+".pem")
		if err := os.WriteFile(p, []byte(pem), 0o600); err != nil {
			rows.Close()
			return fmt.Errorf("write signing key: %w", err)
		}
		// The key set takes a key's creation time from its file.
		t := fromMS(created)
		_ = os.Chtimes(p, t, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	var state string
	err = conn.QueryRowContext(ctx, `SELECT state FROM signing_key_state`).Scan(&state)
	haveState := err == nil
	if err != nil && !errors.Is(err, errNoRows) {
		return fmt.Errorf("load signing key state: %w", err)
	}
	if haveState {
		if !json.Valid([]byte(state)) {
			return errors.New("load signing key state: not JSON")
		}
		if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(state), 0o600); err != nil {
			return fmt.Errorf("write signing key state: %w", err)
		}
	}

	if err := open(); err != nil {
		return err
	}

	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read key dir: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".pem")
		if !ok || stored[id] {
			continue
		}
		p := filepath.Join(dir, e.Name())
		pem, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read signing key: %w", err)
		}
		created := time.Now()
		if fi, err := os.Stat(p); err == nil {
			created = fi.ModTime()
		}
		if _, err := conn.ExecContext(ctx, `INSERT INTO signing_keys(id, pem, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`,
			id, string(pem), ms(created)); err != nil {
			return fmt.Errorf("store signing key: %w", err)
		}
	}
	if !haveState {
		b, err := os.ReadFile(filepath.Join(dir, "state.json"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read signing key state: %w", err)
		}
		if _, err := conn.ExecContext(ctx, `INSERT INTO signing_key_state(singleton, state) VALUES (TRUE, $1)
			ON CONFLICT (singleton) DO UPDATE SET state = excluded.state`, string(b)); err != nil {
			return fmt.Errorf("store signing key state: %w", err)
		}
	}
	return nil
}
