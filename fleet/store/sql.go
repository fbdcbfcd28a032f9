package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// RowsPerInsert bounds the rows of one multi-row INSERT that a backend
// writes a batch with (at 7 columns, 3,500 parameters: well under
// SQLite's 32,766 and PostgreSQL's 65,535).
const RowsPerInsert = 500

// Values returns the VALUES list of a multi-row INSERT of rows rows of
// cols columns, in ? placeholders: "(?,?),(?,?)" for 2 and 2.
func Values(rows, cols int) string {
	if rows <= 0 || cols <= 0 {
		return ""
	}
	one := "(" + strings.Repeat("?,", cols-1) + "?)"
	var b strings.Builder
	b.Grow(rows * (len(one) + 1))
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(one)
	}
	return b.String()
}

// LastByKey drops all but the last of the items that share a key, keeping
// the order of those kept: one multi-row INSERT … ON CONFLICT DO UPDATE
// may not change a row twice (PostgreSQL refuses it).
func LastByKey[T any](items []T, key func(T) string) []T {
	if len(items) < 2 {
		return items
	}
	last := make(map[string]int, len(items))
	for i, it := range items {
		last[key(it)] = i
	}
	if len(last) == len(items) {
		return items
	}
	out := make([]T, 0, len(last))
	for i, it := range items {
		if last[key(it)] == i {
			out = append(out, it)
		}
	}
	return out
}

// Execer runs a statement in ? placeholders: a backend's transaction (the
// PostgreSQL store's rebinds them).
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Queryer runs a query in ? placeholders: a backend's database handle.
type Queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// RolloutCols are the columns of the rollouts table, in the order both
// backends read and insert them.
const RolloutCols = `id, project_id, config_id, config_hash, selector, specificity, canary, wave_percent, wave_count, wave_pause_ms,
	max_failure_percent, stages, stage, stage_started_at, next_stage_at, status, reason, created_by, created_at, updated_at, row_version`

// ApplyRolloutChange is the Rollouts.ApplyRolloutChange of both backends:
// inTx runs its writes in one transaction, isUnique tells the backend's
// unique-violation error (a creating change of an existing rollout).
func ApplyRolloutChange(ctx context.Context, ch *RolloutChange, inTx func(func(Execer) error) error, isUnique func(error) bool) error {
	r := ch.Rollout
	if ch.Create && r == nil {
		return fmt.Errorf("create rollout: no rollout")
	}
	now := time.Now().UTC()
	if ch.Create && r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	if r != nil && r.UpdatedAt.IsZero() {
		r.UpdatedAt = now
		if ch.Create {
			r.UpdatedAt = r.CreatedAt
		}
	}
	err := inTx(func(tx Execer) error {
		switch {
		case ch.Create:
			_, err := tx.ExecContext(ctx, `INSERT INTO rollouts(`+RolloutCols+`) VALUES `+Values(1, 21),
				r.ID, r.ProjectID, r.ConfigID, r.ConfigHash, r.Selector, r.Specificity, r.Canary, r.WavePercent, r.WaveCount,
				r.WavePause.Milliseconds(), r.MaxFailurePercent, r.Stages, r.Stage, millis(r.StageStartedAt), millis(r.NextStageAt),
				r.Status, r.Reason, r.CreatedBy, r.CreatedAt.UnixMilli(), r.UpdatedAt.UnixMilli(), 1)
			if isUnique(err) {
				return fmt.Errorf("create rollout %s: %w", r.ID, ErrConflict)
			}
			if err != nil {
				return err
			}
		case r != nil:
			res, err := tx.ExecContext(ctx, `UPDATE rollouts SET stage = ?, stages = ?, stage_started_at = ?, next_stage_at = ?, status = ?,
				reason = ?, updated_at = ?, row_version = ? WHERE id = ? AND row_version = ?`,
				r.Stage, r.Stages, millis(r.StageStartedAt), millis(r.NextStageAt), r.Status, r.Reason, r.UpdatedAt.UnixMilli(), r.RowVersion+1, r.ID, r.RowVersion)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return fmt.Errorf("update rollout %s at version %d: %w", r.ID, r.RowVersion, ErrConflict)
			}
		}
		if err := UpsertRolloutAgents(ctx, tx, ch.Agents); err != nil {
			return err
		}
		if err := UpsertAssignments(ctx, tx, ch.Assign); err != nil {
			return err
		}
		for _, id := range ch.Unassign {
			if _, err := tx.ExecContext(ctx, `DELETE FROM config_assignments WHERE agent_id = ?`, id); err != nil {
				return err
			}
		}
		return nil
	})
	switch {
	case err == nil && ch.Create:
		r.RowVersion = 1
	case err == nil && r != nil:
		r.RowVersion++
	}
	return err
}

// millis is t in Unix milliseconds, or NULL.
func millis(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMilli()
}

// UpsertRolloutAgents writes rollout rows, RowsPerInsert per statement
// (a stage start of 19,000 agents was 19,000 statements); of rows that
// name the same agent twice the last wins. Both backends write them so.
func UpsertRolloutAgents(ctx context.Context, tx Execer, agents []*RolloutAgent) error {
	agents = LastByKey(agents, func(a *RolloutAgent) string { return a.RolloutID + "\x00" + a.AgentID })
	return execRows(ctx, tx, len(agents), func(n int) string {
		return `INSERT INTO rollout_agents(rollout_id, agent_id, stage, previous_config_id, state, error, updated_at)
			VALUES ` + Values(n, 7) + ` ON CONFLICT (rollout_id, agent_id) DO UPDATE SET stage = excluded.stage,
			previous_config_id = excluded.previous_config_id, state = excluded.state, error = excluded.error, updated_at = excluded.updated_at`
	}, func(args []any, i int) []any {
		a := agents[i]
		if a.UpdatedAt.IsZero() {
			a.UpdatedAt = time.Now().UTC()
		}
		return append(args, a.RolloutID, a.AgentID, a.Stage, a.PreviousConfigID, a.State, a.Error, a.UpdatedAt.UnixMilli())
	})
}

// UpsertAssignments writes config assignments, RowsPerInsert per statement;
// of assignments of the same agent the last wins.
func UpsertAssignments(ctx context.Context, tx Execer, as []*Assignment) error {
	as = LastByKey(as, func(a *Assignment) string { return a.AgentID })
	return execRows(ctx, tx, len(as), func(n int) string {
		return `INSERT INTO config_assignments(agent_id, project_id, config_id, config_hash, rollout_id, updated_at)
			VALUES ` + Values(n, 6) + ` ON CONFLICT (agent_id) DO UPDATE SET project_id = excluded.project_id, config_id = excluded.config_id,
			config_hash = excluded.config_hash, rollout_id = excluded.rollout_id, updated_at = excluded.updated_at`
	}, func(args []any, i int) []any {
		a := as[i]
		if a.UpdatedAt.IsZero() {
			a.UpdatedAt = time.Now().UTC()
		}
		return append(args, a.AgentID, a.ProjectID, a.ConfigID, a.ConfigHash, a.RolloutID, a.UpdatedAt.UnixMilli())
	})
}

// preparer prepares a statement in ? placeholders: both backends'
// transactions.
type preparer interface {
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// execRows writes n rows in multi-row statements of at most RowsPerInsert
// rows each: query(k) is the statement for k rows, row appends row i's
// arguments. When the full-size statement runs more than once and tx can
// prepare, it is prepared once: SQLite parses a 500-row statement anew on
// every Exec, a fifth of the CPU of a 19,000-agent rollout's writes.
func execRows(ctx context.Context, tx Execer, n int, query func(rows int) string, row func(args []any, i int) []any) error {
	var full *sql.Stmt
	if p, ok := tx.(preparer); ok && n >= 2*RowsPerInsert {
		st, err := p.PrepareContext(ctx, query(RowsPerInsert))
		if err != nil {
			return err
		}
		defer st.Close()
		full = st
	}
	var args []any
	for lo := 0; lo < n; lo += RowsPerInsert {
		hi := min(n, lo+RowsPerInsert)
		args = args[:0]
		for i := lo; i < hi; i++ {
			args = row(args, i)
		}
		var err error
		if full != nil && hi-lo == RowsPerInsert {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, query(hi-lo), args...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// CredentialHashColumn is the value of the agents table's credential_hash
// column beside a's document: NULL when no sum is recorded
// (ListAgentCredentials lists the agents whose column holds one).
func CredentialHashColumn(a *Agent) any {
	if a.CredentialHash == "" {
		return nil
	}
	return a.CredentialHash
}

// ListAgentCredentials lists the recorded credentials of the agents (the
// Agents.ListAgentCredentials of both backends) from the credential
// columns beside their records, with the records as stored.
func ListAgentCredentials(ctx context.Context, db Queryer) ([]AgentCredential, error) {
	rows, err := db.QueryContext(ctx, `SELECT id, credential_id, credential_hash, doc, row_version FROM agents WHERE credential_hash IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("list agent credentials: %w", err)
	}
	defer rows.Close()
	var out []AgentCredential
	for rows.Next() {
		var c AgentCredential
		if err := rows.Scan(&c.AgentID, &c.CredentialID, &c.CredentialHash, &c.Record, &c.RowVersion); err != nil {
			return nil, fmt.Errorf("list agent credentials: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list agent credentials: %w", err)
	}
	return out, nil
}
