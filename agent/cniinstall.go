package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// CNI installation defaults and names.
const (
	DefaultCNIBinDir  = "/opt/cni/bin"
	DefaultCNIConfDir = "/etc/cni/net.d"
	// CNIPluginName is the plugin binary's name in the CNI bin dir (the
	// conflist's "type").
	CNIPluginName = "confmesh-cni"
	// CNIConfName sorts early so runtimes that take the first conflist pick it.
	CNIConfName = "10-confmesh.conflist"
	// CNINetworkName is the conflist's "name".
	CNINetworkName = "confmesh"
	// CNIVersion is the spec version the installed conflist asks for.
	CNIVersion = "1.1.0"
)

// CNIInstall says where to install the plugin.
type CNIInstall struct {
	BinDir  string
	ConfDir string
	// Binary is the confmesh-cni executable to copy into BinDir ("": none,
	// the binary is already there).
	Binary string
	// AgentSocket goes into the conflist as agentSocket ("": the default).
	AgentSocket string
}

// Conflist is the network configuration list the agent writes: confmesh-cni
// first, then portmap (hostPort support) when a portmap binary is present
// in BinDir, so the chain never names a plugin the runtime cannot find.
func (c CNIInstall) Conflist() ([]byte, error) {
	plugin := map[string]any{"type": CNIPluginName}
	if c.AgentSocket != "" {
		plugin["agentSocket"] = c.AgentSocket
	}
	plugins := []any{plugin}
	if c.BinDir != "" {
		if st, err := os.Stat(filepath.Join(c.BinDir, "portmap")); err == nil && st.Mode().IsRegular() {
			plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}})
		}
	}
	data, err := json.MarshalIndent(map[string]any{"cniVersion": CNIVersion, "name": CNINetworkName, "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// Install copies the binary (when set) and then writes the conflist, each
// atomically (a temporary file in the same directory, synced, renamed), so
// a runtime never execs a half-written plugin or parses a half-written
// configuration. The binary goes first: the conflist, once visible, names
// a plugin that is already there.
func (c CNIInstall) Install() error {
	if c.ConfDir == "" {
		return errors.New("no CNI conf dir")
	}
	if c.Binary != "" {
		if c.BinDir == "" {
			return errors.New("CNI binary set but no CNI bin dir")
		}
		if err := installBinary(c.Binary, filepath.Join(c.BinDir, CNIPluginName)); err != nil {
			return err
		}
	}
	data, err := c.Conflist()
	if err != nil {
		return err
	}
	dst := filepath.Join(c.ConfDir, CNIConfName)
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(c.ConfDir, 0o755); err != nil {
		return fmt.Errorf("CNI conf dir: %w", err)
	}
	if err := writeFileSynced(dst, bytes.NewReader(data), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}

// Uninstall removes the conflist (the runtime then reports the network not
// ready) and the binary. Missing files are fine.
func (c CNIInstall) Uninstall() error {
	var errs []error
	if c.ConfDir != "" {
		if err := os.Remove(filepath.Join(c.ConfDir, CNIConfName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if c.BinDir != "" {
		if err := os.Remove(filepath.Join(c.BinDir, CNIPluginName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func installBinary(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("CNI plugin binary: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("CNI plugin binary: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("CNI plugin binary %s is not a regular file", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("CNI bin dir: %w", err)
	}
	if same, _ := sameContent(src, dst); same {
		return nil
	}
	if err := writeFileSynced(dst, in, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

func sameContent(a, b string) (bool, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(x, y), nil
}

// writeFileSynced writes r to a hidden temporary file beside dst (its name
// ends in .tmp, which runtimes do not load as configuration), syncs it and
// renames it over dst. Renaming over a binary that is being executed is safe.
func writeFileSynced(dst string, r io.Reader, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// installCNI runs the installer configured in Config; it is called once the
// node has joined, so before that the runtime finds no confmesh network and
// reports NetworkNotReady.
func (a *Agent) installCNI() error {
	if a.cfg.CNIConfDir == "" {
		return nil
	}
	c := CNIInstall{BinDir: a.cfg.CNIBinDir, ConfDir: a.cfg.CNIConfDir, Binary: a.cfg.CNIBinary, AgentSocket: a.cfg.CNIAgentSocket}
	if err := c.Install(); err != nil {
		return err
	}
	a.log.Info("CNI plugin installed", "conf", filepath.Join(c.ConfDir, CNIConfName), "binDir", c.BinDir)
	return nil
}
