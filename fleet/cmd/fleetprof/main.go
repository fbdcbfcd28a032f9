// Command fleetprof is the fleet server, console and admin CLI.
package main

import "fmt"

func main() { fmt.Println("fleetprof: under construction") }
