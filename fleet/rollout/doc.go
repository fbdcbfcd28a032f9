// Package rollout moves a config version through canary and waves to the
// agents a label selector picks, halting on failures and resuming from the store.
package rollout
