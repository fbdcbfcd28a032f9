package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

var _ Users = (*SQL)(nil)

// Organizations.

func (s *SQL) CreateOrg(ctx context.Context, o *Org) error {
	return s.insert(ctx, fmt.Sprintf("create organization %q", o.Name),
		`INSERT INTO orgs(id, name, created_at) VALUES (?, ?, ?)`, o.ID, o.Name, o.CreatedAt.UnixMilli())
}

func (s *SQL) OrgByID(ctx context.Context, id string) (*Org, error) {
	o := &Org{}
	var created int64
	err := s.b.Read.QueryRowContext(ctx, `SELECT id, name, created_at FROM orgs WHERE id = ?`, id).Scan(&o.ID, &o.Name, &created)
	if err := s.rowErr(err, "get organization", "organization %q", id); err != nil {
		return nil, err
	}
	o.CreatedAt = fromMillis(created)
	return o, nil
}

func (s *SQL) ListOrgs(ctx context.Context) ([]*Org, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list organizations", func(r *sql.Rows) (*Org, error) {
		o := &Org{}
		var created int64
		err := r.Scan(&o.ID, &o.Name, &created)
		o.CreatedAt = fromMillis(created)
		return o, err
	}, `SELECT id, name, created_at FROM orgs ORDER BY created_at, name`)
}

func (s *SQL) SetProjectOrg(ctx context.Context, projectID, orgID string) error {
	if _, err := s.OrgByID(ctx, orgID); err != nil {
		return err
	}
	if _, err := s.ProjectByID(ctx, projectID); err != nil {
		return err
	}
	_, err := s.b.Write.ExecContext(ctx, `INSERT INTO org_projects(project_id, org_id) VALUES (?, ?)
		ON CONFLICT(project_id) DO UPDATE SET org_id = excluded.org_id`, projectID, orgID)
	if err != nil {
		return fmt.Errorf("set project organization: %w", s.b.MapErr(err))
	}
	return nil
}

func (s *SQL) ProjectOrgs(ctx context.Context) (map[string]string, error) {
	type pair struct{ p, o string }
	ps, err := queryRows(ctx, s.b.Read, s.b.MapErr, "list project organizations", func(r *sql.Rows) (pair, error) {
		var p pair
		return p, r.Scan(&p.p, &p.o)
	}, `SELECT project_id, org_id FROM org_projects`)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ps))
	for _, p := range ps {
		out[p.p] = p.o
	}
	return out, nil
}

// Users.

const userCols = `id, name, key_hash, fleet_admin, read_only, created_by, created_at, last_login_at`

func (s *SQL) CreateUser(ctx context.Context, u *User) error {
	return s.insert(ctx, fmt.Sprintf("create user %q", u.Name), `INSERT INTO users(`+userCols+`) VALUES (?,?,?,?,?,?,?,?)`,
		u.ID, u.Name, u.KeyHash, u.FleetAdmin, u.ReadOnly, u.CreatedBy, u.CreatedAt.UnixMilli(), millis(u.LastLoginAt))
}

func scanUser(r rowScanner) (*User, error) {
	u := &User{}
	var created int64
	var login sql.NullInt64
	if err := r.Scan(&u.ID, &u.Name, &u.KeyHash, &u.FleetAdmin, &u.ReadOnly, &u.CreatedBy, &created, &login); err != nil {
		return nil, err
	}
	u.CreatedAt = fromMillis(created)
	if login.Valid {
		t := fromMillis(login.Int64)
		u.LastLoginAt = &t
	}
	return u, nil
}

func (s *SQL) userWhere(ctx context.Context, col, v string) (*User, error) {
	u, err := scanUser(s.b.Read.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE `+col+` = ?`, v))
	if err := s.rowErr(err, "get user", "user"); err != nil {
		return nil, err
	}
	return u, nil
}

func (s *SQL) UserByID(ctx context.Context, id string) (*User, error) {
	return s.userWhere(ctx, "id", id)
}

func (s *SQL) UserByKeyHash(ctx context.Context, hash string) (*User, error) {
	return s.userWhere(ctx, "key_hash", hash)
}

func (s *SQL) ListUsers(ctx context.Context) ([]*User, error) {
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list users", func(r *sql.Rows) (*User, error) { return scanUser(r) }, `SELECT `+userCols+` FROM users ORDER BY name`)
}

func (s *SQL) DeleteUser(ctx context.Context, id string) error {
	return s.b.InTx(ctx, "delete user", func(tx Conn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM users WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("user %q: %w", id, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM memberships WHERE user_id = ?`, id); err != nil {
			return fmt.Errorf("memberships: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE kind = 'user' AND subject = ?`, id); err != nil {
			return fmt.Errorf("sessions: %w", err)
		}
		return nil
	})
}

func (s *SQL) TouchUser(ctx context.Context, id string, at time.Time) error {
	if _, err := s.b.Write.ExecContext(ctx, `UPDATE users SET last_login_at = ? WHERE id = ?`, at.UnixMilli(), id); err != nil {
		return fmt.Errorf("touch user: %w", s.b.MapErr(err))
	}
	return nil
}

// Memberships.

func (s *SQL) SetMembership(ctx context.Context, m Membership) error {
	if m.Role == RoleNone {
		if _, err := s.b.Write.ExecContext(ctx, `DELETE FROM memberships WHERE user_id = ? AND org_id = ?`, m.UserID, m.OrgID); err != nil {
			return fmt.Errorf("remove membership: %w", s.b.MapErr(err))
		}
		return nil
	}
	if _, err := s.UserByID(ctx, m.UserID); err != nil {
		return err
	}
	if _, err := s.OrgByID(ctx, m.OrgID); err != nil {
		return err
	}
	_, err := s.b.Write.ExecContext(ctx, `INSERT INTO memberships(user_id, org_id, role) VALUES (?, ?, ?)
		ON CONFLICT(user_id, org_id) DO UPDATE SET role = excluded.role`, m.UserID, m.OrgID, string(m.Role))
	if err != nil {
		return fmt.Errorf("set membership: %w", s.b.MapErr(err))
	}
	return nil
}

func (s *SQL) Memberships(ctx context.Context, userID string) ([]Membership, error) {
	q := `SELECT user_id, org_id, role FROM memberships`
	var args []any
	if userID != "" {
		q += ` WHERE user_id = ?`
		args = append(args, userID)
	}
	return queryRows(ctx, s.b.Read, s.b.MapErr, "list memberships", func(r *sql.Rows) (Membership, error) {
		var m Membership
		var role string
		err := r.Scan(&m.UserID, &m.OrgID, &role)
		m.Role = Role(role)
		return m, err
	}, q+` ORDER BY user_id, org_id`, args...)
}

// Sessions.

func (s *SQL) CreateSession(ctx context.Context, se *Session) error {
	// Expired sessions go on every sign-in, which keeps the table small.
	if _, err := s.b.Write.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at < ?`, se.CreatedAt.UnixMilli()); err != nil {
		return fmt.Errorf("expire sessions: %w", s.b.MapErr(err))
	}
	return s.insert(ctx, "create session", `INSERT INTO sessions(id, csrf, kind, subject, name, created_at, expires_at) VALUES (?,?,?,?,?,?,?)`,
		se.ID, se.CSRF, se.Kind, se.Subject, se.Name, se.CreatedAt.UnixMilli(), se.ExpiresAt.UnixMilli())
}

func (s *SQL) SessionByID(ctx context.Context, id string, now time.Time) (*Session, error) {
	se := &Session{ID: id}
	var created, expires int64
	err := s.b.Read.QueryRowContext(ctx, `SELECT csrf, kind, subject, name, created_at, expires_at FROM sessions WHERE id = ? AND expires_at > ?`, id, now.UnixMilli()).
		Scan(&se.CSRF, &se.Kind, &se.Subject, &se.Name, &created, &expires)
	if err := s.rowErr(err, "get session", "session"); err != nil {
		return nil, err
	}
	se.CreatedAt, se.ExpiresAt = fromMillis(created), fromMillis(expires)
	return se, nil
}

func (s *SQL) DeleteSession(ctx context.Context, id string) error {
	if _, err := s.b.Write.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete session: %w", s.b.MapErr(err))
	}
	return nil
}
