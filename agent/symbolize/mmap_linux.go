package symbolize

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// mapFile maps a file read-only. Only the pages that lookups touch become
// resident, and the kernel may drop them again under memory pressure.
func mapFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() || st.Size() < 64 {
		return nil, fmt.Errorf("%s: not a regular ELF-sized file", path)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return data, nil
}

func unmapFile(data []byte) { _ = unix.Munmap(data) }

// manageObject unmaps the object's file when the object becomes
// unreachable (evicted from the cache and no snapshot refers to it), and
// drops the pages parsing touched from this process's resident set.
func manageObject(o *object) {
	_ = unix.Madvise(o.data, unix.MADV_DONTNEED)
	runtime.AddCleanup(o, unmapFile, o.data)
}

// dropPages removes the whole pages of data[from:to] from the resident set
// (they fault back in from the page cache if read again). data must start
// on a page boundary, as mappings from mapFile do.
func dropPages(data []byte, from, to int) {
	page := os.Getpagesize()
	from = (max(from, 0) + page - 1) / page * page
	to = min(to, len(data)) / page * page
	if from < to {
		_ = unix.Madvise(data[from:to], unix.MADV_DONTNEED)
	}
}
