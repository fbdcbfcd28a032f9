package symbolize

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Mapping is one executable mapping of a process.
type Mapping struct {
	Start, Limit uint64 // [Start, Limit) in the process
	Offset       uint64 // file offset of Start
	// Dev and Inode identify the file ("08:01", 1234); Inode 0 for
	// anonymous and special mappings ([vdso], JIT code).
	Dev   string
	Inode uint64
	Path  string // as the process sees it; "" for anonymous
	// BuildID is the GNU build id in hex, or the Go build id; "" when the
	// file has none or could not be read.
	BuildID string

	obj *object
}

// Deleted reports whether the file was deleted after being mapped.
func (m *Mapping) Deleted() bool { return strings.HasSuffix(m.Path, " (deleted)") }

// ParseMaps reads the /proc/<pid>/maps format and returns the executable
// mappings in address order.
func ParseMaps(r io.Reader) ([]*Mapping, error) {
	var ms []*Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 16*1024), 1024*1024)
	for sc.Scan() {
		// Most lines are data mappings: skip them before splitting.
		raw := sc.Bytes()
		if sp := bytes.IndexByte(raw, ' '); sp >= 0 && sp+3 < len(raw) && raw[sp+3] != 'x' {
			continue
		}
		line := string(raw)
		f := strings.Fields(line)
		if len(f) < 5 {
			return nil, fmt.Errorf("maps line %q: too few fields", line)
		}
		if len(f[1]) < 3 || f[1][2] != 'x' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %q: bad range", line)
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		limit, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(f[2], 16, 64)
		ino, err4 := strconv.ParseUint(f[4], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || limit < start {
			return nil, fmt.Errorf("maps line %q: bad numbers", line)
		}
		m := &Mapping{Start: start, Limit: limit, Offset: off, Dev: f[3], Inode: ino}
		if len(f) > 5 {
			// The path is the rest of the line after the inode field,
			// and may contain spaces.
			idx := strings.Index(line, f[5])
			m.Path = line[idx:]
		}
		ms = append(ms, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read maps: %w", err)
	}
	return ms, nil
}

// find returns the mapping containing addr, or nil.
func find(ms []*Mapping, addr uint64) *Mapping {
	lo, hi := 0, len(ms)
	for lo < hi {
		mid := (lo + hi) / 2
		switch {
		case addr < ms[mid].Start:
			hi = mid
		case addr >= ms[mid].Limit:
			lo = mid + 1
		default:
			return ms[mid]
		}
	}
	return nil
}
