// Command confmesh is the confmesh multi-command binary.
package main

import (
	"os"

	"github.com/confmesh/confmesh/cmd/confmesh/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
