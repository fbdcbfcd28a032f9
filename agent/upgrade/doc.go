// Package upgrade replaces the agent's own binary when the fleet offers a
// signed release, and brings the previous one back if the new one fails.
package upgrade
