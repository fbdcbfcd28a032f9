package harness

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestSystemd(t *testing.T) {
	s := StartSystemd(t)
	if err := s.RunUnit(t.Context(), "fleetprof-harness.service", "sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	out, err := s.Exec(t.Context(), "systemctl", "show", "-P", "ControlGroup", "fleetprof-harness.service")
	if err != nil || strings.TrimSpace(out) != s.Cgroup+"/system.slice/fleetprof-harness.service" {
		t.Fatalf("ControlGroup = %q, %v", out, err)
	}
	pid, err := s.MainPID(t.Context(), "fleetprof-harness.service")
	if err != nil {
		t.Fatal(err)
	}
	comm, _ := os.ReadFile("/proc/" + itoa(pid) + "/comm")
	if strings.TrimSpace(string(comm)) != "sleep" {
		t.Errorf("pid %d of the unit is %q, want sleep", pid, comm)
	}
	if err := s.StopUnit(t.Context(), "fleetprof-harness.service"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + itoa(pid)); err == nil {
		t.Errorf("pid %d still alive after stop", pid)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
