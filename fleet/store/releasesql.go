package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The releases, release rollouts and their agents and assignments are
// kept as JSON documents beside the few columns that queries filter or
// order on.

var _ Releases = (*SQL)(nil)

func (s *SQL) CreateRelease(ctx context.Context, r *Release) error {
	doc, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode release: %w", err)
	}
	return s.insert(ctx, "create release "+r.Version,
		`INSERT INTO releases(version, created_at, doc) VALUES (?,?,?)`, r.Version, r.CreatedAt.UnixMilli(), string(doc))
}

func (s *SQL) ReleaseByVersion(ctx context.Context, version string) (*Release, error) {
	rs, err := queryDocs[Release](ctx, s.b.Read, s.b.MapErr, `SELECT doc FROM releases WHERE version = ?`, version)
	if err != nil {
		return nil, fmt.Errorf("get release %s: %w", version, err)
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("release %s: %w", version, ErrNotFound)
	}
	return rs[0], nil
}

func (s *SQL) ListReleases(ctx context.Context) ([]*Release, error) {
	return queryDocs[Release](ctx, s.b.Read, s.b.MapErr, `SELECT doc FROM releases ORDER BY created_at DESC, version DESC`)
}

// queryDocs runs q on db, whose one column is a JSON document of a T.
func queryDocs[T any](ctx context.Context, db Queryer, mapErr func(error) error, q string, args ...any) ([]*T, error) {
	return queryRows(ctx, db, mapErr, "query", func(r *sql.Rows) (*T, error) {
		var doc string
		if err := r.Scan(&doc); err != nil {
			return nil, err
		}
		v := new(T)
		if err := json.Unmarshal([]byte(doc), v); err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		return v, nil
	}, q, args...)
}

func (s *SQL) CreateReleaseRollout(ctx context.Context, r *ReleaseRollout, agents []*RolloutAgent) error {
	cp := *r
	cp.RowVersion = 1
	doc, err := json.Marshal(&cp)
	if err != nil {
		return fmt.Errorf("encode release rollout: %w", err)
	}
	err = s.b.InTx(ctx, "create release rollout", func(tx Conn) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO release_rollouts(id, project_id, status, created_at, row_version, doc) VALUES (?,?,?,?,?,?)`,
			r.ID, r.ProjectID, r.Status, r.CreatedAt.UnixMilli(), 1, string(doc))
		if s.b.IsUnique(err) {
			return fmt.Errorf("release rollout %s: %w", r.ID, ErrConflict)
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

func (s *SQL) ReleaseRolloutByID(ctx context.Context, id string) (*ReleaseRollout, error) {
	rs, err := s.queryReleaseRollouts(ctx, `SELECT doc, row_version FROM release_rollouts WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("release rollout %s: %w", id, ErrNotFound)
	}
	return rs[0], nil
}

func (s *SQL) queryReleaseRollouts(ctx context.Context, q string, args ...any) ([]*ReleaseRollout, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "query release rollouts", func(r *sql.Rows) (*ReleaseRollout, error) {
		var doc string
		var ver int64
		if err := r.Scan(&doc, &ver); err != nil {
			return nil, err
		}
		var ro ReleaseRollout
		if err := json.Unmarshal([]byte(doc), &ro); err != nil {
			return nil, fmt.Errorf("decode release rollout: %w", err)
		}
		ro.RowVersion = ver
		return &ro, nil
	}, q, args...)
}

func (s *SQL) ListReleaseRollouts(ctx context.Context, f RolloutFilter) ([]*ReleaseRollout, error) {
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
	return s.queryReleaseRollouts(ctx, q, args...)
}

func (s *SQL) ListReleaseRolloutAgents(ctx context.Context, rolloutID string) ([]*RolloutAgent, error) {
	return queryDocs[RolloutAgent](ctx, s.b.Read, s.b.MapErr, `SELECT doc FROM release_rollout_agents WHERE rollout_id = ? ORDER BY stage, agent_id`, rolloutID)
}

func upsertReleaseRolloutAgents(ctx context.Context, tx Execer, as []*RolloutAgent) error {
	for _, a := range as {
		doc, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("encode rollout agent: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO release_rollout_agents(rollout_id, agent_id, stage, doc) VALUES (?,?,?,?)
			ON CONFLICT (rollout_id, agent_id) DO UPDATE SET stage = excluded.stage, doc = excluded.doc`, a.RolloutID, a.AgentID, a.Stage, string(doc)); err != nil {
			return err
		}
	}
	return nil
}

func setReleaseAssignments(ctx context.Context, tx Execer, as []*ReleaseAssignment) error {
	for _, a := range as {
		doc, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("encode release assignment: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO release_assignments(agent_id, project_id, version, doc) VALUES (?,?,?,?)
			ON CONFLICT (agent_id) DO UPDATE SET project_id = excluded.project_id, version = excluded.version, doc = excluded.doc`,
			a.AgentID, a.ProjectID, a.Version, string(doc)); err != nil {
			return err
		}
	}
	return nil
}

func (s *SQL) ApplyReleaseRolloutChange(ctx context.Context, ch *ReleaseRolloutChange) error {
	r := ch.Rollout
	if r != nil && r.UpdatedAt.IsZero() {
		r.UpdatedAt = time.Now().UTC()
	}
	err := s.b.InTx(ctx, "apply release rollout change", func(tx Conn) error {
		if r != nil {
			cp := *r
			cp.RowVersion = r.RowVersion + 1
			doc, err := json.Marshal(&cp)
			if err != nil {
				return fmt.Errorf("encode release rollout: %w", err)
			}
			res, err := tx.ExecContext(ctx, `UPDATE release_rollouts SET status = ?, row_version = ?, doc = ? WHERE id = ? AND row_version = ?`,
				r.Status, r.RowVersion+1, string(doc), r.ID, r.RowVersion)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return fmt.Errorf("update release rollout %s at version %d: %w", r.ID, r.RowVersion, ErrConflict)
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

func (s *SQL) ReleaseAssignmentByAgent(ctx context.Context, agentID string) (*ReleaseAssignment, error) {
	as, err := queryDocs[ReleaseAssignment](ctx, s.b.Read, s.b.MapErr, `SELECT doc FROM release_assignments WHERE agent_id = ?`, agentID)
	if err != nil {
		return nil, err
	}
	if len(as) == 0 {
		return nil, fmt.Errorf("release assignment of %s: %w", agentID, ErrNotFound)
	}
	return as[0], nil
}

func (s *SQL) ListReleaseAssignments(ctx context.Context, projectID string) ([]*ReleaseAssignment, error) {
	return queryDocs[ReleaseAssignment](ctx, s.b.Read, s.b.MapErr, `SELECT doc FROM release_assignments WHERE project_id = ? ORDER BY agent_id`, projectID)
}

func (s *SQL) SetReleaseStatus(ctx context.Context, agentID, version, status, errMsg string, at time.Time) error {
	return s.b.InTx(ctx, "set release status", func(tx Conn) error {
		as, err := queryDocs[ReleaseAssignment](ctx, tx, s.b.MapErr, `SELECT doc FROM release_assignments WHERE agent_id = ? AND version = ?`, agentID, version)
		if err != nil || len(as) == 0 {
			return err
		}
		a := as[0]
		if a.Status == status && a.Error == errMsg {
			return nil
		}
		a.Status, a.Error, a.UpdatedAt = status, errMsg, at.UTC()
		return setReleaseAssignments(ctx, tx, []*ReleaseAssignment{a})
	})
}
