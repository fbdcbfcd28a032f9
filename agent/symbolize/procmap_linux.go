package symbolize

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procmapQuery is struct procmap_query of <linux/fs.h> (Linux >= 6.11).
type procmapQuery struct {
	size        uint64
	queryFlags  uint64
	queryAddr   uint64
	vmaStart    uint64
	vmaEnd      uint64
	vmaFlags    uint64
	vmaPageSize uint64
	vmaOffset   uint64
	inode       uint64
	devMajor    uint32
	devMinor    uint32
	vmaNameSize uint32
	buildIDSize uint32
	vmaNameAddr uint64
	buildIDAddr uint64
}

const (
	// procmapQueryIoctl is PROCMAP_QUERY: _IOWR('f', 17, struct procmap_query).
	procmapQueryIoctl = 3<<30 | uint(unsafe.Sizeof(procmapQuery{}))<<16 | 'f'<<8 | 17

	procmapVMAExecutable  = 0x04
	procmapCoveringOrNext = 0x10
)

// errNoProcmapQuery means the kernel has no PROCMAP_QUERY: read the maps
// text instead.
var errNoProcmapQuery = errors.New("PROCMAP_QUERY not supported")

// queryExecMappings returns the executable mappings of the process whose
// maps file f is, asking the kernel for them one by one with PROCMAP_QUERY:
// unlike reading the maps text, the kernel formats nothing for the
// (many more) data mappings. It returns errNoProcmapQuery on kernels
// without the ioctl, the same mappings as ParseMaps otherwise, except
// x86's legacy [vsyscall] page (not a VMA; no file to symbolize).
func queryExecMappings(f *os.File, name []byte) ([]*Mapping, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("maps fd: %w", err)
	}
	var ms []*Mapping
	var qerr error
	cerr := rc.Control(func(fd uintptr) {
		var addr uint64
		for {
			q := procmapQuery{
				size:        uint64(unsafe.Sizeof(procmapQuery{})),
				queryFlags:  procmapVMAExecutable | procmapCoveringOrNext,
				queryAddr:   addr,
				vmaNameSize: uint32(len(name)),
				vmaNameAddr: uint64(uintptr(unsafe.Pointer(&name[0]))),
			}
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(procmapQueryIoctl), uintptr(unsafe.Pointer(&q)))
			switch errno {
			case 0:
			case unix.ENOENT:
				return // no executable mapping at or above addr
			case unix.ENOTTY, unix.EINVAL, unix.EOPNOTSUPP:
				qerr = fmt.Errorf("%w: %w", errNoProcmapQuery, errno)
				return
			default:
				qerr = fmt.Errorf("query mappings: %w", errno)
				return
			}
			m := &Mapping{
				Start:  q.vmaStart,
				Limit:  q.vmaEnd,
				Offset: q.vmaOffset,
				Dev:    fmt.Sprintf("%02x:%02x", q.devMajor, q.devMinor),
				Inode:  q.inode,
			}
			if n := int(q.vmaNameSize); n > 1 && n <= len(name) {
				m.Path = string(name[:n-1]) // without the NUL
			}
			ms = append(ms, m)
			if q.vmaEnd <= addr {
				qerr = fmt.Errorf("query mappings: no progress at %#x", addr)
				return
			}
			addr = q.vmaEnd
		}
	})
	if cerr != nil {
		return nil, fmt.Errorf("maps fd: %w", cerr)
	}
	return ms, qerr
}
