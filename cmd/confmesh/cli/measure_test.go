package cli

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/measure/measuretest"
)

// Reference values: virtee/sev-snp-measure at 8f2b337e38bc on the same
// synthetic image, kernel and initrd (`--mode snp --vcpus 2 --vcpu-type
// EPYC-Genoa --kernel --initrd --append "console=ttyS0 root=/dev/vda1"`),
// and td-shim's td_shim_tee_info_hash.py at 125eeab58f69 on the synthetic
// TDVF image; the package tests (internal/measure/snp, tdx) carry more.
const (
	refSNPGenoaDirectBoot = "640c3a0569137b9f9652b5762b8b7985d166cb7a6db3d7a862389128d52078565c5e02518b47c68f54c3646da78156da"
	refTDXSmallTDVF       = "5ce6eff7fe8a4d1abc016c2cee1f06952a87c49f78ec93a35bcec7fb19a1d75f46ac86e2dac68466a29e0969af546cbf"
)

// nodeImage writes the synthetic node image: OVMF (AmdSev layout), kernel,
// initrd, and a TDVF image.
type nodeImage struct{ ovmf, kernel, initrd, tdvf string }

func writeNodeImage(t *testing.T) nodeImage {
	t.Helper()
	dir := t.TempDir()
	return nodeImage{
		ovmf:   writeFile(t, dir, "OVMF.fd", measuretest.AmdSevImage(0x20000, "confmesh-amdsev").Build()),
		kernel: writeFile(t, dir, "vmlinuz", measuretest.Fill("confmesh-kernel", 5000)),
		initrd: writeFile(t, dir, "initrd.img", measuretest.Fill("confmesh-initrd", 3000)),
		tdvf:   writeFile(t, dir, "OVMF-tdx.fd", measuretest.SmallTDVF("confmesh-tdvf").Build()),
	}
}

func (n nodeImage) snpArgs(prefix string, vcpus string) []string {
	return []string{"--" + prefix + "ovmf", n.ovmf, "--" + prefix + "kernel", n.kernel, "--" + prefix + "initrd", n.initrd,
		"--" + prefix + "append", "console=ttyS0 root=/dev/vda1", "--" + prefix + "vcpus", vcpus, "--" + prefix + "vcpu-type", "EPYC-Genoa"}
}

func TestMeasureSNP(t *testing.T) {
	t.Parallel()
	img := writeNodeImage(t)
	args := append([]string{"measure", "snp"}, img.snpArgs("", "2")...)

	r := run(t, args...)
	r.want(t, 0)
	if !strings.HasPrefix(r.stdout, "measurement: "+refSNPGenoaDirectBoot+"\n") || !strings.Contains(r.stdout, "EPYC-Genoa (CPUID signature 0xa10f10)") {
		t.Fatalf("text output:\n%s", r.stdout)
	}

	r = run(t, append(args, "-o", "json")...)
	r.want(t, 0)
	var j struct {
		TEE, Measurement string
		Inputs           map[string]string
	}
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if j.TEE != attest.TEESevSnp || j.Measurement != refSNPGenoaDirectBoot || !strings.Contains(j.Inputs["kernel"], "5000 bytes") {
		t.Fatalf("JSON %+v", j)
	}

	// -o policy is a policy file as it stands (AMD roots by default).
	r = run(t, append(args, "-o", "policy")...)
	r.want(t, 0)
	p, err := attest.ParsePolicy([]byte(r.stdout))
	if err != nil {
		t.Fatalf("-o policy output is not a valid policy: %v\n%s", err, r.stdout)
	}
	if len(p.Measurements) != 1 || p.Measurements[0].String() != refSNPGenoaDirectBoot {
		t.Fatalf("policy measurements %v\n%s", p.Measurements, r.stdout)
	}

	// The precomputed OVMF hash gives the same digest.
	r = run(t, "measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf-hash",
		"3e90a6a54fd80ccee872b3f8db20f0c914268cfa94627f0cb74e26e1ec9a461e0115ef8b11b1afea99e837b1c3db4fb8", "-o", "json")
	r.want(t, 0)
	// sev-snp-measure, same image: --vcpus 1 --vcpu-type EPYC-v4.
	if !strings.Contains(r.stdout, "745c3312489a73e92842de812ef2da4af555b319aa8d8e29a77b24411123d264638f91f7570130a62f57645abec6cd84") {
		t.Fatalf("with --ovmf-hash:\n%s", r.stdout)
	}
	// sev-snp-measure's published test_snp_gce_default (tests/test_guest.py,
	// expected 5da7106c...): /dev/null kernel and initrd, GCE, through the
	// CLI, with its fixture's published OVMF hash standing for the pages.
	r = run(t, "measure", "snp", "--ovmf", img.ovmf, "--ovmf-hash", "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74",
		"--kernel", os.DevNull, "--initrd", os.DevNull, "--vcpus", "1", "--vmm-type", "gce")
	r.want(t, 0)
	if !strings.HasPrefix(r.stdout, "measurement: 5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e\n") {
		t.Fatalf("--vmm-type gce:\n%s", r.stdout)
	}
	// --vcpu-sig 0x800f12 is EPYC-v4.
	r = run(t, "measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-sig", "0x800f12")
	r.want(t, 0)
	if !strings.Contains(r.stdout, "745c3312489a73e92842de812ef2da4af555b319aa8d8e29a77b24411123d264638f91f7570130a62f57645abec6cd84") {
		t.Fatalf("with --vcpu-sig:\n%s", r.stdout)
	}
}

func TestMeasureTDX(t *testing.T) {
	t.Parallel()
	img := writeNodeImage(t)
	r := run(t, "measure", "tdx", "--tdvf", img.tdvf)
	r.want(t, 0)
	if !strings.HasPrefix(r.stdout, "mrtd: "+refTDXSmallTDVF+"\n") {
		t.Fatalf("text output:\n%s", r.stdout)
	}
	r = run(t, "measure", "tdx", "--tdvf", img.tdvf, "-o", "policy")
	r.want(t, 0)
	p, err := attest.ParsePolicy([]byte(r.stdout))
	if err != nil {
		t.Fatalf("-o policy output is not a valid policy: %v\n%s", err, r.stdout)
	}
	if p.TDX == nil || len(p.TDX.MRTDs) != 1 || p.TDX.MRTDs[0].String() != refTDXSmallTDVF {
		t.Fatalf("policy tdx %+v\n%s", p.TDX, r.stdout)
	}

	// A mixed cluster's policy is the two fragments one after the other.
	snpFrag := run(t, "measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "-o", "policy")
	snpFrag.want(t, 0)
	mixed, err := attest.ParsePolicy([]byte(snpFrag.stdout + r.stdout))
	if err != nil {
		t.Fatalf("SNP and TDX fragments together: %v", err)
	}
	if len(mixed.Measurements) != 1 || mixed.TDX == nil || len(mixed.TDX.MRTDs) != 1 {
		t.Fatalf("mixed policy %+v", mixed)
	}
}

func TestMeasureRefusals(t *testing.T) {
	t.Parallel()
	img := writeNodeImage(t)
	plain := writeFile(t, t.TempDir(), "OvmfX64.fd", measuretest.OvmfX64Image(0x10000, "x").Build())
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no ovmf", []string{"measure", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4"}, 2, "--ovmf: required"},
		{"no vcpus", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpu-type", "EPYC-v4"}, 2, "--vcpus: required"},
		{"no vcpu type", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1"}, 2, "--vcpu-type: required"},
		{"unknown vcpu type", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "Skylake"}, 2, "unknown vCPU type \"Skylake\""},
		{"initrd without kernel", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--initrd", img.initrd}, 2, "need --kernel"},
		{"bad features", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "zz"}, 2, "--guest-features"},
		{"vcpu type on GCE", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--vmm-type", "gce"}, 2, "gce puts no CPUID signature"},
		{"unknown VMM", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--vmm-type", "xen"}, 2, "unknown VMM \"xen\""},
		{"bad format", []string{"measure", "snp", "--ovmf", img.ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "-o", "yaml"}, 2, "unknown output format"},
		{"missing file", []string{"measure", "snp", "--ovmf", img.ovmf + ".nope", "--vcpus", "1", "--vcpu-type", "EPYC-v4"}, 2, "no such file"},
		{"kernel on OVMF without hashes", []string{"measure", "snp", "--ovmf", plain, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--kernel", img.kernel}, 1, "no SEV hash table"},
		{"TDVF as OVMF", []string{"measure", "snp", "--ovmf", img.tdvf, "--vcpus", "1", "--vcpu-type", "EPYC-v4"}, 1, "no SEV-SNP support"},
		{"OVMF as TDVF", []string{"measure", "tdx", "--tdvf", img.ovmf}, 1, "no TDX support"},
		{"kernel as TDVF", []string{"measure", "tdx", "--tdvf", img.kernel}, 1, img.kernel},
		{"no tdvf", []string{"measure", "tdx"}, 2, "--tdvf: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.args...)
			r.want(t, tc.code, tc.want)
			if r.stdout != "" {
				t.Fatalf("a refusal printed a measurement:\n%s", r.stdout)
			}
		})
	}
}

// TestMeasureSimRoundTrip: the measurement `measure snp` computes, pasted
// into a policy with -o policy, admits a simulated node launched from the
// same image (attest report --sim-ovmf ...), and refuses one launched with
// another vCPU count; likewise `measure tdx` and a sim-tdx node launched
// from the TDVF image, and not from a modified one.
func TestMeasureSimRoundTrip(t *testing.T) {
	t.Parallel()
	img := writeNodeImage(t)
	dir := t.TempDir()
	nonce, key := randHex(t, 32), randHex(t, 32)

	r := run(t, append([]string{"measure", "snp", "-o", "policy"}, img.snpArgs("", "2")...)...)
	r.want(t, 0)
	pol := writeFile(t, dir, "snp.yaml", []byte(r.stdout+"trustedRoots:\n- kind: simulated\n  file: "+filepath.Join(simDir, sim.RootFile)+"\n"))

	report := func(out string, extra ...string) string {
		t.Helper()
		o := filepath.Join(dir, out)
		run(t, append([]string{"attest", "report", "--sim-dir", simDir, "--name", "measured-node", "--nonce", nonce, "--key", key, "-o", o}, extra...)...).want(t, 0)
		return o
	}
	verify := func(out, policy, file string) result {
		return run(t, "attest", "verify", "--report", filepath.Join(out, file), "--vcek", filepath.Join(out, "vcek.pem"),
			"--chain", filepath.Join(out, "chain.pem"), "--nonce", nonce, "--key", key, "--policy", policy, "-o", "json")
	}
	good := report("snp-good", img.snpArgs("sim-", "2")...)
	r = verify(good, pol, "report.bin")
	r.want(t, 0)
	var c attest.Claims
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if c.TEE != attest.TEESimSnp || c.Measurement.String() != refSNPGenoaDirectBoot {
		t.Fatalf("claims %+v", c)
	}
	other := report("snp-3cpu", img.snpArgs("sim-", "3")...)
	verify(other, pol, "report.bin").want(t, 1, "rejected: measurement:")

	// TDX: a new sim-tdx CA, chosen by --sim-tdvf alone.
	r = run(t, "measure", "tdx", "--tdvf", img.tdvf, "-o", "policy")
	r.want(t, 0)
	ca := filepath.Join(dir, "tdx-ca")
	tdxPol := writeFile(t, dir, "tdx.yaml", []byte(r.stdout+"trustedRoots: [{kind: simulated-tdx, file: "+filepath.Join(ca, "root.pem")+"}]\n"))
	tdxOut := filepath.Join(dir, "tdx-good")
	run(t, "attest", "report", "--sim-dir", ca, "--sim-tdvf", img.tdvf, "--nonce", nonce, "--key", key, "-o", tdxOut).want(t, 0)
	r = run(t, "attest", "verify", "--report", filepath.Join(tdxOut, "quote.dat"), "--nonce", nonce, "--key", key, "--policy", tdxPol, "-o", "json")
	r.want(t, 0)
	if !strings.Contains(r.stdout, `"tee": "sim-tdx"`) || !strings.Contains(r.stdout, refTDXSmallTDVF) {
		t.Fatalf("claims:\n%s", r.stdout)
	}
	tampered := measuretest.SmallTDVF("confmesh-tdvf").Build()
	tampered[0x4000] ^= 1 // one byte of the boot firmware volume
	badImg := writeFile(t, dir, "tampered.fd", tampered)
	badOut := filepath.Join(dir, "tdx-bad")
	run(t, "attest", "report", "--sim-dir", ca, "--sim-tdvf", badImg, "--nonce", nonce, "--key", key, "-o", badOut).want(t, 0)
	run(t, "attest", "verify", "--report", filepath.Join(badOut, "quote.dat"), "--nonce", nonce, "--key", key, "--policy", tdxPol).
		want(t, 1, "rejected: measurement:")

	// Misuse of the image flags changes nothing and says why.
	out := filepath.Join(dir, "never")
	run(t, append([]string{"attest", "report", "--sim-dir", simDir, "--nonce", nonce, "--key", key, "-o", out,
		"--measurement", hex.EncodeToString(make([]byte, 48))}, img.snpArgs("sim-", "2")...)...).want(t, 2, "not both")
	run(t, "attest", "report", "--sim-dir", simDir, "--sim-tdvf", img.tdvf, "--nonce", nonce, "--key", key, "-o", out).want(t, 2, "holds a sim-snp CA")
	run(t, "attest", "report", "--sim-dir", ca, "--sim-ovmf", img.ovmf, "--sim-vcpus", "1", "--sim-vcpu-type", "EPYC-v4", "--nonce", nonce, "--key", key, "-o", out).
		want(t, 2, "sim-snp node, but the simulated TEE is sim-tdx")
	run(t, append([]string{"attest", "report", "--nonce", nonce, "--key", key, "-o", out}, img.snpArgs("sim-", "2")...)...).want(t, 2, "need --sim-dir")
	run(t, "attest", "report", "--sim-dir", simDir, "--sim-ovmf", img.ovmf, "--sim-vcpus", "1", "--nonce", nonce, "--key", key, "-o", out).want(t, 2, "--sim-vcpu-type: required")
}

// TestDocsMeasureSection: docs/attestation.md explains where measurements
// come from, and every flag its examples and text name exists on the
// command it is given to.
func TestDocsMeasureSection(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../../docs/attestation.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(data), "\n## Where measurements come from\n")
	if !ok {
		t.Fatal("docs/attestation.md has no \"Where measurements come from\" section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	for _, sub := range []string{"### Computing them from a reproducible node image", "### Pinning them in the policy", "### Rolling a new image without an outage"} {
		if !strings.Contains(sec, sub) {
			t.Errorf("the section lacks %q", sub)
		}
	}
	root := NewRoot(io.Discard, io.Discard)
	flagsOf := func(path ...string) func(string) bool {
		c, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		return func(f string) bool { return c.Flags().Lookup(f) != nil }
	}
	cmds := map[string]func(string) bool{
		"measure snp": flagsOf("measure", "snp"), "measure tdx": flagsOf("measure", "tdx"),
		"attest report": flagsOf("attest", "report"), "agent": flagsOf("agent"),
	}
	flagRE := regexp.MustCompile(`--([a-z][a-z0-9-]+)`)
	seen := 0
	for _, para := range strings.Split(sec, "\n\n") {
		para = strings.ReplaceAll(para, "\\\n", " ")
		for name, has := range cmds {
			if !strings.Contains(para, "confmesh "+name) {
				continue
			}
			for _, m := range flagRE.FindAllStringSubmatch(para, -1) {
				if strings.HasPrefix(m[1], "sim-") != strings.HasPrefix(name, "attest") && name != "agent" {
					continue // a paragraph naming several commands: each checks its own flags
				}
				seen++
				if !has(m[1]) {
					t.Errorf("the docs give --%s to `confmesh %s`, which has no such flag", m[1], name)
				}
			}
		}
	}
	if seen < 10 {
		t.Fatalf("only %d flags checked: the section's examples moved", seen)
	}
}

// TestAgentSimImageFlags: the agent's simulated TEE reports the
// measurement computed from --sim-ovmf..., picks sim-tdx for --sim-tdvf,
// and refuses the image flags without --sim-dir.
func TestAgentSimImageFlags(t *testing.T) {
	t.Parallel()
	img := writeNodeImage(t)
	open := func(args ...string) (attest.Provider, error) {
		t.Helper()
		var f agentFlags
		if err := newAgentCmdFlags(&f).Flags().Parse(args); err != nil {
			t.Fatal(err)
		}
		return openAgentProvider(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	p, err := open(append([]string{"--name", "agent-measured", "--sim-dir", simDir}, img.snpArgs("sim-", "2")...)...)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Report([64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(ev.GetReport()[0x90:0xc0]); p.TEE() != attest.TEESimSnp || got != refSNPGenoaDirectBoot {
		t.Fatalf("agent's simulated %s node reports measurement %s, want %s", p.TEE(), got, refSNPGenoaDirectBoot)
	}
	p, err = open("--name", "agent-tdx", "--sim-dir", filepath.Join(t.TempDir(), "ca"), "--sim-tdvf", img.tdvf)
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE() != attest.TEESimTDX {
		t.Fatalf("--sim-tdvf opened a %s node", p.TEE())
	}
	if _, err := open(append([]string{"--name", "n"}, img.snpArgs("sim-", "2")...)...); err == nil || !strings.Contains(err.Error(), "need --sim-dir") {
		t.Fatalf("image flags without --sim-dir: %v", err)
	}
	if _, err := open("--name", "n", "--sim-dir", simDir, "--sim-tee", "sim-tdx", "--sim-ovmf", img.ovmf, "--sim-vcpus", "1", "--sim-vcpu-type", "EPYC-v4"); err == nil ||
		!strings.Contains(err.Error(), "--sim-tee sim-tdx, but the image flags describe a sim-snp node") {
		t.Fatalf("conflicting --sim-tee: %v", err)
	}
}
