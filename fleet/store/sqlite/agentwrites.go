package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"time"
)

// Group commit of agent record updates.
//
// Every OpAMP status report ends in an UpsertAgent; a config push to the
// whole fleet is two per agent (APPLYING, APPLIED), a reconnect storm one
// per agent. One transaction per update makes the pooled connections
// fight for SQLite's single write lock (each loser sleeps in the busy
// handler), so one goroutine writes them instead: it takes every update
// waiting, applies them in one transaction, commits once and answers each
// caller after the commit (nothing is acknowledged before it is durable).
// Each update keeps its own row-version check and result.

// maxAgentBatch bounds one transaction.
const maxAgentBatch = 256

const updateAgentSQL = `UPDATE agents SET project_id = ?, doc = ?, credential_id = ?, credential_hash = ?, row_version = ?, updated_at = ? WHERE id = ? AND row_version = ?`

type agentWrite struct {
	projectID, id, doc string
	credID             string
	credHash           any // NULL or the hex sum (store.Agent.CredentialHash)
	version, prev      int64
	at                 int64
	done               chan agentResult
}

type agentResult struct {
	n   int64 // rows affected
	err error
}

type agentWriter struct {
	db   *sql.DB
	upd  *sql.Stmt // updateAgentSQL, prepared once on the writer's connection
	reqs chan *agentWrite
	stop chan struct{}
	wg   sync.WaitGroup
	// mu orders queueing (read-locked) before close (locked), so that no
	// update is queued after the writer has gone.
	mu     sync.RWMutex
	closed bool
}

func newAgentWriter(db *sql.DB) *agentWriter {
	w := &agentWriter{db: db, reqs: make(chan *agentWrite, maxAgentBatch), stop: make(chan struct{})}
	w.wg.Add(1)
	go w.run()
	return w
}

// write queues one update and waits for its commit.
func (w *agentWriter) write(ctx context.Context, r *agentWrite) (int64, error) {
	r.done = make(chan agentResult, 1)
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return 0, fmt.Errorf("update agent %s: store closed", r.id)
	}
	select {
	case w.reqs <- r:
		w.mu.RUnlock()
	case <-ctx.Done():
		w.mu.RUnlock()
		return 0, fmt.Errorf("update agent %s: %w", r.id, ctx.Err())
	}
	// Once queued the update will be applied or fail on its own: wait for
	// that, so the caller's view of the row version stays true.
	res := <-r.done
	return res.n, res.err
}

func (w *agentWriter) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	w.wg.Wait()
	if w.upd != nil {
		w.upd.Close()
	}
}

func (w *agentWriter) run() {
	defer w.wg.Done()
	batch := make([]*agentWrite, 0, maxAgentBatch)
	for {
		select {
		case <-w.stop:
			// Callers that queued before stop still get an answer.
			for {
				select {
				case r := <-w.reqs:
					r.done <- agentResult{err: fmt.Errorf("update agent %s: store closed", r.id)}
				default:
					return
				}
			}
		case r := <-w.reqs:
			batch = append(batch[:0], r)
		}
	fill:
		for len(batch) < maxAgentBatch {
			select {
			case r := <-w.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		w.commit(batch)
	}
}

// commit applies a batch in one transaction; if that fails it applies each
// update alone, so one bad update cannot fail the others.
func (w *agentWriter) commit(batch []*agentWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if len(batch) > 1 {
		ns, err := w.tx(ctx, batch)
		if err == nil {
			for i, r := range batch {
				r.done <- agentResult{n: ns[i]}
			}
			return
		}
	}
	for _, r := range batch {
		ns, err := w.tx(ctx, []*agentWrite{r})
		if err != nil {
			r.done <- agentResult{err: err}
			continue
		}
		r.done <- agentResult{n: ns[0]}
	}
}

func (w *agentWriter) tx(ctx context.Context, batch []*agentWrite) ([]int64, error) {
	// Prepared before the transaction: the writer has one connection,
	// which the transaction then holds.
	if w.upd == nil {
		upd, err := w.db.PrepareContext(ctx, updateAgentSQL)
		if err != nil {
			return nil, fmt.Errorf("prepare agent update: %w", full(err))
		}
		w.upd = upd
	}
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin agent updates: %w", full(err))
	}
	defer tx.Rollback()
	st := tx.StmtContext(ctx, w.upd)
	defer st.Close()
	ns := make([]int64, len(batch))
	for i, r := range batch {
		res, err := st.ExecContext(ctx, r.projectID, r.doc, r.credID, r.credHash, r.version, r.at, r.id, r.prev)
		if err != nil {
			return nil, fmt.Errorf("update agent %s: %w", r.id, full(err))
		}
		ns[i], _ = res.RowsAffected()
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit agent updates: %w", full(err))
	}
	return ns, nil
}
