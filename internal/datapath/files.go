package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// claimSocket makes sure nobody serves the UAPI socket at path: it fails
// with ErrSocketInUse when a connection succeeds, removes the file when
// nobody accepts (a datapath that died without cleaning up), and refuses to
// remove anything that is not a socket.
func claimSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check UAPI socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s is served by a running datapath; another datapath already owns this interface name (in this or another network namespace)", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check UAPI socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale UAPI socket: %w", err)
	}
	return nil
}

// writePIDFile writes this process's ID to path atomically, so a reader
// never sees a partial number.
func writePIDFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("PID file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".datapath-pid-*")
	if err != nil {
		return fmt.Errorf("PID file: %w", err)
	}
	_, werr := fmt.Fprintf(tmp, "%d\n", os.Getpid())
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("PID file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("PID file: %w", err)
	}
	return nil
}

// removePIDFile removes path if it still names this process (a successor
// may already have replaced it).
func removePIDFile(path string, log *slog.Logger) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || pid != os.Getpid() {
		return
	}
	if err := os.Remove(path); err != nil {
		log.Warn("remove PID file", "path", path, "err", err)
	}
}
