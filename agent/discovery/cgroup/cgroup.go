package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Errors returned by the parsers.
var (
	// ErrSyntax means a line of /proc/<pid>/cgroup or mountinfo is malformed.
	ErrSyntax = errors.New("cgroup: syntax error")
)

// Container runtimes named by Container.Runtime.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
)

// Line is one line of /proc/<pid>/cgroup.
type Line struct {
	// Hierarchy is the hierarchy id; 0 is the cgroup v2 unified hierarchy.
	Hierarchy int
	// Controllers are the v1 controllers bound to the hierarchy (for example
	// "cpu", "cpuacct" or "name=systemd"); empty for v2.
	Controllers []string
	// Path is the cgroup path relative to the hierarchy root, starting with "/".
	Path string
}

// ParseProcCgroup parses the content of /proc/<pid>/cgroup. Empty lines are
// skipped; any other malformed line makes it return an error wrapping
// ErrSyntax.
func ParseProcCgroup(b []byte) ([]Line, error) {
	var out []Line
	for n := 1; len(b) > 0; n++ {
		var l []byte
		l, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(l) == 0 {
			continue
		}
		id, rest, ok1 := bytes.Cut(l, []byte{':'})
		ctl, path, ok2 := bytes.Cut(rest, []byte{':'})
		if !ok1 || !ok2 || len(path) == 0 || path[0] != '/' {
			return nil, fmt.Errorf("line %d %q: %w", n, l, ErrSyntax)
		}
		h, err := strconv.Atoi(string(id))
		if err != nil || h < 0 {
			return nil, fmt.Errorf("line %d hierarchy id %q: %w", n, id, ErrSyntax)
		}
		line := Line{Hierarchy: h, Path: string(path)}
		if len(ctl) > 0 {
			line.Controllers = strings.Split(string(ctl), ",")
		}
		out = append(out, line)
	}
	return out, nil
}

// Container is a container found in a cgroup path.
type Container struct {
	// Runtime is RuntimeContainerd, RuntimeCRIO, RuntimeDocker, or "" when the
	// path form does not tell (the bare id of the cgroupfs driver).
	Runtime string
	// ID is the container id: 64 lowercase hex digits.
	ID string
}

// ContainerID returns the container that the deepest container-shaped
// component of a cgroup path names. It understands the forms of the systemd
// cgroup driver (cri-containerd-<id>.scope, crio-<id>.scope,
// docker-<id>.scope) and of the cgroupfs driver (…/kubepods/…/pod<uid>/<id>,
// …/crio-<id>, /docker/<id>), on cgroup v1 and v2 alike. CRI-O's conmon scopes
// are not containers.
func ContainerID(path string) (Container, bool) {
	for path != "" {
		i := strings.LastIndexByte(path, '/')
		elem := path[i+1:]
		if i < 0 {
			path = ""
		} else {
			path = path[:i]
		}
		if c, ok := containerElem(elem, path); ok {
			return c, true
		}
	}
	return Container{}, false
}

// containerElem parses one path component; parent is the path above it.
func containerElem(elem, parent string) (Container, bool) {
	name := strings.TrimSuffix(elem, ".scope")
	scoped := len(name) != len(elem)
	for _, f := range []struct{ prefix, runtime string }{
		{"cri-containerd-", RuntimeContainerd},
		{"crio-", RuntimeCRIO},
		{"docker-", RuntimeDocker},
		{"cri-dockerd-", RuntimeDocker},
	} {
		if id, ok := strings.CutPrefix(name, f.prefix); ok {
			if isID(id) {
				return Container{Runtime: f.runtime, ID: id}, true
			}
			return Container{}, false
		}
	}
	if scoped || !isID(name) {
		return Container{}, false
	}
	c := Container{ID: name}
	if parent == "/docker" || strings.HasSuffix(parent, "/docker") {
		c.Runtime = RuntimeDocker
	}
	return c, true
}

// isID reports whether s is a 64-digit lowercase hex container id.
func isID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// PodUID returns the Kubernetes pod uid in a cgroup path: the "pod<uid>"
// component of the cgroupfs driver or the "kubepods-<qos>-pod<uid>.slice"
// component of the systemd driver (whose underscores stand for dashes).
func PodUID(path string) (string, bool) {
	for elem := range strings.SplitSeq(path, "/") {
		if s, ok := strings.CutSuffix(elem, ".slice"); ok {
			if i := strings.LastIndex(s, "-pod"); i >= 0 && strings.HasPrefix(s, "kubepods") {
				uid := strings.ReplaceAll(s[i+len("-pod"):], "_", "-")
				if uid != "" {
					return uid, true
				}
			}
			continue
		}
		if uid, ok := strings.CutPrefix(elem, "pod"); ok && len(uid) >= 32 && strings.Count(uid, "-") == 4 {
			return uid, true
		}
	}
	return "", false
}

// unitSuffixes are the systemd unit types that hold processes.
var unitSuffixes = []string{".service", ".scope", ".socket", ".mount", ".swap"}

// Unit returns the deepest systemd unit named in a cgroup path (for example
// "nginx.service" in "/system.slice/nginx.service" or
// "docker-<id>.scope" in "/system.slice/docker-<id>.scope").
func Unit(path string) (string, bool) {
	for path != "" {
		i := strings.LastIndexByte(path, '/')
		elem := path[i+1:]
		if i < 0 {
			path = ""
		} else {
			path = path[:i]
		}
		for _, s := range unitSuffixes {
			if len(elem) > len(s) && strings.HasSuffix(elem, s) {
				return elem, true
			}
		}
	}
	return "", false
}

// Mount is a mounted cgroup hierarchy, from /proc/self/mountinfo.
type Mount struct {
	// Point is where it is mounted, for example "/sys/fs/cgroup/unified".
	Point string
	// Root is the cgroup of the hierarchy seen at Point ("/" unless it is a
	// bind mount or inside a cgroup namespace).
	Root string
	// Version is 1 or 2.
	Version int
	// Controllers are the v1 controllers ("cpu", "name=systemd", …); empty for v2.
	Controllers []string
}

// ParseMountInfo returns the cgroup mounts listed in /proc/<pid>/mountinfo.
func ParseMountInfo(b []byte) ([]Mount, error) {
	var out []Mount
	for n := 1; len(b) > 0; n++ {
		var l []byte
		l, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(l) == 0 {
			continue
		}
		pre, post, ok := bytes.Cut(l, []byte(" - "))
		f := strings.Fields(string(pre))
		g := strings.Fields(string(post))
		if !ok || len(f) < 6 || len(g) < 2 {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, ErrSyntax)
		}
		var m Mount
		switch g[0] {
		case "cgroup2":
			m.Version = 2
		case "cgroup":
			m.Version = 1
			if len(g) >= 3 {
				for o := range strings.SplitSeq(g[2], ",") {
					if o == "rw" || o == "ro" || (strings.Contains(o, "=") && !strings.HasPrefix(o, "name=")) ||
						o == "relatime" || o == "nsdelegate" || o == "noprefix" || o == "clone_children" || o == "xattr" {
						continue
					}
					m.Controllers = append(m.Controllers, o)
				}
			}
		default:
			continue
		}
		m.Root = unescape(f[3])
		m.Point = unescape(f[4])
		out = append(out, m)
	}
	return out, nil
}

// unescape decodes mountinfo's octal escapes (\040 for a space, …).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
