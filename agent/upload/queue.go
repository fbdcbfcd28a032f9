package upload

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// item is one queued batch, in memory or in a spool file.
type item struct {
	seq   uint64
	size  int64
	batch []Profile // nil while only spooled
	file  string    // spool file, "" for memory items
}

// queue keeps batches in order: memory first, then the spool. Once the
// spool holds anything, new batches go to the spool too, so order is kept.
type queue struct {
	mu       sync.Mutex
	mem      []*item
	memBytes int64
	spool    []*item
	spoolB   int64
	inflight *item
	seq      uint64
	notify   chan struct{}

	maxItems      int
	maxBytes      int64
	spoolDir      string
	maxSpoolBytes int64

	onDrop func(batches, profiles int)
}

func batchSize(b []Profile) int64 {
	var n int64
	for _, p := range b {
		n += int64(len(p.Data)) + 64
		for k, v := range p.Labels {
			n += int64(len(k) + len(v))
		}
	}
	return n
}

// openSpool loads leftover spool files (from a previous run) in order.
func (q *queue) openSpool() error {
	if q.spoolDir == "" {
		return nil
	}
	if err := os.MkdirAll(q.spoolDir, 0o700); err != nil {
		return fmt.Errorf("create spool dir: %w", err)
	}
	ents, err := os.ReadDir(q.spoolDir)
	if err != nil {
		return fmt.Errorf("read spool dir: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		seqStr, ok := strings.CutSuffix(name, ".batch")
		seq, err := strconv.ParseUint(seqStr, 10, 64)
		if !ok || err != nil {
			os.Remove(filepath.Join(q.spoolDir, name)) // temp or foreign file
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		q.spool = append(q.spool, &item{seq: seq, size: info.Size(), file: filepath.Join(q.spoolDir, name)})
		q.spoolB += info.Size()
		q.seq = max(q.seq, seq)
	}
	sort.Slice(q.spool, func(i, j int) bool { return q.spool[i].seq < q.spool[j].seq })
	return nil
}

// push adds a batch; it never blocks on the network and drops the oldest
// batches when the bounds are reached.
func (q *queue) push(b []Profile) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	it := &item{seq: q.seq, size: batchSize(b), batch: b}
	memFull := len(q.mem) >= q.maxItems || len(q.mem) > 0 && q.memBytes+it.size > q.maxBytes
	if q.spoolDir != "" && (len(q.spool) > 0 || memFull) {
		if err := q.writeSpool(it); err == nil {
			q.spool = append(q.spool, it)
			q.spoolB += it.size
			for q.spoolB > q.maxSpoolBytes && len(q.spool) > 1 {
				q.dropLocked(&q.spool)
			}
			q.signal()
			return
		}
		// The spool failed (disk full?): fall back to memory.
	}
	for len(q.mem) > 0 && (len(q.mem) >= q.maxItems || q.memBytes+it.size > q.maxBytes) {
		if !q.dropLocked(&q.mem) {
			break
		}
	}
	q.mem = append(q.mem, it)
	q.memBytes += it.size
	q.signal()
}

// dropLocked drops the oldest item of l that is not in flight.
func (q *queue) dropLocked(l *[]*item) bool {
	for i, it := range *l {
		if it == q.inflight {
			continue
		}
		*l = append((*l)[:i:i], (*l)[i+1:]...)
		q.account(it, -1)
		if it.file != "" {
			os.Remove(it.file)
		}
		n := len(it.batch)
		if it.batch == nil {
			n = -1 // unknown without reading the file
		}
		q.onDrop(1, n)
		return true
	}
	return false
}

func (q *queue) account(it *item, sign int64) {
	if it.file != "" {
		q.spoolB += sign * it.size
	} else {
		q.memBytes += sign * it.size
	}
}

func (q *queue) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *queue) writeSpool(it *item) error {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(it.batch); err != nil {
		return fmt.Errorf("encode spool batch: %w", err)
	}
	name := filepath.Join(q.spoolDir, fmt.Sprintf("%020d.batch", it.seq))
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write spool batch: %w", err)
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write spool batch: %w", err)
	}
	it.file, it.size, it.batch = name, int64(buf.Len()), nil
	return nil
}

// head returns the oldest batch (loading it from the spool) and marks it
// in flight, or nil when the queue is empty.
func (q *queue) head() (*item, []Profile) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		var it *item
		switch {
		case len(q.mem) > 0:
			it = q.mem[0]
		case len(q.spool) > 0:
			it = q.spool[0]
		default:
			return nil, nil
		}
		if it.file == "" {
			q.inflight = it
			return it, it.batch
		}
		var b []Profile
		data, err := os.ReadFile(it.file)
		if err == nil {
			err = gob.NewDecoder(bytes.NewReader(data)).Decode(&b)
		}
		if err != nil { // unreadable spool file: drop it
			q.dropLocked(&q.spool)
			continue
		}
		q.inflight = it
		return it, b
	}
}

// done removes a batch after it was acknowledged (or rejected for good).
func (q *queue) done(it *item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inflight = nil
	for _, l := range []*[]*item{&q.mem, &q.spool} {
		for i, x := range *l {
			if x == it {
				*l = append((*l)[:i:i], (*l)[i+1:]...)
				q.account(it, -1)
				if it.file != "" {
					os.Remove(it.file)
				}
				return
			}
		}
	}
}

// release clears the in-flight mark after a failed send.
func (q *queue) release() {
	q.mu.Lock()
	q.inflight = nil
	q.mu.Unlock()
}

func (q *queue) lens() (mem, spool int, memBytes, spoolBytes int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.mem), len(q.spool), q.memBytes, q.spoolB
}
