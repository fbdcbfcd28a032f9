// Package opamp is the fleet's OpAMP server: it admits agents by bearer
// token, enrolls them, hands out and rotates credentials, and tracks them.
package opamp
