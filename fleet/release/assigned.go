package release

import (
	"sync"
	"unique"
)

// assigned is the manager's memory of which agents have a release
// assignment, and for which version, so that a status report of an agent
// with none, or one that runs its assigned version, costs no store read
// (a config push to 19,000 agents is 19,000 reports or more; a restart is
// 19,000, and almost no agent has a release assignment). Only agents that
// have an assignment are kept, with interned version strings.
//
// It is kept current by the manager's own writes (stage starts,
// rollbacks), by every store read of an assignment (the checks that
// AssignmentChanged queues for another replica's writes), and by a
// periodic listing (Manager.sync). Until the first listing has succeeded
// it knows nothing and every report is read from the store.
type assigned struct {
	mu       sync.Mutex
	ready    bool
	versions map[string]unique.Handle[string] // agent id → assigned version
	// listing is set while a listing is in flight; touched holds the
	// agents set or dropped meanwhile, whose entries the listing (read
	// before or during those writes) must not overwrite.
	listing bool
	touched map[string]struct{}
}

// lookup returns the version assigned to agent id ("" for none); known
// is false until the first listing.
func (c *assigned) lookup(id string) (version string, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready {
		return "", false
	}
	v, ok := c.versions[id]
	if !ok {
		return "", true
	}
	return v.Value(), true
}

// set records that agent id is assigned version.
func (c *assigned) set(id, version string) {
	h := unique.Make(version)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.versions == nil {
		c.versions = map[string]unique.Handle[string]{}
	}
	c.versions[id] = h
	if c.listing {
		c.touched[id] = struct{}{}
	}
}

// drop records that agent id has no assignment.
func (c *assigned) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.versions, id)
	if c.listing {
		c.touched[id] = struct{}{}
	}
}

// begin starts a listing: writes from now on win over it.
func (c *assigned) begin() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listing, c.touched = true, map[string]struct{}{}
}

// abort ends a listing that failed; the memory stays as it was.
func (c *assigned) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listing, c.touched = false, nil
}

// replace ends a listing: all (agent id → version, as listed) becomes the
// memory, except for the agents touched since begin. It returns the
// agents whose assignment appeared or changed, and those that lost it.
func (c *assigned) replace(all map[string]unique.Handle[string]) (changed, dropped []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.touched {
		if v, ok := c.versions[id]; ok {
			all[id] = v
		} else {
			delete(all, id)
		}
	}
	for id, v := range all {
		if old, ok := c.versions[id]; !ok || old != v || !c.ready {
			changed = append(changed, id)
		}
	}
	for id := range c.versions {
		if _, ok := all[id]; !ok {
			dropped = append(dropped, id)
		}
	}
	c.versions, c.ready, c.listing, c.touched = all, true, false, nil
	return changed, dropped
}

// size is how many agents have an assignment.
func (c *assigned) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.versions)
}
