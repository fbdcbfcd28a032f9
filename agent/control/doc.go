// Package control is the agent's OpAMP side: it enrolls with a bootstrap
// token, keeps and proves its credential, and carries config and status.
package control
