package upgrade

import (
	"context"
	"errors"
	"io"

	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
)

// errSelfManaged: opamp-go's own package syncer is not used; Manager
// downloads, verifies and installs offers itself.
var errSelfManaged = errors.New("packages are installed by the agent's upgrade manager, not by the OpAMP syncer")

// StateProvider lets the OpAMP client advertise AcceptsPackages (opamp-go
// requires a types.PackagesStateProvider for it) and report the manager's
// last package statuses on every connect. Syncing through it is refused:
// Manager installs offers.
func (m *Manager) StateProvider() types.PackagesStateProvider { return provider{m} }

type provider struct{ m *Manager }

var _ types.PackagesStateProvider = provider{}

func (provider) AllPackagesHash() ([]byte, error)                  { return nil, nil }
func (provider) SetAllPackagesHash([]byte) error                   { return nil }
func (provider) Packages() ([]string, error)                       { return nil, nil }
func (provider) SetPackageState(string, types.PackageState) error  { return errSelfManaged }
func (provider) CreatePackage(string, protobufs.PackageType) error { return errSelfManaged }
func (provider) FileContentHash(string) ([]byte, error)            { return nil, nil }
func (provider) DeletePackage(string) error                        { return errSelfManaged }
func (provider) PackageState(string) (types.PackageState, error) {
	return types.PackageState{}, nil
}
func (provider) UpdateContent(context.Context, string, io.Reader, []byte, []byte) error {
	return errSelfManaged
}
func (p provider) LastReportedStatuses() (*protobufs.PackageStatuses, error) {
	return p.m.LastStatuses(), nil
}
func (provider) SetLastReportedStatuses(*protobufs.PackageStatuses) error { return nil }
