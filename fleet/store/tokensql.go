package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Projects, tokens and the audit log.

func (s *SQL) CreateProject(ctx context.Context, p *Project) error {
	return s.insert(ctx, fmt.Sprintf("create project %q", p.Name),
		`INSERT INTO projects(id, name, created_at) VALUES (?, ?, ?)`, p.ID, p.Name, p.CreatedAt.UnixMilli())
}

func (s *SQL) ProjectByID(ctx context.Context, id string) (*Project, error) {
	p := &Project{}
	var created int64
	err := s.b.Read.QueryRowContext(ctx, `SELECT id, name, created_at FROM projects WHERE id = ?`, id).Scan(&p.ID, &p.Name, &created)
	if err := s.rowErr(err, "get project", "project %q", id); err != nil {
		return nil, err
	}
	p.CreatedAt = fromMillis(created)
	return p, nil
}

func (s *SQL) ListProjects(ctx context.Context) ([]*Project, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list projects", func(r *sql.Rows) (*Project, error) {
		p := &Project{}
		var created int64
		err := r.Scan(&p.ID, &p.Name, &created)
		p.CreatedAt = fromMillis(created)
		return p, err
	}, `SELECT id, name, created_at FROM projects ORDER BY created_at, name`)
}

const tokenCols = `id, project_id, name, kind, labels, agent_id, key_id, max_uses, uses, read_only, created_by, created_at, expires_at, last_used_at, revoked_at`

func (s *SQL) CreateToken(ctx context.Context, t *Token) error {
	labels, _ := json.Marshal(t.Labels)
	return s.insert(ctx, fmt.Sprintf("create token %q", t.ID), `INSERT INTO tokens(`+tokenCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		t.ID, t.ProjectID, t.Name, string(t.Kind), string(labels), t.AgentID, t.KeyID, t.MaxUses, t.Uses, t.ReadOnly,
		t.CreatedBy, t.CreatedAt.UnixMilli(), millis(t.ExpiresAt), millis(t.LastUsedAt), millis(t.RevokedAt))
}

func scanToken(r rowScanner) (*Token, error) {
	t := &Token{}
	var labels, kind string
	var created int64
	var exp, used, revoked sql.NullInt64
	if err := r.Scan(&t.ID, &t.ProjectID, &t.Name, &kind, &labels, &t.AgentID, &t.KeyID, &t.MaxUses, &t.Uses, &t.ReadOnly,
		&t.CreatedBy, &created, &exp, &used, &revoked); err != nil {
		return nil, err
	}
	t.Kind = TokenKind(kind)
	if err := json.Unmarshal([]byte(labels), &t.Labels); err != nil {
		return nil, fmt.Errorf("token %s labels: %w", t.ID, err)
	}
	t.CreatedAt = fromMillis(created)
	t.ExpiresAt, t.LastUsedAt, t.RevokedAt = fromNullMillis(exp), fromNullMillis(used), fromNullMillis(revoked)
	return t, nil
}

func (s *SQL) TokenByID(ctx context.Context, id string) (*Token, error) {
	t, err := scanToken(s.b.Read.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM tokens WHERE id = ?`, id))
	if err := s.rowErr(err, "get token", "token %q", id); err != nil {
		return nil, err
	}
	return t, nil
}

func (s *SQL) ListTokens(ctx context.Context, projectID string, kind TokenKind) ([]*Token, error) {
	q := `SELECT ` + tokenCols + ` FROM tokens WHERE project_id = ?`
	args := []any{projectID}
	if kind != "" {
		q += ` AND kind = ?`
		args = append(args, string(kind))
	}
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list tokens", func(r *sql.Rows) (*Token, error) { return scanToken(r) }, q+` ORDER BY created_at DESC, id`, args...)
}

func (s *SQL) RevokeToken(ctx context.Context, id string, at time.Time) error {
	res, err := s.b.Write.ExecContext(ctx, `UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?`, at.UnixMilli(), id)
	if err != nil {
		return fmt.Errorf("revoke token: %w", s.b.MapErr(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("revoke token %q: %w", id, ErrNotFound)
	}
	return nil
}

func (s *SQL) RevokedSince(ctx context.Context, t time.Time) ([]string, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list revoked", func(r *sql.Rows) (string, error) {
		var id string
		return id, r.Scan(&id)
	}, `SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND revoked_at >= ?`, t.UnixMilli())
}

func (s *SQL) UseToken(ctx context.Context, id string, at time.Time) error {
	res, err := s.b.Write.ExecContext(ctx, `UPDATE tokens SET uses = uses + 1, last_used_at = ? WHERE id = ? AND (max_uses = 0 OR uses < max_uses)`, at.UnixMilli(), id)
	if err != nil {
		return fmt.Errorf("use token: %w", s.b.MapErr(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.TokenByID(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("token %q: %w", id, ErrExhausted)
	}
	return nil
}

func (s *SQL) TouchToken(ctx context.Context, id string, at time.Time) error {
	if _, err := s.b.Write.ExecContext(ctx, `UPDATE tokens SET last_used_at = ? WHERE id = ?`, at.UnixMilli(), id); err != nil {
		return fmt.Errorf("touch token: %w", s.b.MapErr(err))
	}
	return nil
}

func (s *SQL) ListAudit(ctx context.Context, projectID string, limit int) ([]*AuditEntry, error) {
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	q := `SELECT id, time, actor, project_id, action, target, result FROM audit`
	var args []any
	if projectID != "" {
		q += ` WHERE project_id = ?`
		args = append(args, projectID)
	}
	args = append(args, limit)
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list audit", func(r *sql.Rows) (*AuditEntry, error) {
		e := &AuditEntry{}
		var t int64
		err := r.Scan(&e.ID, &t, &e.Actor, &e.ProjectID, &e.Action, &e.Target, &e.Result)
		e.Time = fromMillis(t)
		return e, err
	}, q+` ORDER BY id DESC LIMIT ?`, args...)
}

func (s *SQL) AppendAudit(ctx context.Context, e *AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	err := s.b.Write.QueryRowContext(ctx, `INSERT INTO audit(time, actor, project_id, action, target, result) VALUES (?,?,?,?,?,?) RETURNING id`,
		e.Time.UnixMilli(), e.Actor, e.ProjectID, e.Action, e.Target, e.Result).Scan(&e.ID)
	if err != nil {
		return fmt.Errorf("append audit: %w", s.b.MapErr(err))
	}
	return nil
}
