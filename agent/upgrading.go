package agent

import (
	"crypto/tls"

	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/agent/control"
	"github.com/fleetprof/fleetprof/agent/upgrade"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/version"
)

// newUpgrader builds the self-upgrade manager of a fleet-managed agent:
// it installs releases the fleet offers (never on Kubernetes, where the
// DaemonSet owns the version).
func (a *Agent) newUpgrader(tlsCfg *tls.Config) (*upgrade.Manager, error) {
	return upgrade.New(upgrade.Options{
		StateDir: a.o.StateDir, FleetURL: a.o.FleetAddress, Version: version.Version, TLSConfig: tlsCfg,
		Kubernetes: a.o.Platform == describe.PlatformKubernetes,
		Credential: func() string {
			if a.ctl == nil {
				return ""
			}
			return a.ctl.Credential()
		},
		Healthy: func() bool {
			st := a.status()
			return st.Ready && st.Control != nil && st.Control.Connected
		},
		Report: func(ps *protobufs.PackageStatuses) {
			if a.ctl != nil {
				a.ctl.SetPackageStatuses(ps)
			}
		},
		Logger: a.log.Named("upgrade"),
	})
}

// withUpgrades routes package offers to the upgrade manager.
func (a *Agent) withUpgrades(cb control.Callbacks) control.Callbacks {
	cb.OnPackages = a.upg.OnPackages
	return cb
}
