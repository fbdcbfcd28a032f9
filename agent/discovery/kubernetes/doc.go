// Package kubernetes discovers the containers of the pods on this node with a
// client-go informer and maps them to their cgroups.
package kubernetes
