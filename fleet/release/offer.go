package release

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strings"

	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// DownloadPath is where the fleet serves an uploaded release's binary to
// agents (bearer agent credential).
func DownloadPath(version string) string {
	return "/api/v1/releases/" + url.PathEscape(version) + "/download"
}

// DownloadURL is the URL an agent downloads rel from.
func DownloadURL(fleetURL string, rel *store.Release) string {
	if rel.URL != "" {
		return rel.URL
	}
	return strings.TrimSuffix(fleetURL, "/") + DownloadPath(rel.Version)
}

// Offer builds the PackagesAvailable message that offers rel as the
// agent's top-level package (name "" per the OpAMP spec), with the
// binary's sha256 as content_hash and the release signature.
func Offer(fleetURL string, rel *store.Release) *protobufs.PackagesAvailable {
	sum, _ := hex.DecodeString(rel.SHA256)
	ph := sha256.Sum256([]byte("package\x00" + rel.Version + "\x00" + rel.SHA256))
	all := sha256.Sum256(ph[:])
	return &protobufs.PackagesAvailable{
		Packages: map[string]*protobufs.PackageAvailable{
			"": {
				Type:    protobufs.PackageType_PackageType_TopLevel,
				Version: rel.Version,
				File: &protobufs.DownloadableFile{
					DownloadUrl: DownloadURL(fleetURL, rel),
					ContentHash: sum,
					Signature:   rel.Signature,
				},
				Hash: ph[:],
			},
		},
		AllPackagesHash: all[:],
	}
}
