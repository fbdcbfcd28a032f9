// Package version holds the build's version string, set by the linker
// (-X .../internal/version.Version=v1.2.3) in release builds.
package version

// Version is the release version; "dev" for untagged builds.
var Version = "dev"
