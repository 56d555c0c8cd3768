package cli

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/controlplane/config"
	"github.com/confmesh/confmesh/internal/attest"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// overlays are the installs manifests/ ships; each must render.
var overlays = []string{"snp", "tdx", "sim"}

// object is a rendered manifest, read loosely.
type object = map[string]any

// render runs kustomize (the library kubectl embeds) on an overlay, as
// `kubectl kustomize manifests/overlays/<name>` would.
func render(t *testing.T, overlay string) []object {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "..", "manifests", "overlays", overlay))
	if err != nil {
		t.Fatal(err)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", overlay, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var objs []object
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("%s: %v", overlay, err)
		}
		objs = append(objs, o)
	}
	return objs
}

func find(objs []object, kind, name string) object {
	for _, o := range objs {
		if o["kind"] == kind && dig(o, "metadata", "name") == name {
			return o
		}
	}
	return nil
}

// TestManifestsRender renders every overlay and checks what makes the
// install bootstrap on a fresh cluster: the control plane on the host
// network with the not-ready tolerations, no cluster DNS needed, every
// flag a container passes exists on the command it runs, sockets where the
// CLI looks by default, probes on the ports the processes listen on,
// referenced ConfigMaps and ServiceAccounts present, least-privilege RBAC.
func TestManifestsRender(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			objs := render(t, overlay)
			checkWorkloads(t, objs)

			cp := find(objs, "Deployment", "confmesh-controlplane")
			if cp == nil {
				t.Fatal("no control plane Deployment")
			}
			spec, _ := dig(cp, "spec", "template", "spec").(map[string]any)
			if spec["hostNetwork"] != true {
				t.Error("control plane is not on the host network: it would wait for the pod network it provides")
			}
			tolerated := map[string]bool{}
			for _, tol := range spec["tolerations"].([]any) {
				tolerated[tol.(map[string]any)["key"].(string)] = true
			}
			for _, k := range []string{"node.kubernetes.io/not-ready", "node.kubernetes.io/network-unavailable"} {
				if !tolerated[k] {
					t.Errorf("control plane does not tolerate %s: it cannot start before the network is ready", k)
				}
			}
			args := containerArgs(cp, "controlplane")
			if !slices.Contains(args, "--admin-socket="+config.DefaultAdminSocket) {
				t.Errorf("control plane admin socket is not the CLI default %s: %v", config.DefaultAdminSocket, args)
			}
			if !slices.Contains(args, "--state-dir="+config.DefaultStateDir) {
				t.Errorf("control plane state dir (admin credential) is not the CLI default %s", config.DefaultStateDir)
			}

			ag := find(objs, "DaemonSet", "confmesh-agent")
			if ag == nil {
				t.Fatal("no agent DaemonSet")
			}
			args = containerArgs(ag, "agent")
			for _, want := range []string{"--socket=" + defaultAgentSocket, "--pod-metadata=" + podMetadataKubernetes, "--underlay-mtu=0", "--control-plane=$(CONFMESH_CONTROL_PLANE)"} {
				if !slices.Contains(args, want) {
					t.Errorf("agent args lack %s: %v", want, args)
				}
			}
			cm := find(objs, "ConfigMap", configMapRef(t, ag))
			for _, k := range []string{"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "CONFMESH_CONTROL_PLANE"} {
				if v, _ := dig(cm, "data", k).(string); v == "" {
					t.Errorf("confmesh-cluster lacks %s (host-network agents reach neither Services nor cluster DNS at bootstrap)", k)
				}
			}
			if dp := find(objs, "DaemonSet", "confmesh-datapath"); dp == nil || slices.ContainsFunc(containerArgs(dp, "datapath"), func(a string) bool { return strings.HasPrefix(a, "--mtu") }) {
				t.Error("datapath DaemonSet missing, or it hard-codes an MTU (the agent derives it)")
			}

			role := find(objs, "ClusterRole", "confmesh-agent")
			rules, _ := role["rules"].([]any)
			if len(rules) != 1 {
				t.Fatalf("agent ClusterRole: %v; want exactly one rule (pods: list, watch)", rules)
			}
			r := rules[0].(map[string]any)
			if got := strings.Join(toStrings(r["resources"]), ","); got != "pods" {
				t.Errorf("agent ClusterRole covers %s, want pods only", got)
			}
			if got := strings.Join(toStrings(r["verbs"]), ","); got != "list,watch" {
				t.Errorf("agent ClusterRole grants %s, want list,watch only", got)
			}

			role = find(objs, "Role", "confmesh-agent")
			rules, _ = role["rules"].([]any)
			if len(rules) != 1 || strings.Join(toStrings(rules[0].(map[string]any)["resources"]), ",") != "daemonsets" ||
				strings.Join(toStrings(rules[0].(map[string]any)["verbs"]), ",") != "get,list,watch" {
				t.Errorf("agent Role: %v; want daemonsets get,list,watch only", rules)
			}

			checkRevocationsAppendOnly(t, objs)

			policy, _ := dig(find(objs, "ConfigMap", configMapVolume(t, cp, "policy")), "data", "policy.yaml").(string)
			_, err := attest.ParsePolicy([]byte(policy))
			switch overlay {
			case "snp":
				// As shipped the policy holds the all-zero placeholder,
				// refused under the AMD roots; with the operator's
				// measurements in its place it is valid.
				if err == nil || !strings.Contains(err.Error(), "all-zero placeholder") {
					t.Errorf("snp policy as shipped: err = %v, want the placeholder refused", err)
				}
				filled := strings.ReplaceAll(policy, strings.Repeat("00", 48), strings.Repeat("5e", 48))
				if _, err := attest.ParsePolicy([]byte(filled)); err != nil {
					t.Errorf("snp policy with measurements filled in: %v", err)
				}
				if strings.Contains(policy, "simulated") {
					t.Error("snp policy names a simulated root")
				}
			case "tdx":
				// Likewise with the all-zero MRTD placeholders under
				// Intel's root; filled in, it trusts Intel's root only and
				// carries a TDX control-plane list.
				if err == nil || !strings.Contains(err.Error(), "all-zero placeholder") {
					t.Errorf("tdx policy as shipped: err = %v, want the placeholder refused", err)
				}
				filled := strings.ReplaceAll(policy, strings.Repeat("00", 48), strings.Repeat("5e", 48))
				p, err := attest.ParsePolicy([]byte(filled))
				if err != nil {
					t.Fatalf("tdx policy with MRTDs filled in: %v", err)
				}
				if p.TDX == nil || len(p.TDX.MRTDs) != 1 || p.ControlPlane == nil || len(p.ControlPlane.MRTDs) != 1 {
					t.Errorf("tdx policy: tdx %+v, control plane %+v; want one node MRTD and one control-plane MRTD", p.TDX, p.ControlPlane)
				}
				if len(p.TrustedRoots) != 1 || p.TrustedRoots[0].Kind != attest.RootIntel {
					t.Errorf("tdx policy trusts %v, want Intel's root only", p.TrustedRoots)
				}
				if !mountsPath(ag, "agent", "/sys/kernel/config") || !mountsPath(cp, "controlplane", "/sys/kernel/config") {
					t.Error("tdx overlay: agent or control plane does not mount configfs-tsm (/sys/kernel/config)")
				}
			case "sim":
				if err != nil {
					t.Errorf("sim policy: %v", err)
				}
				dbg := find(objs, "DaemonSet", "confmesh-agent-debug")
				if dbg == nil || !slices.Contains(containerArgs(dbg, "agent"), "--sim-debug") {
					t.Error("sim overlay has no debug-TEE agent variant")
				}
				if slices.Contains(containerArgs(ag, "agent"), "--sim-debug") {
					t.Error("the main sim agent runs with a debug TEE")
				}
			}
		})
	}
}

// checkRevocationsAppendOnly: the control plane may create and read
// NodeRevocations, never update or delete them, and the admission policy
// that refuses everyone else but the break-glass group is installed
// (controlplane/store/kubestore TestRevocationsAppendOnly applies it as
// rendered to a real API server: kustomize's built-in schema predates
// these kinds and gives them the base's namespace, which the API server
// drops for a cluster-scoped object).
func checkRevocationsAppendOnly(t *testing.T, objs []object) {
	t.Helper()
	role := find(objs, "ClusterRole", "confmesh-controlplane")
	granted := map[string]bool{}
	for _, r := range asList(role["rules"]) {
		r := r.(map[string]any)
		if slices.Contains(toStrings(r["resources"]), "noderevocations") || slices.Contains(toStrings(r["resources"]), "*") {
			for _, v := range toStrings(r["verbs"]) {
				granted[v] = true
			}
		}
	}
	for _, v := range []string{"create", "get", "list", "watch"} {
		if !granted[v] {
			t.Errorf("control plane ClusterRole lacks %s on noderevocations", v)
		}
	}
	for _, v := range []string{"update", "patch", "delete", "deletecollection", "*"} {
		if granted[v] {
			t.Errorf("control plane ClusterRole grants %s on noderevocations: a deleted revocation lets the machine join again", v)
		}
	}
	vap := find(objs, "ValidatingAdmissionPolicy", "confmesh-noderevocations-append-only")
	bind := find(objs, "ValidatingAdmissionPolicyBinding", "confmesh-noderevocations-append-only")
	if vap == nil || bind == nil {
		t.Fatal("no ValidatingAdmissionPolicy (and binding) keeping NodeRevocations append-only")
	}
	if got := strings.Join(toStrings(dig(bind, "spec", "validationActions")), ","); got != "Deny" {
		t.Errorf("revocation policy binding actions %q, want Deny", got)
	}
}

// checkWorkloads checks every container of every workload against the CLI
// and every reference against the rendered objects.
func checkWorkloads(t *testing.T, objs []object) {
	t.Helper()
	root := NewRoot(&bytes.Buffer{}, &bytes.Buffer{})
	checked := 0
	for _, o := range objs {
		spec, _ := dig(o, "spec", "template", "spec").(map[string]any)
		if spec == nil {
			continue
		}
		name := o["kind"].(string) + "/" + dig(o, "metadata", "name").(string)
		if spec["hostNetwork"] == true && spec["dnsPolicy"] != "Default" {
			t.Errorf("%s: host network with dnsPolicy %v; want Default (cluster DNS may not exist yet and nothing resolves cluster names)", name, spec["dnsPolicy"])
		}
		if sa, _ := spec["serviceAccountName"].(string); sa != "" && find(objs, "ServiceAccount", sa) == nil {
			t.Errorf("%s: service account %s is not in the manifests", name, sa)
		}
		for _, v := range asList(spec["volumes"]) {
			if cm, _ := dig(v.(map[string]any), "configMap", "name").(string); cm != "" && find(objs, "ConfigMap", cm) == nil {
				t.Errorf("%s: volume names ConfigMap %s, which is not in the manifests", name, cm)
			}
		}
		for _, c := range asList(spec["containers"]) {
			c := c.(map[string]any)
			if dig(c, "resources", "requests") == nil || dig(c, "resources", "limits", "memory") == nil {
				t.Errorf("%s/%s: no resource requests or memory limit", name, c["name"])
			}
			args := toStrings(c["args"])
			cmd, _, err := root.Find(args[:1])
			if err != nil || cmd == root {
				t.Errorf("%s: container runs unknown command %q", name, args[0])
				continue
			}
			listen := map[string]string{}
			for _, a := range args[1:] {
				flag, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if cmd.Flags().Lookup(flag) == nil {
					t.Errorf("%s: %s has no flag --%s", name, cmd.CommandPath(), flag)
				}
				listen[flag] = val
				checked++
			}
			for _, probe := range []string{"readinessProbe", "livenessProbe"} {
				p, _ := dig(c, probe, "httpGet").(map[string]any)
				if p == nil {
					if args[0] != "datapath" {
						t.Errorf("%s/%s: no %s", name, c["name"], probe)
					}
					continue
				}
				addr := p["host"].(string) + ":" + strings.TrimSpace(strings.ReplaceAll(toJSONNumber(p["port"]), " ", ""))
				if addr != listen["metrics-listen"] {
					t.Errorf("%s/%s: %s probes %s, the process serves health on %s", name, c["name"], probe, addr, listen["metrics-listen"])
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d flags checked; the manifests were not read", checked)
	}
}

func containerArgs(o object, container string) []string {
	for _, c := range asList(dig(o, "spec", "template", "spec", "containers")) {
		if c.(map[string]any)["name"] == container {
			return toStrings(c.(map[string]any)["args"])
		}
	}
	return nil
}

func configMapRef(t *testing.T, o object) string {
	t.Helper()
	for _, c := range asList(dig(o, "spec", "template", "spec", "containers")) {
		for _, e := range asList(c.(map[string]any)["envFrom"]) {
			if n, _ := dig(e.(map[string]any), "configMapRef", "name").(string); n != "" {
				return n
			}
		}
	}
	t.Fatal("agent takes no environment from a ConfigMap")
	return ""
}

func configMapVolume(t *testing.T, o object, volume string) string {
	t.Helper()
	for _, v := range asList(dig(o, "spec", "template", "spec", "volumes")) {
		if v.(map[string]any)["name"] == volume {
			return dig(v.(map[string]any), "configMap", "name").(string)
		}
	}
	t.Fatalf("no volume %s", volume)
	return ""
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func toJSONNumber(v any) string {
	b, _ := yaml.Marshal(v)
	return strings.TrimSpace(string(b))
}

func dig(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// mountsPath reports whether the named container of workload o mounts
// something at path.
func mountsPath(o object, container, path string) bool {
	cs, _ := dig(o, "spec", "template", "spec", "containers").([]any)
	for _, c := range cs {
		cm, _ := c.(map[string]any)
		if cm["name"] != container {
			continue
		}
		vms, _ := cm["volumeMounts"].([]any)
		for _, vm := range vms {
			if m, _ := vm.(map[string]any); m["mountPath"] == path {
				return true
			}
		}
	}
	return false
}
