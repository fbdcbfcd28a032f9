package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

var _ store.Releases = (*Store)(nil)

// Releases are kept as JSON documents beside the few columns that queries
// filter or order on.

func (s *Store) CreateRelease(ctx context.Context, r *store.Release) error {
	doc, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode release: %w", full(err))
	}
	_, err = s.w.ExecContext(ctx, `INSERT INTO releases(version, created_at, doc) VALUES (?,?,?)`, r.Version, ms(r.CreatedAt), string(doc))
	if isUnique(err) {
		return fmt.Errorf("release %s: %w", r.Version, store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("insert release: %w", full(err))
	}
	return nil
}

func (s *Store) ReleaseByVersion(ctx context.Context, version string) (*store.Release, error) {
	var doc string
	err := s.db.QueryRowContext(ctx, `SELECT doc FROM releases WHERE version = ?`, version).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("release %s: %w", version, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get release: %w", full(err))
	}
	var r store.Release
	if err := json.Unmarshal([]byte(doc), &r); err != nil {
		return nil, fmt.Errorf("decode release %s: %w", version, full(err))
	}
	return &r, nil
}

func (s *Store) ListReleases(ctx context.Context) ([]*store.Release, error) {
	return queryDocs[store.Release](ctx, s.db, `SELECT doc FROM releases ORDER BY created_at DESC, version DESC`)
}

func queryDocs[T any](ctx context.Context, db *sql.DB, q string, args ...any) ([]*T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query: %w", full(err))
	}
	defer rows.Close()
	var out []*T
	for rows.Next() {
		var doc string
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("scan: %w", full(err))
		}
		v := new(T)
		if err := json.Unmarshal([]byte(doc), v); err != nil {
			return nil, fmt.Errorf("decode: %w", full(err))
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (s *Store) CreateReleaseRollout(ctx context.Context, r *store.ReleaseRollout, agents []*store.RolloutAgent) error {
	cp := *r
	cp.RowVersion = 1
	doc, err := json.Marshal(&cp)
	if err != nil {
		return fmt.Errorf("encode release rollout: %w", full(err))
	}
	err = s.inTx(ctx, "create release rollout", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO release_rollouts(id, project_id, status, created_at, row_version, doc) VALUES (?,?,?,?,?,?)`,
			r.ID, r.ProjectID, r.Status, ms(r.CreatedAt), 1, string(doc))
		if isUnique(err) {
			return fmt.Errorf("release rollout %s: %w", r.ID, store.ErrConflict)
		}
		if err != nil {
			return err
		}
		return upsertReleaseRolloutAgents(ctx, tx, agents)
	})
	if err == nil {
		r.RowVersion = 1
	}
	return err
}

func (s *Store) ReleaseRolloutByID(ctx context.Context, id string) (*store.ReleaseRollout, error) {
	rs, err := queryReleaseRollouts(ctx, s.db, `SELECT doc, row_version FROM release_rollouts WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("release rollout %s: %w", id, store.ErrNotFound)
	}
	return rs[0], nil
}

func queryReleaseRollouts(ctx context.Context, db *sql.DB, q string, args ...any) ([]*store.ReleaseRollout, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query release rollouts: %w", full(err))
	}
	defer rows.Close()
	var out []*store.ReleaseRollout
	for rows.Next() {
		var doc string
		var ver int64
		if err := rows.Scan(&doc, &ver); err != nil {
			return nil, fmt.Errorf("scan release rollout: %w", full(err))
		}
		var r store.ReleaseRollout
		if err := json.Unmarshal([]byte(doc), &r); err != nil {
			return nil, fmt.Errorf("decode release rollout: %w", full(err))
		}
		r.RowVersion = ver
		out = append(out, &r)
	}
	return out, rows.Err()
}

func (s *Store) ListReleaseRollouts(ctx context.Context, f store.RolloutFilter) ([]*store.ReleaseRollout, error) {
	q := `SELECT doc, row_version FROM release_rollouts WHERE 1=1`
	var args []any
	if f.ProjectID != "" {
		q += ` AND project_id = ?`
		args = append(args, f.ProjectID)
	}
	if len(f.Statuses) > 0 {
		q += ` AND status IN (?` + strings.Repeat(",?", len(f.Statuses)-1) + `)`
		for _, st := range f.Statuses {
			args = append(args, st)
		}
	}
	q += ` ORDER BY created_at DESC, id DESC`
	return queryReleaseRollouts(ctx, s.db, q, args...)
}

func (s *Store) ListReleaseRolloutAgents(ctx context.Context, rolloutID string) ([]*store.RolloutAgent, error) {
	return queryDocs[store.RolloutAgent](ctx, s.db, `SELECT doc FROM release_rollout_agents WHERE rollout_id = ? ORDER BY stage, agent_id`, rolloutID)
}

func upsertReleaseRolloutAgents(ctx context.Context, tx *sql.Tx, as []*store.RolloutAgent) error {
	for _, a := range as {
		doc, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("encode rollout agent: %w", full(err))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO release_rollout_agents(rollout_id, agent_id, stage, doc) VALUES (?,?,?,?)
			ON CONFLICT (rollout_id, agent_id) DO UPDATE SET stage = excluded.stage, doc = excluded.doc`, a.RolloutID, a.AgentID, a.Stage, string(doc)); err != nil {
			return err
		}
	}
	return nil
}

func setReleaseAssignments(ctx context.Context, tx *sql.Tx, as []*store.ReleaseAssignment) error {
	for _, a := range as {
		doc, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("encode release assignment: %w", full(err))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO release_assignments(agent_id, project_id, version, doc) VALUES (?,?,?,?)
			ON CONFLICT (agent_id) DO UPDATE SET project_id = excluded.project_id, version = excluded.version, doc = excluded.doc`,
			a.AgentID, a.ProjectID, a.Version, string(doc)); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) ApplyReleaseRolloutChange(ctx context.Context, ch *store.ReleaseRolloutChange) error {
	r := ch.Rollout
	if r != nil && r.UpdatedAt.IsZero() {
		r.UpdatedAt = time.Now().UTC()
	}
	err := s.inTx(ctx, "apply release rollout change", func(tx *sql.Tx) error {
		if r != nil {
			cp := *r
			cp.RowVersion = r.RowVersion + 1
			doc, err := json.Marshal(&cp)
			if err != nil {
				return fmt.Errorf("encode release rollout: %w", full(err))
			}
			res, err := tx.ExecContext(ctx, `UPDATE release_rollouts SET status = ?, row_version = ?, doc = ? WHERE id = ? AND row_version = ?`,
				r.Status, r.RowVersion+1, string(doc), r.ID, r.RowVersion)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return fmt.Errorf("update release rollout %s at version %d: %w", r.ID, r.RowVersion, store.ErrConflict)
			}
		}
		if err := upsertReleaseRolloutAgents(ctx, tx, ch.Agents); err != nil {
			return err
		}
		if err := setReleaseAssignments(ctx, tx, ch.Assign); err != nil {
			return err
		}
		for _, id := range ch.Unassign {
			if _, err := tx.ExecContext(ctx, `DELETE FROM release_assignments WHERE agent_id = ?`, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && r != nil {
		r.RowVersion++
	}
	return err
}

func (s *Store) ReleaseAssignmentByAgent(ctx context.Context, agentID string) (*store.ReleaseAssignment, error) {
	as, err := queryDocs[store.ReleaseAssignment](ctx, s.db, `SELECT doc FROM release_assignments WHERE agent_id = ?`, agentID)
	if err != nil {
		return nil, err
	}
	if len(as) == 0 {
		return nil, fmt.Errorf("release assignment of %s: %w", agentID, store.ErrNotFound)
	}
	return as[0], nil
}

func (s *Store) ListReleaseAssignments(ctx context.Context, projectID string) ([]*store.ReleaseAssignment, error) {
	return queryDocs[store.ReleaseAssignment](ctx, s.db, `SELECT doc FROM release_assignments WHERE project_id = ? ORDER BY agent_id`, projectID)
}

func (s *Store) SetReleaseStatus(ctx context.Context, agentID, version, status, errMsg string, at time.Time) error {
	return s.inTx(ctx, "set release status", func(tx *sql.Tx) error {
		var doc string
		err := tx.QueryRowContext(ctx, `SELECT doc FROM release_assignments WHERE agent_id = ? AND version = ?`, agentID, version).Scan(&doc)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var a store.ReleaseAssignment
		if err := json.Unmarshal([]byte(doc), &a); err != nil {
			return fmt.Errorf("decode release assignment: %w", full(err))
		}
		if a.Status == status && a.Error == errMsg {
			return nil
		}
		a.Status, a.Error, a.UpdatedAt = status, errMsg, at.UTC()
		return setReleaseAssignments(ctx, tx, []*store.ReleaseAssignment{&a})
	})
}
