// Package describe maps an agent's identity (host, platform, version,
// labels) to OpAMP AgentDescription attributes and back, for both sides.
package describe
