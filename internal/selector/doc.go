// Package selector parses and matches agent label selectors in Kubernetes
// label-selector syntax, for rollouts and `agents list --selector`.
package selector
