//go:build linux

package e2e

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		// Re-executed as a workload inside a pod (workload_test.go).
		os.Exit(runWorkloadHelper(mode))
	}
	if os.Geteuid() == 0 {
		// Leftovers of earlier runs that ended without cleaning up
		// (killed, timed out): only names with the harness prefix whose
		// run no longer holds its lock.
		removed, errs := Runs.Sweep(nil)
		for _, r := range removed {
			fmt.Fprintf(os.Stderr, "e2e: swept leftover %s\n", r)
		}
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "e2e: sweep: %v\n", err)
		}
	}
	code := m.Run()
	if binTook > 0 && testing.Verbose() {
		fmt.Fprintf(os.Stderr, "e2e: confmesh binary built in %s\n", binTook.Round(1e6))
	}
	finishRun()
	os.Exit(code)
}
