package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestCNIInstall(t *testing.T) {
	src := filepath.Join(t.TempDir(), "confmesh-cni")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho plugin v1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin, conf := filepath.Join(t.TempDir(), "bin"), filepath.Join(t.TempDir(), "net.d")
	c := CNIInstall{BinDir: bin, ConfDir: conf, Binary: src, AgentSocket: "/run/confmesh/test.sock"}
	if err := c.Install(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(bin, CNIPluginName))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v, %v", st, err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	data, err := os.ReadFile(filepath.Join(conf, CNIConfName))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &list); err != nil || list.CNIVersion != CNIVersion || list.Name != CNINetworkName ||
		len(list.Plugins) != 1 || list.Plugins[0]["type"] != CNIPluginName || list.Plugins[0]["agentSocket"] != "/run/confmesh/test.sock" {
		t.Fatalf("conflist %s (%v)", data, err)
	}

	// With portmap in the bin dir, it is chained; a new binary replaces the old.
	if err := os.WriteFile(filepath.Join(bin, "portmap"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho plugin v2\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := c.Install(); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(filepath.Join(conf, CNIConfName))
	if err := json.Unmarshal(data, &list); err != nil || len(list.Plugins) != 2 || list.Plugins[1]["type"] != "portmap" {
		t.Fatalf("conflist with portmap %s (%v)", data, err)
	}
	if b, _ := os.ReadFile(filepath.Join(bin, CNIPluginName)); string(b) != "#!/bin/sh\necho plugin v2\n" {
		t.Fatalf("binary not replaced: %q", b)
	}
	// No temporary files are left for the runtime to trip over.
	for _, d := range []string{bin, conf} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if filepath.Ext(e.Name()) == ".tmp" {
				t.Errorf("left %s in %s", e.Name(), d)
			}
		}
	}

	if err := c.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(conf, CNIConfName)); !os.IsNotExist(err) {
		t.Fatalf("conflist still there after Uninstall: %v", err)
	}
	if err := c.Uninstall(); err != nil {
		t.Fatalf("second Uninstall: %v", err)
	}

	if err := (CNIInstall{BinDir: bin, ConfDir: conf, Binary: filepath.Join(t.TempDir(), "missing")}).Install(); err == nil {
		t.Fatal("installed a missing binary")
	}
	if _, err := os.Stat(filepath.Join(conf, CNIConfName)); !os.IsNotExist(err) {
		t.Fatal("conflist written although the binary could not be installed")
	}
}

// TestCNINotInstalledBeforeJoin: an agent that has not joined has written
// nothing, so the runtime reports NetworkNotReady; installCNI (run at the
// end of join) writes the conflist.
func TestCNINotInstalledBeforeJoin(t *testing.T) {
	a := newTestAgent(t)
	conf := filepath.Join(t.TempDir(), "net.d")
	a.cfg.CNIConfDir, a.cfg.CNIBinDir = conf, filepath.Join(t.TempDir(), "bin")
	if _, err := os.Stat(filepath.Join(conf, CNIConfName)); !os.IsNotExist(err) {
		t.Fatalf("conflist present before join: %v", err)
	}
	if err := a.installCNI(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(conf, CNIConfName)); err != nil {
		t.Fatalf("conflist after install: %v", err)
	}
	a.cfg.CNIConfDir = ""
	if err := a.installCNI(); err != nil {
		t.Fatalf("no conf dir configured must be a no-op: %v", err)
	}
}
