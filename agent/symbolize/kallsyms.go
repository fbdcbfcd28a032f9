package symbolize

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
)

var errBadHex = errors.New("bad hex address")

func parseHex(b []byte) (uint64, error) {
	if len(b) == 0 || len(b) > 16 {
		return 0, errBadHex
	}
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, errBadHex
		}
		v = v<<4 | uint64(c)
	}
	return v, nil
}

// Kallsyms is a sorted, compact table of kernel text symbols.
type Kallsyms struct {
	addrs []uint64
	offs  []uint32 // start of each name in names
	names []byte
}

// ParseKallsyms reads the /proc/kallsyms format ("addr type name [module]")
// and keeps text symbols (t, T, w, W). A table whose addresses are all
// zero (kptr_restrict) yields an empty table.
func ParseKallsyms(r io.Reader) (*Kallsyms, error) {
	type sym struct {
		addr uint64
		off  uint32
	}
	syms := make([]sym, 0, 1<<16)
	names := make([]byte, 0, 2<<20)
	// Kernels built with call padding put a "__pfx_<fn>" (or, with kCFI,
	// "__cfi_<fn>") symbol on the padding right before each function:
	// half of all text symbols. The padding is stored under the
	// function's own name and the function then needs no entry of its
	// own, which halves the table and attributes the padding correctly.
	pending := -1     // index in syms of the last padding symbol
	var merged uint64 // address of the last function merged into one
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		// "addr type name[\tmodule]", parsed without allocating.
		line := sc.Bytes()
		sp := bytes.IndexByte(line, ' ')
		if sp < 0 || len(line) < sp+4 || line[sp+2] != ' ' {
			continue
		}
		switch line[sp+1] {
		case 't', 'T', 'w', 'W':
		default:
			continue
		}
		addr, err := parseHex(line[:sp])
		if err != nil {
			return nil, fmt.Errorf("kallsyms line %q: %w", line, err)
		}
		if addr == 0 {
			continue
		}
		if addr == merged {
			continue // an alias of a function merged with its padding
		}
		name := line[sp+3:]
		pad := bytes.HasPrefix(name, []byte("__pfx_")) || bytes.HasPrefix(name, []byte("__cfi_"))
		if pad {
			name = name[len("__pfx_"):]
		}
		off := len(names)
		if tab := bytes.IndexByte(name, '\t'); tab >= 0 {
			// Keep the module in brackets: "name [module]".
			names = append(names, name[:tab]...)
			names = append(names, ' ')
			names = append(names, name[tab+1:]...)
		} else {
			names = append(names, name...)
		}
		if !pad && pending >= 0 {
			p := syms[pending]
			pending = -1
			if p.addr < addr && bytes.Equal(names[p.off:off], names[off:]) {
				names = names[:off]
				merged = addr
				continue
			}
		}
		if pad {
			pending = len(syms)
		}
		syms = append(syms, sym{addr: addr, off: uint32(off)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	k := &Kallsyms{addrs: make([]uint64, len(syms)), offs: make([]uint32, len(syms)+1)}
	sorted := true
	for i, sy := range syms {
		k.addrs[i] = sy.addr
		k.offs[i] = sy.off
		sorted = sorted && (i == 0 || syms[i-1].addr <= sy.addr)
	}
	k.offs[len(syms)] = uint32(len(names))
	k.names = slices.Clone(names)
	if !sorted {
		k.sort()
	}
	return k, nil
}

// sort orders the table by address, keeping the file order of symbols
// that share an address.
func (k *Kallsyms) sort() {
	idx := make([]int32, len(k.addrs))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortStableFunc(idx, func(a, b int32) int {
		switch {
		case k.addrs[a] < k.addrs[b]:
			return -1
		case k.addrs[a] > k.addrs[b]:
			return 1
		}
		return 0
	})
	addrs := make([]uint64, len(idx))
	offs := make([]uint32, len(idx)+1)
	names := make([]byte, 0, len(k.names))
	for i, j := range idx {
		addrs[i] = k.addrs[j]
		offs[i] = uint32(len(names))
		names = append(names, k.names[k.offs[j]:k.offs[j+1]]...)
	}
	offs[len(idx)] = uint32(len(names))
	k.addrs, k.offs, k.names = addrs, offs, names
}

// Len returns the number of symbols.
func (k *Kallsyms) Len() int { return len(k.addrs) }

// Lookup returns the symbol containing addr: the last one at or below it.
func (k *Kallsyms) Lookup(addr uint64) (string, bool) {
	i, found := slices.BinarySearch(k.addrs, addr)
	if !found {
		i--
	}
	if i < 0 || len(k.addrs) == 0 {
		return "", false
	}
	// Several symbols may share an address: take the first.
	for i > 0 && k.addrs[i-1] == k.addrs[i] {
		i--
	}
	return string(k.names[k.offs[i]:k.offs[i+1]]), true
}
