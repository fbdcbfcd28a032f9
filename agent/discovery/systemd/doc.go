// Package systemd discovers the systemd units whose names match globs, over
// D-Bus, and follows them as they start, stop and restart.
package systemd
