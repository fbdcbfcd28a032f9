package store

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValues(t *testing.T) {
	for _, tc := range []struct {
		rows, cols int
		want       string
	}{
		{0, 3, ""},
		{1, 1, "(?)"},
		{2, 3, "(?,?,?),(?,?,?)"},
	} {
		if got := Values(tc.rows, tc.cols); got != tc.want {
			t.Errorf("Values(%d, %d) = %q, want %q", tc.rows, tc.cols, got, tc.want)
		}
	}
}

func TestLastByKey(t *testing.T) {
	type kv struct{ k, v string }
	key := func(x kv) string { return x.k }
	in := []kv{{"a", "1"}, {"b", "1"}, {"a", "2"}, {"c", "1"}, {"b", "2"}}
	want := []kv{{"a", "2"}, {"c", "1"}, {"b", "2"}}
	if diff := cmp.Diff(want, LastByKey(in, key), cmp.AllowUnexported(kv{})); diff != "" {
		t.Errorf("LastByKey (-want +got):\n%s", diff)
	}
	uniq := []kv{{"a", "1"}, {"b", "1"}}
	if got := LastByKey(uniq, key); &got[0] != &uniq[0] {
		t.Error("LastByKey copied a list without repeated keys")
	}
}
