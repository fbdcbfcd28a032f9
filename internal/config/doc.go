// Package config is the remote-config schema that the fleet rolls out and
// the agent applies: strict YAML parsing, validation and canonical hashing.
package config
