package s3_test

import (
	"testing"

	"github.com/fleetprof/fleetprof/test/fleettest"
)

func TestMain(m *testing.M) { fleettest.Main(m) }
