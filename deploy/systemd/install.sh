#!/bin/sh
# install.sh: install fleetprof-agent on a systemd host, or remove it.
#
#   curl -fsSL https://FLEET/install.sh | sudo sh -s -- \
#     --fleet-address https://FLEET --bootstrap-token TOKEN
#   curl -fsSL https://FLEET/install.sh | sudo sh -s -- --uninstall
#
# Idempotent: run it again to upgrade the binary and the unit or to change
# settings (the agent keeps its enrolled credential). POSIX sh; needs root,
# systemd as PID 1, and curl or wget unless --binary is given.
set -eu

# The fleet that serves this script writes its own URL here.
default_fleet_address=""

bin=/usr/local/bin/fleetprof-agent
unit=/etc/systemd/system/fleetprof-agent.service
conf=/etc/fleetprof
env_file=$conf/agent.env
token_path=$conf/bootstrap-token
ca_path=$conf/fleet-ca.pem
state=/var/lib/fleetprof-agent
service=fleetprof-agent.service

usage() {
	cat <<'USAGE'
Usage: install.sh [options]
       install.sh --uninstall

  --fleet-address URL         the fleet (https://host:port; http:// implies --insecure)
  --bootstrap-token TOKEN     enroll token (needed for a host that has not enrolled yet)
  --bootstrap-token-file FILE read the token from FILE instead
  --cluster NAME              cluster label of this agent
  --labels k=v,...            custom labels (rollout selectors match on them)
  --tls-ca-file FILE          CA bundle that signed the fleet's certificate
  --insecure                  allow a plaintext (http://) fleet address
  --agent-args "ARGS"         more fleetprof-agent flags, space-separated
  --binary FILE               install this fleetprof-agent instead of downloading
                              it from FLEET/download/fleetprof-agent
  --no-start                  install and enable, but do not (re)start
  --uninstall                 stop and remove the agent, its unit, settings,
                              token and state
USAGE
}

say() { printf 'fleetprof: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# plain VALUE NAME: refuse characters that do not survive agent.env.
plain() {
	case $1 in
	*[\"\'\\\$\`]* | *"
"*) die "$2 must not contain quotes, backslashes, \$, backticks or newlines" ;;
	esac
}

fleet_address=$default_fleet_address
token=""
token_file=""
binary=""
cluster=""
labels=""
ca_file=""
agent_args=""
insecure=""
uninstall=""
start=yes
while [ $# -gt 0 ]; do
	opt=$1
	shift
	has_val=""
	val=""
	case $opt in
	--*=*)
		val=${opt#*=}
		opt=${opt%%=*}
		has_val=yes
		;;
	esac
	case $opt in
	--uninstall) uninstall=yes; continue ;;
	--insecure) insecure=yes; continue ;;
	--no-start) start=""; continue ;;
	-h | --help) usage; exit 0 ;;
	--fleet-address | --bootstrap-token | --bootstrap-token-file | --binary | --cluster | --labels | --tls-ca-file | --agent-args) ;;
	*) die "unknown option $opt (see --help)" ;;
	esac
	if [ -z "$has_val" ]; then
		[ $# -gt 0 ] || die "$opt needs a value"
		val=$1
		shift
	fi
	case $opt in
	--fleet-address) fleet_address=$val ;;
	--bootstrap-token) token=$val ;;
	--bootstrap-token-file) token_file=$val ;;
	--binary) binary=$val ;;
	--cluster) cluster=$val ;;
	--labels) labels=$val ;;
	--tls-ca-file) ca_file=$val ;;
	--agent-args) agent_args=$val ;;
	esac
done

[ "$(id -u)" = 0 ] || die "run as root (sudo sh -s -- ...)"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this script is for systemd hosts"
[ -d /run/systemd/system ] || die "systemd is not running as PID 1 here"

if [ -n "$uninstall" ]; then
	systemctl disable --now "$service" >/dev/null 2>&1 || true
	rm -f "$unit" "$unit.new"
	systemctl daemon-reload
	systemctl reset-failed "$service" >/dev/null 2>&1 || true
	rm -f "$bin" "$bin.new" "$bin.prev" "$bin.download" "$env_file" "$env_file.new" "$token_path" "$token_path.new" "$ca_path"
	# /etc/fleetprof stays when a fleet server on this host keeps fleet.env there.
	rmdir "$conf" 2>/dev/null || true
	rm -rf "$state"
	say "fleetprof-agent removed (revoke it in the fleet: fleetprof agents revoke --project P ID)"
	exit 0
fi

# Settings of an earlier install are the defaults of this one.
old_fleet_address=""
if [ -f "$env_file" ]; then
	old_fleet_address=$(sed -n 's/^FLEETPROF_FLEET_ADDRESS=//p' "$env_file")
fi
[ -n "$fleet_address" ] || fleet_address=$old_fleet_address
[ -n "$fleet_address" ] || die "--fleet-address is required"
fleet_address=${fleet_address%/}
plain "$fleet_address" --fleet-address
case $fleet_address in
https://*) ;;
http://*)
	if [ -z "$insecure" ]; then
		say "warning: $fleet_address is plaintext HTTP; adding --insecure (use https:// outside a lab)"
		insecure=yes
	fi
	;;
*) die "--fleet-address must start with https:// or http://" ;;
esac
if [ -n "$token_file" ]; then
	[ -r "$token_file" ] || die "cannot read $token_file"
	token=$(cat "$token_file")
fi
token=$(printf '%s' "$token" | tr -d ' \t\r\n')
if [ -z "$token" ] && [ ! -s "$token_path" ]; then
	die "--bootstrap-token is required (create one: fleetprof token create --project P --name N --scope enroll)"
fi
for v in "$cluster" "$labels" "$agent_args"; do plain "$v" "--cluster, --labels and --agent-args"; done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# The binary: a local file, or the fleet's copy.
if [ -n "$binary" ]; then
	[ -f "$binary" ] || die "--binary $binary: no such file"
	cp "$binary" "$tmp/fleetprof-agent"
else
	url=$fleet_address/download/fleetprof-agent
	say "downloading $url"
	if command -v curl >/dev/null 2>&1; then
		set -- -fsSL --retry 3 -o "$tmp/fleetprof-agent"
		[ -z "$ca_file" ] || set -- "$@" --cacert "$ca_file"
		curl "$@" "$url" || die "download of $url failed"
	elif command -v wget >/dev/null 2>&1; then
		set -- -q -O "$tmp/fleetprof-agent"
		[ -z "$ca_file" ] || set -- "$@" --ca-certificate="$ca_file"
		wget "$@" "$url" || die "download of $url failed"
	else
		die "neither curl nor wget found (or pass --binary FILE)"
	fi
fi
chmod 0755 "$tmp/fleetprof-agent"
version=$("$tmp/fleetprof-agent" --version 2>/dev/null) || die "the agent binary does not run on this host (wrong architecture?)"

# Everything is in hand: install, each file by an atomic rename.
install -d -m 0755 "$conf"
install -m 0755 "$tmp/fleetprof-agent" "$bin.new"
mv -f "$bin.new" "$bin"
if [ -n "$token" ]; then
	(
		umask 077
		printf '%s\n' "$token" >"$token_path.new"
	)
	mv -f "$token_path.new" "$token_path"
fi
args=""
[ -z "$insecure" ] || args="--insecure"
if [ -n "$ca_file" ]; then
	install -m 0644 "$ca_file" "$ca_path"
	args="$args --tls-ca-file=$ca_path"
fi
[ -z "$cluster" ] || args="$args --cluster=$cluster"
[ -z "$labels" ] || args="$args --labels=$labels"
[ -z "$agent_args" ] || args="$args $agent_args"
args=${args# }
cat >"$env_file.new" <<ENV
# Written by install.sh; run it again to change these, or edit this file
# and run: systemctl restart fleetprof-agent
# The bootstrap token is in $token_path (root only).
FLEETPROF_FLEET_ADDRESS=$fleet_address
FLEETPROF_AGENT_ARGS="$args"
ENV
chmod 0644 "$env_file.new"
mv -f "$env_file.new" "$env_file"
cat >"$unit.new" <<'UNIT'
# fleetprof-agent as a systemd service. install.sh puts this file in
# /etc/systemd/system; settings live in /etc/fleetprof/agent.env and the
# bootstrap token in /etc/fleetprof/bootstrap-token (see docs/deploy.md).
[Unit]
Description=fleetprof agent (always-on eBPF CPU profiler, managed by a fleet)
Documentation=https://github.com/fleetprof/fleetprof/blob/main/docs/deploy.md
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
# FLEETPROF_FLEET_ADDRESS and FLEETPROF_AGENT_ARGS (extra flags such as
# --cluster, --labels, --insecure, --tls-ca-file, --systemd-units).
Environment=FLEETPROF_AGENT_ARGS=
EnvironmentFile=/etc/fleetprof/agent.env
# The token is read from a root-only file, not passed on the command line,
# where every local user could read it in /proc/PID/cmdline. It is needed
# only until the agent has enrolled (its own credential lives in the state
# dir), but keep the file: the flag reads it on every start.
# Self-upgrade (`fleetprof release rollout`): the agent swaps in the new
# binary, keeps the old one as fleetprof-agent.prev and exits 75 so that
# systemd restarts it; this guard, run with the old binary, brings it back
# if the new one crash-loops ("-": no .prev yet is fine).
ExecStartPre=-/usr/local/bin/fleetprof-agent.prev upgrade-guard --state-dir=${STATE_DIRECTORY}
ExecStart=/usr/local/bin/fleetprof-agent \
  --fleet-address=${FLEETPROF_FLEET_ADDRESS} \
  --bootstrap-token-file=/etc/fleetprof/bootstrap-token \
  --state-dir=${STATE_DIRECTORY} \
  $FLEETPROF_AGENT_ARGS
Restart=on-failure
RestartSec=5s
TimeoutStopSec=20s

# Root, but holding only the capabilities the sampler needs: BPF and
# PERFMON (load the program, open perf events on every CPU), SYS_PTRACE and
# DAC_READ_SEARCH (read /proc/PID/maps and the binaries of every process),
# SYSLOG (kernel addresses in /proc/kallsyms), SYS_RESOURCE (lift
# RLIMIT_MEMLOCK on kernels before 5.11), CHECKPOINT_RESTORE
# (/proc/PID/map_files). No CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE, and the file
# system read-only but for the state dir. Old kernels without CAP_BPF and
# CAP_PERFMON (< 5.8) need CAP_SYS_ADMIN added: see docs/deploy.md.
# AmbientCapabilities keeps the same set should you run it as another User=
# (then make the token file readable by that user).
CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_RESOURCE CAP_DAC_READ_SEARCH CAP_SYSLOG CAP_CHECKPOINT_RESTORE
AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_RESOURCE CAP_DAC_READ_SEARCH CAP_SYSLOG CAP_CHECKPOINT_RESTORE
# Ambient capabilities survive NoNewPrivileges: it only stops setuid gains.
NoNewPrivileges=yes
StateDirectory=fleetprof-agent
StateDirectoryMode=0700
ProtectSystem=strict
# Only for self-upgrade; drop it to upgrade by install.sh alone.
ReadWritePaths=/usr/local/bin
ProtectHome=read-only
PrivateTmp=yes
UMask=0077
PrivateDevices=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# Not set, on purpose: ProtectKernelTunables (it hides /proc/kallsyms) and
# ProtectKernelLogs (it drops CAP_SYSLOG): kernel frames would lose their
# names; ProtectProc=invisible (the agent must see every process);
# SystemCallFilter (bpf and perf_event_open are its job).

[Install]
WantedBy=multi-user.target
UNIT
chmod 0644 "$unit.new"
mv -f "$unit.new" "$unit"
systemctl daemon-reload
systemctl enable "$service" >/dev/null 2>&1 || die "systemctl enable $service failed"
if [ -n "$start" ]; then
	systemctl restart "$service" || die "$service did not start: journalctl -u $service"
	say "installed and started $version ($service); status: systemctl status $service"
else
	say "installed $version ($service, enabled, not started)"
fi
