package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Config versions, assignments and rollouts (migration 0002). The SQL
// sticks to what SQLite and PostgreSQL both accept, apart from the
// placeholders.

const configCols = `id, project_id, version, hash, yaml, created_by, created_at`

func scanConfig(r scanner) (*store.ConfigVersion, error) {
	c := &store.ConfigVersion{}
	var created int64
	if err := r.Scan(&c.ID, &c.ProjectID, &c.Version, &c.Hash, &c.YAML, &c.CreatedBy, &created); err != nil {
		return nil, err
	}
	c.CreatedAt = fromMS(created)
	return c, nil
}

func (s *Store) CreateConfigVersion(ctx context.Context, c *store.ConfigVersion) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create config version: %w", full(err))
	}
	defer tx.Rollback()
	var next int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM config_versions WHERE project_id = ?`, c.ProjectID).Scan(&next); err != nil {
		return fmt.Errorf("create config version: %w", full(err))
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO config_versions(`+configCols+`) VALUES (?,?,?,?,?,?,?)`,
		c.ID, c.ProjectID, next, c.Hash, c.YAML, c.CreatedBy, ms(c.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("create config version %s: %w", c.Hash, store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create config version: %w", full(err))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("create config version: %w", full(err))
	}
	c.Version = next
	return nil
}

func (s *Store) ConfigVersionByID(ctx context.Context, id string) (*store.ConfigVersion, error) {
	c, err := scanConfig(s.db.QueryRowContext(ctx, `SELECT `+configCols+` FROM config_versions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("config version %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get config version: %w", full(err))
	}
	return c, nil
}

func (s *Store) ConfigVersionByHash(ctx context.Context, projectID, hash string) (*store.ConfigVersion, error) {
	c, err := scanConfig(s.db.QueryRowContext(ctx, `SELECT `+configCols+` FROM config_versions WHERE project_id = ? AND hash = ?`, projectID, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("config version with hash %s: %w", hash, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get config version: %w", full(err))
	}
	return c, nil
}

func (s *Store) ListConfigVersions(ctx context.Context, projectID string) ([]*store.ConfigVersion, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+configCols+` FROM config_versions WHERE project_id = ? ORDER BY version DESC`, projectID)
	if err != nil {
		return nil, fmt.Errorf("list config versions: %w", full(err))
	}
	defer rows.Close()
	var out []*store.ConfigVersion
	for rows.Next() {
		c, err := scanConfig(rows)
		if err != nil {
			return nil, fmt.Errorf("list config versions: %w", full(err))
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

const assignCols = `agent_id, project_id, config_id, config_hash, rollout_id, updated_at`

func scanAssignment(r scanner) (*store.Assignment, error) {
	a := &store.Assignment{}
	var upd int64
	if err := r.Scan(&a.AgentID, &a.ProjectID, &a.ConfigID, &a.ConfigHash, &a.RolloutID, &upd); err != nil {
		return nil, err
	}
	a.UpdatedAt = fromMS(upd)
	return a, nil
}

func (s *Store) AssignmentByAgent(ctx context.Context, agentID string) (*store.Assignment, error) {
	st, err := s.stmt(ctx, `SELECT `+assignCols+` FROM config_assignments WHERE agent_id = ?`)
	if err != nil {
		return nil, fmt.Errorf("get assignment: %w", err)
	}
	a, err := scanAssignment(st.QueryRowContext(ctx, agentID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("assignment of agent %q: %w", agentID, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get assignment: %w", full(err))
	}
	return a, nil
}

func (s *Store) ListAssignments(ctx context.Context, projectID string) ([]*store.Assignment, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+assignCols+` FROM config_assignments WHERE project_id = ? ORDER BY agent_id`, projectID)
	if err != nil {
		return nil, fmt.Errorf("list assignments: %w", full(err))
	}
	defer rows.Close()
	var out []*store.Assignment
	for rows.Next() {
		a, err := scanAssignment(rows)
		if err != nil {
			return nil, fmt.Errorf("list assignments: %w", full(err))
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func (s *Store) SetAssignments(ctx context.Context, as []*store.Assignment) error {
	return s.inTx(ctx, "set assignments", func(tx *sql.Tx) error { return store.UpsertAssignments(ctx, tx, as) })
}

func (s *Store) inTx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, full(err))
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return err
		}
		return fmt.Errorf("%s: %w", what, full(err))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: %w", what, full(err))
	}
	return nil
}

const rolloutCols = store.RolloutCols

func scanRollout(r scanner) (*store.Rollout, error) {
	ro := &store.Rollout{}
	var pause, created, updated int64
	var started, next sql.NullInt64
	if err := r.Scan(&ro.ID, &ro.ProjectID, &ro.ConfigID, &ro.ConfigHash, &ro.Selector, &ro.Specificity, &ro.Canary, &ro.WavePercent,
		&ro.WaveCount, &pause, &ro.MaxFailurePercent, &ro.Stages, &ro.Stage, &started, &next, &ro.Status, &ro.Reason,
		&ro.CreatedBy, &created, &updated, &ro.RowVersion); err != nil {
		return nil, err
	}
	ro.WavePause = time.Duration(pause) * time.Millisecond
	ro.StageStartedAt, ro.NextStageAt = fromNull(started), fromNull(next)
	ro.CreatedAt, ro.UpdatedAt = fromMS(created), fromMS(updated)
	return ro, nil
}

func (s *Store) CreateRollout(ctx context.Context, r *store.Rollout, agents []*store.RolloutAgent) error {
	return s.ApplyRolloutChange(ctx, &store.RolloutChange{Create: true, Rollout: r, Agents: agents})
}

func (s *Store) RolloutByID(ctx context.Context, id string) (*store.Rollout, error) {
	r, err := scanRollout(s.db.QueryRowContext(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("rollout %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get rollout: %w", full(err))
	}
	return r, nil
}

func (s *Store) ListRollouts(ctx context.Context, f store.RolloutFilter) ([]*store.Rollout, error) {
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
	q := `SELECT ` + rolloutCols + ` FROM rollouts`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY created_at DESC, id DESC`, args...)
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", full(err))
	}
	defer rows.Close()
	var out []*store.Rollout
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, fmt.Errorf("list rollouts: %w", full(err))
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// CountRolloutAgentsSQL counts a rollout's agents by stage and state; the
// index rollout_agents_progress covers it.
const CountRolloutAgentsSQL = `SELECT stage, state, COUNT(*) FROM rollout_agents WHERE rollout_id = ? GROUP BY stage, state ORDER BY stage, state`

func (s *Store) CountRolloutAgents(ctx context.Context, rolloutID string) ([]store.RolloutAgentCount, error) {
	rows, err := s.db.QueryContext(ctx, CountRolloutAgentsSQL, rolloutID)
	if err != nil {
		return nil, fmt.Errorf("count rollout agents: %w", full(err))
	}
	defer rows.Close()
	var out []store.RolloutAgentCount
	for rows.Next() {
		var c store.RolloutAgentCount
		if err := rows.Scan(&c.Stage, &c.State, &c.N); err != nil {
			return nil, fmt.Errorf("count rollout agents: %w", full(err))
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func (s *Store) ListRolloutAgents(ctx context.Context, rolloutID string) ([]*store.RolloutAgent, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT rollout_id, agent_id, stage, previous_config_id, state, error, updated_at
		FROM rollout_agents WHERE rollout_id = ? ORDER BY stage, agent_id`, rolloutID)
	if err != nil {
		return nil, fmt.Errorf("list rollout agents: %w", full(err))
	}
	defer rows.Close()
	var out []*store.RolloutAgent
	for rows.Next() {
		a := &store.RolloutAgent{}
		var upd int64
		if err := rows.Scan(&a.RolloutID, &a.AgentID, &a.Stage, &a.PreviousConfigID, &a.State, &a.Error, &upd); err != nil {
			return nil, fmt.Errorf("list rollout agents: %w", full(err))
		}
		a.UpdatedAt = fromMS(upd)
		out = append(out, a)
	}
	return out, rows.Err()
}

func (s *Store) ApplyRolloutChange(ctx context.Context, ch *store.RolloutChange) error {
	return store.ApplyRolloutChange(ctx, ch, func(f func(store.Execer) error) error {
		return s.inTx(ctx, "apply rollout change", func(tx *sql.Tx) error { return f(tx) })
	}, isUnique)
}
