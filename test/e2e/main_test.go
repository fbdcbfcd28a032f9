package e2e

import (
	"testing"

	"github.com/fleetprof/fleetprof/test/fleettest"
)

func TestMain(m *testing.M) { fleettest.Main(m) }
