package symbolize

import (
	"strings"
	"testing"
)

// FuzzParseMaps checks that arbitrary maps text never panics and that
// accepted mappings are well formed.
func FuzzParseMaps(f *testing.F) {
	f.Add("55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1234   /usr/bin/prog\n")
	f.Fuzz(func(t *testing.T, text string) {
		ms, err := ParseMaps(strings.NewReader(text))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.Limit < m.Start {
				t.Errorf("mapping %+v: limit below start", m)
			}
		}
	})
}

// FuzzParseObject feeds arbitrary bytes to the ELF, build id and pclntab
// readers: binaries come from containers and are not trusted.
func FuzzParseObject(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := parseObject(data, false)
		if err != nil {
			return
		}
		for _, pc := range []uint64{0, 1, 0x401000, 0x4bb508, ^uint64(0)} {
			o.symbol(pc)
			o.vaddr(pc)
		}
		if tab := findPclntab(data); tab != nil {
			if p, err := newPclntab(tab, 0); err == nil {
				p.funcName(0x401000)
			}
		}
	})
}
