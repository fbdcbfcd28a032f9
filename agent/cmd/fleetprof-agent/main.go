// Command fleetprof-agent is the host agent: eBPF sampler, discovery,
// upload, and the OpAMP control connection to the fleet.
package main

import "fmt"

func main() { fmt.Println("fleetprof-agent: under construction") }
