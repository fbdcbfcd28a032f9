// Package systemd holds the systemd units and the host install script of
// fleetprof, embedded so that the fleet can serve install.sh to new hosts.
package systemd
