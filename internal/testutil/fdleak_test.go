package testutil

import (
	"os"
	"testing"
)

func TestLeakedFDs(t *testing.T) {
	before, err := OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	leaked, err := leakedFDs(before)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaked) != 1 {
		t.Errorf("leaked = %q, want the one open file", leaked)
	}
	f.Close()
	leaked, err = leakedFDs(before)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaked) != 0 {
		t.Errorf("leaked after close = %q, want none", leaked)
	}
}
