package discovery

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/fleetprof/fleetprof/agent/discovery/cgroup"
)

// CgroupFS reads the mounted cgroup hierarchy that tracks processes: the v2
// hierarchy if one is mounted (pure v2 or hybrid), else the v1 name=systemd
// one, else the first v1 controller.
type CgroupFS struct {
	// Root is the directory of the hierarchy root, for example
	// "/sys/fs/cgroup" or "/sys/fs/cgroup/unified".
	Root string
	// Version is 1 or 2.
	Version int
}

// DetectCgroupFS picks the hierarchy from procRoot/self/mountinfo; procRoot
// "" means "/proc".
func DetectCgroupFS(procRoot string) (*CgroupFS, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	b, err := os.ReadFile(filepath.Join(procRoot, "self", "mountinfo"))
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	mounts, err := cgroup.ParseMountInfo(b)
	if err != nil {
		return nil, fmt.Errorf("parse mountinfo: %w", err)
	}
	var best *cgroup.Mount
	rank := func(m *cgroup.Mount) int {
		switch {
		case m.Root != "/":
			return 0
		case m.Version == 2:
			return 3
		case len(m.Controllers) == 1 && m.Controllers[0] == "name=systemd":
			return 2
		default:
			return 1
		}
	}
	for i := range mounts {
		if best == nil || rank(&mounts[i]) > rank(best) {
			best = &mounts[i]
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no cgroup hierarchy mounted: %w", ErrNotSupported)
	}
	return &CgroupFS{Root: best.Point, Version: best.Version}, nil
}

// PIDs returns the processes in a cgroup (path relative to the hierarchy
// root) and in all cgroups below it. A cgroup that does not exist has none.
func (c *CgroupFS) PIDs(path string) ([]int, error) {
	var pids []int
	root := filepath.Join(c.Root, filepath.FromSlash(path))
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && os.IsNotExist(err) {
				return filepath.SkipAll
			}
			return nil // a cgroup removed while walking
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for f := range bytes.FieldsSeq(b) {
			if pid, err := strconv.Atoi(string(f)); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk cgroup %s: %w", path, err)
	}
	return pids, nil
}

// Containers walks the hierarchy and returns, for each container id found in
// a cgroup name, the cgroup paths (relative to the root) that hold it,
// outermost first. It looks at most maxDepth directories below the root.
func (c *CgroupFS) Containers() (map[string][]string, error) {
	out := map[string][]string{}
	err := filepath.WalkDir(c.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == c.Root {
				return err
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		rel := strings.TrimPrefix(p, c.Root)
		if rel == "" {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if strings.Count(rel, "/") > maxDepth {
			return filepath.SkipDir
		}
		name := d.Name()
		if len(name) < 64 {
			return nil
		}
		if ct, ok := cgroup.ContainerID("/" + name); ok {
			if len(out[ct.ID]) == 0 || !strings.HasPrefix(rel, out[ct.ID][0]+"/") {
				out[ct.ID] = append(out[ct.ID], rel)
			}
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk cgroups under %s: %w", c.Root, err)
	}
	return out, nil
}

// maxDepth is how deep Containers looks for container cgroups.
const maxDepth = 8
