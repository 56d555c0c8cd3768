//go:build linux

package netlab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LogTails renders the last n lines of every process's log, one section
// per process start.
func (c *Cluster) LogTails(n int) []string {
	var out []string
	for _, p := range c.Processes() {
		out = append(out, fmt.Sprintf("---- %s (pid %d), last %d lines of %s ----\n%s", p.Name, p.PID(), n, p.Log, Tail(p.Log, n)))
	}
	return out
}

// CopyLogs copies every process log of the cluster (*.log in its
// directory) into dst, creating it.
func (c *Cluster) CopyLogs(dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "*.log"))
	var errs []string
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, filepath.Base(l)), data, 0o644)
		}
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("copy logs: %s", strings.Join(errs, "; "))
	}
	return nil
}
