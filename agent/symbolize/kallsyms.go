package symbolize

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

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
	var syms []sym
	var names []byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		addrS, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		typ, name, ok := strings.Cut(rest, " ")
		if !ok || len(typ) != 1 {
			continue
		}
		switch typ[0] {
		case 't', 'T', 'w', 'W':
		default:
			continue
		}
		addr, err := strconv.ParseUint(addrS, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("kallsyms line %q: bad address", line)
		}
		if addr == 0 {
			continue
		}
		// "name\t[module]": keep the name and the module in brackets.
		name = strings.Replace(name, "\t", " ", 1)
		syms = append(syms, sym{addr: addr, off: uint32(len(names))})
		names = append(names, name...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	end := uint32(len(names))
	// Remember each name's end before sorting reorders the offsets.
	type entry struct {
		addr       uint64
		start, end uint32
	}
	es := make([]entry, len(syms))
	for i, s := range syms {
		e := end
		if i+1 < len(syms) {
			e = syms[i+1].off
		}
		es[i] = entry{s.addr, s.off, e}
	}
	slices.SortStableFunc(es, func(a, b entry) int {
		switch {
		case a.addr < b.addr:
			return -1
		case a.addr > b.addr:
			return 1
		}
		return 0
	})
	k := &Kallsyms{addrs: make([]uint64, len(es)), offs: make([]uint32, len(es)+1)}
	k.names = make([]byte, 0, len(names))
	for i, e := range es {
		k.addrs[i] = e.addr
		k.offs[i] = uint32(len(k.names))
		k.names = append(k.names, names[e.start:e.end]...)
	}
	k.offs[len(es)] = uint32(len(k.names))
	return k, nil
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
