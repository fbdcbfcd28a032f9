// Package release keeps signed agent releases and moves a release through
// the staged rollout machinery as OpAMP PackagesAvailable offers.
package release
