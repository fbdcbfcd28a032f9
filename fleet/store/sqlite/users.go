package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

var _ store.Users = (*Store)(nil)

// Organizations.

func (s *Store) CreateOrg(ctx context.Context, o *store.Org) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO orgs(id, name, created_at) VALUES (?, ?, ?)`, o.ID, o.Name, ms(o.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("create organization %q: %w", o.Name, store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create organization: %w", full(err))
	}
	return nil
}

func (s *Store) OrgByID(ctx context.Context, id string) (*store.Org, error) {
	o := &store.Org{}
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT id, name, created_at FROM orgs WHERE id = ?`, id).Scan(&o.ID, &o.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("organization %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get organization: %w", full(err))
	}
	o.CreatedAt = fromMS(created)
	return o, nil
}

func (s *Store) ListOrgs(ctx context.Context) ([]*store.Org, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, created_at FROM orgs ORDER BY created_at, name`)
	if err != nil {
		return nil, fmt.Errorf("list organizations: %w", full(err))
	}
	defer rows.Close()
	var out []*store.Org
	for rows.Next() {
		o := &store.Org{}
		var created int64
		if err := rows.Scan(&o.ID, &o.Name, &created); err != nil {
			return nil, fmt.Errorf("list organizations: %w", full(err))
		}
		o.CreatedAt = fromMS(created)
		out = append(out, o)
	}
	return out, rows.Err()
}

func (s *Store) SetProjectOrg(ctx context.Context, projectID, orgID string) error {
	if _, err := s.OrgByID(ctx, orgID); err != nil {
		return err
	}
	if _, err := s.ProjectByID(ctx, projectID); err != nil {
		return err
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO org_projects(project_id, org_id) VALUES (?, ?)
		ON CONFLICT(project_id) DO UPDATE SET org_id = excluded.org_id`, projectID, orgID)
	if err != nil {
		return fmt.Errorf("set project organization: %w", full(err))
	}
	return nil
}

func (s *Store) ProjectOrgs(ctx context.Context) (map[string]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT project_id, org_id FROM org_projects`)
	if err != nil {
		return nil, fmt.Errorf("list project organizations: %w", full(err))
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var p, o string
		if err := rows.Scan(&p, &o); err != nil {
			return nil, fmt.Errorf("list project organizations: %w", full(err))
		}
		out[p] = o
	}
	return out, rows.Err()
}

// Users.

const userCols = `id, name, key_hash, fleet_admin, read_only, created_by, created_at, last_login_at`

func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO users(`+userCols+`) VALUES (?,?,?,?,?,?,?,?)`,
		u.ID, u.Name, u.KeyHash, u.FleetAdmin, u.ReadOnly, u.CreatedBy, ms(u.CreatedAt), msp(u.LastLoginAt))
	if isUnique(err) {
		return fmt.Errorf("create user %q: %w", u.Name, store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create user: %w", full(err))
	}
	return nil
}

func scanUser(r scanner) (*store.User, error) {
	u := &store.User{}
	var created int64
	var login sql.NullInt64
	if err := r.Scan(&u.ID, &u.Name, &u.KeyHash, &u.FleetAdmin, &u.ReadOnly, &u.CreatedBy, &created, &login); err != nil {
		return nil, err
	}
	u.CreatedAt = fromMS(created)
	u.LastLoginAt = fromNull(login)
	return u, nil
}

func (s *Store) userWhere(ctx context.Context, col, v string) (*store.User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE `+col+` = ?`, v))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("user: %w", store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get user: %w", full(err))
	}
	return u, nil
}

func (s *Store) UserByID(ctx context.Context, id string) (*store.User, error) {
	return s.userWhere(ctx, "id", id)
}

func (s *Store) UserByKeyHash(ctx context.Context, hash string) (*store.User, error) {
	return s.userWhere(ctx, "key_hash", hash)
}

func (s *Store) ListUsers(ctx context.Context) ([]*store.User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+userCols+` FROM users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", full(err))
	}
	defer rows.Close()
	var out []*store.User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", full(err))
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

func (s *Store) DeleteUser(ctx context.Context, id string) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete user: %w", full(err))
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM users WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete user: %w", full(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("user %q: %w", id, store.ErrNotFound)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM memberships WHERE user_id = ?`, id); err != nil {
		return fmt.Errorf("delete user memberships: %w", full(err))
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE kind = 'user' AND subject = ?`, id); err != nil {
		return fmt.Errorf("delete user sessions: %w", full(err))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete user: %w", full(err))
	}
	return nil
}

func (s *Store) TouchUser(ctx context.Context, id string, at time.Time) error {
	if _, err := s.w.ExecContext(ctx, `UPDATE users SET last_login_at = ? WHERE id = ?`, ms(at), id); err != nil {
		return fmt.Errorf("touch user: %w", full(err))
	}
	return nil
}

// Memberships.

func (s *Store) SetMembership(ctx context.Context, m store.Membership) error {
	if m.Role == store.RoleNone {
		if _, err := s.w.ExecContext(ctx, `DELETE FROM memberships WHERE user_id = ? AND org_id = ?`, m.UserID, m.OrgID); err != nil {
			return fmt.Errorf("remove membership: %w", full(err))
		}
		return nil
	}
	if _, err := s.UserByID(ctx, m.UserID); err != nil {
		return err
	}
	if _, err := s.OrgByID(ctx, m.OrgID); err != nil {
		return err
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO memberships(user_id, org_id, role) VALUES (?, ?, ?)
		ON CONFLICT(user_id, org_id) DO UPDATE SET role = excluded.role`, m.UserID, m.OrgID, string(m.Role))
	if err != nil {
		return fmt.Errorf("set membership: %w", full(err))
	}
	return nil
}

func (s *Store) Memberships(ctx context.Context, userID string) ([]store.Membership, error) {
	q := `SELECT user_id, org_id, role FROM memberships`
	var args []any
	if userID != "" {
		q += ` WHERE user_id = ?`
		args = append(args, userID)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY user_id, org_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list memberships: %w", full(err))
	}
	defer rows.Close()
	var out []store.Membership
	for rows.Next() {
		var m store.Membership
		var role string
		if err := rows.Scan(&m.UserID, &m.OrgID, &role); err != nil {
			return nil, fmt.Errorf("list memberships: %w", full(err))
		}
		m.Role = store.Role(role)
		out = append(out, m)
	}
	return out, rows.Err()
}

// Sessions.

func (s *Store) CreateSession(ctx context.Context, se *store.Session) error {
	// Expired sessions go on every sign-in, which keeps the table small.
	if _, err := s.w.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at < ?`, ms(se.CreatedAt)); err != nil {
		return fmt.Errorf("expire sessions: %w", full(err))
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO sessions(id, csrf, kind, subject, name, created_at, expires_at) VALUES (?,?,?,?,?,?,?)`,
		se.ID, se.CSRF, se.Kind, se.Subject, se.Name, ms(se.CreatedAt), ms(se.ExpiresAt))
	if isUnique(err) {
		return fmt.Errorf("create session: %w", store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create session: %w", full(err))
	}
	return nil
}

func (s *Store) SessionByID(ctx context.Context, id string, now time.Time) (*store.Session, error) {
	se := &store.Session{ID: id}
	var created, expires int64
	err := s.db.QueryRowContext(ctx, `SELECT csrf, kind, subject, name, created_at, expires_at FROM sessions WHERE id = ? AND expires_at > ?`, id, ms(now)).
		Scan(&se.CSRF, &se.Kind, &se.Subject, &se.Name, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("session: %w", store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get session: %w", full(err))
	}
	se.CreatedAt, se.ExpiresAt = fromMS(created), fromMS(expires)
	return se, nil
}

func (s *Store) DeleteSession(ctx context.Context, id string) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete session: %w", full(err))
	}
	return nil
}
