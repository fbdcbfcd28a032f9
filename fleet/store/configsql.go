package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// Config versions, assignments and rollouts (migration 0002): SQL that
// SQLite and PostgreSQL both accept, apart from the placeholders.

const configCols = `id, project_id, version, hash, yaml, created_by, created_at`

func scanConfig(r rowScanner) (*ConfigVersion, error) {
	c := &ConfigVersion{}
	var created int64
	if err := r.Scan(&c.ID, &c.ProjectID, &c.Version, &c.Hash, &c.YAML, &c.CreatedBy, &created); err != nil {
		return nil, err
	}
	c.CreatedAt = fromMillis(created)
	return c, nil
}

func (s *SQL) CreateConfigVersion(ctx context.Context, c *ConfigVersion) error {
	var next int
	err := s.b.InTx(ctx, "create config version", func(tx Conn) error {
		if s.b.LockKey != nil {
			// Replicas may create versions of one project at once:
			// serialize them so that numbers and the duplicate-hash
			// check stay exact.
			if err := s.b.LockKey(ctx, tx, "config_versions/"+c.ProjectID); err != nil {
				return err
			}
		}
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM config_versions WHERE project_id = ?`, c.ProjectID).Scan(&next); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO config_versions(`+configCols+`) VALUES (?,?,?,?,?,?,?)`,
			c.ID, c.ProjectID, next, c.Hash, c.YAML, c.CreatedBy, c.CreatedAt.UnixMilli())
		if s.b.IsUnique(err) {
			return fmt.Errorf("create config version %s: %w", c.Hash, ErrConflict)
		}
		return err
	})
	if err != nil {
		return err
	}
	c.Version = next
	return nil
}

func (s *SQL) ConfigVersionByID(ctx context.Context, id string) (*ConfigVersion, error) {
	c, err := scanConfig(s.b.Read.QueryRowContext(ctx, `SELECT `+configCols+` FROM config_versions WHERE id = ?`, id))
	if err := s.rowErr(err, "get config version", "config version %q", id); err != nil {
		return nil, err
	}
	return c, nil
}

func (s *SQL) ConfigVersionByHash(ctx context.Context, projectID, hash string) (*ConfigVersion, error) {
	c, err := scanConfig(s.b.Read.QueryRowContext(ctx, `SELECT `+configCols+` FROM config_versions WHERE project_id = ? AND hash = ?`, projectID, hash))
	if err := s.rowErr(err, "get config version", "config version with hash %s", hash); err != nil {
		return nil, err
	}
	return c, nil
}

func (s *SQL) ListConfigVersions(ctx context.Context, projectID string) ([]*ConfigVersion, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list config versions", func(r *sql.Rows) (*ConfigVersion, error) { return scanConfig(r) },
		`SELECT `+configCols+` FROM config_versions WHERE project_id = ? ORDER BY version DESC`, projectID)
}

const assignCols = `agent_id, project_id, config_id, config_hash, rollout_id, updated_at`

func scanAssignment(r rowScanner) (*Assignment, error) {
	a := &Assignment{}
	var upd int64
	if err := r.Scan(&a.AgentID, &a.ProjectID, &a.ConfigID, &a.ConfigHash, &a.RolloutID, &upd); err != nil {
		return nil, err
	}
	a.UpdatedAt = fromMillis(upd)
	return a, nil
}

func (s *SQL) AssignmentByAgent(ctx context.Context, agentID string) (*Assignment, error) {
	row, err := s.queryRowHot(ctx, `SELECT `+assignCols+` FROM config_assignments WHERE agent_id = ?`, agentID)
	if err != nil {
		return nil, fmt.Errorf("get assignment: %w", err)
	}
	a, err := scanAssignment(row)
	if err := s.rowErr(err, "get assignment", "assignment of agent %q", agentID); err != nil {
		return nil, err
	}
	return a, nil
}

// queryRowHot runs a query of a hot path: prepared once when the backend
// keeps prepared statements.
func (s *SQL) queryRowHot(ctx context.Context, q string, args ...any) (*sql.Row, error) {
	if s.b.Prepared == nil {
		return s.b.Read.QueryRowContext(ctx, q, args...), nil
	}
	st, err := s.b.Prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryRowContext(ctx, args...), nil
}

func (s *SQL) ListAssignments(ctx context.Context, projectID string) ([]*Assignment, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list assignments", func(r *sql.Rows) (*Assignment, error) { return scanAssignment(r) },
		`SELECT `+assignCols+` FROM config_assignments WHERE project_id = ? ORDER BY agent_id`, projectID)
}

func (s *SQL) SetAssignments(ctx context.Context, as []*Assignment) error {
	return s.b.InTx(ctx, "set assignments", func(tx Conn) error { return UpsertAssignments(ctx, tx, as) })
}

func scanRollout(r rowScanner) (*Rollout, error) {
	ro := &Rollout{}
	var pause, created, updated int64
	var started, next sql.NullInt64
	if err := r.Scan(&ro.ID, &ro.ProjectID, &ro.ConfigID, &ro.ConfigHash, &ro.Selector, &ro.Specificity, &ro.Canary, &ro.WavePercent,
		&ro.WaveCount, &pause, &ro.MaxFailurePercent, &ro.Stages, &ro.Stage, &started, &next, &ro.Status, &ro.Reason,
		&ro.CreatedBy, &created, &updated, &ro.RowVersion); err != nil {
		return nil, err
	}
	ro.WavePause = time.Duration(pause) * time.Millisecond
	ro.StageStartedAt, ro.NextStageAt = fromNullMillis(started), fromNullMillis(next)
	ro.CreatedAt, ro.UpdatedAt = fromMillis(created), fromMillis(updated)
	return ro, nil
}

func (s *SQL) CreateRollout(ctx context.Context, r *Rollout, agents []*RolloutAgent) error {
	return s.ApplyRolloutChange(ctx, &RolloutChange{Create: true, Rollout: r, Agents: agents})
}

func (s *SQL) ApplyRolloutChange(ctx context.Context, ch *RolloutChange) error {
	return ApplyRolloutChange(ctx, ch, func(f func(Execer) error) error {
		return s.b.InTx(ctx, "apply rollout change", func(tx Conn) error { return f(tx) })
	}, s.b.IsUnique)
}

func (s *SQL) RolloutByID(ctx context.Context, id string) (*Rollout, error) {
	r, err := scanRollout(s.b.Read.QueryRowContext(ctx, `SELECT `+RolloutCols+` FROM rollouts WHERE id = ?`, id))
	if err := s.rowErr(err, "get rollout", "rollout %q", id); err != nil {
		return nil, err
	}
	return r, nil
}

func (s *SQL) ListRollouts(ctx context.Context, f RolloutFilter) ([]*Rollout, error) {
	var where []string
	var args []any
	if f.ProjectID != "" {
		where = append(where, `project_id = ?`)
		args = append(args, f.ProjectID)
	}
	if len(f.Statuses) > 0 {
		where = append(where, `status IN (?`+strings.Repeat(",?", len(f.Statuses)-1)+`)`)
		for _, st := range f.Statuses {
			args = append(args, st)
		}
	}
	q := `SELECT ` + RolloutCols + ` FROM rollouts`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list rollouts", func(r *sql.Rows) (*Rollout, error) { return scanRollout(r) },
		q+` ORDER BY created_at DESC, id DESC`, args...)
}

// CountRolloutAgentsSQL counts a rollout's agents by stage and state; the
// index rollout_agents_progress covers it.
const CountRolloutAgentsSQL = `SELECT stage, state, COUNT(*) FROM rollout_agents WHERE rollout_id = ? GROUP BY stage, state ORDER BY stage, state`

func (s *SQL) CountRolloutAgents(ctx context.Context, rolloutID string) ([]RolloutAgentCount, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "count rollout agents", func(r *sql.Rows) (RolloutAgentCount, error) {
		var c RolloutAgentCount
		return c, r.Scan(&c.Stage, &c.State, &c.N)
	}, CountRolloutAgentsSQL, rolloutID)
}

func (s *SQL) ListRolloutAgents(ctx context.Context, rolloutID string) ([]*RolloutAgent, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list rollout agents", func(r *sql.Rows) (*RolloutAgent, error) {
		a := &RolloutAgent{}
		var upd int64
		err := r.Scan(&a.RolloutID, &a.AgentID, &a.Stage, &a.PreviousConfigID, &a.State, &a.Error, &upd)
		a.UpdatedAt = fromMillis(upd)
		return a, err
	}, `SELECT rollout_id, agent_id, stage, previous_config_id, state, error, updated_at
		FROM rollout_agents WHERE rollout_id = ? ORDER BY stage, agent_id`, rolloutID)
}
