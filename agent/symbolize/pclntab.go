package symbolize

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sort"
)

// Magic numbers of the Go 1.18+ pclntab header.
const (
	pclnMagic118 = 0xfffffff0
	pclnMagic120 = 0xfffffff1
)

var errPclntab = errors.New("unsupported or corrupt pclntab")

// pclntab resolves PCs to function names straight from a Go 1.18+
// pclntab, without allocating per function: a binary search over the
// function table, then one name read.
type pclntab struct {
	data      []byte
	nfunc     int
	textStart uint64
	funcnames []byte
	functab   []byte // nfunc+1 entries of {entryoff, funcoff uint32}
}

func newPclntab(data []byte, textAddr uint64) (*pclntab, error) {
	if len(data) < 8 {
		return nil, errPclntab
	}
	magic := binary.LittleEndian.Uint32(data)
	if (magic != pclnMagic118 && magic != pclnMagic120) || data[4] != 0 || data[5] != 0 {
		return nil, errPclntab
	}
	ptr := int(data[7])
	if (ptr != 8 && ptr != 4) || (data[6] != 1 && data[6] != 2 && data[6] != 4) {
		return nil, errPclntab
	}
	word := func(i int) uint64 {
		off := 8 + i*ptr
		if off+ptr > len(data) {
			return 0
		}
		if ptr == 8 {
			return binary.LittleEndian.Uint64(data[off:])
		}
		return uint64(binary.LittleEndian.Uint32(data[off:]))
	}
	p := &pclntab{data: data, nfunc: int(word(0)), textStart: word(2)}
	if p.textStart == 0 {
		p.textStart = textAddr
	}
	nameOff, pclnOff := word(3), word(7)
	if p.nfunc <= 0 || nameOff >= uint64(len(data)) || pclnOff >= uint64(len(data)) {
		return nil, errPclntab
	}
	p.funcnames = data[nameOff:]
	ftEnd := pclnOff + uint64(p.nfunc+1)*8
	if ftEnd > uint64(len(data)) {
		return nil, errPclntab
	}
	p.functab = data[pclnOff:]
	return p, nil
}

func (p *pclntab) entry(i int) uint32 {
	return binary.LittleEndian.Uint32(p.functab[i*8:])
}

// funcName returns the function containing pc, or "".
func (p *pclntab) funcName(pc uint64) string {
	if pc < p.textStart {
		return ""
	}
	off := pc - p.textStart
	if off >= uint64(p.entry(p.nfunc)) {
		return "" // past the end of text
	}
	i := sort.Search(p.nfunc, func(i int) bool { return uint64(p.entry(i)) > off }) - 1
	if i < 0 {
		return ""
	}
	funcOff := uint64(binary.LittleEndian.Uint32(p.functab[i*8+4:]))
	if funcOff+8 > uint64(len(p.functab)) {
		return ""
	}
	nameOff := int32(binary.LittleEndian.Uint32(p.functab[funcOff+4:]))
	if nameOff < 0 {
		return ""
	}
	return cstring(p.funcnames, uint32(nameOff))
}

// findPclntab looks for a Go 1.18+ pclntab header in a segment of a binary
// whose section headers are gone and checks that its function table is
// sorted, to tell it from a stray magic number.
func findPclntab(seg []byte) []byte {
	for _, magic := range []uint32{pclnMagic120, pclnMagic118} {
		var pat [6]byte
		binary.LittleEndian.PutUint32(pat[:], magic)
		for off := 0; ; {
			i := bytes.Index(seg[off:], pat[:])
			if i < 0 {
				break
			}
			pos := off + i
			off = pos + 1
			if pos%4 != 0 {
				continue
			}
			cand := seg[pos:]
			p, err := newPclntab(cand, 0)
			if err != nil || p.nfunc > 1<<24 {
				continue
			}
			ok := true
			for j := 1; j <= min(p.nfunc, 64) && ok; j++ {
				ok = p.entry(j) >= p.entry(j-1)
			}
			if ok {
				return cand
			}
		}
	}
	return nil
}
