package cni

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseConfig: the network configuration on stdin is written by
// whoever configures the runtime; ParseConfig never panics, refuses with a
// CNI error (decoding 6, invalid 7, incompatible version 1), and what it
// accepts is a usable configuration.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion": "1.0.0", "name": "confmesh", "type": "confmesh-cni"}`,
		`{"cniVersion": "1.1.0", "name": "n", "agentSocket": "/run/confmesh/cni.sock", "agentTimeout": "10s", "gcGracePeriod": "1m",
		  "cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}], "cni.dev/attachments": [{"containerID": "d", "ifname": "eth0"}]}`,
		`{"cniVersion": "0.4.0", "name": "n", "prevResult": {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}],
		  "ips": [{"version": "4", "address": "10.244.1.2/24", "interface": 0}]}}`,
		`{"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": "x"}}`,
		`{"cniVersion": "1.0.0", "name": `,
		`{"cniVersion": "9.9.9", "name": "n"}`,
		`{"cniVersion": "1.0.0", "name": "n", "agentTimeout": "-1s"}`,
		`[]`, `null`, ``,
		`{"cniVersion": "1.0.0", "name": "n", "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.2/24", "interface": 99}]}}`,
		`{"cniVersion": "1.0.0", "name": "` + strings.Repeat("a", 100) + `", "agentSocket": "/` + strings.Repeat("x/", 50) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not a CNI error", err, err)
			}
			if e.Code != types.ErrDecodingFailure && e.Code != types.ErrInvalidNetworkConfig && e.Code != types.ErrIncompatibleCNIVersion {
				t.Fatalf("CNI error code %d for %v", e.Code, err)
			}
			return
		}
		if c.Name == "" || !supported(c.CNIVersion) || !filepath.IsAbs(c.AgentSocket) || c.timeout <= 0 || c.gcGrace < 0 {
			t.Fatalf("accepted an unusable configuration: %+v", c)
		}
		c.GCKeep()
	})
}
