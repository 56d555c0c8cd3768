//go:build linux

package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"
)

func newDemoExecCmd() *cobra.Command {
	var runID string
	cmd := &cobra.Command{
		Use:   "exec [--run ID] TARGET -- CMD [ARGS...]",
		Short: "run a command in a kept demo's node or pod",
		Long: `Run CMD in a network namespace of your kept demo cluster (confmesh demo
--keep). TARGET is a node (node-1: its namespace, where the agent runs) or a
pod: node-1/frontend, shop/frontend or frontend, as --keep printed them. In a
pod, SPIFFE_ENDPOINT_SOCKET is set to its node's Workload API socket, so any
SPIFFE client (e.g. 'confmesh demo svid') gets the pod's own identity.
Standard input, output and error pass through, and the exit status is
CMD's. --run picks one of several kept runs.`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash != 1 || len(args) < 2 {
				return usageErrorf("want TARGET -- CMD [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				return failf("confmesh demo exec needs root (it enters the demo's network namespaces)")
			}
			s, err := findKeptRun(runID)
			if err != nil {
				return failf("demo exec: %v", err)
			}
			netns, env, err := s.resolveTarget(args[0])
			if err != nil {
				return usageErrorf("demo exec: %v", err)
			}
			c := exec.Command("ip", append([]string{"netns", "exec", netns}, args[1:]...)...)
			c.Env = append(os.Environ(), env...)
			c.Stdin, c.Stdout, c.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			// Signals the terminal sends reach CMD (same process group);
			// this process waits for it rather than dying first.
			signal.Ignore(os.Interrupt)
			defer signal.Reset(os.Interrupt)
			err = c.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return &exitError{code: ee.ExitCode(), err: err, quiet: true}
			}
			if err != nil {
				return failf("demo exec: %v", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&runID, "run", "", "the kept run `ID` (needed only when you keep several)")
	return cmd
}

// resolveTarget maps TARGET to a network namespace and the environment to
// add.
func (s *demoState) resolveTarget(target string) (netns string, env []string, err error) {
	for _, n := range s.Nodes {
		if n.Name == target {
			if n.Role != "honest" {
				return "", nil, fmt.Errorf("%s is the %s node of the demo; it is gone or cut off", n.Name, n.Role)
			}
			return n.NS, nil, nil
		}
	}
	honest := map[string]bool{}
	for _, n := range s.Nodes {
		honest[n.Name] = n.Role == "honest"
	}
	var match []statePod
	for _, p := range s.Pods {
		if !honest[p.Node] {
			continue // on the revoked node
		}
		if target == p.Name || target == p.Namespace+"/"+p.PodName || target == p.PodName {
			match = append(match, p)
		}
	}
	switch len(match) {
	case 1:
		return match[0].NS, []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + match[0].WorkloadSocket}, nil
	case 0:
		var names []string
		for _, n := range s.Nodes {
			if n.Role == "honest" {
				names = append(names, n.Name)
			}
		}
		for _, p := range s.Pods {
			if honest[p.Node] {
				names = append(names, p.Name)
			}
		}
		return "", nil, fmt.Errorf("no node or pod %q in run %s; targets: %s", target, s.Run, strings.Join(names, ", "))
	}
	return "", nil, fmt.Errorf("%q names %d pods; use NODE/POD", target, len(match))
}
