// Command gocpu is a test workload for the sampler: it burns CPU in
// burnAlpha and burnBeta with a 3:1 split. Tests build it stripped
// (-ldflags=-s -w) to check that Go symbols come from .gopclntab. It exits
// after the number of seconds given as its first argument (default 120).
package main

import (
	"os"
	"strconv"
	"time"
)

const unit = 20000

var sink uint64

//go:noinline
func burnAlpha(n int) {
	x := sink
	for i := range n {
		x = x*6364136223846793005 + uint64(i)
	}
	sink = x
}

//go:noinline
func burnBeta(n int) {
	x := sink
	for i := range n {
		x = x*2862933555777941757 + uint64(i)
	}
	sink = x
}

func main() {
	seconds := 120
	if len(os.Args) > 1 {
		if s, err := strconv.Atoi(os.Args[1]); err == nil && s > 0 {
			seconds = s
		}
	}
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for i := 0; ; i++ {
		burnAlpha(3 * unit)
		burnBeta(unit)
		if i%256 == 0 && time.Now().After(deadline) {
			return
		}
	}
}
