package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Config versions, assignments and rollouts are store.SQL's
// (configsql.go); this is the transaction they run in.

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
