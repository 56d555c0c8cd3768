package throughput

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestSameSession: tunnel processes in one session pass; one started in a
// session of its own (as the agent once started its datapaths) is refused
// with an error that says why.
func TestSameSession(t *testing.T) {
	start := func(attr *syscall.SysProcAttr) int {
		t.Helper()
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = attr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return cmd.Process.Pid
	}
	grouped := start(&syscall.SysProcAttr{Setpgid: true})
	if err := sameSession([]int{os.Getpid(), grouped}); err != nil {
		t.Errorf("own process group, our session: %v", err)
	}
	apart := start(&syscall.SysProcAttr{Setsid: true})
	err := sameSession([]int{os.Getpid(), grouped, apart})
	if err == nil || !strings.Contains(err.Error(), "different sessions") {
		t.Errorf("a process in a session of its own: got %v, want a different-sessions error", err)
	}
}
