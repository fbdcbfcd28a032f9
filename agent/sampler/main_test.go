package sampler

import (
	"testing"

	"github.com/fleetprof/fleetprof/internal/testutil"
)

func TestMain(m *testing.M) { testutil.MainFDLeakCheck(m) }
