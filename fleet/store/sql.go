package store

import "strings"

// RowsPerInsert bounds the rows of one multi-row INSERT that a backend
// writes a batch with (at 7 columns, 3,500 parameters: well under
// SQLite's 32,766 and PostgreSQL's 65,535).
const RowsPerInsert = 500

// Values returns the VALUES list of a multi-row INSERT of rows rows of
// cols columns, in ? placeholders: "(?,?),(?,?)" for 2 and 2.
func Values(rows, cols int) string {
	if rows <= 0 || cols <= 0 {
		return ""
	}
	one := "(" + strings.Repeat("?,", cols-1) + "?)"
	var b strings.Builder
	b.Grow(rows * (len(one) + 1))
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(one)
	}
	return b.String()
}

// LastByKey drops all but the last of the items that share a key, keeping
// the order of those kept: one multi-row INSERT … ON CONFLICT DO UPDATE
// may not change a row twice (PostgreSQL refuses it).
func LastByKey[T any](items []T, key func(T) string) []T {
	if len(items) < 2 {
		return items
	}
	last := make(map[string]int, len(items))
	for i, it := range items {
		last[key(it)] = i
	}
	if len(last) == len(items) {
		return items
	}
	out := make([]T, 0, len(last))
	for i, it := range items {
		if last[key(it)] == i {
			out = append(out, it)
		}
	}
	return out
}
