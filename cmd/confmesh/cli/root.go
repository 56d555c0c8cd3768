// Package cli implements the confmesh operator verbs on top of cobra. Each
// verb group lives in its own file; Execute runs the whole tree in-process
// so tests can drive it with arguments and captured output.
//
// Exit codes: 0 success, 1 the command ran and the answer is no (evidence
// rejected, policy invalid, operation failed), 2 usage error or an input
// file that cannot be read or parsed.
package cli

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitRejected = 1
	ExitUsage    = 2
)

// exitError carries the exit code a failure maps to. Every error a command
// returns is one; anything else reaching Execute came from cobra itself
// (unknown flag, missing required flag, wrong arguments) and is a usage error.
type exitError struct {
	code  int
	err   error
	quiet bool // the command already said everything (demo exec passes a child's status on)
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf is exit 2: bad arguments or unreadable input.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// failf is exit 1: the command ran and the answer is no.
func failf(format string, args ...any) error {
	return &exitError{code: ExitRejected, err: fmt.Errorf(format, args...)}
}

// ExitCode maps an error returned by a command to the process exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitUsage
}

// NewRoot builds the command tree writing to stdout and stderr.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "confmesh",
		Short: "confmesh: a confidential service mesh for SEV-SNP nodes",
		Long: `confmesh puts pod-to-pod traffic between confidential VMs into WireGuard
tunnels that exist only after both sides verified each other's hardware
attestation. These verbs run the control plane, manage its nodes, inspect
evidence and policies and measure the verifier.

Exit codes: 0 success; 1 rejected / invalid / failed; 2 usage error or an
input file that cannot be read or parsed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	// Flag parse errors (unknown flag, bad value) are usage errors.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: ExitUsage, err: err}
	})
	root.AddCommand(newAttestCmd(), newPolicyCmd(), newMeasureCmd(), newBenchCmd(), newControlPlaneCmd(), newNodesCmd())
	root.AddCommand(newDatapathCmd())
	root.AddCommand(newAgentCmd(), newStatusCmd(), newPeersCmd())
	root.AddCommand(newDemoCmd())
	return root
}

// Execute runs the command tree with args, prints any error to stderr and
// returns the exit code.
func Execute(args []string, stdout, stderr io.Writer) int {
	root := NewRoot(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return ExitOK
	}
	code := ExitCode(err)
	if ee := (*exitError)(nil); errors.As(err, &ee) && ee.quiet {
		return code
	}
	if code == ExitUsage {
		fmt.Fprintf(stderr, "error: %v\n", err)
	} else {
		fmt.Fprintln(stderr, err)
	}
	if code == ExitUsage && cmd != nil {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// Output formats of commands that take -o.
const (
	formatText = "text"
	formatJSON = "json"
)

func checkFormat(f string) error {
	switch f {
	case formatText, formatJSON:
		return nil
	}
	return usageErrorf("unknown output format %q (want %s or %s)", f, formatText, formatJSON)
}

// parseHexFlag decodes a hex flag value (either case, optional 0x prefix)
// of exactly size bytes.
func parseHexFlag(flag, value string, size int) ([]byte, error) {
	s := strings.TrimPrefix(strings.TrimSpace(value), "0x")
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, usageErrorf("--%s: not hex: %v", flag, err)
	}
	if len(b) != size {
		return nil, usageErrorf("--%s: %d bytes, want %d (%d hex digits)", flag, len(b), size, 2*size)
	}
	return b, nil
}
