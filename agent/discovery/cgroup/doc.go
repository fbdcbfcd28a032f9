// Package cgroup parses cgroup paths and /proc files into what discovery needs:
// container ids, pod uids and systemd units, for cgroup v1 and v2.
package cgroup
