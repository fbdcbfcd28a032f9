package profile

import (
	"encoding/binary"

	pprof "github.com/google/pprof/profile"
)

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

// encoder writes the pprof protobuf of the profiles the builder makes
// (sample types, samples without labels, mappings, locations with one
// line, functions), reusing its buffers across profiles. It writes what
// pprof's own encoder would, without building its intermediate tables.
type encoder struct {
	buf     []byte
	msg     []byte // a nested message being built
	packed  []byte // a packed repeated field being built
	strs    []string
	strIdx  map[string]int64
	locIDs  []uint64
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

// marshal returns the encoded profile; the slice is valid until the next
// call. IDs must be set.
func (e *encoder) marshal(p *pprof.Profile) []byte {
	if e.strIdx == nil {
		e.strIdx = map[string]int64{}
	}
	clear(e.strIdx)
	e.strs = e.strs[:0]
	e.str("")
	b := e.buf[:0]

	valueType := func(field int, vt *pprof.ValueType) {
		e.msg = appendUint(e.msg[:0], fValueTypeType, uint64(e.str(vt.Type)))
		e.msg = appendUint(e.msg, fValueTypeUnit, uint64(e.str(vt.Unit)))
		b = appendBytes(b, field, e.msg)
	}
	for _, st := range p.SampleType {
		valueType(fProfileSampleType, st)
	}
	for _, s := range p.Sample {
		e.msg = e.msg[:0]
		e.packed = e.packed[:0]
		for _, l := range s.Location {
			e.packed = appendVarint(e.packed, l.ID)
		}
		if len(e.packed) > 0 {
			e.msg = appendBytes(e.msg, fSampleLocation, e.packed)
		}
		e.packed = e.packed[:0]
		for _, v := range s.Value {
			e.packed = appendVarint(e.packed, uint64(v))
		}
		if len(e.packed) > 0 {
			e.msg = appendBytes(e.msg, fSampleValue, e.packed)
		}
		b = appendBytes(b, fProfileSample, e.msg)
	}
	for _, m := range p.Mapping {
		e.msg = appendUint(e.msg[:0], fMappingID, m.ID)
		e.msg = appendUint(e.msg, fMappingStart, m.Start)
		e.msg = appendUint(e.msg, fMappingLimit, m.Limit)
		e.msg = appendUint(e.msg, fMappingOffset, m.Offset)
		e.msg = appendUint(e.msg, fMappingFilename, uint64(e.str(m.File)))
		e.msg = appendUint(e.msg, fMappingBuildID, uint64(e.str(m.BuildID)))
		if m.HasFunctions {
			e.msg = appendUint(e.msg, fMappingHasFunctions, 1)
		}
		b = appendBytes(b, fProfileMapping, e.msg)
	}
	for _, l := range p.Location {
		e.msg = appendUint(e.msg[:0], fLocationID, l.ID)
		if l.Mapping != nil {
			e.msg = appendUint(e.msg, fLocationMappingID, l.Mapping.ID)
		}
		e.msg = appendUint(e.msg, fLocationAddress, l.Address)
		for _, ln := range l.Line {
			var line []byte
			if ln.Function != nil {
				line = appendUint(e.scratch[:0], fLineFunctionID, ln.Function.ID)
			}
			e.msg = appendBytes(e.msg, fLocationLine, line)
		}
		b = appendBytes(b, fProfileLocation, e.msg)
	}
	for _, f := range p.Function {
		e.msg = appendUint(e.msg[:0], fFunctionID, f.ID)
		e.msg = appendUint(e.msg, fFunctionName, uint64(e.str(f.Name)))
		e.msg = appendUint(e.msg, fFunctionSystemName, uint64(e.str(f.SystemName)))
		b = appendBytes(b, fProfileFunction, e.msg)
	}
	b = appendUint(b, fProfileTimeNanos, uint64(p.TimeNanos))
	b = appendUint(b, fProfileDurationNanos, uint64(p.DurationNanos))
	if p.PeriodType != nil {
		valueType(fProfilePeriodType, p.PeriodType)
	}
	b = appendUint(b, fProfilePeriod, uint64(p.Period))
	if p.DefaultSampleType != "" {
		b = appendUint(b, fProfileDefaultSampleType, uint64(e.str(p.DefaultSampleType)))
	}
	// The string table goes last: every index above is assigned by now.
	for _, s := range e.strs {
		b = appendString(b, fProfileStringTable, s)
	}
	e.buf = b
	return b
}
