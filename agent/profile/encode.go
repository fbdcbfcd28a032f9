package profile

import "encoding/binary"

// Field numbers of profile.proto (perftools.profiles).
const (
	fProfileSampleType        = 1
	fProfileSample            = 2
	fProfileMapping           = 3
	fProfileLocation          = 4
	fProfileFunction          = 5
	fProfileStringTable       = 6
	fProfileTimeNanos         = 9
	fProfileDurationNanos     = 10
	fProfilePeriodType        = 11
	fProfilePeriod            = 12
	fProfileDefaultSampleType = 14

	fValueTypeType = 1
	fValueTypeUnit = 2

	fSampleLocation = 1
	fSampleValue    = 2

	fMappingID           = 1
	fMappingStart        = 2
	fMappingLimit        = 3
	fMappingOffset       = 4
	fMappingFilename     = 5
	fMappingBuildID      = 6
	fMappingHasFunctions = 7

	fLocationID        = 1
	fLocationMappingID = 2
	fLocationAddress   = 3
	fLocationLine      = 4

	fLineFunctionID = 1

	fFunctionID         = 1
	fFunctionName       = 2
	fFunctionSystemName = 3
)

// encoder writes the pprof protobuf of a group (sample types, samples
// without labels, mappings, locations with at most one line, functions),
// reusing its buffers across profiles. Its output parses to the profile
// pprof's own encoder would write for the same content.
type encoder struct {
	buf     []byte
	msg     []byte // a nested message being built
	packed  []byte // a packed repeated field being built
	strs    []string
	strIdx  map[string]int64
	scratch [binary.MaxVarintLen64]byte
}

func (e *encoder) str(s string) int64 {
	if i, ok := e.strIdx[s]; ok {
		return i
	}
	i := int64(len(e.strs))
	e.strs = append(e.strs, s)
	e.strIdx[s] = i
	return i
}

func appendVarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendTag(b []byte, field, wire int) []byte {
	return appendVarint(b, uint64(field)<<3|uint64(wire))
}

// appendUint appends a varint field, omitted when zero (proto3).
func appendUint(b []byte, field int, v uint64) []byte {
	if v == 0 {
		return b
	}
	return appendVarint(appendTag(b, field, 0), v)
}

func appendBytes(b []byte, field int, v []byte) []byte {
	b = appendVarint(appendTag(b, field, 2), uint64(len(v)))
	return append(b, v...)
}

func appendString(b []byte, field int, v string) []byte {
	b = appendVarint(appendTag(b, field, 2), uint64(len(v)))
	return append(b, v...)
}

// marshal returns the encoded profile of g; the slice is valid until the
// next call.
func (e *encoder) marshal(g *group) []byte {
	if e.strIdx == nil {
		e.strIdx = map[string]int64{}
	}
	clear(e.strIdx)
	e.strs = e.strs[:0]
	e.str("")
	b := e.buf[:0]

	valueType := func(field int, typ, unit string) {
		e.msg = appendUint(e.msg[:0], fValueTypeType, uint64(e.str(typ)))
		e.msg = appendUint(e.msg, fValueTypeUnit, uint64(e.str(unit)))
		b = appendBytes(b, field, e.msg)
	}
	valueType(fProfileSampleType, "samples", "count")
	valueType(fProfileSampleType, "cpu", "nanoseconds")
	from := 0
	for _, s := range g.samples {
		e.msg = e.msg[:0]
		e.packed = e.packed[:0]
		for _, id := range g.stacks[from:s.end] {
			e.packed = appendVarint(e.packed, id)
		}
		from = s.end
		if len(e.packed) > 0 {
			e.msg = appendBytes(e.msg, fSampleLocation, e.packed)
		}
		e.packed = appendVarint(e.packed[:0], uint64(s.count))
		e.packed = appendVarint(e.packed, uint64(s.count*g.period))
		e.msg = appendBytes(e.msg, fSampleValue, e.packed)
		b = appendBytes(b, fProfileSample, e.msg)
	}
	for i, m := range g.mappings {
		e.msg = appendUint(e.msg[:0], fMappingID, uint64(i+1))
		e.msg = appendUint(e.msg, fMappingStart, m.start)
		e.msg = appendUint(e.msg, fMappingLimit, m.limit)
		e.msg = appendUint(e.msg, fMappingOffset, m.offset)
		e.msg = appendUint(e.msg, fMappingFilename, uint64(e.str(m.file)))
		e.msg = appendUint(e.msg, fMappingBuildID, uint64(e.str(m.buildID)))
		e.msg = appendUint(e.msg, fMappingHasFunctions, 1)
		b = appendBytes(b, fProfileMapping, e.msg)
	}
	for i, l := range g.locs {
		e.msg = appendUint(e.msg[:0], fLocationID, uint64(i+1))
		e.msg = appendUint(e.msg, fLocationMappingID, uint64(l.mapping))
		e.msg = appendUint(e.msg, fLocationAddress, l.addr)
		if l.fn != 0 {
			e.msg = appendBytes(e.msg, fLocationLine, appendUint(e.scratch[:0], fLineFunctionID, uint64(l.fn)))
		}
		b = appendBytes(b, fProfileLocation, e.msg)
	}
	for i, name := range g.funcs {
		n := uint64(e.str(name))
		e.msg = appendUint(e.msg[:0], fFunctionID, uint64(i+1))
		e.msg = appendUint(e.msg, fFunctionName, n)
		e.msg = appendUint(e.msg, fFunctionSystemName, n)
		b = appendBytes(b, fProfileFunction, e.msg)
	}
	b = appendUint(b, fProfileTimeNanos, uint64(g.start))
	b = appendUint(b, fProfileDurationNanos, uint64(g.dur))
	valueType(fProfilePeriodType, "cpu", "nanoseconds")
	b = appendUint(b, fProfilePeriod, uint64(g.period))
	b = appendUint(b, fProfileDefaultSampleType, uint64(e.str("cpu")))
	// The string table goes last: every index above is assigned by now.
	for _, s := range e.strs {
		b = appendString(b, fProfileStringTable, s)
	}
	e.buf = b
	return b
}
