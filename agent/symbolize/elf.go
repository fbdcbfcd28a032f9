package symbolize

import (
	"bytes"
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
)

// object is the symbol table of one ELF file. data is the whole file,
// memory-mapped read-only where possible; only the pages a lookup touches
// become resident.
type object struct {
	buildID string
	loads   []elf.ProgHeader // PT_LOAD segments
	size    int              // bytes of data, for the cache bound

	// One of these resolves addresses (pclntab preferred).
	pcln *pclntab
	gsym *gosym.Table
	syms []elfSym
	strs []byte // string table of syms

	data   []byte
	mapped bool
}

type elfSym struct {
	addr    uint64
	size    uint64
	nameOff uint32
}

// errNotELF means the file is not a 64-bit little-endian ELF file.
var errNotELF = errors.New("not a 64-bit little-endian ELF file")

// parseObject reads the build id, segments and symbols of an ELF file.
// data must stay valid and unmodified for the object's lifetime; mapped
// says it comes from mapFile, so its pages may be dropped after reading.
func parseObject(data []byte, mapped bool) (*object, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse elf: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return nil, errNotELF
	}
	o := &object{data: data, size: len(data), mapped: mapped}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			o.loads = append(o.loads, p.ProgHeader)
		}
	}
	var goID string
	o.buildID, goID = readBuildID(f, data)
	isGo := goID != "" || f.Section(".go.buildid") != nil

	// Go: .gopclntab by name, or by magic when section headers are gone.
	var textAddr uint64
	if t := f.Section(".text"); t != nil {
		textAddr = t.Addr
	}
	if s := f.Section(".gopclntab"); s != nil && s.Type != elf.SHT_NOBITS && s.Offset+s.Size <= uint64(len(data)) {
		o.setPclntab(data[s.Offset:s.Offset+s.Size], textAddr)
	}
	if isGo && o.pcln == nil && o.gsym == nil && f.Section(".symtab") == nil {
		for _, p := range o.loads {
			if p.Flags&elf.PF_W != 0 || p.Off+p.Filesz > uint64(len(data)) {
				continue
			}
			if tab := findPclntab(data[p.Off : p.Off+p.Filesz]); tab != nil {
				o.setPclntab(tab, textAddr)
				break
			}
		}
	}
	if o.pcln != nil || o.gsym != nil {
		return o, nil
	}
	for _, name := range []string{".symtab", ".dynsym"} {
		if o.readSymtab(f, data, name) {
			break
		}
	}
	return o, nil
}

func (o *object) setPclntab(tab []byte, textAddr uint64) {
	if p, err := newPclntab(tab, textAddr); err == nil {
		o.pcln = p
		return
	}
	// Go before 1.18: the standard library's (allocating) reader.
	if t, err := gosym.NewTable(nil, gosym.NewLineTable(tab, textAddr)); err == nil && len(t.Funcs) > 0 {
		o.gsym = t
	}
}

// readSymtab indexes the function symbols of section name.
func (o *object) readSymtab(f *elf.File, data []byte, name string) bool {
	s := f.Section(name)
	if s == nil || s.Type == elf.SHT_NOBITS || s.Link >= uint32(len(f.Sections)) || s.Offset+s.Size > uint64(len(data)) {
		return false
	}
	str := f.Sections[s.Link]
	if str.Offset+str.Size > uint64(len(data)) {
		return false
	}
	tab := data[s.Offset : s.Offset+s.Size]
	const symSize = 24 // Elf64_Sym
	syms := make([]elfSym, 0, len(tab)/symSize)
	base := int(s.Offset)
	for off := symSize; off+symSize <= len(tab); off += symSize {
		if o.mapped && off%(4<<20) == 0 {
			// Large tables: give back the pages already read.
			dropPages(data, base+off-(4<<20), base+off)
		}
		e := tab[off : off+symSize]
		info := e[4]
		shndx := binary.LittleEndian.Uint16(e[6:])
		if elf.ST_TYPE(info) != elf.STT_FUNC || shndx == uint16(elf.SHN_UNDEF) {
			continue
		}
		addr := binary.LittleEndian.Uint64(e[8:])
		if addr == 0 {
			continue
		}
		syms = append(syms, elfSym{addr: addr, size: binary.LittleEndian.Uint64(e[16:]), nameOff: binary.LittleEndian.Uint32(e[0:])})
	}
	if len(syms) == 0 {
		return false
	}
	slices.SortFunc(syms, func(a, b elfSym) int {
		switch {
		case a.addr < b.addr:
			return -1
		case a.addr > b.addr:
			return 1
		}
		// Prefer the sized symbol among aliases.
		return int(b.size>>63) - int(a.size>>63)
	})
	o.syms = slices.Clone(syms) // drop the unused capacity
	o.strs = data[str.Offset : str.Offset+str.Size]
	return true
}

// vaddr converts a file offset to the ELF virtual address.
func (o *object) vaddr(fileOff uint64) (uint64, bool) {
	for _, p := range o.loads {
		if fileOff >= p.Off && fileOff < p.Off+p.Filesz {
			return fileOff - p.Off + p.Vaddr, true
		}
	}
	return 0, false
}

// symbol returns the function containing ELF virtual address pc.
func (o *object) symbol(pc uint64) string {
	switch {
	case o.pcln != nil:
		return o.pcln.funcName(pc)
	case o.gsym != nil:
		if fn := o.gsym.PCToFunc(pc); fn != nil {
			return fn.Name
		}
		return ""
	}
	i, found := slices.BinarySearchFunc(o.syms, pc, func(s elfSym, pc uint64) int {
		switch {
		case s.addr < pc:
			return -1
		case s.addr > pc:
			return 1
		}
		return 0
	})
	if !found {
		i--
	}
	if i < 0 {
		return ""
	}
	s := o.syms[i]
	if s.size != 0 && pc >= s.addr+s.size {
		return ""
	}
	return cstring(o.strs, s.nameOff)
}

// cstring copies the NUL-terminated string at off.
func cstring(b []byte, off uint32) string {
	if int(off) >= len(b) {
		return ""
	}
	b = b[off:]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// readBuildID returns the build id to report (the GNU one in hex, else the
// Go one) and the Go build id ("" for non-Go files).
func readBuildID(f *elf.File, data []byte) (id, goID string) {
	var gnu string
	scan := func(notes []byte) {
		for len(notes) >= 12 {
			namesz := binary.LittleEndian.Uint32(notes[0:])
			descsz := binary.LittleEndian.Uint32(notes[4:])
			typ := binary.LittleEndian.Uint32(notes[8:])
			nameEnd := 12 + align4(uint64(namesz))
			descEnd := nameEnd + align4(uint64(descsz))
			if descEnd > uint64(len(notes)) || namesz == 0 {
				return
			}
			name := string(bytes.TrimRight(notes[12:12+namesz], "\x00"))
			desc := notes[nameEnd : nameEnd+uint64(descsz)]
			switch {
			case name == "GNU" && typ == 3 && gnu == "":
				gnu = hex.EncodeToString(desc)
			case name == "Go" && typ == 4 && goID == "":
				goID = string(desc)
			}
			notes = notes[descEnd:]
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE && p.Off+p.Filesz <= uint64(len(data)) {
			scan(data[p.Off : p.Off+p.Filesz])
		}
	}
	if gnu == "" || goID == "" {
		for _, s := range f.Sections {
			if s.Type == elf.SHT_NOTE && s.Offset+s.Size <= uint64(len(data)) {
				scan(data[s.Offset : s.Offset+s.Size])
			}
		}
	}
	if gnu != "" {
		return gnu, goID
	}
	return goID, goID
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }
