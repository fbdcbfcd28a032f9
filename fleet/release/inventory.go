package release

import (
	"context"
	"sort"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/describe"
)

// VersionCount is how many agents run one version on one platform.
type VersionCount struct {
	Version  string `json:"version"`
	Platform string `json:"platform"`
	// Cluster and Image are set for Kubernetes agents (one row per
	// cluster and image).
	Cluster   string `json:"cluster,omitempty"`
	Image     string `json:"image,omitempty"`
	ManagedBy string `json:"managedBy"` // "DaemonSet" or "fleet"
	Agents    int    `json:"agents"`
	Connected int    `json:"connected"`
}

// Inventory is the versions across a project's fleet at a glance.
type Inventory struct {
	Total    int             `json:"total"`
	Versions []*VersionCount `json:"versions"`
}

// Versions counts a project's agents per version and platform (and per
// cluster and image on Kubernetes).
func (m *Manager) Versions(ctx context.Context, projectID string) (*Inventory, error) {
	return Versions(ctx, m.st, projectID)
}

// Versions counts a project's agents per version and platform.
func Versions(ctx context.Context, st store.Agents, projectID string) (*Inventory, error) {
	agents, err := st.ListAgents(ctx, store.AgentFilter{ProjectID: projectID})
	if err != nil {
		return nil, err
	}
	inv := &Inventory{Total: len(agents), Versions: []*VersionCount{}}
	by := map[VersionCount]*VersionCount{}
	for _, a := range agents {
		k := VersionCount{Version: a.Version, Platform: a.Platform, ManagedBy: "fleet"}
		if a.Platform == describe.PlatformKubernetes {
			k.ManagedBy = "DaemonSet"
			k.Cluster = a.Labels["cluster"]
			k.Image = a.Description[describe.KeyImage]
		}
		vc := by[k]
		if vc == nil {
			cp := k
			vc = &cp
			by[k] = vc
			inv.Versions = append(inv.Versions, vc)
		}
		vc.Agents++
		if a.Connected {
			vc.Connected++
		}
	}
	sort.Slice(inv.Versions, func(i, j int) bool {
		a, b := inv.Versions[i], inv.Versions[j]
		if a.Platform != b.Platform {
			return a.Platform < b.Platform
		}
		if a.Version != b.Version {
			return a.Version < b.Version
		}
		return a.Cluster+a.Image < b.Cluster+b.Image
	})
	return inv, nil
}
