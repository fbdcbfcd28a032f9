// Package deploy tests the deployment files: Kubernetes manifests against a
// real kube-apiserver, systemd units and install.sh inside a real systemd.
package deploy
