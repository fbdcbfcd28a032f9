package systemd

import _ "embed"

// InstallScript is install.sh: it installs (or with --uninstall removes)
// fleetprof-agent as a systemd service. Its line
// `default_fleet_address=""` is where the fleet writes its own URL when it
// serves the script.
//
//go:embed install.sh
var InstallScript []byte

// AgentUnit is fleetprof-agent.service; install.sh carries the same text.
//
//go:embed fleetprof-agent.service
var AgentUnit []byte

// FleetUnit is fleetprof.service, the fleet server as a systemd service.
//
//go:embed fleetprof.service
var FleetUnit []byte
