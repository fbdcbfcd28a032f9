// Package postgres is the fleet store on PostgreSQL, for several fleet
// replicas sharing one database; it also holds the leader lease and keys.
package postgres
